"""What the fused-attention and MoE families need beyond the family chain (tests/tiny_families_fused_moe.py):
an MLP width without a config key (BLOOM, MPT, DeepSeek-V3's experts), dense blocks among MoE ones (DeepSeek-V3),
and Qwen2-MoE's shared expert kept whole."""

from __future__ import annotations

import warnings
from dataclasses import replace as replace_dataclass

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, get_state, load_compact, prepare_model
from masked_dora.models import specs as specs_module
from masked_dora.models.compact import LAYER_SIZES_KEY

from tiny_family_table import AVAILABLE
from tiny_models import (assert_reloads_and_generates_equal, harden_and_compact, output_tensor, randomize_adapters,
                         tiny_inputs, tiny_model)


def _llama_without_mlp_size_key(monkeypatch):
    """A tiny Llama whose spec says its config has no key for the MLP width (as BLOOM's and MPT's have none)."""
    monkeypatch.setattr(specs_module, "SPECS", dict(specs_module.SPECS))
    llama = specs_module.SPECS["llama"]
    specs_module.register_spec("llama-fixed-mlp", spec=replace_dataclass(
        llama, name="llama-fixed-mlp", model_types=(), mlp=replace_dataclass(llama.mlp, size_key="")))
    model = tiny_model("llama", kind="lm")
    model.config.model_type = "llama-fixed-mlp"
    return model


@pytest.mark.parametrize("groups, plain", [(("mlp",), False), (("heads",), True)])
def test_mlp_width_without_a_config_key_saves_per_layer_once_pruned(monkeypatch, tmp_path, groups, plain):
    """``MLPSpec(size_key="")``: the config cannot say a pruned MLP width, so pruning the MLP plans (and writes)
    the per-layer form with that reason; pruning only the heads keeps the plain form, the width untouched."""
    model = _llama_without_mlp_size_key(monkeypatch)
    width = model.config.intermediate_size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_model(model, MaskedDoRAConfig(target_groups=groups, rank=2, alignment={"mlp": 8}, importance="none",
                                              target_sparsity=0.5))
    assert any("has no key for the MLP width alone" in str(w.message) for w in caught) != plain
    assert get_state(model).save_form == ("plain" if plain else "per_layer")
    randomize_adapters(model)
    ref, small, out = harden_and_compact(model)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert hasattr(small.config, LAYER_SIZES_KEY) != plain
    assert small.config.intermediate_size == width  # never rewritten: the key is not the spec's
    small.save_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(load_compact(str(tmp_path))(**tiny_inputs())), ref,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.skipif("qwen2_moe" not in AVAILABLE, reason="this transformers has no Qwen2-MoE")
def test_qwen2_moe_prunes_the_experts_and_keeps_the_shared_expert_whole():
    """Qwen2-MoE's experts lose channels (each expert the same count); its shared expert and its gate stay."""
    model = tiny_model("qwen2_moe", kind="lm")
    shared = {n: p.detach().clone() for n, p in model.named_parameters() if ".shared_expert" in n}
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), rank=2, alignment={"mlp": 8}, importance="none",
                                          target_sparsity=0.5))
    assert not any(".shared_expert" in n for n, p in model.named_parameters() if p.requires_grad)
    randomize_adapters(model)
    ref, small, out = harden_and_compact(model)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert small.config.moe_intermediate_size == 16 and small.config.shared_expert_intermediate_size == 48
    for layer in small.model.layers:
        assert tuple(layer.mlp.experts.gate_up_proj.shape) == (4, 32, 32)
        assert tuple(layer.mlp.experts.down_proj.shape) == (4, 32, 16)
    for n, p in small.named_parameters():
        if ".shared_expert" in n:
            torch.testing.assert_close(p, shared[n], rtol=0, atol=0)


