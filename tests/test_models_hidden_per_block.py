"""Hidden-dimension pruning, hidden_mode="per_block": each block reads and writes a kept subset of the full-width
residual stream (one mask per block), for pre-norm RMSNorm decoders and post-LN BERT encoders alike.

The chain prepare -> train -> harden (aligned, exact) -> compact (equal outputs; gathered reads, CompactLinear
writers) -> save_pretrained -> load_compact (bit-exact weights and indices, equal outputs) -> generate (equal
tokens, with and without the KV cache), the importance initialisations, the mask's gradient, and the refusals.
"""

import copy

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, compact_model, get_state, harden, is_prepared, kept_fraction,
                                load_compact, prepare_model, train_masked)
from masked_dora.models.compact import LAYER_SIZES_KEY
from masked_dora.models.hidden_per_block import ReadGate, ReadGather
from masked_dora.nn import CompactLinear

from helpers import rel_err
from tiny_models import (assert_checkpointing_keeps_loss_and_gradients, lm_batches, output_tensor, randomize_adapters,
                         tiny_inputs, tiny_model)

ALL = ("mlp", "heads", "hidden")
CFG = dict(rank=4, alignment={"mlp": 8}, importance="none", hidden_mode="per_block",
           target_sparsity={"mlp": 0.5, "heads": 0.5, "hidden": 0.5})
LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "granite")
BERT_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "camembert", "data2vec-text",
              "xlm-roberta-xl")


def _prepared(family, groups=ALL, seed=0, **cfg):
    model = tiny_model(family, kind="lm")
    prepare_model(model, MaskedDoRAConfig(target_groups=groups, **{**CFG, **cfg}))
    randomize_adapters(model, seed)
    return model


def _hidden_groups(model):
    return get_state(model).groups_of("hidden")


def _train(model, steps=3):
    before = [g.mask_logits.detach().clone() for g in _hidden_groups(model)]
    train_masked(model, lm_batches(3), lambda m, b: m(**b).loss, steps=steps, lr=1e-3, mask_lr=0.1)
    for g, b in zip(_hidden_groups(model), before):
        assert not torch.equal(g.mask_logits.detach(), b)  # every block's mask learns


def _blocks(model):
    if hasattr(model, "model"):
        return model.model.layers
    base = model.base_model
    return base.transformer.layer if hasattr(base, "transformer") else base.encoder.layer


def _writers(block):
    if hasattr(block, "self_attn"):
        return block.self_attn.o_proj, block.mlp.down_proj
    if hasattr(block, "ffn"):
        return block.attention.out_lin, block.ffn.lin2
    return block.attention.output.dense, block.output.dense


def _readers(block):
    if hasattr(block, "self_attn"):
        a = block.self_attn
        return a.q_proj, a.k_proj, a.v_proj, block.mlp.gate_proj, block.mlp.up_proj
    if hasattr(block, "ffn"):
        return block.attention.q_lin, block.attention.k_lin, block.attention.v_lin, block.ffn.lin1
    s = block.attention.self
    return s.query, s.key, s.value, block.intermediate.dense


def _entries(block):
    if hasattr(block, "self_attn"):
        return block.self_attn, block.mlp
    if hasattr(block, "ffn"):
        return block.attention, block.ffn
    return block.attention.self, block.intermediate


def _compare(model, inputs=None):
    inputs = inputs or tiny_inputs()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        small = compact_model(model)
        return ref, small, output_tensor(small(**inputs))


@pytest.mark.parametrize("family", LLAMA_TYPES + BERT_TYPES)
@pytest.mark.parametrize("groups", [ALL, ("hidden",)])
def test_compacted_model_equals_the_masked_one(family, groups):
    model = _prepared(family, groups)
    if family in ("llama", "bert") and groups == ALL:
        _train(model)
    summary = harden(model)
    assert summary["hidden"] == {"kept": 32, "total": 64, "sparsity": 0.5}  # 2 blocks x 16 of 32 channels
    keeps = [g.hard() for g in _hidden_groups(model)]
    assert all(int(k.sum()) == 16 for k in keeps) and not torch.equal(keeps[0], keeps[1])  # a mask per block
    ref, small, out = _compare(model)
    sizes = getattr(small.config, LAYER_SIZES_KEY)
    assert [s["hidden"] for s in sizes] == [16, 16] and small.config.hidden_size == 32
    for block, keep in zip(_blocks(small), keeps):
        for w in _writers(block):
            assert isinstance(w, CompactLinear) and w.out_features == 32 and w.in_idx is None
            assert torch.equal(w.out_idx, torch.nonzero(keep).flatten())
        assert all(type(r) is torch.nn.Linear and r.in_features == 16 for r in _readers(block))
        # the gather happens once per consumer set: one pre-hook on each entry module, none on the readers
        assert [type(h) for e in _entries(block) for h in e._forward_pre_hooks.values()] == [ReadGather] * 2
        assert not any(r._forward_pre_hooks for r in _readers(block))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in small.modules())
    assert rel_err(out, ref) < 1e-5


