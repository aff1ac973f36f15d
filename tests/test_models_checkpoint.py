"""Pruned checkpoints (plain transformers reload in a clean process), training state, PEFT import."""

import copy
import json
import warnings

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, SparsityController, compact_model, from_peft, get_state, harden,
                                load_compact, load_training_state, prepare_model, save_training_state)
from masked_dora.models.compact import LAYER_SIZES_KEY

from tiny_family_table import AVAILABLE as TABLE_FAMILIES
from tiny_models import output_tensor, randomize_adapters, reload_plain_in_clean_process, tiny_inputs, tiny_model

CFG = dict(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)

def _reload_in_clean_process(path, auto):
    return reload_plain_in_clean_process([(path, auto)])[0]


@pytest.mark.parametrize("family, auto", [("qwen2", "AutoModelForCausalLM"), ("bert", "AutoModel")])
def test_uniform_checkpoint_reloads_with_plain_transformers(tmp_path, family, auto):
    kind = "lm" if family == "qwen2" else "base"
    model = tiny_model(family, kind=kind)
    groups = ("mlp", "heads") if family == "qwen2" else ("mlp",)  # BERT configs cannot express pruned heads
    prepare_model(model, MaskedDoRAConfig(target_groups=groups, **CFG))
    randomize_adapters(model)
    harden(model)
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
    small = compact_model(model)
    small.save_pretrained(str(tmp_path))
    torch.save(inputs, tmp_path / "inputs.pt")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["intermediate_size"] == 32 and LAYER_SIZES_KEY not in config
    out = _reload_in_clean_process(str(tmp_path), auto)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "distilbert"])
def test_non_uniform_checkpoint_loads_through_masked_dora(tmp_path, family):
    model = tiny_model(family)
    prepare_model(model, MaskedDoRAConfig(allocation="global", **CFG))
    randomize_adapters(model)
    with torch.no_grad():
        get_state(model).group("mlp", 0).mask_logits.add_(5.0)
    harden(model)
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
    small = compact_model(model)
    sizes = getattr(small.config, LAYER_SIZES_KEY)
    assert sizes[0]["intermediate"] != sizes[1]["intermediate"]
    small.save_pretrained(str(tmp_path))
    loaded = load_compact(str(tmp_path))
    with torch.no_grad():
        out = output_tensor(loaded(**inputs))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    from transformers import AutoModel
    with pytest.raises(Exception, match="mismatch"):  # a plain load fails loudly, it never loads wrong weights
        AutoModel.from_pretrained(str(tmp_path))


def _keep_first(model, counts) -> None:
    """Fix the MLP masks of a prepared model: block i keeps its first ``counts[i]`` channels."""
    for i, count in enumerate(counts):
        group = get_state(model).group("mlp", i)
        group.set_mask(torch.arange(group.num_units) < count)


@pytest.mark.parametrize("family, first", [
    ("llama", [16, 32]),  # built 64 wide: kept 8 and 16 are not one intermediate_size (not a quarter, twice)
    pytest.param("gemma4_text", [16, 32, 32, 64], marks=pytest.mark.skipif(  # built 32, 32 and double-wide 64, 64
        "gemma4_text" not in TABLE_FAMILIES, reason="this transformers has no Gemma 4")),
])
def test_a_per_layer_checkpoint_pruned_again_saves_its_own_sizes(tmp_path, family, first):
    """A per-layer checkpoint (load_compact) pruned once more, to half of each block's width: its blocks were built
    at the sizes the checkpoint lists, not as its config's intermediate_size says, so the second compaction reads
    the kept widths against the blocks the config builds. (It took a block built 16 wide of a config's 64 for one
    the config builds a quarter as wide: it planned a plain checkpoint, of one intermediate_size for unequal widths,
    and compact_model failed with a size mismatch.)"""
    model = tiny_model(family, kind="lm")
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), **CFG))
    _keep_first(model, first)
    compact_model(model).save_pretrained(str(tmp_path / "first"))
    again = load_compact(str(tmp_path / "first"))
    assert [layer.mlp.down_proj.in_features for layer in again.model.layers] == first
    prepare_model(again, MaskedDoRAConfig(target_groups=("mlp",), **CFG))
    assert get_state(again).save_form == "per_layer"
    randomize_adapters(again)
    second = [width // 2 for width in first]
    _keep_first(again, second)
    small = _compacts_saves_and_reloads_equal(again, str(tmp_path / "second"))
    assert [layer.mlp.down_proj.in_features for layer in small.model.layers] == second


def _compacts_saves_and_reloads_equal(model, path: str):
    """``compact_model(model)``, equal to ``model``, saved to ``path`` and reloaded equal by ``load_compact``."""
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        small = compact_model(model)
        torch.testing.assert_close(output_tensor(small(**inputs)), ref, rtol=1e-4, atol=1e-5)
    small.save_pretrained(path)
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(load_compact(path)(**inputs)), ref, rtol=1e-4, atol=1e-5)
    return small


