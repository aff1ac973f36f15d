"""The 2026 vision-language models (Mistral Large 4, GLM-5.3-Flash, Step-3.7-Flash, Apertus 1.5, North, Inkling 2,
Inkling, GLM-GA, PP-Chart2Table, HY-V4-VL, Granite-Docling, Cosmos3-Edge, DeepSeek-OCR-2, MiniMax-M3-VL): which
language model each wraps (``VLM_WRAPPERS_2026``) and the specs of the language models only they have: those built on
the ``llama`` spec's fields (:func:`vlm_text_specs_2026`) and those laid out like a text model that has a spec
(:func:`vlm_like_specs_2026`, from the table so far); :mod:`masked_dora.models.families` adds them to the tables
beside :mod:`masked_dora.models.families_vlm`'s.
"""

from __future__ import annotations

from dataclasses import replace as replace_dataclass
from typing import Dict, Mapping

from .families_fused_moe import DEEPSEEK_V3
from .spec_types import ExpertsLayout, MLPSpec, ModelSpec
from .wrapper_spec import WrapperSpec

_KDA_AND_MLA_HEADS = ("its blocks are Kimi delta attention (layer_types 'linear_attention': short convolutions over "
                      "q/k/v, per-head forget and output gates through low-rank f_a/f_b and g_a/g_b projections) or "
                      "multi-head latent attention (MLA: every head's keys and values from one shared latent, "
                      "kv_b_proj) under a sparse-attention indexer, which a head group of one head_dim per head does "
                      "not describe")
_MINIMAX_M3_INDEXER_HEADS = (
    "its indexer (a 'minimax_m3_sparse' layer) picks key blocks per KV group (index_n_heads) and its mask hands "
    "them to the query heads by config.num_attention_heads // index_n_heads: a kept KV group would get another "
    "group's blocks, and per-layer head counts a mask of the config's")
_STEP3P5_HEADS = ("its sliding-window layers have their own query head count (num_sliding_attention_heads, a "
                  "per-layer config) and its output gate g_proj is one row per head or per query channel by its "
                  "gating mode, which the config's one head count does not describe")

# outer model_type -> where its language model is (transformers 5 nests it as model.language_model)
VLM_WRAPPERS_2026: Dict[str, WrapperSpec] = {
    # Mistral Large 4: Mistral3's Pixtral tower and patch-merging projector around mistral_large4_text (below)
    "mistral_large4": WrapperSpec(language_model="language_model"),
    # GLM-5.3-Flash (glm5_next): GLM-4V's vision tower layout around glm5_next_text (below)
    "glm5_next": WrapperSpec(language_model="language_model"),
    # Step-3.7-Flash (step3p7): a SigLIP-like tower with two stride-2 downsamplers around step3p5 (below)
    "step3p7": WrapperSpec(language_model="language_model"),
    # Apertus 1.5 around apertus1p5_text: its VQ image tokenizer's codes (and its WavTokenizer encoder's, for audio)
    # are ids of the vocabulary, embedded by the text embedding; both tokenizers are left as they are
    "apertus1p5": WrapperSpec(language_model="language_model"),
    # Cohere's North vision model (cohere_compass) around cohere_compass_text (a llama-semantics spec: Cohere 2's
    # parallel attention and MLP): Qwen3-VL's vision tower, whose deepstack features are added to the residual
    # stream of the first blocks, which MLP and head pruning keep full width
    "cohere_compass": WrapperSpec(language_model="language_model"),
    # Inkling 2 around inkling2_text (its experts prune, its heads are refused): a ViT whose merged patches replace
    # the image tokens' embeddings
    "inkling2": WrapperSpec(language_model="language_model"),
    # Inkling (inkling_mm_model) around inkling_text (its MLP and experts prune, its heads are refused): a vision
    # tower folding each patch into one image token and a dMel audio embedder, both left as they are
    "inkling_mm_model": WrapperSpec(language_model="language_model"),
    # GLM-GA (glmga): GLM-4.6V's model class around glm4v_text; PP-Chart2Table (pp_chart2table): GOT-OCR2's model
    # class around a Qwen2
    **{t: WrapperSpec(language_model="language_model") for t in ("glmga", "pp_chart2table")},
    # HY-V4-VL: Qwen2-VL's layout (model.language_model) around HY-V4's MoE blocks (hy_v4_vl_text)
    "hy_v4_vl": WrapperSpec(language_model="language_model"),
    # Granite-Docling: Idefics3's layout (model.text_model) around a Granite (granite_docling_text); its connector
    # also adds the vision layers' features (DeepStack) to the first blocks' residual stream, which MLP and head
    # pruning keep
    "granite_docling": WrapperSpec(language_model="text_model"),
    # Cosmos3-Edge: Qwen2-VL's layout (model.language_model) around cosmos3_edge_text
    "cosmos3_edge": WrapperSpec(language_model="language_model"),
    # DeepSeek-OCR-2: a SAM encoder and a Qwen2-like query encoder (left as they are) before a DeepSeek-V2-like
    # MoE language model without MLA (deepseek_ocr2_text)
    "deepseek_ocr2": WrapperSpec(language_model="language_model"),
    # MiniMax-M3-VL: a Qwen2-VL-like vision tower, LLaVA's layout (model.language_model) around minimax_m3_vl_text
    "minimax_m3_vl": WrapperSpec(language_model="language_model"),
}


