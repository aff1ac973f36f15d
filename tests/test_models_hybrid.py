"""Hybrid decoders (masked_dora/models/families_hybrid.py) beyond the family chain: the Qwen3.5 VLM prunes the MLP
of its hybrid language model (gated DeltaNet and attention blocks) and reloads plainly; an MLP in some blocks only
(Nemotron-H's MLP blocks among its Mamba, attention and MoE ones: ``MLPSpec.in_some_blocks``) prunes there and
leaves the other blocks whole; Zamba's shared blocks and the pure SSMs are refused with the reason."""

from __future__ import annotations

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, compact_model, get_state, harden, prepare_model, spec_for
from masked_dora.models.blocks import holds_spec_mlp, model_blocks

from tiny_family_table import AVAILABLE, TABLE
from tiny_models import harden_and_compact, randomize_adapters, tiny_config, tiny_inputs, tiny_model
from tiny_vlms import IMAGE_ID, IMAGE_TOKENS, _qwen_patches, check_mlp_only_vlm_chain


_QWEN3_5_VLMS = {  # model_type: (text family, model class, config class)
    "qwen3_5": ("qwen3_5_text", "Qwen3_5ForConditionalGeneration", "Qwen3_5Config"),
    "qwen3_5_moe": ("qwen3_5_moe_text", "Qwen3_5MoeForConditionalGeneration", "Qwen3_5MoeConfig"),
}


def _qwen3_5_vlm(model_type: str):
    """A tiny Qwen3.5 VLM (``Qwen3_5ForConditionalGeneration``, or the MoE one) around its hybrid language model
    (block 0 gated DeltaNet, block 1 attention; the MoE one with 4 experts of width 32 and a shared expert in each;
    full rotary dims for the multimodal rotary sections), and its image inputs: a 1 x 4 x 4 grid of 16-pixel
    patches merged 2 x 2 into 4 image tokens."""
    import transformers as t

    family, model_class, config_class = _QWEN3_5_VLMS[model_type]
    text = dict(TABLE[family].config, vocab_size=128, partial_rotary_factor=1.0, rope_parameters=dict(
        rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2], mrope_interleaved=True))
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=16,
                  num_position_embeddings=16)
    torch.manual_seed(0)
    model = getattr(t, model_class)(getattr(t, config_class)(
        text_config=text, vision_config=vision, image_token_id=IMAGE_ID, video_token_id=101,
        vision_start_token_id=102, vision_end_token_id=103)).eval()
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, IMAGE_ID, (2, 6 + IMAGE_TOKENS), generator=gen)
    ids[:, 3:3 + IMAGE_TOKENS] = IMAGE_ID
    return model, dict(input_ids=ids, **_qwen_patches(16)(2, gen), mm_token_type_ids=(ids == IMAGE_ID).long())


@pytest.mark.parametrize("model_type", list(_QWEN3_5_VLMS))
def test_the_qwen3_5_vlms_prune_their_hybrid_language_models_mlp_and_reload_plainly(tmp_path, model_type):
    """Qwen3.5's VLM prunes its language model's MLP (both blocks), the Qwen3.5-MoE VLM its routed experts (the
    shared experts kept whole); heads refused; the compacted VLM reloads plainly with equal outputs."""
    import transformers as t

    family, model_class, _ = _QWEN3_5_VLMS[model_type]
    if not hasattr(t, model_class) or family not in AVAILABLE:
        pytest.skip(f"this transformers has no {model_class} or no {TABLE[family].classes}")
    model, image = _qwen3_5_vlm(model_type)
    assert spec_for(model).name == f"{model_type}+{spec_for(tiny_config(family)).name}"
    assert [hasattr(layer, "linear_attn") for layer in model.model.language_model.layers] == [True, False]
    with pytest.raises(ValueError, match=rf"'heads' cannot be pruned in a '{model_type}' model: it is a hybrid"):
        prepare_model(model, MaskedDoRAConfig(importance="none"))
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), rank=4, alignment={"mlp": 8}, importance="none",
                                          target_sparsity=0.5))
    wrapped = [n for n, m in model.named_modules() if type(m).__name__ == "MaskedDoRALinear"]
    moe = model_type == "qwen3_5_moe"
    assert len(wrapped) == 2 * (2 * 4 if moe else 3)  # per block: 4 experts' gate_up and down, or gate, up, down
    assert all(n.startswith("model.language_model.layers.") and ("shared_expert" not in n) for n in wrapped)
    first = {k: v[:1] for k, v in image.items() if k != "pixel_values"}
    first["pixel_values"] = image["pixel_values"][:int(image["image_grid_thw"][0].prod())]
    small = check_mlp_only_vlm_chain(model, image, first, tmp_path)
    text = small.config.text_config
    widths = (text.moe_intermediate_size, text.shared_expert_intermediate_size) if moe else text.intermediate_size
    assert widths == ((16, 48) if moe else 32)
    assert get_state(model).save_form == "plain"


