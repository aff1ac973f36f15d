"""Family specs of decoders with fused or unusual attention layouts (GPT-BigCode, GPT-J, GPT-Neo, CodeGen,
BioGPT, Persimmon, BLOOM, MPT) and of DeepSeek-V3's MoE, merged into the shipped table
(:data:`masked_dora.models.families.SPECS`). The MoE families that share an existing spec's layout (qwen2_moe,
phimoe, granitemoe) are in that table itself."""

from __future__ import annotations

from typing import Dict

from .spec_types import HeadSpec, MLPSpec, ModelSpec

# GPT-BigCode (StarCoder 1, SantaCoder): nn.Linear c_fc/c_proj, fused c_attn; head_dim is hidden // heads
BIGCODE_MLP = MLPSpec(producers=("mlp.c_fc",), consumer="mlp.c_proj", size_key="n_inner")
BIGCODE_HEADS = dict(query="", key="", value="", output="attn.c_proj", heads_key="n_head", attention="attn",
                     qkv="attn.c_attn", attrs=(("num_heads", "heads"), ("embed_dim", "width"),
                                               ("num_key_value_groups", "groups")))
BIGCODE_MULTI_QUERY = dict(  # multi_query (the released checkpoints): [q | k | v] with one KV head
    layers=("h",), hidden_key="n_embd", mlp=BIGCODE_MLP,
    heads=HeadSpec(**BIGCODE_HEADS, fixed_kv_heads=1, qkv_layout="blocks"))
BIGCODE_MULTI_HEAD = dict(  # multi_query=False: [q_h k_h v_h] per head
    layers=("h",), hidden_key="n_embd", mlp=BIGCODE_MLP, heads=HeadSpec(**BIGCODE_HEADS, qkv_layout="per_head"))

GPTJ = dict(  # parallel attention and MLP; partial rotary (rotary_dim) applies within each head
    layers=("h",), hidden_key="n_embd",
    mlp=MLPSpec(producers=("mlp.fc_in",), consumer="mlp.fc_out", size_key="n_inner"),
    heads=HeadSpec(query="attn.q_proj", key="attn.k_proj", value="attn.v_proj", output="attn.out_proj",
                   heads_key="n_head", attention="attn", attrs=(("num_attention_heads", "heads"),)))

GPT_NEO = dict(  # global and local (windowed) attention layers alike
    layers=("h",), hidden_key="hidden_size",
    mlp=MLPSpec(producers=("mlp.c_fc",), consumer="mlp.c_proj", size_key="intermediate_size"),
    heads=HeadSpec(query="attn.attention.q_proj", key="attn.attention.k_proj", value="attn.attention.v_proj",
                   output="attn.attention.out_proj", heads_key="num_heads", attention="attn.attention",
                   attrs=(("num_heads", "heads"),)))

BIOGPT = dict(
    layers=("layers",), hidden_key="hidden_size",
    mlp=MLPSpec(producers=("fc1",), consumer="fc2", size_key="intermediate_size"),
    heads=HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                   output="self_attn.out_proj", heads_key="num_attention_heads", attention="self_attn",
                   attrs=(("num_heads", "heads"),)))

PERSIMMON = dict(  # fused query_key_value, rows [q_h k_h v_h] per head; its q/k LayerNorms span one head_dim
    layers=("layers",), hidden_key="hidden_size",
    mlp=MLPSpec(producers=("mlp.dense_h_to_4h",), consumer="mlp.dense_4h_to_h", size_key="intermediate_size"),
    heads=HeadSpec(query="", key="", value="", output="self_attn.dense", heads_key="num_attention_heads",
                   attention="self_attn", qkv="self_attn.query_key_value", qkv_layout="per_head",
                   attrs=(("num_heads", "heads"),)))

CODEGEN = dict(  # parallel attention and MLP; qkv_proj in CodeGen's mp_num=4 chunks, each [q | v | k] of its heads
    layers=("h",), hidden_key="n_embd",
    mlp=MLPSpec(producers=("mlp.fc_in",), consumer="mlp.fc_out", size_key="n_inner"),
    heads=HeadSpec(query="", key="", value="", output="attn.out_proj", heads_key="n_head", attention="attn",
                   qkv="attn.qkv_proj", qkv_layout="chunked", qkv_chunks=4,
                   attrs=(("num_attention_heads", "heads"), ("embed_dim", "width"))))

_ALIBI_BY_HEAD_INDEX = ("its attention adds ALiBi biases whose slopes follow each head's index and the head count, "
                        "so the kept heads of a smaller model would get other slopes")

BLOOM = dict(  # MLP width fixed at 4 * hidden_size (no config key): a pruned MLP saves in the per-layer form
    layers=("h",), hidden_key="hidden_size",
    mlp=MLPSpec(producers=("mlp.dense_h_to_4h",), consumer="mlp.dense_4h_to_h", size_key=""),
    heads=HeadSpec(query="", key="", value="", output="self_attention.dense", heads_key="n_head",
                   attention="self_attention", qkv="self_attention.query_key_value", qkv_layout="per_head"),
    unsupported=(("heads", "", _ALIBI_BY_HEAD_INDEX),
                 ("mlp", "slow_but_exact", "with slow_but_exact its MLP multiplies dense_4h_to_h.weight slice by "
                                           "slice itself, which bypasses the adapter")))

