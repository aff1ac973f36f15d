"""Decoder-only causal LMs with the Llama module layout (``self_attn.q_proj``/``k_proj``/``v_proj``/``o_proj``)
whose MLP or attention differs from the ``llama`` spec's; :mod:`masked_dora.models.families` adds them to ``SPECS``.

Model types whose modules and semantics are the Llama ones (``LLAMA_SEMANTICS``) join the ``llama`` spec, and
those whose q/k norms span all heads' width (``QK_NORM_SPANS_HEADS``) the ``olmo2`` spec (heads refused).
"""

from __future__ import annotations

from dataclasses import replace as replace_dataclass
from typing import Dict

from .spec_types import MLPSpec, ModelSpec, PerHeadSpec

# the Llama attention (heads sized by num_attention_heads / num_key_value_heads / head_dim, read at build time
# only) and gated gate_proj/up_proj/down_proj MLP: per-head q/k norms over head_dim with one weight shared by all
# heads (exaone4, hunyuan_v1_dense), NoPE layers (smollm3, exaone4), sliding windows, soft-capped attention logits
# (vaultgemma), clamped q/k/v outputs (olmo's clip_qkv: a gated row is 0 before and after the clamp), biases
# (ernie4_5's use_bias, seed_oss, internlm3), a query scale per position (ministral3's llama_4_scaling_beta), norms
# over the hidden size after the attention and the MLP (hyperclovax's use_post_norm) and constant multipliers on
# the embeddings, residual branches and logits (hyperclovax) and attention and MLP in parallel after one LayerNorm
# (cohere2 and Cohere's North text model cohere_compass_text, whose configs recompute head_dim from hidden_size //
# num_attention_heads but then take a saved head_dim: pruned heads save plainly) change nothing per head or
# channel. exaone, internlm3 and iquestcoder build transformers' LlamaForCausalLM
LLAMA_SEMANTICS = ("smollm3", "ministral", "olmo", "exaone4", "ernie4_5", "seed_oss", "hunyuan_v1_dense",
                   "vaultgemma", "ministral3", "cwm", "hyperclovax", "internlm3", "exaone", "iquestcoder", "cohere2",
                   "cohere_compass_text")
QK_NORM_SPANS_HEADS = ("olmo3",)  # q_norm over num_attention_heads * head_dim, as OLMo-2