def test_a_per_layer_checkpoint_with_pruned_heads_prunes_its_mlp_again(tmp_path):
    """A per-layer checkpoint whose heads were pruned (2 of the config's 4 per block) has its MLP pruned once more:
    the blocks' head counts are the checkpoint's, not the config's, in the sizes the second compaction saves (it
    planned a plain checkpoint with the config's 4 heads, and compact_model failed with a size mismatch)."""
    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(**dict(CFG, save_form="per_layer")))
    randomize_adapters(model)
    harden(model)
    compact_model(model).save_pretrained(str(tmp_path / "first"))
    again = load_compact(str(tmp_path / "first"))
    assert again.config.num_attention_heads == 4 and again.model.layers[0].self_attn.q_proj.out_features == 2 * 8
    prepare_model(again, MaskedDoRAConfig(target_groups=("mlp",), **CFG))
    randomize_adapters(again)
    harden(again)
    _compacts_saves_and_reloads_equal(again, str(tmp_path / "second"))


@pytest.mark.parametrize("family", [
    "llama",
    pytest.param("gpt_oss", marks=pytest.mark.skipif(  # its attention sinks: one per query head
        "gpt_oss" not in TABLE_FAMILIES, reason="this transformers has no gpt-oss")),
])
def test_a_per_layer_checkpoint_with_pruned_heads_prunes_its_heads_again(tmp_path, family):
    """A per-layer checkpoint keeping 2 of its config's 4 query heads and 1 of 2 KV heads has its heads pruned once
    more, to 1 query head: the head groups (and gpt-oss's per-head sinks) are read against the heads each block
    was built with, not the config's (prepare_model failed: "q_proj.out_features is 16, expected 32"). One
    query head and one KV head everywhere is a plain checkpoint again. With gqa="kv_groups" the one KV head left
    in each block can prune nothing: refused."""
    model = tiny_model(family, kind="lm")
    prepare_model(model, MaskedDoRAConfig(**dict(CFG, save_form="per_layer")))
    randomize_adapters(model)
    harden(model)
    compact_model(model).save_pretrained(str(tmp_path / "first"))
    again = load_compact(str(tmp_path / "first"))
    assert [s["heads"] for s in getattr(again.config, LAYER_SIZES_KEY)] == [2, 2]
    with pytest.raises(ValueError, match=r"one KV head for its 2 query heads \(multi-query attention\), so "
                                         r"gqa='kv_groups' can prune no head \(the only KV group of each block"):
        prepare_model(again, MaskedDoRAConfig(**CFG))
    prepare_model(again, MaskedDoRAConfig(**dict(CFG, gqa="query_heads")))
    assert get_state(again).save_form == "plain"
    randomize_adapters(again)
    harden(again)
    small = _compacts_saves_and_reloads_equal(again, str(tmp_path / "second"))
    assert not hasattr(small.config, LAYER_SIZES_KEY)
    assert (small.config.num_attention_heads, small.config.num_key_value_heads) == (1, 1)
    assert [layer.self_attn.q_proj.out_features for layer in small.model.layers] == [small.config.head_dim] * 2


