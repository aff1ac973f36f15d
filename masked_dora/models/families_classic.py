"""Plain decoders (GPT-1, CTRL, XGLM and newer decoders whose modules the existing specs' capabilities describe)
and the remaining classic seq2seq models; :mod:`masked_dora.models.families` adds them to ``SPECS``.

Each was checked against its modeling file in transformers 5.24: which Linear layers form the MLP and the heads,
which config keys size them, which attention attributes follow the head counts, and what refuses a kind.
"""

from __future__ import annotations

from dataclasses import replace as replace_dataclass
from typing import Dict

from .families_fused_moe import DEEPSEEK_V3
from .families_hybrid import _HYBRID_HEADS
from .spec_types import ExpertsLayout, HeadSpec, MLPSpec, ModelSpec, PerHeadSpec

_MLA_HEADS = DEEPSEEK_V3["unsupported"][0][2]

_ZAYA_HEADS = ("its compressed convolutional attention (CCA) runs the query and key channels of all heads through "
               "depthwise and grouped convolutions (conv_qk_depthwise / conv_qk_grouped, one filter per channel, "
               "groups over the query and KV heads together), splits each KV head's values between "
               "v_proj_current and v_proj_delayed, and scales keys by a learned temperature per KV head "
               "(qk_norm.temp): no head spec cuts these")


# model types masked_dora knows it cannot prune exactly, and why (spec_for raises it; a spec registered for such a
# type is used instead)
REFUSED_CLASSIC_TYPES: Dict[str, str] = {
    "dory": ("its blocks keep hidden states on the unit sphere (nGPT): the MLP's ffn_sub_norm L2-normalises over the "
             "whole MLP width and the attention's attn_sub_norm over all heads' width, so a removed channel or head "
             "changes every kept one; its per-channel scales (suv_gate / suv_up per MLP channel, sqk / s_gate per "
             "query channel) sit outside the projections"),
    "bitnet": ("its MLP's ffn_sub_norm RMS-normalises over the whole MLP width (intermediate_size) before down_proj, "
               "and its attention's attn_sub_norm over all heads' width (hidden_size) before o_proj: a removed "
               "channel or head still counts in the mean square each kept one is divided by, so the compacted block "
               "would differ (exact only with each sub-norm's weight scaled by sqrt(width / kept) and its epsilon by "
               "width / kept per block, which neither the spec types nor a config's one rms_norm_eps describe)"),
    "jetmoe": ("its only MLP is a mixture of experts whose projections are two JetMoeParallelExperts modules "
               "(mlp.input_linear, rows [gate | up] per expert, and mlp.output_linear), each called with the routed "
               "tokens sorted by expert and the per-expert token counts, which the experts wrapper (one packed "
               "experts module called with the router's top-k choice) does not take; its attention is a mixture of "
               "attention experts too (self_attn.experts: per-expert query and output projections over shared keys "
               "and values, kv_proj), which no head spec describes"),
}

_INKLING2_HEADS = ("its sliding and full attention layers have their own head counts (swa_num_attention_heads, "
                   "num_attention_heads), its key and value projections run through short convolutions (sconv), and "
                   "it projects per head the attention sinks (sink_proj), a relative-position bias "
                   "(relative_position_bias.linear, heads x d_rel rows) and an output gate per query channel "
                   "(o_proj.gate_proj), which no head spec cuts")

_INKLING_HEADS = ("its sliding and full attention layers have their own head counts and head sizes "
                  "(swa_num_attention_heads, swa_head_dim), its key and value projections run through short "
                  "convolutions over their channels (k_sconv, v_sconv) and it projects a relative-position bias per "
                  "head (r_proj, heads x d_rel rows), which no head spec cuts")

_MVP_PROMPT_HEADS = ("with use_prompt its layer-wise prompts (self_attn_prompt / cross_attn_prompt, MvpPrompt) "
                     "project one key and value prefix per head of every layer through prompt_trans, whose rows no "
                     "head spec cuts")
_CPMANT_HEADS = ("the model computes one segment/relative-position bias (position_bias.relative_attention_bias, one "
                 "column per head) and adds column h to head h of every layer: exact head pruning would need the same "
                 "kept heads in every layer (and the bias cut to them), which per-layer head masks do not give")
_PROPHETNET_HEADS = ("each stack repeats its attention mask once per head of the config (num_encoder_attention_heads, "
                     "num_decoder_attention_heads) and its attentions reshape their output to the width of their "
                     "input, not to the kept heads x head_dim, so a block with fewer heads cannot run; the decoder's "
                     "n-gram self-attention also projects relative-position logits for every head "
                     "(relative_pos_embeddings, num_buckets x heads rows)")