def vlm_text_specs_2026(llama_style: dict) -> Dict[str, ModelSpec]:
    """The specs of the language models only these VLMs have, built on the ``llama`` spec's fields
    (``llama_style``)."""
    return {
        # Mistral Large 4's language model (mistral_large4_text): DeepSeek-V3.2's blocks (dense ones by
        # mlp_layer_types, then packed routed experts beside shared_experts, kept whole) under its MLA with a
        # sparse-attention indexer; its KV sharing (kv_source_layers: a layer reusing an earlier one's latent keys
        # and values), per-head softmax scaling and NoPE layers are the attention's, whose heads are refused as
        # DeepSeek-V3's (MLA); its final logit soft-capping changes nothing per channel. Its MLP and experts prune
        "mistral_large4_text": ModelSpec(name="mistral_large4_text", model_types=("mistral_large4_text",),
                                         **DEEPSEEK_V3),
        # GLM-5.3-Flash's language model (glm5_next_text): DeepSeek-V3's MLP layout (dense blocks by
        # mlp_layer_types, then packed routed experts beside shared_experts, kept whole, moe_intermediate_size *
        # n_shared_experts wide) with gate and up clipped at swiglu_limit before SiLU in the experts and the dense
        # MLP alike (a pruned channel's (0, 0) still gives 0), between hyper-connections over hc_mult residual
        # streams (their mixing weights read the hidden size only and stay whole). Its blocks mix Kimi delta
        # attention and MLA: heads refused
        "glm5_next_text": ModelSpec(name="glm5_next_text", model_types=("glm5_next_text",), **dict(
            DEEPSEEK_V3, mlp=MLPSpec(producers=("gate_up_proj",), consumer="down_proj", size_key="", segments=(2,),
                                     experts="mlp.experts", size_attrs=(("mlp.experts", "intermediate_dim"),),
                                     experts_layout=ExpertsLayout(glu="clamped_act", limit_attr="swiglu_limit",
                                                                  act="silu")),
            unsupported=(("heads", "", _KDA_AND_MLA_HEADS),))),
        # Step-3.7-Flash's language model (step3p5): Llama's blocks, dense ones (Llama's MLP, intermediate_size) by
        # mlp_layer_types, the others packed routed experts (moe_intermediate_size) beside shared_experts (kept
        # whole; share_expert_dim wide: the routed width saves plainly), the experts' activated gate and up clipped
        # per layer (swiglu_limits: glu "act_clamped"; the dense and shared MLPs clip theirs in their own forward).
        # Heads refused: per-layer head counts (num_sliding_attention_heads) and a per-head output gate
        "step3p5": ModelSpec(name="step3p5", model_types=("step3p5",), **dict(
            llama_style, mlp=MLPSpec(producers=("gate_up_proj",), consumer="down_proj",
                                     size_key="moe_intermediate_size", segments=(2,), experts="mlp.experts",
                                     size_attrs=(("mlp.experts", "intermediate_dim"),),
                                     experts_layout=ExpertsLayout(glu="act_clamped"))),
            dense_mlp=llama_style["mlp"], unsupported=(("heads", "", _STEP3P5_HEADS),)),
    }


