"""Export to PEFT: a prepared model's adapters, pruned channels included, as a PEFT DoRA adapter that
``PeftModel.from_pretrained`` loads onto the untouched base model with equal outputs (float32: 1e-5)."""

import json

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, export_peft, harden, prepare_model

from tiny_models import output_tensor, randomize_adapters, tiny_inputs, tiny_model

peft = pytest.importorskip("peft")


def _base(family):
    """The tiny LM with non-zero biases (BERT's and GPT-2's start at zero), the same on every call."""
    model = tiny_model(family, kind="lm")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") and p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=gen) * 0.2 - 0.1)
    return model


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2", "phi3", "falcon-new"])
@pytest.mark.parametrize("hardened", [False, True])
def test_exported_adapter_loads_into_peft_with_equal_outputs(tmp_path, family, hardened):
    """Llama (GQA, no bias), BERT (biases: pruned channels' biases travel gated, PEFT's bias="lora_only"),
    GPT-2 (Conv1D: fan_in_fan_out), Phi-3 (fused qkv and gate_up projections) and Falcon-40B's layout (fused
    query_key_value grouped by KV head, biases); with the learned gates' decision (before harden) and with the
    exact mask (after it)."""
    model = _base(family)
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    randomize_adapters(model)  # B != 0, m != ||W0||, mixed logits: some channels pruned
    if hardened:
        harden(model)
    model.eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        expected = output_tensor(model(**inputs))
    report = export_peft(model, str(tmp_path))
    assert report["pruned_channels"] > 0 and report["layers"] == sum(1 for _ in _masked_layers(model))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["use_dora"] and saved["r"] == 4 and saved["fan_in_fan_out"] == (family == "gpt2")
    assert saved["bias"] == ("lora_only" if family in ("bert", "gpt2", "falcon-new") else "none")  # no biases
    loaded = peft.PeftModel.from_pretrained(_base(family), str(tmp_path)).eval()
    with torch.no_grad():
        got = output_tensor(loaded(**inputs))
        unpruned = output_tensor(_base(family)(**inputs))
    assert _rel(got, expected) <= 1e-5, _rel(got, expected)
    assert _rel(unpruned, expected) > 1e-2  # the adapters and masks change the function: the check means something


def _masked_layers(model):
    from masked_dora.nn import MaskedDoRALinear

    return (m for m in model.modules() if isinstance(m, MaskedDoRALinear))


@pytest.mark.parametrize("family", ["llama", "phi3", "falcon"])
def test_export_refuses_query_heads_cut_at_the_output_input(tmp_path, family):
    """gqa='query_heads' cuts a pruned query head at o_proj's input (its KV head stays, so its attention output is
    not zero): a PEFT adapter cannot express that, so export refuses once a query head is pruned (separate q/k/v,
    Phi-3's fused blocks, Falcon's multi-query), and exports exactly while every head is kept."""
    model = _base(family)
    cfg = MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5, gqa="query_heads")
    prepare_model(model, cfg)
    randomize_adapters(model)
    with torch.no_grad():  # every query head kept: exportable
        for group in model.masked_dora.groups_of("heads"):
            group.mask_logits.fill_(3.0)
    model.eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        expected = output_tensor(model(**inputs))
    export_peft(model, str(tmp_path / "kept"))
    loaded = peft.PeftModel.from_pretrained(_base(family), str(tmp_path / "kept")).eval()
    with torch.no_grad():
        assert _rel(output_tensor(loaded(**inputs)), expected) <= 1e-5
    harden(model)
    with pytest.raises(NotImplementedError, match=r"query heads pruned inside KV groups \(gqa='query_heads'\) are cut "
                                                  r"at the input of .*(o_proj|dense) and 1 more.*compact_model"):
        export_peft(model, str(tmp_path / "pruned"))


def test_export_keeps_per_layer_rank_and_scaling(tmp_path):
    """A layer whose rank or scaling differs from the config's (capped rank, an imported adapter's scaling)
    goes out through PEFT's rank_pattern / alpha_pattern."""
    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alpha=8.0, alignment={"mlp": 8}, importance="none"))
    randomize_adapters(model)
    layer = model.get_submodule("model.layers.0.mlp.up_proj")
    layer.scaling = 3.0
    model.eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        expected = output_tensor(model(**inputs))
    export_peft(model, str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["alpha_pattern"] == {"model.layers.0.mlp.up_proj": 12.0}
    loaded = peft.PeftModel.from_pretrained(tiny_model("llama", kind="lm"), str(tmp_path)).eval()
    with torch.no_grad():
        assert _rel(output_tensor(loaded(**inputs)), expected) <= 1e-5


def test_export_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(TypeError, match="save_directory: expected a path"):
        model = tiny_model("llama", kind="lm")
        prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none"))
        export_peft(model, 3)
    with pytest.raises(ValueError):
        export_peft(tiny_model("llama", kind="lm"), str(tmp_path))  # not prepared


def test_export_carries_lora_dropout(tmp_path):
    model = _base("llama")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", lora_dropout=0.1))
    export_peft(model, str(tmp_path / "peft"))
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["lora_dropout"] == 0.1
    other = _base("llama")
    prepare_model(other, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", lora_dropout=0.1,
                                          dropout_mode="adapter"))
    with pytest.warns(UserWarning, match="PEFT knows only its own dropout meaning"):
        export_peft(other, str(tmp_path / "adapter"))
