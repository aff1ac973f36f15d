"""Hybrid decoders: blocks that mix tokens with attention and with a linear-attention, convolution or state-space
(Mamba) mixer (in alternate blocks, or side by side), with an ordinary MLP beside the mixer (in every block, or in
blocks of its own: ``MLPSpec.in_some_blocks``) or a mixture of experts (Qwen3-Next, Qwen3.5-MoE: Qwen2-MoE's block);
:mod:`masked_dora.models.families` adds them to ``SPECS``.

Their MLP prunes as the Llama one (its channels are independent of the mixer), so these specs prune the MLP only:
heads are refused (the attention sits beside or between the other mixers, in some blocks only in most, and most of
these attentions gate or normalise their output in ways the Llama head spec does not describe), and hidden pruning
has no spec (the mixers read and write the residual stream through projections hidden pruning does not cut). The
head spec is the Llama one, read for its config keys only (the head counts
:func:`masked_dora.models.blocks.head_layout` reports, which stay as built).

Zamba's shared blocks and the pure state-space models (Mamba, Mamba-2) do not prune exactly with these spec types:
``REFUSED_MODEL_TYPES`` says why, and :func:`masked_dora.models.specs.spec_for` raises it.
"""

from __future__ import annotations

from dataclasses import replace as replace_dataclass
from typing import Dict

from .families_fused_moe import DEEPSEEK_V3
from .spec_types import MLPSpec, ModelSpec

# model types masked_dora knows it cannot prune exactly, and why: spec_for names the reason instead of "no spec"
# (a spec registered for such a type, register_spec, is used instead)
REFUSED_MODEL_TYPES: Dict[str, str] = {
    "zamba": ("one shared transformer block (attention and MLP) serves all its hybrid blocks: each calls it through "
              "a module of its own whose weights are tied to the others'; exact pruning needs one mask and one "
              "adapter for the shared MLP wherever it is called, and masked_dora's groups and adapters are per "
              "block (per-block ones would untie weights that a Zamba checkpoint holds once)"),
    "zamba2": ("its shared transformer blocks serve several hybrid blocks each (tied weights, as Zamba's), and every "
               "call adds its own LoRA adapter (gate_up_proj_adapter_list) to the shared gate_up_proj's output "
               "rows: exact pruning needs one mask for the shared MLP wherever it is called and those adapters' "
               "rows cut with it, and masked_dora's groups and adapters are per block"),
    "mamba": ("its mixer has no MLP and no attention: the only channel group (intermediate_size = expand x "
              "hidden_size) is read by two projections (x_proj, which mixes every channel into dt, B and C, and "
              "out_proj) and carries per-channel parameters outside any projection (the depthwise conv1d, dt_proj's "
              "rows, A_log, D), which the spec types (producers and one consumer) do not describe; its cache is "
              "sized by that derived width"),
    "falcon_mamba": ("it is Mamba's mixer (with RMS norms of dt, B and C): the only channel group is read by x_proj, "
                     "which mixes every channel into dt, B and C, and by out_proj, and carries per-channel parameters "
                     "outside any projection (the depthwise conv1d, dt_proj's rows, A_log, D), which the spec types "
                     "(producers and one consumer) do not describe"),
    "mamba2": ("its mixer has no MLP and no attention, and its gated RMSNorm normalises each of n_groups over the "
               "group's whole width, so removing a channel (or a head) changes every kept one's output; in_proj and "
               "conv1d also fuse x with B, C (and dt), which no spec type describes"),
}

_HYBRID_HEADS = ("it is a hybrid model (attention beside or between linear-attention, convolution or state-space "
                 "mixers), for whose attention head pruning is not built; its MLP prunes")
_HEADS_REFUSED = (("heads", "", _HYBRID_HEADS),)


