"""An unknown model_type laid out like DeepSeek-V3 (dense MLP blocks first, MoE blocks after: first_k_dense_replace)
is named as such in the no-spec error, as a Mixtral-like one is: matching_specs looks at a block with the experts,
not at block 0 (whose dense MLP holds no packed experts, so the 'deepseek_v3' spec was never suggested)."""

from __future__ import annotations

import pytest

from masked_dora.models import MaskedDoRAConfig, prepare_model
from masked_dora.models import specs as specs_module
from masked_dora.models.specs import matching_specs, register_spec, spec_for

from tiny_family_table import AVAILABLE
from tiny_models import tiny_model


@pytest.mark.skipif("deepseek_v3" not in AVAILABLE, reason="this transformers has no DeepSeek-V3")
def test_a_deepseek_v3_layout_under_another_model_type_is_matched(monkeypatch):
    monkeypatch.setattr(specs_module, "SPECS", dict(specs_module.SPECS))
    model = tiny_model("deepseek_v3", kind="lm")
    assert "deepseek_v3" in matching_specs(model)
    model.config.model_type = "my-deepseek"
    with pytest.raises(ValueError, match=r"laid out like the 'deepseek_v3' spec: masked_dora.register_spec\("
                                         r"'my-deepseek', like='deepseek_v3'\)"):
        prepare_model(model, MaskedDoRAConfig(importance="none", target_groups=("mlp",)))
    spec = register_spec("my-deepseek", like="deepseek_v3")
    assert spec_for(model) is spec
    prepare_model(model, MaskedDoRAConfig(importance="none", target_groups=("mlp",)))
