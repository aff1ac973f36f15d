"""The 2026 vision-language models (Mistral Large 4, GLM-5.3-Flash, Step-3.7-Flash, Apertus 1.5, North, Inkling 2,
Inkling, GLM-GA, PP-Chart2Table): which language model each wraps
(``VLM_WRAPPERS_2026``) and the specs of the language models only they have (:func:`vlm_text_specs_2026`);
:mod:`masked_dora.models.families` adds them to the tables beside :mod:`masked_dora.models.families_vlm`'s.
"""

from __future__ import annotations

from typing import Dict

from .families_fused_moe import DEEPSEEK_V3
from .spec_types import ExpertsLayout, MLPSpec, ModelSpec
from .wrapper_spec import WrapperSpec

_KDA_AND_MLA_HEADS = ("its blocks are Kimi delta attention (layer_types 'linear_attention': short convolutions over "
                      "q/k/v, per-head forget and output gates through low-rank f_a/f_b and g_a/g_b projections) or "
                      "multi-head latent attention (MLA: every head's keys and values from one shared latent, "
                      "kv_b_proj) under a sparse-attention indexer, which a head group of one head_dim per head does "
                      "not describe")
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
