"""The 2026 vision-language models (Mistral Large 4, ...): which language model each wraps
(``VLM_WRAPPERS_2026``) and the specs of the language models only they have (``VLM_TEXT_SPECS_2026``);
:mod:`masked_dora.models.families` adds them to the tables beside :mod:`masked_dora.models.families_vlm`'s.
"""

from __future__ import annotations

from typing import Dict

from .families_fused_moe import DEEPSEEK_V3
from .spec_types import ModelSpec, WrapperSpec

# outer model_type -> where its language model is (transformers 5 nests it as model.language_model)
VLM_WRAPPERS_2026: Dict[str, WrapperSpec] = {
    # Mistral Large 4: Mistral3's Pixtral tower and patch-merging projector around mistral_large4_text (below)
    "mistral_large4": WrapperSpec(language_model="language_model"),
}

VLM_TEXT_SPECS_2026: Dict[str, ModelSpec] = {
    # Mistral Large 4's language model (mistral_large4_text): DeepSeek-V3.2's blocks (dense ones by mlp_layer_types,
    # then packed routed experts beside shared_experts, kept whole) under its MLA with a sparse-attention indexer;
    # its KV sharing (kv_source_layers: a layer reusing an earlier one's latent keys and values), per-head softmax
    # scaling and NoPE layers are the attention's, whose heads are refused as DeepSeek-V3's (MLA); its final logit
    # soft-capping changes nothing per channel. Its MLP and routed experts prune
    "mistral_large4_text": ModelSpec(name="mistral_large4_text", model_types=("mistral_large4_text",),
                                     **DEEPSEEK_V3),
}
