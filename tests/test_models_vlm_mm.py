"""What the VLM rows of Llama 4 (``llama4``) need beyond tests/test_models_vlm.py's chain: compaction builds the
smaller model in the original's dtype without casting its complex buffers (Llama 4's vision rotary ``freqs_ci``)."""

from __future__ import annotations

import pytest
import torch

from masked_dora.models.compact import build_compact_model

from tiny_vlm_configs_mm import llama4


def test_compact_build_keeps_complex_buffers_complex():
    """Llama 4's vision model holds its rotary frequencies as a complex buffer: the compacted model's cast to the
    original dtype leaves it complex and equal to a freshly built one's (Module.to would keep its real part alone,
    and the image features, hence the logits, would change)."""
    import transformers

    if not hasattr(transformers, "Llama4VisionModel"):
        pytest.skip("this transformers has no Llama 4")
    config = llama4(transformers).vision_config
    fresh = transformers.Llama4VisionModel(config).rotary_embedding.freqs_ci
    assert fresh.is_complex()
    for dtype in (torch.float32, torch.bfloat16):
        built = build_compact_model(transformers.Llama4VisionModel, config, dtype)
        assert built.rotary_embedding.freqs_ci.is_complex() and torch.equal(built.rotary_embedding.freqs_ci, fresh)
        assert built.patch_embedding.linear.weight.dtype == dtype