def decoder_specs(llama_style: dict) -> Dict[str, ModelSpec]:
    """The specs of this module, built on the ``llama`` spec's fields (``LLAMA_STYLE``)."""
    llama_mlp, llama_heads = llama_style["mlp"], llama_style["heads"]
    non_gated = dict(llama_style, mlp=replace_dataclass(llama_mlp, producers=("mlp.up_proj",)))
    return {
        # Starcoder2: biases, a non-gated c_fc/c_proj MLP (no width attribute)
        "starcoder2": ModelSpec(name="starcoder2", model_types=("starcoder2",), **dict(llama_style, mlp=MLPSpec(
            producers=("mlp.c_fc",), consumer="mlp.c_proj", size_key="intermediate_size"))),
        # GLM, GLM-4: fused gate_up_proj rows [gate | up] (as Phi-3), separate q/k/v; GLM-4's extra post-norms
        # are over the hidden size
        "glm": ModelSpec(name="glm", model_types=("glm", "glm4"), **dict(llama_style, mlp=MLPSpec(
            producers=("mlp.gate_up_proj",), consumer="mlp.down_proj", size_key="intermediate_size",
            segments=(2,)))),
        # a non-gated up_proj/down_proj MLP with ReLU^2 (Arcee, Nemotron, Jais-2 (LayerNorms over the hidden size);
        # all map 0 to 0)
        "arcee": ModelSpec(name="arcee", model_types=("arcee", "nemotron", "jais2"), **non_gated),
        # Apertus: the same with xIELU, which maps 0 to alpha_n * expm1(-1e-6): pruned channels are also cut at
        # down_proj's input; per-head q/k norms over head_dim with one weight for all heads
        "apertus": ModelSpec(name="apertus", model_types=("apertus",), **dict(non_gated, mlp=replace_dataclass(
            non_gated["mlp"], gate_consumer_input=True))),
        # Helium builds o_proj hidden_size wide (not heads * head_dim): pruned heads save in the per-layer form
        "helium": ModelSpec(name="helium", model_types=("helium",), **dict(
            llama_style, heads=replace_dataclass(llama_heads, output_width_key="hidden_size"))),
        # Granite-SWA: Granite's multipliers, sliding-window layers and a learned attention sink per query head
        # (self_attn.sinks, added to that head's softmax denominator), which follows its head
        "granite_swa": ModelSpec(name="granite_swa", model_types=("granite_swa",), **dict(
            llama_style, heads=replace_dataclass(llama_heads, per_head=(PerHeadSpec("self_attn", "heads"),)))),
        # DiffLlama: differential attention pairs heads (the values split in two halves by KV head, each output
        # head [h | h + heads/2] normalised together over 2 * head_dim): MLP only
        "diffllama": ModelSpec(name="diffllama", model_types=("diffllama",), **llama_style,
                               unsupported=(("heads", "", _DIFFLLAMA_HEADS),)),
        # Doge: the dense Llama MLP, or with is_moe the same MLP as the shared expert of a CDMoE whose routed
        # experts (embeddings over the hidden size) are kept whole and add their output beside it
        "doge": ModelSpec(name="doge", model_types=("doge",), **llama_style, unsupported=(("heads", "", _DOGE_HEADS),)),
        # Gemma 4 (text; Gemma4ForCausalLM): the Llama MLP in every block (twice intermediate_size wide in the
        # KV-sharing blocks under use_double_wide_mlp: those save in the per-layer form); an MoE block's experts
        # and router sit beside it and are kept whole, as are the per-layer-input (PLE) projections. Gemma 4 Unified
        # (text; Gemma4UnifiedForCausalLM, transformers 5.24) is that dense block alone (no MoE, no PLE)
        "gemma4_text": ModelSpec(name="gemma4_text", model_types=("gemma4_text", "gemma4_unified_text"), **llama_style,
                                 unsupported=(("heads", "", _GEMMA4_HEADS),)),
        # HRM-Text: two stacks of Llama blocks (L_module.layers, H_module.layers: a stack each, with the same size
        # keys) that its forward calls in a recurrence (the L stack L_cycles times per H cycle): a block's modules,
        # pruned once, serve each call. Its attention is multi-head (no KV heads) with a sigmoid output gate per
        # query channel (self_attn.gate_proj), whose rows follow their query heads (a pruned head's output is 0
        # before the gate); its RMS norms have no weight
        "hrm_text": ModelSpec(name="hrm_text", model_types=("hrm_text",), stack="L", **_hrm_stack(llama_style, "L"),
                              stacks=(ModelSpec(name="hrm_text-H", model_types=(), stack="H",
                                                **_hrm_stack(llama_style, "H")),)),
    }


def _hrm_stack(llama_style: dict, stack: str) -> dict:
    """The fields of HRM-Text's ``stack`` ("L" or "H"): Llama's blocks under ``<stack>_module.layers``, multi-head
    attention with an output gate per query channel."""
    heads = replace_dataclass(llama_style["heads"], kv_heads_key=None, per_head=(
        PerHeadSpec("self_attn.gate_proj", "heads", head_rows=True),))
    return dict(llama_style, layers=(f"{stack}_module.layers",), heads=heads)


_DIFFLLAMA_HEADS = ("its differential attention pairs head h with head h + num_attention_heads / 2 (one output "
                    "normalised over both, the values split into two halves by KV head), so heads cannot go one by "
                    "one")
_DOGE_HEADS = ("its dynamic mask projects all KV heads' values through dt_proj (one row per KV head, a column per "
               "value dimension) with a per-KV-head A, which head pruning does not cut")
_GEMMA4_HEADS = ("its last num_kv_shared_layers blocks reuse an earlier block's keys and values (a KV head pruned "
                 "there would change them), full-attention blocks take their values from the key projection "
                 "(attention_k_eq_v) and have their own head_dim and KV heads (per_layer_config)")