def test_the_compacted_outputs_see_a_wrong_gather_and_a_missing_read_gate(monkeypatch):
    """The tolerance above sees an error in either side: another block's indices at the gather, or a masked
    model whose reads are not gated (its pruned columns still read)."""
    model = _prepared("llama")
    harden(model)
    ref, small, out = _compare(model)
    assert rel_err(out, ref) < 1e-5
    blocks = _blocks(small)
    hook = next(iter(blocks[0].self_attn._forward_pre_hooks.values()))
    hook.writer = _writers(blocks[1])[0]  # block 1's kept channels read in block 0
    with torch.no_grad():
        assert rel_err(output_tensor(small(**tiny_inputs())), ref) > 1e-3
    monkeypatch.setattr(ReadGate, "__call__", lambda self, module, args, kwargs: None)
    with torch.no_grad():
        assert rel_err(output_tensor(model(**tiny_inputs())), ref) > 1e-3


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_save_pretrained_and_load_compact_round_trip_bit_exactly(tmp_path, family):
    model = _prepared(family, allocation="global")  # each block may keep its own count
    harden(model)
    ref, small, out = _compare(model)
    small.save_pretrained(str(tmp_path))
    loaded = load_compact(str(tmp_path))
    saved, back = small.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys() and any(k.endswith("out_idx") for k in back)
    for key, value in saved.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    assert [type(h) for b in _blocks(loaded) for e in _entries(b) for h in e._forward_pre_hooks.values()] == \
        [ReadGather] * 4
    with torch.no_grad():
        again = output_tensor(loaded(**tiny_inputs()))
    assert torch.equal(again, out) and rel_err(again, ref) < 1e-5
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # never loaded wrong by plain transformers
        type(small).from_pretrained(str(tmp_path))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_generate_with_the_kv_cache_gives_the_masked_tokens(tmp_path, family):
    model = tiny_model(family, kind="lm")
    with torch.no_grad():  # blocks that matter to the tokens (at init they barely move the embeddings' argmax)
        for p in model.model.layers.parameters():
            if p.dim() == 2:
                p.mul_(6)
    prepare_model(model, MaskedDoRAConfig(target_groups=ALL, **CFG))
    randomize_adapters(model)
    harden(model)
    small = compact_model(model)
    small.save_pretrained(str(tmp_path))
    loaded = load_compact(str(tmp_path))
    inputs = tiny_inputs()
    gen = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    masked = model.generate(**inputs, **gen)
    for m in (small, loaded):
        assert torch.equal(m.generate(**inputs, **gen), masked)
    assert torch.equal(small.generate(**inputs, use_cache=False, **gen), masked)
    with torch.no_grad():  # the test sees the blocks: without their writes the tokens change
        for block in _blocks(small):
            for w in _writers(block):
                w.weight.zero_()
    assert not torch.equal(small.generate(**inputs, **gen), masked)


@pytest.mark.parametrize("sparsity, kept", [(0.5, 16), (0.3, 24), (0.9, 8)])
@pytest.mark.parametrize("method", ["none", "magnitude", "activation", "taylor"])
@pytest.mark.parametrize("family", ["llama", "bert"])
def test_importance_starts_at_the_aligned_target_and_hardening_hits_it(family, method, sparsity, kept):
    model = tiny_model(family, kind="lm")
    calibration = lm_batches(2) if method in ("activation", "taylor") else None
    cfg = {**CFG, "importance": method, "target_sparsity": {"mlp": 0.5, "heads": 0.5, "hidden": sparsity}}
    prepare_model(model, MaskedDoRAConfig(target_groups=ALL, **cfg), calibration=calibration)
    if method != "none":
        assert [int((g.mask_logits > 0).sum()) for g in _hidden_groups(model)] == [kept, kept]  # aligned to 8
    harden(model)
    assert [int(g.hard().sum()) for g in _hidden_groups(model)] == [kept, kept]
    assert kept_fraction(model, "hidden") == kept / 32