def _refused_model(model_type):
    """A tiny causal LM of a type masked_dora refuses: Zamba (one shared block tied into blocks 2 and 4), Zamba2 (one
    shared block with per-call adapters in blocks 1 and 3), Mamba, Falcon-Mamba, Mamba-2."""
    import transformers as t

    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4)
    build = {
        "zamba": lambda: t.ZambaForCausalLM(t.ZambaConfig(**dict(common, num_hidden_layers=6), attn_layer_period=2,
                                                          attn_layer_offset=1, mamba_d_state=8, mamba_d_conv=4,
                                                          mamba_expand=2, n_mamba_heads=1, mamba_dt_rank=4)),
        "zamba2": lambda: t.Zamba2ForCausalLM(t.Zamba2Config(
            **common, layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], num_mem_blocks=1, adapter_rank=4,
            use_shared_attention_adapter=True, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_ngroups=1,
            mamba_headdim=16, n_mamba_heads=4)),
        "mamba": lambda: t.MambaForCausalLM(t.MambaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                                          state_size=8, expand=2, time_step_rank=4)),
        "falcon_mamba": lambda: t.FalconMambaForCausalLM(t.FalconMambaConfig(
            vocab_size=97, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, time_step_rank=4)),
        "mamba2": lambda: t.Mamba2ForCausalLM(t.Mamba2Config(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                                             state_size=8, expand=2, num_heads=4, head_dim=16,
                                                             n_groups=1, chunk_size=4)),
    }[model_type]
    torch.manual_seed(0)
    return build()


@pytest.mark.parametrize("model_type, why", [
    ("zamba", "one shared transformer block .* tied"), ("zamba2", "gate_up_proj_adapter_list"),
    ("mamba", "x_proj, which mixes every channel"), ("falcon_mamba", "Mamba's mixer .* x_proj"),
    ("mamba2", "gated RMSNorm normalises each of n_groups")])
def test_shared_block_and_pure_ssm_models_are_refused_with_the_reason(monkeypatch, model_type, why):
    """Zamba / Zamba2 (an MLP shared by several blocks, tied weights) and the pure SSMs (no MLP, channel groups the
    spec types do not describe) are refused at prepare_model with the reason, before anything changes; a spec
    registered for such a type is used instead."""
    import transformers as t

    from masked_dora.models import register_spec
    from masked_dora.models import specs as specs_module

    if not hasattr(t, {"zamba": "ZambaConfig", "zamba2": "Zamba2Config", "mamba": "MambaConfig",
                       "falcon_mamba": "FalconMambaConfig", "mamba2": "Mamba2Config"}[model_type]):
        pytest.skip(f"this transformers has no {model_type}")
    model = _refused_model(model_type)
    for target_groups in (("mlp",), ("mlp", "heads")):
        with pytest.raises(ValueError, match=rf"masked_dora cannot prune a '{model_type}' model exactly: .*{why}"):
            prepare_model(model, MaskedDoRAConfig(target_groups=target_groups, importance="none"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())
    monkeypatch.setattr(specs_module, "SPECS", dict(specs_module.SPECS))
    registered = register_spec(model_type, like="llama")
    assert spec_for(model.config) is registered


needs_nemotron_h = pytest.mark.skipif("nemotron_h" not in AVAILABLE, reason="this transformers has no Nemotron-H")


@needs_nemotron_h
def test_an_mlp_in_some_blocks_only_prunes_there_and_leaves_the_other_blocks_whole():
    """Nemotron-H's blocks are one mixer each (Mamba-2, MLP, attention, MoE): only the MLP block gets a group
    (MLPSpec.in_some_blocks); the compacted model equals the masked one, its MLP block is narrower, the other blocks
    hold exactly the original parameters, and the config's intermediate_size says the MLP block's width (plain)."""
    model = tiny_model("nemotron_h", kind="lm")
    with pytest.raises(ValueError, match=r"'heads' cannot be pruned in a 'nemotron_h' model: it is a hybrid model"):
        prepare_model(model, MaskedDoRAConfig(importance="none"))
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), rank=4, alignment={"mlp": 8}, importance="none",
                                          target_sparsity=0.5))
    assert sorted(get_state(model).groups) == ["mlp_1"] and get_state(model).save_form == "plain"
    assert [b.index for b in model_blocks(model, spec_for(model)) if holds_spec_mlp(b.module, b.spec)] == [1]
    randomize_adapters(model)
    ref, small, out = harden_and_compact(model)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert small.config.intermediate_size == 32 and small.model.layers[1].mixer.down_proj.in_features == 32
    kept = dict(small.named_parameters())
    others = [n for n in original if n.startswith("model.layers.") and not n.startswith("model.layers.1.")]
    assert others and all(torch.equal(kept[n], original[n]) for n in others)