@pytest.mark.parametrize("dense", [dict(mlp_only_layers=[0]), dict(decoder_sparse_step=2)])
def test_dense_blocks_of_an_moe_family_prune_as_their_own_mlp_group(tmp_path, dense):
    """``ModelSpec(dense_mlp=...)``: a Qwen3-MoE with a dense block (``mlp_only_layers=[0]``, or
    ``decoder_sparse_step=2``: block 0 dense, block 1 sparse) prunes that block's MLP as its own group (its width
    under ``intermediate_size``) beside the expert block; uniform pruning saves a plain checkpoint with both keys,
    which reloads equal."""
    import transformers as t

    config = tiny_model("qwen3_moe").config
    for key, value in dense.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = t.Qwen3MoeForCausalLM(config).eval()
    prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none",
                                          target_sparsity={"mlp": 0.5, "heads": 0.5}))
    state = get_state(model)
    assert state.save_form == "plain"
    assert [g.num_units for g in state.groups_of("mlp")] == [64, 4 * 32]  # dense width 64; 4 experts of 32
    randomize_adapters(model)
    ref, small, out = harden_and_compact(model)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert (small.config.intermediate_size, small.config.moe_intermediate_size) == (32, 16)
    assert small.model.layers[0].mlp.gate_proj.out_features == 32
    small.save_pretrained(tmp_path)
    with torch.no_grad():
        reloaded = t.Qwen3MoeForCausalLM.from_pretrained(str(tmp_path)).eval()
        torch.testing.assert_close(output_tensor(reloaded(**tiny_inputs())), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif("qwen2_moe" not in AVAILABLE, reason="this transformers has no Qwen2-MoE")
def test_qwen2_moe_dense_block_prunes_and_the_shared_expert_stays_whole(tmp_path):
    """Qwen2-MoE with decoder_sparse_step=2: block 0's dense MLP (width intermediate_size) prunes as its own
    group; block 1's experts prune, its shared expert (width shared_expert_intermediate_size) stays whole; a
    global allocation gives the two blocks different widths: the per-layer form, which load_compact reads."""
    model = tiny_model("qwen2_moe-dense", kind="lm")
    shared = {n: p.detach().clone() for n, p in model.named_parameters() if ".shared_expert" in n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the per-layer form's warning
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), rank=2, alignment={"mlp": 8},
                                              importance="none", target_sparsity=0.5, allocation="global"))
    state = get_state(model)
    assert [g.num_units for g in state.groups_of("mlp")] == [64, 4 * 32]
    randomize_adapters(model)
    with torch.no_grad():
        state.group("mlp", 0).mask_logits.add_(10.0)  # the dense block keeps all 64; the experts lose the rest
    ref, small, out = harden_and_compact(model)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert [s["intermediate"] for s in getattr(small.config, LAYER_SIZES_KEY)] == [64, 8]
    assert tuple(small.model.layers[1].mlp.experts.down_proj.shape) == (4, 32, 8)
    for n, p in small.named_parameters():
        if ".shared_expert" in n:
            torch.testing.assert_close(p, shared[n], rtol=0, atol=0)
    small.save_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(load_compact(str(tmp_path))(**tiny_inputs())), ref,
                                   rtol=1e-4, atol=1e-5)


def test_dense_mlp_needs_an_moe_mlp():
    llama = specs_module.SPECS["llama"]
    with pytest.raises(ValueError, match="dense_mlp is the dense MLP of an MoE family's other blocks"):
        replace_dataclass(llama, dense_mlp=llama.mlp)


@pytest.mark.skipif("codegen" not in AVAILABLE, reason="this transformers has no CodeGen")
@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_codegen_heads_prune_the_same_count_in_each_qkv_chunk(tmp_path, allocation):
    """CodeGen's qkv_proj holds mp_num=4 chunks, each [q | v | k] of its own 2 (of 8) heads here: a head's rows
    are in three places of its chunk, and every chunk keeps the same count of heads. The compacted model (whose
    attention splits the rows into 4 chunks again) equals the masked one, reloads and generates the same."""
    import transformers as t

    config = t.CodeGenConfig(vocab_size=97, n_embd=64, n_layer=2, n_head=8, n_inner=64, n_positions=64,
                             rotary_dim=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = t.CodeGenForCausalLM(config).eval()
    sparsity = {"uniform": 0.5, "global": 0.25}[allocation]  # global: layer 1 keeps its 8 heads, layer 0 4
    prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none", allocation=allocation,
                                          target_sparsity={"mlp": 0.5, "heads": sparsity}))
    randomize_adapters(model)
    with torch.no_grad():  # layer 0: the first head of every chunk scores higher (no chunk keeps its best two)
        get_state(model).group("heads", 0).mask_logits.copy_(torch.tensor([2.0, -1, 1, -2, 3, -3, 0.5, -0.5]))
        get_state(model).group("heads", 1).mask_logits.add_(10.0)  # global: layer 1 keeps all its heads
    ref, small, out = harden_and_compact(model)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    kept = get_state(model).group("heads", 0).hard()
    assert kept.tolist() == [True, False] * 4
    heads = [block.attn.qkv_proj.out_features // (3 * 8) for block in small.transformer.h]
    assert heads == ([4, 4] if allocation == "uniform" else [4, 8])
    assert_reloads_and_generates_equal(small, tmp_path, model, ref, tiny_inputs())


@pytest.mark.parametrize("kwargs", [dict(qkv="attn.qkv", qkv_layout="chunked"), dict(qkv="attn.qkv", qkv_chunks=4),
                                    dict(qkv_layout="chunked", qkv_chunks=4)])
def test_chunked_qkv_layout_needs_a_fused_qkv_and_its_chunk_count(kwargs):
    from masked_dora.models.specs import HeadSpec

    with pytest.raises(ValueError, match="qkv_layout='chunked' needs a fused qkv and qkv_chunks >= 1"):
        HeadSpec(query="", key="", value="", output="attn.out", heads_key="n_head", **kwargs)