def test_magnitude_importance_keeps_each_blocks_strong_channels():
    model = tiny_model("llama", kind="lm")
    with torch.no_grad():  # channels 0..7 dead in block 0's reads and writes only
        block = model.model.layers[0]
        for r in _readers(block):
            r.weight[:, :8] = 0
        for w in _writers(block):
            w.weight[:8] = 0
    prepare_model(model, MaskedDoRAConfig(target_groups=("hidden",), **{**CFG, "importance": "magnitude"}))
    harden(model)
    first, second = (g.hard() for g in _hidden_groups(model))
    assert not first[:8].any() and int(first.sum()) == 16
    assert second[:8].any()  # block 1 is scored on its own weights


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("side", ["reads", "writes"])
def test_the_mask_gets_a_gradient_through_its_reads_and_its_writes(monkeypatch, family, side):
    if side == "writes":  # reads not gated: the gradient comes from the writers' rows alone
        monkeypatch.setattr(ReadGate, "__call__", lambda self, module, args, kwargs: None)
    else:  # writers not gated by the hidden group (an all-ones view of it): the reads alone
        from masked_dora.models import hidden_per_block

        monkeypatch.setattr(hidden_per_block, "MaskView", _OnesView)
    model = _prepared(family)
    model.train()
    loss = model(**lm_batches(1)[0]).loss
    loss.backward()
    for g in _hidden_groups(model):
        assert g.mask_logits.grad is not None and g.mask_logits.grad.abs().sum() > 0


class _OnesView:
    def __init__(self, group, role):
        self.n = group.num_units

    def gate_values(self):
        return torch.ones(self.n)

    def keep_mask(self):
        return torch.ones(self.n, dtype=torch.bool)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_checkpointing_step_gives_the_same_loss_and_gradients(checkpointing):
    ref = assert_checkpointing_keeps_loss_and_gradients(lambda: _prepared("llama"), checkpointing)
    assert ref["masked_dora.groups.hidden_0.mask_logits"].abs().sum() > 0


def test_deepcopy_and_training_state_keep_each_blocks_mask(tmp_path):
    from masked_dora.models import load_training_state, save_training_state

    model = _prepared("llama")
    harden(model)
    twin = copy.deepcopy(model)
    gate = next(iter(twin.model.layers[1].mlp._forward_pre_hooks.values()))
    assert gate.group is get_state(twin).groups["hidden_1"]
    save_training_state(model, str(tmp_path))
    fresh = tiny_model("llama", kind="lm")
    prepare_model(fresh, MaskedDoRAConfig(target_groups=ALL, **CFG))
    load_training_state(fresh, str(tmp_path))
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        assert torch.equal(output_tensor(twin(**inputs)), ref)
        torch.testing.assert_close(output_tensor(fresh(**inputs)), ref)


@pytest.mark.parametrize("family, match", [
    ("gpt2", "no PerBlockHiddenSpec"), ("phi", "no PerBlockHiddenSpec"), ("opt", "no PerBlockHiddenSpec"),
    ("mixtral", "no PerBlockHiddenSpec"), ("bart", "no PerBlockHiddenSpec"), ("cohere", "no PerBlockHiddenSpec")])
def test_families_without_a_per_block_spec_are_refused_before_any_change(family, match):
    model = tiny_model(family, kind="lm")
    with pytest.raises(ValueError, match=f"target_groups: 'hidden'.*{match}"):
        prepare_model(model, MaskedDoRAConfig(target_groups=ALL, **CFG))
    assert not is_prepared(model)
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


def test_a_registered_type_is_refused_until_checked():
    from masked_dora.models import SPECS, register_spec

    saved = dict(SPECS)
    try:
        register_spec("my_llama", like="llama")  # the same layout, not among the checked model types
        model = tiny_model("llama", kind="lm")
        model.config.model_type = "my_llama"
        with pytest.raises(ValueError, match="checked exact for the model types"):
            prepare_model(model, MaskedDoRAConfig(target_groups=ALL, **CFG))
        assert not is_prepared(model)
    finally:
        SPECS.clear()
        SPECS.update(saved)


def test_save_form_plain_is_refused_before_any_change():
    model = tiny_model("bert", kind="lm")
    with pytest.raises(ValueError, match="config.save_form: hidden_mode='per_block'"):
        prepare_model(model, MaskedDoRAConfig(target_groups=ALL, save_form="plain", **CFG))
    assert not is_prepared(model)


def test_compact_for_training_and_export_peft_refuse_it(tmp_path):
    from masked_dora.models import compact_for_training, export_peft

    model = _prepared("llama", gqa="kv_groups")
    harden(model)
    with pytest.raises(ValueError, match="hidden_mode=.per_block. the blocks. kept residual channels cannot leave"):
        compact_for_training(model)
    pytest.importorskip("peft")
    with pytest.raises(NotImplementedError, match="hidden_mode='per_block'"):
        export_peft(model, str(tmp_path))
