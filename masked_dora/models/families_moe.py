"""Mixture-of-experts decoders whose layout the existing specs' capabilities describe (packed experts, shared
experts kept whole, dense blocks as their own groups, Llama's attention); :mod:`masked_dora.models.families` adds
them to ``SPECS``. (Mixtral, Qwen-MoE and the GraniteMoE variants are in that table itself, DeepSeek-V3 in
:mod:`masked_dora.models.families_fused_moe`.)

Every family here routes with a router that stays untouched. Most pack their experts as Mixtral does
(``gate_up_proj`` (E, 2I, H) rows [gate | up], ``down_proj`` (E, H, I), no bias, SiLU); gpt_oss and llama4_text
store them transposed, which their ``MLPSpec.experts_layout`` declares. Each was checked against its modeling
file in transformers 5.24.
"""

from __future__ import annotations

from dataclasses import replace as replace_dataclass
from typing import Dict

from .families_fused_moe import DEEPSEEK_V3
from .spec_types import ExpertsLayout, HeadSpec, MLPSpec, ModelSpec, PerHeadSpec


_MIMO_HEADS = ("its sliding-window layers have twice the config's KV heads (and a sink logit per query head) and its "
               "value heads are v_head_dim wide, not head_dim: the config's head counts and one head size do not "
               "describe its attention")


_LAGUNA_HEADS = ("its blocks have their own query head counts (num_attention_heads_per_layer) and an output gate "
                 "(g_proj) whose width follows its gating mode, which the config's one head count does not describe")