_TROCR_HEADS = ("its attention reshapes its output to the width of its input (hidden_states.size(-1)), not to the kept "
                "heads x head_dim, so a model with fewer heads cannot run")


def classic_specs(llama_style: dict, mixtral_style: dict, gpt2: dict, bert_style: dict, bart_encoder: dict,
                  bart_decoder: ModelSpec) -> Dict[str, ModelSpec]:
    """The specs of this module, built on the fields of the ``llama``, ``mixtral``, ``gpt2`` and ``bert`` specs
    (``*_style``, ``gpt2``) and of the ``bart`` spec's stacks (``bart_encoder``, ``bart_decoder``)."""
    # BART's stacks with an attention that reshapes its output to embed_dim (which follows the kept width)
    embed_dim_attrs = (("num_heads", "heads"), ("embed_dim", "width"))
    # Mixtral's packed experts of width moe_intermediate_size (Qwen3-MoE's)
    moe_experts = dict(mixtral_style, mlp=replace_dataclass(mixtral_style["mlp"], size_key="moe_intermediate_size"))
    mvp_decoder = replace_dataclass(bart_decoder, name="mvp-decoder", heads=replace_dataclass(
        bart_decoder.heads, attrs=embed_dim_attrs))
    return {
        # GPT-1: GPT-2's Conv1D layers and fused c_attn [q | k | v]; its MLP is fixed at 4 * n_embd (no config key:
        # a pruned MLP saves in the per-layer form) and head_dim is n_embd // n_head (pruned heads: per layer)
        "openai-gpt": ModelSpec(name="openai-gpt", model_types=("openai-gpt",), **dict(
            gpt2, mlp=replace_dataclass(gpt2["mlp"], size_key=""),
            heads=replace_dataclass(gpt2["heads"], attrs=(("n_head", "heads"), ("split_size", "width"))))),
        # CTRL: separate Wq/Wk/Wv, output dense, MLP ffn = Sequential(Linear, ReLU, Linear) of width dff; head_dim
        # is n_embd // n_head (pruned heads: per layer)
        "ctrl": ModelSpec(
            name="ctrl", model_types=("ctrl",), layers=("h",), hidden_key="n_embd",
            mlp=MLPSpec(producers=("ffn.0",), consumer="ffn.2", size_key="dff"),
            heads=HeadSpec(query="multi_head_attention.Wq", key="multi_head_attention.Wk",
                           value="multi_head_attention.Wv", output="multi_head_attention.dense", heads_key="n_head",
                           attention="multi_head_attention", attrs=(("num_heads", "heads"),))),
        # XGLM: BART's decoder layer without cross-attention (fc1/fc2 of width ffn_dim); its attention reshapes
        # its output to embed_dim, which follows the kept width; head_dim is d_model // attention_heads
        "xglm": ModelSpec(
            name="xglm", model_types=("xglm",), layers=("layers",), hidden_key="d_model",
            mlp=MLPSpec(producers=("fc1",), consumer="fc2", size_key="ffn_dim"),
            heads=HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                           output="self_attn.out_proj", heads_key="attention_heads", attention="self_attn",
                           attrs=(("num_heads", "heads"), ("embed_dim", "width")))),
        # NanoChat: Llama's attention with weightless RMSNorms over each head's head_dim after RoPE (nothing per
        # head), a non-gated fc1/fc2 MLP with ReLU^2 (0 -> 0)
        "nanochat": ModelSpec(name="nanochat", model_types=("nanochat",), **dict(llama_style, mlp=MLPSpec(
            producers=("mlp.fc1",), consumer="mlp.fc2", size_key="intermediate_size"))),
        # Youtu-LLM: DeepSeek-V3's MLA attention (heads refused) over Llama's dense MLP in every block
        "youtu": ModelSpec(name="youtu", model_types=("youtu",), **dict(llama_style, heads=DEEPSEEK_V3["heads"]),
                           unsupported=(("heads", "", _MLA_HEADS),)),
        # Mellum: Qwen3-MoE's blocks (Mixtral's packed experts of width moe_intermediate_size; the blocks
        # mlp_layer_types says "dense" hold Llama's MLP of width intermediate_size, groups of their own); per-head
        # q/k RMSNorms over head_dim with one weight for all heads and sliding layers change nothing per head
        "mellum": ModelSpec(name="mellum", model_types=("mellum",), **moe_experts, dense_mlp=llama_style["mlp"]),
        # ZAYA: Mixtral's packed experts (moe_intermediate_size) behind a router that also reads the previous
        # block's router state and may pick a skip expert (untouched); the residual scalings are per hidden channel
        "zaya": ModelSpec(name="zaya", model_types=("zaya",), **moe_experts, unsupported=(("heads", "", _ZAYA_HEADS),)),
        # Kolibri-1: every block an MoE, Mixtral's packed experts (moe_intermediate_size) beside shared_experts (a
        # Llama MLP of width shared_expert_intermediate_size, kept whole); post-attention and post-MLP norms over the
        # hidden size and per-head q/k norms over head_dim (one weight for all heads) change nothing per head
        "kolibri1": ModelSpec(name="kolibri1", model_types=("kolibri1",), **moe_experts),
        # Flint: Qwen2-MoE's block layout (dense blocks by mlp_only_layers / decoder_sparse_step hold Llama's MLP of
        # width intermediate_size, their own groups; the shared_expert, always added, kept whole) and one learned
        # attention sink per query head (self_attn.sinks, cut to the kept heads)
        "flint": ModelSpec(name="flint", model_types=("flint",), **dict(moe_experts, heads=replace_dataclass(
            llama_style["heads"], per_head=(PerHeadSpec("self_attn", "heads"),))), dense_mlp=llama_style["mlp"]),
        # Apertus 1.5 (text): Apertus's blocks (non-gated up_proj/down_proj with xIELU, which maps 0 to about -8e-7:
        # the pruned channels are also cut at down_proj's input), q/k norms over head_dim before RoPE
        "apertus1p5_text": ModelSpec(name="apertus1p5_text", model_types=("apertus1p5_text",), **dict(
            llama_style, mlp=replace_dataclass(llama_style["mlp"], producers=("mlp.up_proj",),
                                               gate_consumer_input=True))),
        # LaraMini: Qwen3.5's gated DeltaNet / gated attention blocks (layer_types), each with Mixtral's packed
        # experts (moe_intermediate_size) and an always-added shared_expert (kept whole); heads refused (a hybrid)
        "lara_mini": ModelSpec(name="lara_mini", model_types=("lara_mini",), **moe_experts,
                               unsupported=(("heads", "", _HYBRID_HEADS),)),
        # Beam: Mellum's layout (experts of width moe_intermediate_size in the mlp_layer_types "sparse" blocks,
        # scaled by routed_scaling_factor; Llama's MLP in the "dense" ones, their own groups) under an attention whose
        # output is gated per query channel (gate_proj, rows in head-sized blocks, plus gate_bias, one per head):
        # both follow their heads. NoPE full-attention layers' query scaling (by position) and depth-scaled
        # residuals change nothing per head or channel
        "beam": ModelSpec(name="beam", model_types=("beam",), **dict(moe_experts, heads=replace_dataclass(
            llama_style["heads"], per_head=(PerHeadSpec("self_attn.gate_proj", "heads", head_rows=True),
                                            PerHeadSpec("self_attn", "heads")))), dense_mlp=llama_style["mlp"]),
        # dots.llm3 (text; Dots3NoteForCausalLM): DeepSeek-V3.2's attention (MLA with a sparse-attention indexer and
        # a per-head output gate g_proj; heads refused) over Mixtral's packed experts (moe_intermediate_size; the
        # shared_experts, shared_experts_intermediate_size x n_shared_experts wide, kept whole) in the
        # mlp_layer_types "sparse" blocks and Llama's MLP in the "dense" ones (their own groups)
        "dots3_note_text": ModelSpec(name="dots3_note_text", model_types=("dots3_note_text",), **dict(
            moe_experts, heads=DEEPSEEK_V3["heads"]), dense_mlp=llama_style["mlp"],
            unsupported=(("heads", "", _MLA_HEADS),)),
        # Inkling 2 (text; Inkling2ForCausalLM): every block an MoE whose experts (Mixtral's packing, width
        # moe_intermediate_size) combine gate and up in their act_fn (a softcapped SwiGLU, (0, 0) -> 0:
        # ExpertsLayout(glu="act_pair")); the short convolutions after the attention and the MLP and the attention
        # residuals across blocks act over the hidden size; heads refused. Inkling 2 Loop (inkling2_loop_text,
        # transformers 5.24): the same blocks, the loop layers run loop_num_passes times, their inputs mixed with
        # messages from the previous pass by gates over the hidden size (a block pruned once serves every pass)
        "inkling2_text": ModelSpec(
            name="inkling2_text", model_types=("inkling2_text", "inkling2_loop_text"), layers=("layers",),
            hidden_key="hidden_size",
            mlp=replace_dataclass(moe_experts["mlp"], experts_layout=ExpertsLayout(glu="act_pair")),
            heads=HeadSpec(query="self_attn.q_proj.linear", key="self_attn.k_proj.linear",
                           value="self_attn.v_proj.linear", output="self_attn.o_proj.linear",
                           heads_key="num_attention_heads", kv_heads_key="num_key_value_heads",
                           head_dim_key="head_dim", attention="self_attn"),
            unsupported=(("heads", "", _INKLING2_HEADS),)),
        # A.X K1 (axk1): DeepSeek-V3's blocks (Mixtral's packed experts beside shared_experts of width
        # moe_intermediate_size * n_shared_experts, kept whole: the per-layer form; dense blocks of Llama's MLP by
        # mlp_layer_types, or first_k_dense_replace in transformers 5.17, their own groups) and its MLA attention
        # (heads refused); the post_mlp_layernorm after the MoE is over the hidden size. A.X K2 (axk2): the same
        # blocks under MLA with a per-head query gate and a sparse-attention indexer (heads refused), and gated RMS
        # norms (a low-rank sigmoid gate over the hidden size) before the attention and the MoE
        "axk1": ModelSpec(name="axk1", model_types=("axk1", "axk2"), **DEEPSEEK_V3),
        # Inkling (text; InklingForCausalLM): every mlp_layer_types "sparse" block an MoE of Mixtral's packed experts
        # (width moe_intermediate_size, which also sizes the shared_experts, kept whole: the per-layer form) whose
        # router also weighs the shared experts, the "dense" blocks Llama's MLP (intermediate_size, times a scalar
        # global_scale; their own groups); the short convolutions after the attention and the MLP act over the
        # hidden size; heads refused
        "inkling_text": ModelSpec(name="inkling_text", model_types=("inkling_text",), **dict(
            llama_style, mlp=DEEPSEEK_V3["mlp"]), dense_mlp=DEEPSEEK_V3["dense_mlp"],
            unsupported=(("heads", "", _INKLING_HEADS),)),
        # LongCat-Flash: each block holds two MLA attentions (heads refused), two dense Llama MLPs (mlps.0, mlps.1,
        # both ffn_hidden_size wide) and an MoE beside them; a spec has one MLP per block, so the family is two
        # stacks over the same blocks (the second's attention the first's, as Wav2Vec2-Conformer's ffn1 / ffn2),
        # one dense MLP each; uniform pruning keeps one width in both, as their shared key needs. The MoE is kept
        # whole: its routed experts' gate_up_proj also holds entries for the zero-computation (identity) experts,
        # which have no down_proj, a packing MaskedDoRAExperts does not take
        "longcat_flash": ModelSpec(name="longcat_flash", model_types=("longcat_flash",), **_longcat_mlp(0),
                                   stacks=(ModelSpec(name="longcat_flash-mlp1", model_types=(), attention_of="mlp0",
                                                     **_longcat_mlp(1)),)),
        # BertGeneration (encoder and decoder): BERT's layer; with add_cross_attention its crossattention keeps
        # every head (pruned heads save per layer anyway: head_dim is hidden_size // num_attention_heads)
        "bert-generation": ModelSpec(name="bert-generation", model_types=("bert-generation",), **bert_style),
        # GIT: the text decoder is BERT's layer stack (git.encoder.layer, causal over the text); the image encoder
        # (a CLIP vision tower) and its projection are kept whole
        "git": ModelSpec(name="git", model_types=("git",), **bert_style),
        # GPT-NeoX-Japanese: GPT-NeoX's fused query_key_value, [q_h k_h v_h] per head; the MLP is
        # hidden_size * intermediate_multiple_size wide (no key of its own: per-layer form); the last block's
        # dense_bias is over the hidden size
        "gpt_neox_japanese": ModelSpec(
            name="gpt_neox_japanese", model_types=("gpt_neox_japanese",), layers=("layers",),
            hidden_key="hidden_size",
            mlp=MLPSpec(producers=("mlp.dense_h_to_4h",), consumer="mlp.dense_4h_to_h", size_key=""),
            heads=HeadSpec(query="", key="", value="", output="attention.dense", heads_key="num_attention_heads",
                           attention="attention", attrs=(("num_attention_heads", "heads"),),
                           qkv="attention.query_key_value", qkv_layout="per_head")),
        # MVP: BART's stacks; use_prompt refuses the heads
        "mvp": ModelSpec(name="mvp", model_types=("mvp",), **dict(
            bart_encoder, heads=replace_dataclass(bart_encoder["heads"], attrs=embed_dim_attrs)),
            stacks=(mvp_decoder,), unsupported=(("heads", "use_prompt", _MVP_PROMPT_HEADS),)),
        # TrOCR's text decoder (TrOCRForCausalLM; in a VisionEncoderDecoderModel its vision encoder has its own
        # model_type): BART's decoder layer (fc1/fc2 of width decoder_ffn_dim), heads refused
        "trocr": ModelSpec(name="trocr", model_types=("trocr",), layers=("decoder.layers",), hidden_key="hidden_size",
                           mlp=MLPSpec(producers=("fc1",), consumer="fc2", size_key="decoder_ffn_dim"),
                           heads=replace_dataclass(bart_decoder.heads, attrs=embed_dim_attrs),
                           unsupported=(("heads", "", _TROCR_HEADS),)),
        # CPM-Ant: a gated MLP (ffn.ffn.w_in.w_0 with GELU, w_1; w_out) of width dim_ff; heads refused
        "cpmant": ModelSpec(
            name="cpmant", model_types=("cpmant",), layers=("encoder.layers",), hidden_key="hidden_size",
            mlp=MLPSpec(producers=("ffn.ffn.w_in.w_0", "ffn.ffn.w_in.w_1"), consumer="ffn.ffn.w_out",
                        size_key="dim_ff"),
            heads=HeadSpec(query="self_att.self_attention.project_q", key="self_att.self_attention.project_k",
                           value="self_att.self_attention.project_v", output="self_att.self_attention.attention_out",
                           heads_key="num_attention_heads", head_dim_key="dim_head",
                           attention="self_att.self_attention", attrs=(("num_heads", "heads"),)),
            unsupported=(("heads", "", _CPMANT_HEADS),)),
        # ProphetNet: the MLP (feed_forward.intermediate / output) of both stacks; heads refused
        "prophetnet": ModelSpec(
            name="prophetnet", model_types=("prophetnet",), **_prophetnet_stack("encoder"),
            stacks=(ModelSpec(name="prophetnet-decoder", model_types=(), **_prophetnet_stack("decoder"),
                              unsupported=(("heads", "", _PROPHETNET_HEADS),)),),
            unsupported=(("heads", "", _PROPHETNET_HEADS),)),
    }