def hybrid_specs(llama_style: dict) -> Dict[str, ModelSpec]:
    """The specs of this module, built on the ``llama`` spec's fields (``LLAMA_STYLE``)."""
    llama_mlp = llama_style["mlp"]
    feed_forward = replace_dataclass(llama_mlp, producers=("feed_forward.gate_proj", "feed_forward.up_proj"),
                                     consumer="feed_forward.down_proj",
                                     size_attrs=(("feed_forward", "intermediate_size"),))

    def spec(name: str, model_types, mlp: MLPSpec = llama_mlp, **fields) -> ModelSpec:
        return ModelSpec(name=name, model_types=tuple(model_types), **dict(llama_style, mlp=mlp), **fields,
                         unsupported=_HEADS_REFUSED)

    # Qwen2-MoE's sparse block (mlp.experts packed as Mixtral's, width moe_intermediate_size; the shared_expert and
    # its sigmoid shared_expert_gate, sized by shared_expert_intermediate_size, kept whole; the router untouched)
    qwen_moe_experts = MLPSpec(producers=("gate_up_proj",), consumer="down_proj", size_key="moe_intermediate_size",
                               segments=(2,), experts="mlp.experts", size_attrs=(("mlp.experts", "intermediate_dim"),))
    lfm2_mlp = MLPSpec(producers=("feed_forward.w1", "feed_forward.w3"), consumer="feed_forward.w2",
                       size_key="intermediate_size")
    return {
        # Qwen3.5 (text; Qwen3_5ForCausalLM): gated DeltaNet (linear_attention) and gated full-attention blocks
        # (layer_types), the Llama MLP in each; OLMo-hybrid: the same mix with its own mixers
        "qwen3_5_text": spec("qwen3_5_text", ("qwen3_5_text", "olmo_hybrid")),
        # Qwen3-Next and Qwen3.5-MoE (text; Qwen3_5MoeForCausalLM): Qwen3.5's gated DeltaNet / gated attention
        # blocks (layer_types), each with Qwen2-MoE's sparse block; Qwen3-Next's blocks in mlp_only_layers (or off
        # decoder_sparse_step) hold the Llama MLP of width intermediate_size instead, a group of its own (dense_mlp).
        # Qwen4-Exp (text; Qwen4ExpForCausalLM): the same sparse block in every block, between hyper-connections
        # (hc_count residual streams, mixed into one hidden_size-wide input before the mixer and the MoE and their
        # output injected back into each), whose parameters are over the hidden size and stay whole; its indexed
        # attention (a QSA token indexer choosing the keys) and n-gram per-layer embeddings (PLE) are kept as they are
        "qwen3_next": spec("qwen3_next", ("qwen3_next", "qwen3_5_moe_text", "qwen4_exp_text"), mlp=qwen_moe_experts,
                           dense_mlp=llama_mlp),
        # Falcon-H1: attention and a Mamba-2 mixer in parallel in every block, then the Llama MLP (feed_forward,
        # with scalar mlp_multipliers); Bamba: Mamba-2 or attention blocks (attn_layer_indices), the same MLP
        "falcon_h1": spec("falcon_h1", ("falcon_h1", "bamba"), mlp=feed_forward),
        # LFM2: short gated convolutions or attention blocks (layer_types), a SwiGLU feed_forward w1/w3/w2. Its
        # width is intermediate_size as given (block_auto_adjust_ff_dim=False), or derived from it (2/3 of it,
        # times block_ffn_dim_multiplier, rounded up to block_multiple_of), which no key says for a pruned width:
        # then the per-layer form
        "lfm2": spec("lfm2", ("lfm2",), mlp=lfm2_mlp, when=(("block_auto_adjust_ff_dim", False),)),
        "lfm2-auto-ff": spec("lfm2-auto-ff", ("lfm2",), mlp=replace_dataclass(lfm2_mlp, size_key=""),
                             when=(("block_auto_adjust_ff_dim", True),)),
        # LFM3: LFM2's blocks (sandwich norms, a gated attention) with the feed_forward width intermediate_size
        "lfm3": spec("lfm3", ("lfm3",), mlp=lfm2_mlp),
        # RecurrentGemma (Griffin): RG-LRU recurrent or local-attention blocks (block_types), each with a gated
        # mlp_block (biases) of width intermediate_size // 2, which no key says for a pruned width: the per-layer
        # form
        "recurrent_gemma": spec("recurrent_gemma", ("recurrent_gemma",), mlp=MLPSpec(
            producers=("mlp_block.gate_proj", "mlp_block.up_proj"), consumer="mlp_block.down_proj", size_key="",
            size_attrs=(("mlp_block", "intermediate_size"),))),
        # Granite-4.0 hybrid (granitemoehybrid): Mamba-2 or attention blocks (layer_types), each with a dense
        # shared_mlp (input_linear rows [gate | up], output_linear) sized by shared_intermediate_size; with
        # num_local_experts > 0 an MoE (block_sparse_moe) beside it, kept whole
        "granitemoehybrid": spec("granitemoehybrid", ("granitemoehybrid",), mlp=MLPSpec(
            producers=("shared_mlp.input_linear",), consumer="shared_mlp.output_linear",
            size_key="shared_intermediate_size", segments=(2,), size_attrs=(("shared_mlp", "hidden_size"),))),
        # Nemotron-H: a block is one mixer (layers_block_type): Mamba-2, attention, an MoE or a non-gated ReLU^2
        # MLP (mixer.up_proj/down_proj); the MLP blocks prune, the MoE blocks (experts and shared experts, sized by
        # their own keys) are kept whole
        "nemotron_h": spec("nemotron_h", ("nemotron_h",), mlp=MLPSpec(
            producers=("mixer.up_proj",), consumer="mixer.down_proj", size_key="intermediate_size",
            size_attrs=(("mixer", "intermediate_size"),), in_some_blocks=True)),
        # Jamba: Mamba or attention blocks, each with a feed_forward that is the Llama MLP or, every
        # expert_layer_period blocks, an MoE (kept whole); its experts are intermediate_size wide too, so with
        # experts a pruned MLP saves in the per-layer form (num_experts=1: no MoE blocks, plain)
        "jamba-dense": spec("jamba-dense", ("jamba",), mlp=feed_forward, when=(("num_experts", 1),)),
        "jamba": spec("jamba", ("jamba",), mlp=replace_dataclass(feed_forward, size_key="", in_some_blocks=True)),
        # Kimi-Linear: Kimi delta attention or MLA blocks (layer_types), each with DeepSeek-V3's MoE block (packed
        # experts; shared_experts kept whole, sized by moe_intermediate_size too: the per-layer form) or, by
        # mlp_layer_types, its dense MLP of width intermediate_size (a group of its own). Ling 2.5 (bailing_hybrid):
        # the same blocks, its MLA layers with a per-head output gate (g_proj) among KDA-style delta-attention ones
        "kimi_linear": spec("kimi_linear", ("kimi_linear", "bailing_hybrid"), mlp=DEEPSEEK_V3["mlp"],
                            dense_mlp=DEEPSEEK_V3["dense_mlp"]),
        # MiniMax(-Text-01): lightning (linear) attention or softmax attention blocks (layer_types), each with
        # Mixtral's experts (width intermediate_size; router untouched); scalar residual factors
        "minimax": spec("minimax", ("minimax",), mlp=replace_dataclass(qwen_moe_experts, size_key="intermediate_size")),
        # LFM2-MoE: LFM2's convolution / attention blocks; the first num_dense_layers hold LFM2's feed_forward
        # (w1/w3/w2, width intermediate_size, a group of its own), the others a sparse block whose experts
        # (feed_forward.experts, packed as Mixtral's, width moe_intermediate_size) prune; no shared experts
        "lfm2_moe": spec("lfm2_moe", ("lfm2_moe",), mlp=MLPSpec(
            producers=("gate_up_proj",), consumer="down_proj", size_key="moe_intermediate_size", segments=(2,),
            experts="feed_forward.experts", size_attrs=(("feed_forward.experts", "intermediate_dim"),)),
            dense_mlp=replace_dataclass(lfm2_mlp, size_attrs=(("feed_forward", "intermediate_size"),))),
    }
