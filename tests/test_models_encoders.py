"""The text encoders of :mod:`masked_dora.models.families_encoders` beyond the family chain
(tests/test_models_families.py runs each tiny one of tests/tiny_families_encoders_more.py end to end): ALBERT's
shared layers, BigBird's block-sparse attention, X-MOD's language adapters, and the layouts refused with the
reason before anything changes."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, compact_model, get_state, harden, load_compact, prepare_model
from masked_dora.models.blocks import model_blocks
from masked_dora.models.specs import spec_for

from tiny_family_table import AVAILABLE
from tiny_models import output_tensor, randomize_adapters, reload_plain_in_clean_process, tiny_config

_ENCODER = dict(vocab_size=97, hidden_size=32, num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, max_position_embeddings=64)


def _prune(model, groups=("mlp", "heads")):
    with pytest.warns(UserWarning, match="per-layer form") if "heads" in groups else _no_warning():
        prepare_model(model, MaskedDoRAConfig(target_groups=groups, rank=4, importance="none", target_sparsity=0.5,
                                              alignment={"mlp": 8}))
    randomize_adapters(model)
    harden(model)
    return model


@contextlib.contextmanager
def _no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _ids(seq=9, seed=1):
    return torch.randint(3, 97, (2, seq), generator=torch.Generator().manual_seed(seed))


def test_albert_shared_layers_each_prune_once_and_run_at_every_depth(tmp_path):
    """ALBERT with one layer group of 2 layers, run at each of 6 depths: 2 blocks (not 12), each called 6 times
    with its one mask; the compacted model (the same 2 layers, smaller) equals the masked one and reloads."""
    import transformers as t

    torch.manual_seed(0)
    model = t.AlbertForMaskedLM(t.AlbertConfig(**_ENCODER, embedding_size=16, num_hidden_layers=6,
                                               num_hidden_groups=1, inner_group_num=2)).eval()
    _prune(model)
    calls = []
    for i, layer in enumerate(model.albert.encoder.albert_layer_groups[0].albert_layers):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
    assert [b.path for b in model_blocks(model, spec_for(model))] == [
        f"albert.encoder.albert_layer_groups.0.albert_layers.{i}" for i in (0, 1)]
    inputs = {"input_ids": _ids()}
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        assert calls == [0, 1] * 6  # the group (its two layers in turn) at each of the 6 depths
        small = compact_model(model)
        torch.testing.assert_close(output_tensor(small(**inputs)), ref, rtol=1e-4, atol=1e-5)
    layers = small.albert.encoder.albert_layer_groups[0].albert_layers
    assert [(m.ffn.out_features, m.attention.num_attention_heads) for m in layers] == [(32, 2)] * 2
    small.save_pretrained(str(tmp_path))  # heads pruned: the per-layer form (ALBERT derives the head size)
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(load_compact(str(tmp_path))(**inputs)), ref, rtol=1e-4, atol=1e-5)


def test_albert_mlp_pruned_reloads_with_plain_transformers(tmp_path):
    """ALBERT's one layer, its MLP pruned: the config says the width, and a process without masked_dora reloads it."""
    import transformers as t

    torch.manual_seed(0)
    model = t.AlbertForMaskedLM(t.AlbertConfig(**_ENCODER, embedding_size=16, num_hidden_layers=3)).eval()
    _prune(model, groups=("mlp",))
    inputs = {"input_ids": _ids()}
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        small = compact_model(model)
    assert small.config.intermediate_size == 32
    small.save_pretrained(str(tmp_path))
    torch.save(inputs, tmp_path / "inputs.pt")
    torch.testing.assert_close(reload_plain_in_clean_process([(str(tmp_path), "AlbertForMaskedLM")])[0], ref,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("groups", [("mlp",), ("heads",)])
def test_albert_with_several_layer_groups_is_refused_with_the_reason(groups):
    import transformers as t

    model = t.AlbertModel(t.AlbertConfig(**_ENCODER, embedding_size=16, num_hidden_layers=4, num_hidden_groups=2))
    with pytest.raises(ValueError, match=rf"{groups[0]!r} cannot be pruned in a 'albert' model: its "
                                         r"num_hidden_groups > 1 layer groups are separate block lists"):
        prepare_model(model, MaskedDoRAConfig(target_groups=groups, importance="none"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


def test_bigbird_block_sparse_attention_prunes_heads_exactly_in_eval():
    """A sequence long enough for BigBird's block-sparse attention (48 tokens of blocks of 4, 2 random blocks):
    the compacted model, with half the heads, equals the masked one."""
    import transformers as t

    torch.manual_seed(0)
    model = t.BigBirdForMaskedLM(t.BigBirdConfig(**_ENCODER, num_hidden_layers=2, attention_type="block_sparse",
                                                 block_size=4, num_random_blocks=2)).eval()
    _prune(model)
    inputs = {"input_ids": _ids(seq=48)}
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        small = compact_model(model)
        out = output_tensor(small(**inputs))
    attention = small.bert.encoder.layer[0].attention.self
    assert type(attention).__name__ == "BigBirdBlockSparseAttention" and attention.num_attention_heads == 2
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_xmod_language_adapters_are_kept_whole_and_every_language_stays_equal(tmp_path):
    """X-MOD's per-language adapters act on the block output (hidden-size wide): they keep their sizes, and the
    compacted model equals the masked one for each language's input."""
    import transformers as t

    from tiny_models import tiny_model

    if "xmod" not in AVAILABLE:
        pytest.skip("this transformers has no X-MOD")
    model = _prune(tiny_model("xmod", kind="lm"))
    with torch.no_grad():
        small = compact_model(model)
        for lang in (0, 1):
            inputs = {"input_ids": _ids(), "lang_ids": torch.full((2,), lang)}
            torch.testing.assert_close(small(**inputs).logits, model(**inputs).logits, rtol=1e-4, atol=1e-5)
    adapters = small.roberta.encoder.layer[0].output.adapter_modules
    assert sorted(adapters) == ["de_DE", "en_XX"] and adapters["de_DE"].dense1.in_features == 32
    assert small.roberta.encoder.layer[0].intermediate.dense.out_features < 64
    small.save_pretrained(str(tmp_path))
    reloaded = load_compact(str(tmp_path))
    assert isinstance(reloaded, t.XmodForMaskedLM)
    inputs = {"input_ids": _ids(), "lang_ids": torch.ones(2, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family, flags, kind, why", [
    ("layoutlmv3-no-bias", dict(has_spatial_attention_bias=True), "heads", "one relative-position bias"),
    ("convbert", dict(num_groups=2), "mlp", "GroupedLinearLayer"),
    ("longformer", {}, "heads", "query_global / key_global / value_global"),
])
def test_encoder_layouts_a_config_flag_makes_inexact_are_refused(family, flags, kind, why):
    import transformers as t

    if family not in AVAILABLE:
        pytest.skip(f"this transformers has no {family}")
    config = tiny_config(family)
    for key, value in flags.items():
        setattr(config, key, value)
    model = getattr(t, AVAILABLE[family].classes[1])(config)
    with pytest.raises(ValueError, match=rf"{kind!r} cannot be pruned in a '{config.model_type}' model: .*{why}"):
        prepare_model(model, MaskedDoRAConfig(target_groups=(kind,), importance="none"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


@pytest.mark.parametrize("model_type, name, config, why", [
    ("ibert", "IBert", dict(_ENCODER, num_hidden_layers=2), "QuantLinear"),
    ("xlm", "XLM", dict(vocab_size=97, emb_dim=32, n_layers=2, n_heads=4), "parallel lists"),
    ("flaubert", "Flaubert", dict(vocab_size=97, emb_dim=32, n_layers=2, n_heads=4), "parallel lists"),
    ("funnel", "Funnel", dict(vocab_size=97, d_model=32, n_head=4, d_head=8, d_inner=64, block_sizes=[1, 1]),
     "several block lists"),
    ("squeezebert", "SqueezeBert", dict(_ENCODER, embedding_size=32), "nn.Conv1d layers of kernel size 1"),
    ("fnet", "FNet", dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, intermediate_size=64),
     "no attention .* head layout"),
])
def test_encoder_layouts_the_spec_types_cannot_describe_are_refused(model_type, name, config, why):
    import transformers as t

    model = getattr(t, f"{name}Model")(getattr(t, f"{name}Config")(**config))
    with pytest.raises(ValueError, match=rf"masked_dora cannot prune a '{model_type}' model exactly: .*{why}"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), importance="none"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


@pytest.mark.parametrize("ffns", [1, 2])
def test_mobilebert_prunes_each_mlp_its_config_stacks_and_reloads_plain(tmp_path, ffns):
    """MobileBERT with num_feedforward_networks MLPs per layer (ffns - 1 stacked ones, then BERT's): a group for
    each that the layer has (the stacks of the missing ffn.<i> hold none), all cut to the same width, which the
    config's one intermediate_size then says: a process without masked_dora reloads it."""
    import transformers as t

    torch.manual_seed(0)
    config = t.MobileBertConfig(**dict(_ENCODER, hidden_size=16), num_hidden_layers=2, embedding_size=16,
                                intra_bottleneck_size=32, num_feedforward_networks=ffns)
    model = t.MobileBertForMaskedLM(config).eval()
    _prune(model, groups=("mlp",))
    assert len(get_state(model).groups) == 2 * ffns
    inputs = {"input_ids": _ids(), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        small = compact_model(model)
        torch.testing.assert_close(output_tensor(small(**inputs)), ref, rtol=1e-4, atol=1e-5)
    layer = small.mobilebert.encoder.layer[1]
    assert [m.intermediate.dense.out_features for m in [*getattr(layer, "ffn", ()), layer]] == [32] * ffns
    assert small.config.intermediate_size == 32
    small.save_pretrained(str(tmp_path))
    torch.save(inputs, tmp_path / "inputs.pt")
    torch.testing.assert_close(reload_plain_in_clean_process([(str(tmp_path), "MobileBertForMaskedLM")])[0], ref,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.skipif("luke" not in AVAILABLE, reason="this transformers has no LUKE")
def test_luke_entity_aware_queries_follow_the_kept_heads(tmp_path):
    """LUKE over words and entities with entity-aware attention: w2e_query / e2w_query / e2e_query hold head-sized
    row blocks as query does; pruned to heads 1 and 3 (not the first ones) they keep those heads' rows, and the
    word and entity logits equal the masked model's after compaction and after load_compact."""
    import transformers as t

    torch.manual_seed(0)
    model = t.LukeForMaskedLM(tiny_config("luke")).eval()
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), rank=4, importance="none",
                                          target_sparsity=0.5, alignment={"mlp": 8}))
    randomize_adapters(model)
    with torch.no_grad():
        for key in ("heads_0", "heads_1"):
            get_state(model).groups[key].mask_logits.copy_(torch.tensor([-5.0, 5.0, -5.0, 5.0]))
    harden(model)
    full = model.luke.encoder.layer[0].attention.self.e2w_query.weight.detach().clone()
    entities = dict(entity_ids=torch.tensor([[3, 5, 0], [7, 2, 9]]), entity_attention_mask=torch.ones(2, 3).long(),
                    entity_position_ids=torch.tensor([[[0, 1], [2, -1], [4, 5]], [[1, -1], [3, 4], [6, -1]]]))
    inputs = dict(input_ids=_ids(), attention_mask=torch.ones(2, 9, dtype=torch.long), **entities)
    with torch.no_grad():
        ref = model(**inputs)
        small = compact_model(model)
        out = small(**inputs)
    for name in ("logits", "entity_logits"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=1e-4, atol=1e-5)
    attention = small.luke.encoder.layer[0].attention.self
    assert [getattr(attention, f"{q}_query").out_features for q in ("w2e", "e2w", "e2e")] == [16] * 3
    assert torch.equal(attention.e2w_query.weight, torch.cat([full[8:16], full[24:32]]))
    small.save_pretrained(str(tmp_path))
    with torch.no_grad():
        reloaded = load_compact(str(tmp_path))(**inputs)
    torch.testing.assert_close(reloaded.entity_logits, ref.entity_logits, rtol=1e-4, atol=1e-5)
