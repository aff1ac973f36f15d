"""More vision-language models: which language model each wraps (``VLM_TEXT2_WRAPPERS``) and the specs of their
language models (:func:`vlm_text2_specs`), most laid out as a text model that already has a spec (its spec under
the VLM text model's ``model_type``); :mod:`masked_dora.models.families` adds them to the table, as
:mod:`masked_dora.models.families_vlm`'s.
"""

from __future__ import annotations

from dataclasses import replace as replace_dataclass
from typing import Dict, Mapping

from .spec_types import ExpertsLayout, MLPSpec, ModelSpec
from .wrapper_spec import WrapperSpec

# outer model_type -> where its language model is (see families_vlm.VLM_WRAPPERS).
# HY-V4-VL: Qwen2-VL's layout (model.language_model) around HY-V4's MoE blocks (hy_v4_vl_text)
VLM_TEXT2_WRAPPERS: Dict[str, WrapperSpec] = {
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


def vlm_text2_specs(specs: Mapping[str, ModelSpec]) -> Dict[str, ModelSpec]:
    """The specs of the language models of ``VLM_TEXT2_WRAPPERS``'s VLMs, each the spec in ``specs`` (the table
    so far) it is laid out like, under its own name, and those that differ from it in a field."""
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
        # an indexer with heads of its own picks the key blocks every head attends to) and, in the blocks
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
                              size_key="dense_intermediate_size", segments=(2,))))