def _prophetnet_stack(stack: str) -> dict:
    """One stack of ProphetNet: its blocks, MLP and self-attention (the decoder's: the n-gram attention)."""
    return dict(stack=stack, layers=(f"{stack}.layers",), hidden_key="hidden_size",
                mlp=MLPSpec(producers=("feed_forward.intermediate",), consumer="feed_forward.output",
                            size_key=f"{stack}_ffn_dim"),
                heads=HeadSpec(query="self_attn.query_proj", key="self_attn.key_proj", value="self_attn.value_proj",
                               output="self_attn.out_proj", heads_key=f"num_{stack}_attention_heads",
                               attention="self_attn", attrs=(("num_attn_heads", "heads"),)))


def _longcat_mlp(index: int) -> dict:
    """One of LongCat-Flash's two dense MLPs (``mlps.<index>``) as a stack over its blocks, heads refused (MLA)."""
    return dict(stack=f"mlp{index}", layers=("layers",), hidden_key="hidden_size",
                mlp=MLPSpec(producers=(f"mlps.{index}.gate_proj", f"mlps.{index}.up_proj"),
                            consumer=f"mlps.{index}.down_proj", size_key="ffn_hidden_size",
                            size_attrs=((f"mlps.{index}", "intermediate_size"),)),
                heads=replace_dataclass(DEEPSEEK_V3["heads"], output="self_attn.0.o_proj",
                                        qkv="self_attn.0.kv_b_proj", attention="self_attn.0"),
                unsupported=(("heads", "", _LONGCAT_HEADS),))


_LONGCAT_HEADS = ("each block holds two multi-head latent attentions (MLA: every head's keys and values from one "
                  "shared low-rank latent, query/key and value heads of different sizes), which a head group of one "
                  "head_dim per head does not describe")