# a VLM's text model_type -> the spec whose modules, config keys and refusals it has: the VLM's text model is that
# text model's blocks (HY-V4-VL's and Cosmos3-Edge's under multimodal rotary positions, the same for every head)
_LIKE = {
    # HY-V4-VL's language model: HY-V4's decoder layers (clipped experts, shared experts kept whole, MLA heads
    # refused), its latent norms eps from the config
    "hy_v4_vl_text": "hy_v4",
    # Granite-Docling's language model: Granite's Llama layout, its attention reading head_dim from the config
    # where it has one (else hidden_size // num_attention_heads), as Granite 4 Vision's: the compacted config says
    # head_dim, pruned heads save plainly
    "granite_docling_text": "granite4_vision_text",
    # Cosmos3-Edge's language model: Llama's attention (head_dim from the config) with nanochat's plain MLP
    # (mlp.fc1, mlp.fc2; ReLU² between, elementwise: a pruned channel gives 0)
    "cosmos3_edge_text": "nanochat",
}


def vlm_like_specs_2026(specs: Mapping[str, ModelSpec]) -> Dict[str, ModelSpec]:
    """The specs of the language models of HY-V4-VL, Granite-Docling, Cosmos3-Edge, DeepSeek-OCR-2 and MiniMax-M3-VL,
    each the spec in ``specs`` (the table so far) it is laid out like, under its own name, and those that differ from
    it in a field."""
    like = {text: replace_dataclass(specs[spec], name=text, model_types=(text,)) for text, spec in _LIKE.items()}
    glm4_moe, llama = specs["glm4_moe"], specs["llama"]
    return dict(
        like,
        # DeepSeek-OCR-2's language model (deepseek_ocr2_text): GLM-4.5's MoE layout (Llama's attention; in the
        # blocks mlp_layer_types says "sparse", Mixtral's packed experts beside shared experts of width
        # moe_intermediate_size * n_shared_experts, kept whole: a pruned expert width saves in the per-layer form;
        # the "dense" blocks Llama's MLP of width intermediate_size), but its config recomputes head_dim =
        # hidden_size // num_attention_heads on every load: pruned heads save in the per-layer form
        deepseek_ocr2_text=replace_dataclass(glm4_moe, name="deepseek_ocr2_text", model_types=("deepseek_ocr2_text",),
                                             heads=replace_dataclass(glm4_moe.heads, head_dim_key=None)),
        # MiniMax-M3's language model (minimax_m3_vl_text; MiniMaxM3VLForCausalLM alone too): Llama's attention
        # (q/k RMSNorms over head_dim, one weight for all heads; partial rotary; in its "minimax_m3_sparse" layers
        # an indexer with heads of its own picks the key blocks each KV group attends to: those layers keep their
        # heads whole, block_refusals) and, in the blocks
        # mlp_layer_types says "sparse", packed experts (E, 2I, H), [gate | up], combined by gpt-oss's clamped
        # SwiGLU (its alpha swiglu_alpha: a pruned channel's (0, 0) gives 0), width intermediate_size, beside
        # shared experts of width shared_intermediate_size (kept whole); the "dense" blocks a fused gate_up_proj
        # (rows [gate | up], the same activation) of width dense_intermediate_size
        minimax_m3_vl_text=ModelSpec(
            name="minimax_m3_vl_text", model_types=("minimax_m3_vl_text",), layers=llama.layers,
            hidden_key=llama.hidden_key, heads=llama.heads,
            mlp=MLPSpec(producers=("gate_up_proj",), consumer="down_proj", size_key="intermediate_size",
                        segments=(2,), experts="mlp.experts", size_attrs=(("mlp.experts", "intermediate_dim"),),
                        experts_layout=ExpertsLayout(glu="clamped_swiglu", alpha_attr="swiglu_alpha")),
            dense_mlp=MLPSpec(producers=("mlp.gate_up_proj",), consumer="mlp.down_proj",
                              size_key="dense_intermediate_size", segments=(2,)),
            block_refusals=(("heads", "self_attn.indexer", _MINIMAX_M3_INDEXER_HEADS),)))