def test_a_per_layer_checkpoint_with_one_kv_head_in_some_blocks_prunes_the_others(tmp_path):
    """A per-layer checkpoint keeping both KV groups in block 0 and one in block 1, its heads pruned again with
    gqa="kv_groups": block 1's one KV group always stays (a rounding warning says so), block 0 prunes one of its
    two; not refused for the whole model (the multi-query refusal is for a model whose every block has one)."""
    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(**dict(CFG, save_form="per_layer")))
    randomize_adapters(model)
    get_state(model).group("heads", 0).set_mask(torch.tensor([True, True]))
    get_state(model).group("heads", 1).set_mask(torch.tensor([False, True]))
    _keep_first(model, [32, 32])
    compact_model(model).save_pretrained(str(tmp_path / "first"))
    again = load_compact(str(tmp_path / "first"))
    assert [s["kv_heads"] for s in getattr(again.config, LAYER_SIZES_KEY)] == [2, 1]
    with pytest.warns(UserWarning, match="heads"):
        prepare_model(again, MaskedDoRAConfig(**CFG))
    randomize_adapters(again)
    harden(again)
    small = _compacts_saves_and_reloads_equal(again, str(tmp_path / "second"))
    assert [layer.self_attn.k_proj.out_features for layer in small.model.layers] == [8, 8]
    assert [layer.self_attn.q_proj.out_features for layer in small.model.layers] == [16, 16]


def test_hidden_pruning_of_a_per_layer_checkpoint_is_refused_before_training(tmp_path):
    """Hidden pruning compacts only to a plain checkpoint, which a per-layer checkpoint's blocks (16 and 32 of its
    config's 64) halved cannot be: prepare_model refuses it, reading the widths against the blocks the config
    builds as compact_model does (it accepted them, and compact_model failed once the training was done)."""
    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), **CFG))
    _keep_first(model, [16, 32])
    compact_model(model).save_pretrained(str(tmp_path))
    again = load_compact(str(tmp_path))
    with pytest.raises(ValueError, match="hidden pruning compacts to a plain checkpoint"):
        prepare_model(again, MaskedDoRAConfig(target_groups=("mlp", "hidden"),
                                              **dict(CFG, alignment={"mlp": 8, "hidden": 8})))
    assert not hasattr(again, "masked_dora")


def test_vlm_with_batchnorms_saved_under_hub_names_reloads_from_the_per_layer_form(tmp_path):
    """Emu3's VQ-VAE has BatchNorms, which transformers saves under hub names (vqmodel.*, not model.vqmodel.*).
    load_state_dict never reports a BatchNorm's num_batches_tracked missing (it fills it in), so load_compact
    must rebuild it from the saved layout as the rest: a per-layer checkpoint (allocation="global") reloads with
    the masked model's logits and the saved counters."""
    from helpers import rel_err
    from tiny_vlms import available, harden_and_compact_vlm, image_inputs, tiny_vlm

    if not available("emu3"):
        pytest.skip("this transformers has no Emu3")
    model = tiny_vlm("emu3")
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("num_batches_tracked"):
                buffer.fill_(7)
    prepare_model(model, MaskedDoRAConfig(**CFG, allocation="global"))
    assert get_state(model).save_form == "per_layer"
    randomize_adapters(model)
    ref, small, _ = harden_and_compact_vlm(model, "emu3")
    small.save_pretrained(str(tmp_path))
    reloaded = load_compact(str(tmp_path))
    counters = {name: int(b) for name, b in reloaded.named_buffers() if name.endswith("num_batches_tracked")}
    assert counters and set(counters.values()) == {7}
    with torch.no_grad():
        assert rel_err(reloaded(**image_inputs("emu3")).logits, ref) < 1e-5


def test_load_compact_still_imports_from_its_old_module():
    """Scripts written before load_compact moved to compact_load import it from masked_dora.models.compact."""
    from masked_dora.models import compact
    from masked_dora.models.compact import load_compact as old_path

    assert old_path is load_compact
    with pytest.raises(AttributeError, match="no attribute 'load_compat'"):
        compact.load_compat


def test_loader_rejects_bad_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        load_compact(str(tmp_path / "nope"))