MPT = dict(  # MLP width fixed at 4 * d_model (expansion_ratio is not read): a pruned MLP saves per layer
    layers=("blocks",), hidden_key="d_model",
    mlp=MLPSpec(producers=("ffn.up_proj",), consumer="ffn.down_proj", size_key=""),
    heads=HeadSpec(query="", key="", value="", output="attn.out_proj", heads_key="n_heads", attention="attn",
                   qkv="attn.Wqkv"),
    unsupported=(("heads", "", _ALIBI_BY_HEAD_INDEX),))

_MLA_HEADS = ("its multi-head latent attention (MLA) builds every head's keys and values from one shared low-rank "
              "latent (kv_a_proj_with_mqa, then kv_b_proj rows [k_nope | v] per head) and gives query/key and value "
              "heads different sizes, which a head group of one head_dim per head cannot describe")

DEEPSEEK_V3 = dict(  # MoE blocks (packed experts; shared_experts kept whole) after first_k_dense_replace dense ones
    layers=("layers",), hidden_key="hidden_size",
    # shared_experts' width is moe_intermediate_size * n_shared_experts: the config cannot say a pruned expert width
    mlp=MLPSpec(producers=("gate_up_proj",), consumer="down_proj", size_key="", segments=(2,), experts="mlp.experts",
                size_attrs=(("mlp.experts", "intermediate_dim"),)),
    dense_mlp=MLPSpec(producers=("mlp.gate_proj", "mlp.up_proj"), consumer="mlp.down_proj",
                      size_key="intermediate_size", size_attrs=(("mlp", "intermediate_size"),)),
    heads=HeadSpec(query="", key="", value="", output="self_attn.o_proj", heads_key="num_attention_heads",
                   attention="self_attn", qkv="self_attn.kv_b_proj"),
    unsupported=(("heads", "", _MLA_HEADS),))

FUSED_MOE_SPECS: Dict[str, ModelSpec] = {
    "gpt_bigcode": ModelSpec(name="gpt_bigcode", model_types=("gpt_bigcode",), **BIGCODE_MULTI_QUERY,
                             when=(("multi_query", True),)),
    "gpt_bigcode-mha": ModelSpec(name="gpt_bigcode-mha", model_types=("gpt_bigcode",), **BIGCODE_MULTI_HEAD,
                                 when=(("multi_query", False),)),
    "gptj": ModelSpec(name="gptj", model_types=("gptj",), **GPTJ),
    "gpt_neo": ModelSpec(name="gpt_neo", model_types=("gpt_neo",), **GPT_NEO),
    "codegen": ModelSpec(name="codegen", model_types=("codegen",), **CODEGEN),
    "biogpt": ModelSpec(name="biogpt", model_types=("biogpt",), **BIOGPT),
    "persimmon": ModelSpec(name="persimmon", model_types=("persimmon",), **PERSIMMON),
    "bloom": ModelSpec(name="bloom", model_types=("bloom",), **BLOOM),
    "mpt": ModelSpec(name="mpt", model_types=("mpt",), **MPT),
    # deepseek_v2: the same blocks and MLA attention. DeepSeek-V3.2 and GLM-5 (glm_moe_dsa): the same blocks (dense
    # ones by mlp_layer_types), their MLA with a sparse-attention indexer beside it (which reads the block's input and
    # the query latent, not the MLP); GLM-4.7-Flash (glm4_moe_lite): the same blocks and MLA; Sarvam-105B (sarvam_mla)
    # is DeepSeek-V3's model itself (transformers maps its config to DeepseekV3ForCausalLM)
    # (mistral4, Mistral Small 4: DeepSeek-V3's blocks and MLA under its own classes; transformers maps it to
    # Mistral4ForCausalLM in its image-text-to-text table, not the causal-LM one)
    "deepseek_v3": ModelSpec(name="deepseek_v3", model_types=("deepseek_v3", "deepseek_v2", "deepseek_v32",
                                                              "glm_moe_dsa", "glm4_moe_lite", "sarvam_mla",
                                                              "mistral4"),
                             **DEEPSEEK_V3),
    # MiniCPM3: Llama's MLP (width intermediate_size, mlp_bias) under DeepSeek-V2's MLA; its residual branches scaled
    # by a constant (scale_depth) change nothing per channel
    "minicpm3": ModelSpec(name="minicpm3", model_types=("minicpm3",), layers=("layers",), hidden_key="hidden_size",
                          mlp=DEEPSEEK_V3["dense_mlp"], heads=DEEPSEEK_V3["heads"],
                          unsupported=(("heads", "", _MLA_HEADS),)),
}
