"""The Llama-layout decoders of masked_dora/models/families_decoders.py beyond the family chain: an MLP whose
activation does not map 0 to 0 (Apertus's xIELU) has its pruned channels cut at the consumer's input too
(``MLPSpec.gate_consumer_input``); Helium's heads save per layer; Doge's MoE prunes its shared expert's MLP (a
transformers 5.17 cannot run it)."""

from __future__ import annotations

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, MLPSpec, compact_for_training, compact_model, export_peft, harden,
                                prepare_model)
from masked_dora.models.group_mask import InputGate

from tiny_family_table import AVAILABLE
from tiny_models import (assert_reloads_and_generates_equal, harden_and_compact, output_tensor, randomize_adapters,
                         tiny_inputs, tiny_model)

needs_apertus = pytest.mark.skipif("apertus" not in AVAILABLE, reason="this transformers has no Apertus")


def _hardened_apertus():
    model = tiny_model("apertus", kind="lm")
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), rank=4, alignment={"mlp": 8}, importance="none",
                                          target_sparsity=0.5))
    randomize_adapters(model)
    harden(model)
    return model


def _down_proj_inputs(model, inputs):
    """Layer 0's down_proj input, after every pre-hook already on it (its InputGate)."""
    seen = []
    handle = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        out = output_tensor(model(**inputs))
    handle.remove()
    return seen[0], out


@needs_apertus
def test_an_activation_that_maps_zero_elsewhere_is_gated_at_the_consumer_input():
    """xIELU maps 0 to about -8e-7, so a channel gated at up_proj still feeds down_proj that constant: the
    InputGate on down_proj makes it exactly 0, and the compacted model (without the channel) equals the masked
    one. Without the gate the channel would carry xielu(0)."""
    model = _hardened_apertus()
    mlp = model.model.layers[0].mlp
    zero_maps_to = float(mlp.act_fn(torch.zeros(1)))
    assert zero_maps_to != 0.0
    pruned = ~mlp.up_proj.keep_mask()
    assert 0 < int(pruned.sum()) < pruned.numel()
    inputs = tiny_inputs()
    gated, ref = _down_proj_inputs(model, inputs)
    assert torch.equal(gated[..., pruned], torch.zeros_like(gated[..., pruned]))
    assert bool((gated[..., ~pruned] != 0).any())
    with torch.no_grad():
        small = output_tensor(compact_model(model)(**inputs))
    torch.testing.assert_close(small, ref, rtol=1e-4, atol=1e-5)
    hooks = mlp.down_proj._forward_pre_hooks
    for handle_id in [k for k, h in hooks.items() if isinstance(h, InputGate)]:
        del hooks[handle_id]
    ungated, _ = _down_proj_inputs(model, inputs)
    assert torch.equal(ungated[..., pruned], torch.full_like(ungated[..., pruned], zero_maps_to))


@needs_apertus
def test_compact_for_training_drops_the_consumer_input_gate():
    """Training at the kept size cuts down_proj's input columns, so its InputGate goes, with equal outputs."""
    model = _hardened_apertus()
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
    compact_for_training(model)
    assert not any(isinstance(h, InputGate) for m in model.modules() for h in m._forward_pre_hooks.values())
    assert model.model.layers[0].mlp.down_proj.in_features == 32
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(model(**inputs)), ref, rtol=1e-5, atol=1e-6)


@needs_apertus
def test_export_refuses_mlp_channels_cut_at_the_consumer_input(tmp_path):
    """A PEFT adapter cannot zero down_proj's input columns: export refuses once a channel is pruned."""
    model = _hardened_apertus()
    with pytest.raises(NotImplementedError, match=r"MLP activation does not map 0 to 0, so its pruned channels are "
                                                  r"cut at the input of .*down_proj and 1 more.*compact_model"):
        export_peft(model, str(tmp_path))


def test_consumer_input_gate_is_for_dense_mlps():
    with pytest.raises(ValueError, match="gate_consumer_input is supported for a dense MLP, not with experts"):
        MLPSpec(producers=("gate_up_proj",), consumer="down_proj", size_key="intermediate_size", segments=(2,),
                experts="mlp.experts", gate_consumer_input=True)


@pytest.mark.skipif("helium" not in AVAILABLE, reason="this transformers has no Helium")
def test_helium_heads_save_per_layer_as_its_o_proj_is_hidden_size_wide():
    """Helium builds o_proj (hidden_size, hidden_size), whatever the head count: a config with fewer heads would
    build the wrong o_proj, so pruned heads save in the per-layer form; a pruned MLP alone stays plain."""
    from masked_dora.models import get_state

    model = tiny_model("helium", kind="lm")
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), alignment={"mlp": 8}, importance="none",
                                          target_sparsity=0.5))
    assert get_state(model).save_form == "plain"
    model = tiny_model("helium", kind="lm")
    with pytest.warns(UserWarning, match=r"per-layer form \(HeliumConfig's attention builds self_attn.o_proj "
                                         r"hidden_size wide \(not heads x head_dim\)"):
        prepare_model(model, MaskedDoRAConfig(alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    assert get_state(model).save_form == "per_layer"


def _doge_moe():
    """A tiny Doge with is_moe (its MLP the shared expert of a CDMoE of 4 routed experts, top 2), or a skip where
    this transformers' Doge cannot run it before any pruning (5.17's decoder layer drops the MoE's tuple output
    into the dropout)."""
    import transformers as t

    from tiny_families_decoders import TINY

    if "doge" not in AVAILABLE:
        pytest.skip("this transformers has no Doge")
    config = t.DogeConfig(**dict(TINY["doge"].config, is_moe=True, num_experts=4, num_experts_per_tok=2))
    torch.manual_seed(0)
    model = t.DogeForCausalLM(config).eval()
    try:
        with torch.no_grad():
            model(**tiny_inputs())
    except TypeError as exc:
        pytest.skip(f"transformers {t.__version__}: DogeForCausalLM with is_moe fails unpruned ({exc})")
    return model


def test_doge_moe_prunes_its_shared_expert_mlp_and_keeps_the_routed_experts(tmp_path):
    """Doge's CDMoE adds the routed experts' output (embeddings over the hidden size) to its shared gate/up/down
    MLP, whose channels prune as a dense MLP's: the compacted model equals the masked one, saves plainly (a smaller
    intermediate_size), reloads with equal outputs and generates the same tokens; the routed experts are as built."""
    from masked_dora.models import get_state

    model = _doge_moe()
    experts = {n: p.detach().clone() for n, p in model.named_parameters() if "_embed." in n}
    assert experts
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), rank=4, alignment={"mlp": 8}, importance="none",
                                          target_sparsity=0.5))
    assert get_state(model).save_form == "plain"
    randomize_adapters(model)
    ref, small, out = harden_and_compact(model)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert small.config.intermediate_size == 32
    assert all(torch.equal(dict(small.named_parameters())[n], p) for n, p in experts.items())
    assert_reloads_and_generates_equal(small, tmp_path, model, ref, tiny_inputs())