def test_training_state_round_trip_is_bit_identical(tmp_path):
    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(gqa="query_heads", **CFG))
    randomize_adapters(model, seed=3)
    controller = SparsityController(model)
    with torch.no_grad():
        controller.controllers["mlp"].lambda_1.fill_(0.7)
        controller.controllers["mlp"].step.fill_(5)
        get_state(model).groups["heads_0"].gate.set_temperature(0.3)
    save_training_state(model, str(tmp_path), controller)
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))

    fresh = tiny_model("llama", kind="lm")
    fresh_controller = None
    load_training_state(fresh, str(tmp_path))
    fresh_controller = SparsityController(fresh)
    load_training_state(fresh, str(tmp_path), fresh_controller)  # already prepared: loads in place
    with torch.no_grad():
        out = output_tensor(fresh(**inputs))
    assert torch.equal(out, ref)
    assert float(fresh_controller.controllers["mlp"].lambda_1.detach()) == pytest.approx(0.7)
    assert int(fresh_controller.controllers["mlp"].step) == 5
    assert float(get_state(fresh).groups["heads_0"].gate.temperature) == pytest.approx(0.3)
    assert get_state(fresh).config == get_state(model).config
    # the base weights are not in the file
    from safetensors.torch import load_file
    keys = load_file(str(tmp_path / "masked_dora_adapter.safetensors")).keys()
    assert not any(k.endswith((".weight", ".bias")) and "lora" not in k for k in keys), sorted(keys)[:5]
    with pytest.raises(ValueError, match="model_type"):
        load_training_state(tiny_model("bert"), str(tmp_path))


@pytest.mark.skipif("wav2vec2-conformer" not in TABLE_FAMILIES, reason="this transformers has no Wav2Vec2-Conformer")
def test_training_state_keeps_the_batchnorm_statistics_training_moved(tmp_path):
    """The conformer's convolution modules hold BatchNorms inside the pruned blocks: train-mode steps move their
    running statistics (buffers, which prepare_model does not freeze), and the trained model's eval outputs read
    them. The training state carries them: a fresh base model loaded from it gives the trained model's outputs,
    bit for bit (without them, a relative error of 0.2 after 3 steps)."""
    from masked_dora.models import train_masked

    family = "wav2vec2-conformer"
    model = tiny_model(family, kind="lm")
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **CFG))
    inputs = tiny_inputs(family=family)
    train_masked(model, [inputs], lambda m, batch: output_tensor(m(**batch)).pow(2).mean(), steps=3)
    statistics = model.wav2vec2_conformer.encoder.layers[0].conv_module.batch_norm
    assert int(statistics.num_batches_tracked) == 3
    save_training_state(model, str(tmp_path))
    fresh = load_training_state(tiny_model(family, kind="lm"), str(tmp_path))
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(output_tensor(fresh(**inputs)), output_tensor(model(**inputs)))
    trained, loaded = model.state_dict(), fresh.state_dict()
    assert trained.keys() == loaded.keys() and all(torch.equal(trained[k], loaded[k]) for k in trained)


@pytest.mark.parametrize("use_dora", [True, False])
def test_from_peft_keeps_the_peft_function(use_dora):
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama", kind="lm")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, use_dora=use_dora, lora_dropout=0.0,
                                                  target_modules=["q_proj", "v_proj", "down_proj", "lm_head"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
            if "lora_magnitude_vector" in name:
                p.mul_(1.3)
    peft_model.eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = output_tensor(peft_model(**inputs))
    masked = from_peft(peft_model).eval()
    q = masked.model.layers[0].self_attn.q_proj
    assert q.rank == 4 and q.scaling == pytest.approx(2.0) and q.lora_B.abs().sum() > 0
    with torch.no_grad():
        out = output_tensor(masked(**inputs))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="peft_model"):
        from_peft(masked)


def test_from_peft_carries_lora_dropout_and_trains_like_peft():
    """A PEFT DoRA adapter with lora_dropout: from_peft keeps the dropout (it used to drop it without a word),
    and a training-mode forward with the same dropout draws gives PEFT's loss and gradients, with every group
    member adapted in PEFT (each adapted layer draws one dropout mask, in the same order)."""
    from peft import LoraConfig, get_peft_model

    members = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(tiny_model("llama", kind="lm").double(),
                                LoraConfig(r=4, lora_alpha=8, use_dora=True, lora_dropout=0.25, target_modules=members,
                                           init_lora_weights=False))
    peft_model.train()
    inputs = tiny_inputs()

    def step(model, params):
        torch.manual_seed(4)
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        return loss, torch.autograd.grad(loss, params)

    peft_B = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    ref_loss, ref_grads = step(peft_model, peft_B)
    assert get_state(from_peft(copy.deepcopy(peft_model))).config.lora_dropout == 0.25  # the default config
    # the same, with a gate that draws no noise, so the dropout masks come from the same random stream as PEFT's
    masked = from_peft(peft_model, MaskedDoRAConfig(rank=4, alpha=8, lora_dropout=0.25, gate="sigmoid_ste",
                                                    importance="none"))
    layer = masked.model.layers[0].mlp.up_proj
    assert layer.lora_dropout == 0.25 and layer.dropout_mode == "peft"
    for group in get_state(masked).groups.values():  # every channel kept: PEFT's function
        group.set_mask(torch.ones(group.num_units, dtype=torch.bool))
    masked.train()
    ours_B = [m.lora_B for m in masked.modules() if hasattr(m, "lora_dropout") and hasattr(m, "lora_B")]
    loss, grads = step(masked, ours_B)
    assert abs(float(loss - ref_loss)) <= 1e-10 * abs(float(ref_loss))
    assert len(grads) == len(ref_grads)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-12)