def moe_specs(llama_style: dict, mixtral_style: dict, qk_norm_spans_heads: str) -> Dict[str, ModelSpec]:
    """The specs of this module, built on the ``llama`` spec's fields (``llama_style``), the ``mixtral`` spec's
    (``mixtral_style``) and the reason OLMo-2's heads are refused (``qk_norm_spans_heads``)."""
    # DeepSeek-V3's MoE blocks (mlp.experts, mlp.shared_experts kept whole, whose width moe_intermediate_size
    # times the shared count also sets: size_key "", a pruned expert width saves per layer) and dense blocks
    # (Llama's MLP, intermediate_size), under Llama's GQA attention instead of MLA
    deepseek_moe_gqa = dict(llama_style, mlp=DEEPSEEK_V3["mlp"], dense_mlp=DEEPSEEK_V3["dense_mlp"])
    return {
        # OLMoE, FlexOlmo and MiniMax-M2: Mixtral's experts (width intermediate_size); their q/k RMSNorms span all
        # heads' width (OLMo-2's attention), so their heads are refused
        "olmoe": ModelSpec(name="olmoe", model_types=("olmoe", "flex_olmo", "minimax_m2"), **mixtral_style,
                           unsupported=(("heads", "", qk_norm_spans_heads),)),
        # dense blocks by first_k_dense_replace (glm4_moe, dots1), moe_layer_start_index / moe_layer_interval
        # (ernie4_5_moe, whose use_bias puts biases on the attention and dense MLP), mlp_layer_types (exaone_moe,
        # Exaone-4's attention) or none (solar_open); per-head q/k norms over head_dim with one weight for all
        # heads (glm4_moe's use_qk_norm, dots1, exaone_moe) and partial rotary (glm4_moe) change nothing per head
        # GLM-4.5V's language model (glm4v_moe_text) is GLM-4.5's (no q/k norms; multimodal rotary positions over
        # part of each head's dims, the same for every head). HY-V3 (Hunyuan, hy_v3): dense blocks by mlp_layer_types,
        # per-head q/k norms over head_dim, the routed and shared outputs summed in float32. Sarvam-30B (sarvam_moe)
        # is GLM-4.5's model itself (transformers maps its config to Glm4MoeForCausalLM) with full-width rotary
        "glm4_moe": ModelSpec(name="glm4_moe", model_types=("glm4_moe", "dots1", "ernie4_5_moe", "solar_open",
                                                            "exaone_moe", "glm4v_moe_text", "hy_v3", "sarvam_moe"),
                              **deepseek_moe_gqa),
        # Hunyuan-MoE: Mixtral's experts and a shared_mlp (kept whole), both intermediate_size wide (size_key "");
        # its query/key_layernorm over head_dim, one weight for all heads, changes nothing per head
        "hunyuan_v1_moe": ModelSpec(name="hunyuan_v1_moe", model_types=("hunyuan_v1_moe",), **dict(
            mixtral_style, mlp=replace_dataclass(mixtral_style["mlp"], size_key=""))),
        # Cohere2-MoE: Mixtral's experts, whose width intermediate_size also sizes the shared experts (times
        # num_shared_experts: size_key ""); dense blocks by mlp_layer_types with Llama's MLP of width
        # prefix_dense_intermediate_size; Cohere-2's parallel attention (sliding-window layers with rotary, the
        # others without) changes nothing per head
        "cohere2_moe": ModelSpec(name="cohere2_moe", model_types=("cohere2_moe",), **dict(
            mixtral_style, mlp=replace_dataclass(mixtral_style["mlp"], size_key="")),
            dense_mlp=replace_dataclass(llama_style["mlp"], size_key="prefix_dense_intermediate_size")),
        # gpt-oss: experts stored (E, in, out), gate/up outputs interleaved, biases, a clamped SwiGLU (which maps a
        # pruned channel's (0, 0) to 0); Llama's attention with biases and one learned sink logit per query head
        # (self_attn.sinks, cut to the kept heads), sliding-window layers
        "gpt_oss": ModelSpec(name="gpt_oss", model_types=("gpt_oss",), **dict(
            llama_style, heads=replace_dataclass(llama_style["heads"], per_head=(PerHeadSpec("self_attn", "heads"),)),
            mlp=MLPSpec(producers=("gate_up_proj",), consumer="down_proj", size_key="intermediate_size",
                        segments=(2,), experts="mlp.experts", size_attrs=(("mlp.experts", "intermediate_size"),),
                        experts_layout=ExpertsLayout(transposed=True, interleaved=True, bias=True,
                                                     glu="clamped_swiglu")))),
        # MiMo-V2-Flash: Mixtral's experts (width moe_intermediate_size, no shared experts) and, by mlp_layer_types,
        # dense blocks of Llama's MLP (intermediate_size, groups of their own); heads refused (_MIMO_HEADS)
        "mimo_v2_flash": ModelSpec(name="mimo_v2_flash", model_types=("mimo_v2_flash",), **dict(
            mixtral_style, mlp=replace_dataclass(mixtral_style["mlp"], size_key="moe_intermediate_size")),
            dense_mlp=llama_style["mlp"], unsupported=(("heads", "", _MIMO_HEADS),)),
        # AFMoE: Mixtral's experts of width moe_intermediate_size, which also sizes the shared experts (times
        # num_shared_experts: size_key ""); the first num_dense_layers blocks hold Llama's MLP (intermediate_size,
        # groups of their own). Its attention multiplies the output by sigmoid(gate_proj(x)), one row per query
        # channel: gate_proj's rows follow their query heads (cut with them; a pruned head's output is 0 before the
        # gate); q/k norms over head_dim with one weight for all heads, sliding-window layers
        "afmoe": ModelSpec(name="afmoe", model_types=("afmoe",), **dict(
            llama_style, mlp=replace_dataclass(mixtral_style["mlp"], size_key=""),
            heads=replace_dataclass(llama_style["heads"], per_head=(
                PerHeadSpec("self_attn.gate_proj", "heads", head_rows=True),))),
            dense_mlp=llama_style["mlp"]),
        # Laguna: Mixtral's experts (width moe_intermediate_size; shared_experts kept whole, sized by
        # shared_expert_intermediate_size) and, by mlp_layer_types, dense blocks of Llama's MLP (intermediate_size,
        # groups of their own); heads refused (_LAGUNA_HEADS)
        "laguna": ModelSpec(name="laguna", model_types=("laguna",), **dict(
            mixtral_style, mlp=replace_dataclass(mixtral_style["mlp"], size_key="moe_intermediate_size")),
            dense_mlp=llama_style["mlp"], unsupported=(("heads", "", _LAGUNA_HEADS),)),
        # DBRX: blocks under transformer.blocks; experts (ffn.experts) whose w1 (gate), v1 (up) and w2 (down, each
        # expert's stored (in, out)) are 2-D, (E * ffn_hidden_size, d_model) each, under experts.mlp: the
        # ExpertsLayout's flat/up/down_transposed; the experts take the block's (batch, seq, d_model) tokens. The
        # width is ffn_config.ffn_hidden_size, in a sub-config no size key names: the per-layer form. Attention: a
        # fused Wqkv [q | k | v] (GQA, kv_n_heads mirrored as num_key_value_heads; its clip_qkv clamp maps 0 to 0),
        # head_dim d_model // n_heads (pruned heads: the per-layer form)
        "dbrx": ModelSpec(
            name="dbrx", model_types=("dbrx",), layers=("blocks",), hidden_key="d_model",
            mlp=MLPSpec(producers=("mlp.w1",), consumer="mlp.w2", size_key="", segments=(2,), experts="ffn.experts",
                        size_attrs=(("ffn.experts", "ffn_hidden_size"), ("ffn.experts.mlp", "ffn_hidden_size")),
                        experts_layout=ExpertsLayout(flat=True, up="mlp.v1", down_transposed=True,
                                                     act_fn="mlp.activation_fn")),
            heads=HeadSpec(query="", key="", value="", output="norm_attn_norm.attn.out_proj", heads_key="n_heads",
                           kv_heads_key="num_key_value_heads", attention="norm_attn_norm.attn",
                           qkv="norm_attn_norm.attn.Wqkv",
                           attrs=(("num_heads", "heads"), ("num_key_value_heads", "kv_heads"),
                                  ("num_key_value_groups", "groups"), ("hidden_size", "width")))),
        # Llama 4 (text): experts under feed_forward, stored (E, in, out) with [gate | up]; the experts module is
        # called with every expert's routed (router-scaled) tokens in turn (MaskedDoRAExperts takes that call too);
        # the shared_expert (kept whole) is intermediate_size wide as the experts (size_key ""); the blocks not in
        # moe_layers are dense, of width intermediate_size_mlp. Its q/k L2 norm (no weight) over each head's
        # head_dim, NoPE layers' temperature tuning and chunked attention change nothing per head
        "llama4_text": ModelSpec(name="llama4_text", model_types=("llama4_text",), **dict(
            llama_style,
            heads=replace_dataclass(llama_style["heads"], attrs=(
                ("num_attention_heads", "heads"), ("num_key_value_heads", "kv_heads"),
                ("num_key_value_groups", "groups"))),
            mlp=MLPSpec(producers=("gate_up_proj",), consumer="down_proj", size_key="", segments=(2,),
                        experts="feed_forward.experts", experts_layout=ExpertsLayout(transposed=True),
                        size_attrs=(("feed_forward.experts", "intermediate_size"),
                                    ("feed_forward.experts", "expert_dim")))),
            dense_mlp=MLPSpec(producers=("feed_forward.gate_proj", "feed_forward.up_proj"),
                              consumer="feed_forward.down_proj", size_key="intermediate_size_mlp")),
        # DeepSeek-V4: an MoE in every block (routed by a learned top-k router, or by a frozen token-id table in its
        # hash_moe blocks), Mixtral's packed experts with gate and up clipped before SiLU (swiglu_limit: a pruned
        # channel's (0, 0) still gives 0) beside shared_experts (kept whole) of the same width moe_intermediate_size
        # (size_key ""), between hyper-connections over hc_mult residual streams (their mixing weights stay whole);
        # its heads are refused
        "deepseek_v4": ModelSpec(name="deepseek_v4", model_types=("deepseek_v4",), **dict(
            llama_style, mlp=MLPSpec(producers=("gate_up_proj",), consumer="down_proj", size_key="", segments=(2,),
                                     experts="mlp.experts", size_attrs=(("mlp.experts", "intermediate_dim"),),
                                     experts_layout=ExpertsLayout(glu="clamped_act"))),
            unsupported=(("heads", "", _DEEPSEEK_V4_HEADS),)),
        # HY-V4 (Hunyuan): DeepSeek-V4's clipped experts (its limit swiglu_limit, SiLU hard-coded) beside shared
        # experts (moe_intermediate_size * n_shared_experts wide: size_key ""), dense blocks by mlp_layer_types
        # (the Llama MLP, intermediate_size), hyper-connections kept whole; its MLA attention with a per-head output
        # gate, sinks and a token indexer is refused
        "hy_v4": ModelSpec(name="hy_v4", model_types=("hy_v4",), **dict(
            llama_style, mlp=MLPSpec(producers=("gate_up_proj",), consumer="down_proj", size_key="", segments=(2,),
                                     experts="mlp.experts", size_attrs=(("mlp.experts", "intermediate_dim"),),
                                     experts_layout=ExpertsLayout(glu="clamped_act", limit_attr="swiglu_limit",
                                                                  act="silu")),
            dense_mlp=llama_style["mlp"]), unsupported=(("heads", "", _HY_V4_HEADS),)),
    }


_DEEPSEEK_V4_HEADS = ("its attention reads one shared KV head (kv_proj) as both keys and values, projects its output "
                      "through a grouped low-rank o_a_proj (o_groups groups of heads) and keeps a per-layer KV "
                      "compressor and indexer, which a head group of q/k/v rows and output columns does not "
                      "describe")
_HY_V4_HEADS = ("its multi-head latent attention (MLA) builds every head's keys and values from one shared low-rank "
                "latent (kv_a_proj_with_mqa, then kv_b_proj) with query/key and value heads of different sizes, "
                "gates each head's output (gate_proj) and selects keys with a shared token indexer, which a head "
                "group of one head_dim per head does not describe")
