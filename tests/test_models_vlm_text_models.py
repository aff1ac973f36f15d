"""The language models of VLMs that transformers also ships as causal LMs of their own (Aria's ``aria_text``:
``AriaTextForCausalLM``; Emu3's ``emu3_text_model``: ``Emu3ForCausalLM``) prune alone with the spec their VLM
wraps: prepare → harden → compact (equal logits) → save → ``load_compact`` (equal logits and ``generate()``
tokens)."""

from __future__ import annotations

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, compact_model, harden, load_compact, prepare_model, spec_for

from helpers import rel_err
from tiny_models import randomize_adapters
from tiny_vlm_configs import TEXT
from tiny_vlms import available, unavailable_reason

TEXT_MODELS = {  # causal LM class: (config class, its config's keys besides TEXT)
    "AriaTextForCausalLM": ("AriaTextConfig", dict(head_dim=8, moe_num_experts=4, moe_topk=2,
                                                   moe_num_shared_experts=1)),
    "Emu3ForCausalLM": ("Emu3TextConfig", dict(head_dim=8, attention_dropout=0.0)),
}


@pytest.mark.parametrize("causal_lm", sorted(TEXT_MODELS))
def test_vlm_language_model_prunes_alone(causal_lm, tmp_path):
    import transformers

    config_class, keys = TEXT_MODELS[causal_lm]
    if not hasattr(transformers, causal_lm):
        pytest.skip(f"this transformers has no {causal_lm}")
    if causal_lm == "AriaTextForCausalLM" and not available("aria"):  # (the VLM's layout, its version)
        pytest.skip(unavailable_reason("aria"))
    torch.manual_seed(0)
    model = getattr(transformers, causal_lm)(getattr(transformers, config_class)(**TEXT, **keys)).eval()
    assert spec_for(model).name == model.config.model_type  # the VLM's inner spec, unwrapped
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    randomize_adapters(model)
    harden(model)
    ids = torch.randint(3, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        small = compact_model(model)
        assert rel_err(small(input_ids=ids).logits, ref) < 1e-5
    small.save_pretrained(str(tmp_path))
    reloaded = load_compact(str(tmp_path))
    with torch.no_grad():
        assert rel_err(reloaded(input_ids=ids).logits, ref) < 1e-5
    gen = dict(max_new_tokens=5, do_sample=False)
    assert torch.equal(reloaded.generate(input_ids=ids[:1], **gen), model.generate(input_ids=ids[:1], **gen))