def test_non_uniform_query_heads_round_trip(tmp_path):
    model = tiny_model("llama", kind="lm")
    cfg = {**CFG, "target_sparsity": {"mlp": 0.5, "heads": 0.25}}
    prepare_model(model, MaskedDoRAConfig(gqa="query_heads", allocation="global", **cfg))
    randomize_adapters(model, seed=5)
    with torch.no_grad():
        get_state(model).group("heads", 1).mask_logits.add_(5.0)  # layer 1 keeps all its query heads
    harden(model)
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
    small = compact_model(model)
    heads = [s["heads"] for s in getattr(small.config, LAYER_SIZES_KEY)]
    assert heads == [2, 4], heads  # 6 of 8 query heads: one block (a head per KV group) each, the rest to layer 1
    assert all(s["kv_heads"] == 2 for s in getattr(small.config, LAYER_SIZES_KEY))
    small.save_pretrained(str(tmp_path))
    with torch.no_grad():
        out = output_tensor(load_compact(str(tmp_path))(**inputs))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_prepare_refuses_a_peft_wrapped_layer():
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="from_peft"):
        prepare_model(peft_model.get_base_model(), MaskedDoRAConfig(**CFG))


def test_realistic_head_layout_saves_and_reloads(tmp_path):
    """32 query / 8 KV heads at 25% keeps 24 heads: transformers refuses hidden_size % 24 != 0 as a plain
    config (save_pretrained raised after compaction); prepare_model says so before any training, it saves in
    the per-layer form and reloads equal, generating the same tokens; save_form="plain" is refused up front."""
    import transformers as t

    torch.manual_seed(0)
    model = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=97, hidden_size=128, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=32, num_key_value_heads=8,
                                             max_position_embeddings=64)).eval()
    with pytest.raises(ValueError, match=r"save_form: a plain checkpoint cannot hold this pruning \(LlamaConfig "
                                         r"refuses the pruned sizes: .*not a multiple of the number of attention"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("heads",), target_sparsity=0.25, importance="none",
                                              save_form="plain"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())  # nothing changed
    with pytest.warns(UserWarning, match=r"will save in the per-layer form \(LlamaConfig refuses"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("heads",), target_sparsity=0.25, importance="none"))
    assert get_state(model).save_form == "per_layer"
    randomize_adapters(model)
    harden(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided at prepare: no second warning at compaction
        small = compact_model(model)
    assert [s["heads"] for s in getattr(small.config, LAYER_SIZES_KEY)] == [24, 24]
    small.save_pretrained(tmp_path)
    reloaded = load_compact(str(tmp_path))
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(reloaded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)
    gen = dict(max_new_tokens=6, do_sample=False)
    assert torch.equal(reloaded.generate(ids[:1], **gen), model.generate(ids[:1], **gen))


def test_save_form_per_layer_is_honoured_where_plain_would_do(tmp_path):
    model = tiny_model("qwen2", kind="lm")
    prepare_model(model, MaskedDoRAConfig(save_form="per_layer", **CFG))
    assert get_state(model).save_form == "per_layer"
    randomize_adapters(model)
    harden(model)
    small = compact_model(model)
    assert hasattr(small.config, LAYER_SIZES_KEY)
    small.save_pretrained(tmp_path)
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(load_compact(str(tmp_path))(**inputs)),
                                   output_tensor(model(**inputs)), rtol=1e-4, atol=1e-5)