@needs_nemotron_h
def test_an_mlp_in_some_blocks_refuses_a_block_with_part_of_it_and_a_model_with_none():
    """A block holding some of the MLP's modules but not all is an error naming them; a model none of whose blocks
    holds the MLP refuses 'mlp'; both before anything changes. The flag is for dense MLPs."""
    import transformers as t

    from masked_dora.models import MLPSpec

    model = tiny_model("nemotron_h", kind="lm")
    del model.model.layers[1].mixer.down_proj
    with pytest.raises(ValueError, match=r"has the MLP's \['mixer.up_proj'\] but not \['mixer.down_proj'\]"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), importance="none"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())
    config = tiny_config("nemotron_h")
    config.layers_block_type = ["linear_attention", "full_attention"]
    config.num_hidden_layers = 2
    model = t.NemotronHForCausalLM(config)
    with pytest.raises(ValueError, match=r"'mlp' cannot be pruned in a 'nemotron_h' model: none of its blocks holds "
                                         r"the MLP the spec names"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), importance="none"))
    with pytest.raises(ValueError, match="in_some_blocks is supported for a dense MLP, not with experts"):
        MLPSpec(producers=("gate_up_proj",), consumer="down_proj", size_key="intermediate_size", segments=(2,),
                experts="mlp.experts", in_some_blocks=True)


@needs_nemotron_h
def test_an_mlp_in_some_blocks_trains_compacted_and_its_training_state_reloads(tmp_path):
    """compact_for_training narrows the MLP block only (the other blocks hold no group): training then gives the
    full-width run's model (float64), and its training state loads into a fresh model, compacted alike."""
    from masked_dora.models import compact_for_training, load_training_state, save_training_state, train_masked

    def hardened():
        model = tiny_model("nemotron_h", kind="lm").double()
        model.config._experts_implementation = "eager"  # (grouped_mm has no float64 kernel)
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), rank=4, alignment={"mlp": 8},
                                              importance="none", target_sparsity=0.5))
        randomize_adapters(model)
        harden(model)
        return model

    def loss(model, batch):
        out = model(**batch).logits
        return (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)).mean()

    batches = [tiny_inputs(seed=s) for s in range(3)]
    full, small = hardened(), hardened()
    compact_for_training(small)
    assert small.model.layers[1].mixer.down_proj.in_features == 32
    train_masked(full, batches, loss, steps=3, lr=1e-2, sparsity_penalty=False, compact=False)
    train_masked(small, batches, loss, steps=3, lr=1e-2, sparsity_penalty=False)
    inputs = tiny_inputs(seed=7)
    with torch.no_grad():
        ref = full(**inputs).logits
        torch.testing.assert_close(small(**inputs).logits, ref, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(compact_model(small)(**inputs).logits, ref, rtol=1e-9, atol=1e-11)
    save_training_state(small, str(tmp_path))
    fresh = tiny_model("nemotron_h", kind="lm").double()
    fresh.config._experts_implementation = "eager"
    load_training_state(fresh, str(tmp_path))
    assert get_state(fresh).compacted_for_training and sorted(get_state(fresh).groups) == ["mlp_1"]
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).logits, ref, rtol=1e-9, atol=1e-11)
