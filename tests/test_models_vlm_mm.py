"""What the VLM rows of Llama 4 (``llama4``) and Gemma 3n need beyond tests/test_models_vlm.py's chain: compaction
builds the smaller model in the original's dtype without casting its complex buffers (Llama 4's vision rotary
``freqs_ci``); Gemma 3n's language model (``gemma3n_text``) prunes alone, its per-layer MLP widths in a plain
config, and keeps the MLP of its sparse layers and the heads of its KV-sharing layers whole (refused where every layer
would)."""

from __future__ import annotations

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, compact_model, harden, load_compact, prepare_model, spec_for
from masked_dora.models.compact import build_compact_model

from helpers import rel_err
from tiny_models import randomize_adapters
from tiny_vlm_configs import IMAGE_ID
from tiny_vlm_configs_mm import gemma3n, gemma3n_stand_in_tower, gemma3n_text, llama4, shieldgemma2
from wrapped_lm_chain import compact_chain, outside_blocks, train_step

CONFIG = dict(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)
TOL = 1e-5  # float32: the compacted model computes the kept channels' sums in another order
IDS = torch.randint(3, 100, (2, 10), generator=torch.Generator().manual_seed(1))


def _image_inputs(size: int) -> dict:
    """The two rows of IDS with 4 image tokens (positions 3 to 6) and their ``size`` px images."""
    ids = IDS.clone()
    ids[:, 3:7] = IMAGE_ID
    return dict(input_ids=ids, pixel_values=torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2)))


def _chain(model, block_lists, train, image: dict, path) -> dict:
    """compact_chain (MLP and heads) on text and ``image`` inputs, then what every VLM must show: the image reaches
    the logits, the compacted model equals the masked one, everything outside the blocks is bit-identical."""
    c = compact_chain(model, MaskedDoRAConfig(**CONFIG), block_lists, train,
                      {"text": dict(input_ids=IDS), "image": image}, "image", str(path), {})
    with torch.no_grad():
        other = dict(image, pixel_values=image["pixel_values"] + 1.0)
        assert rel_err(c["model"](**other).logits, c["ref"]["image"]) > 1e-3
    for kind in c["inputs"]:
        assert rel_err(c["out"][kind], c["ref"][kind]) < TOL, kind
    kept = outside_blocks(c["small"], block_lists)
    assert kept.keys() == c["before"].keys() and all(torch.equal(v, c["before"][k]) for k, v in kept.items())
    return c


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


def _gemma3n_text(**keys):
    import transformers

    if not hasattr(transformers, "Gemma3nForCausalLM"):
        pytest.skip("this transformers has no Gemma 3n")
    torch.manual_seed(0)
    return transformers.Gemma3nForCausalLM(gemma3n_text(transformers, **keys)).eval()


def _prune_compact_compare(model, groups, ids):
    """prepare (``groups``) → harden → compact: the compacted model's logits equal the masked model's; returns
    (masked model, compacted model, reference logits)."""
    prepare_model(model, MaskedDoRAConfig(**CONFIG, target_groups=groups))
    randomize_adapters(model)
    harden(model)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        small = compact_model(model)
        assert rel_err(small(input_ids=ids).logits, ref) < TOL
    return model, small, ref


def test_gemma3n_text_prunes_per_layer_mlp_widths_and_heads(tmp_path):
    """Gemma 3n's language model alone: its MLP (a width per layer, 64 and 48) and its heads prune inside AltUp,
    Laurel and the per-layer embeddings; its config says the pruned widths per layer (intermediate_size, a list:
    MLPSpec.size_per_layer) and the uniform head counts, so a plain from_pretrained reloads to equal logits and
    generate() tokens."""
    import transformers

    from masked_dora.models.blocks import LAYER_SIZES_KEY

    model = _gemma3n_text()
    assert spec_for(model).name == "gemma3n_text"
    model, small, ref = _prune_compact_compare(model, ("mlp", "heads"), IDS)
    assert model.masked_dora.save_form == "plain"
    assert [layer.mlp.down_proj.in_features for layer in small.model.layers] == [32, 24]
    assert [layer.self_attn.q_proj.out_features for layer in small.model.layers] == [16, 16]
    small.save_pretrained(str(tmp_path))
    reloaded = transformers.Gemma3nForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert reloaded.config.intermediate_size == [32, 24] and not getattr(reloaded.config, LAYER_SIZES_KEY, None)
    with torch.no_grad():
        assert rel_err(reloaded(input_ids=IDS).logits, ref) < TOL
    gen = dict(max_new_tokens=5, do_sample=False)
    assert torch.equal(reloaded.generate(input_ids=IDS[:1], **gen), model.generate(input_ids=IDS[:1], **gen))


# 8 blocks shaped like the released E2B/E4B (activation sparsity in the first blocks, KV sharing in the last ones):
# blocks 0-1 sparse (their MLP kept whole); blocks 6-7 (num_kv_shared_layers=2) reuse the keys and values that blocks
# 4 (the last sliding-window one before them) and 5 (the last full-attention one) store (their heads kept whole); the
# heads of blocks 0-3 and the MLP of blocks 2-7 prune (blocks 2-3 both)
RELEASED_LAYOUT = dict(num_hidden_layers=8, intermediate_size=[64, 48] * 4,
                       activation_sparsity_pattern=[0.95, 0.95] + [0.0] * 6, num_kv_shared_layers=2,
                       layer_types=["sliding_attention", "full_attention"] * 4)


def _module_outputs(model, paths, ids) -> dict:
    """The outputs of the modules at ``paths`` (their first tensor) in a forward of ``model`` on ``ids``."""
    outs, hooks = {}, []
    for path in paths:
        def keep(_, __, out, path=path):
            outs[path] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        hooks.append(model.get_submodule(path).register_forward_hook(keep))
    with torch.no_grad():
        model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    return outs


def test_gemma3n_text_prunes_outside_its_sparse_and_kv_sharing_layers(tmp_path):
    """The released checkpoints' layout (activation sparsity in the first blocks, KV sharing in the last): prepare
    (MLP and heads) groups only the MLPs of the blocks without activation sparsity and the heads of the blocks
    outside KV sharing (neither reusing keys and values nor storing them for later blocks), wrapping nothing in the
    others → a training step → harden → compact (equal logits; the kept-whole modules bit-identical to the original
    and their outputs equal the masked model's) → save → load_compact (equal logits and generate() tokens)."""
    from masked_dora.nn import MaskedDoRALinear

    model = _gemma3n_text(**RELEASED_LAYOUT)
    layers = model.model.layers
    assert [i for i, b in enumerate(layers) if b.self_attn.is_kv_shared_layer] == [6, 7]
    assert [i for i, b in enumerate(layers) if b.self_attn.store_full_length_kv] == [4, 5]
    whole = [f"model.layers.{i}.mlp" for i in (0, 1)] + [f"model.layers.{i}.self_attn" for i in range(4, 8)]
    original = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(tuple(p + "." for p in whole))}
    ids = IDS.clone()
    with pytest.warns(UserWarning, match="per-layer form"):
        prepare_model(model, MaskedDoRAConfig(**CONFIG))
    groups = sorted(model.masked_dora.groups, key=lambda k: (k.split("_")[0], int(k.split("_")[1])))
    assert groups == [f"heads_{i}" for i in range(4)] + [f"mlp_{i}" for i in range(2, 8)]
    assert not any(isinstance(m, MaskedDoRALinear) for p in whole for m in model.get_submodule(p).modules())
    randomize_adapters(model)
    train_step(model, dict(input_ids=ids, labels=ids))
    harden(model)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        small = compact_model(model)
        assert rel_err(small(input_ids=ids).logits, ref) < TOL
    assert [b.mlp.down_proj.in_features for b in small.model.layers] == [64, 48] + [32, 24] * 3
    assert [b.self_attn.q_proj.out_features for b in small.model.layers] == [16] * 4 + [32] * 4
    assert [b.self_attn.k_proj.out_features for b in small.model.layers[:6]] == [8] * 4 + [16] * 2
    kept = small.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in original.items())
    masked_out, small_out = (_module_outputs(m, whole, ids) for m in (model, small))
    for path in whole:
        assert rel_err(small_out[path], masked_out[path]) < TOL, path
    small.save_pretrained(str(tmp_path))
    reloaded = load_compact(str(tmp_path))
    with torch.no_grad():
        assert rel_err(reloaded(input_ids=ids).logits, ref) < TOL
    gen = dict(max_new_tokens=5, do_sample=False)
    assert torch.equal(reloaded.generate(input_ids=ids[:1], **gen), model.generate(input_ids=ids[:1], **gen))


def test_gemma3n_text_mlp_alone_saves_plain_on_the_released_layout(tmp_path):
    """The MLP alone on the released layout: the sparse blocks keep their widths, the others half, and the config's
    intermediate_size (a list) says each block's, so a plain from_pretrained reloads to the masked model's logits."""
    import transformers

    model = _gemma3n_text(**RELEASED_LAYOUT)
    model, small, ref = _prune_compact_compare(model, ("mlp",), IDS)
    assert model.masked_dora.save_form == "plain"
    small.save_pretrained(str(tmp_path))
    reloaded = transformers.Gemma3nForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert reloaded.config.intermediate_size == [64, 48] + [32, 24] * 3
    with torch.no_grad():
        assert rel_err(reloaded(input_ids=IDS).logits, ref) < TOL


def test_gemma3n_text_mlp_alone_with_global_allocation_saves_plain(tmp_path):
    """The MLP alone with allocation='global' (a width per layer, from the logits): intermediate_size, a list, says
    each layer's, so prepare_model plans a plain checkpoint (no per-layer-form warning) and a plain from_pretrained
    reloads the widths it kept to the masked model's logits."""
    import warnings

    import transformers

    model = _gemma3n_text(**RELEASED_LAYOUT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # (the per-layer form is announced with one)
        prepare_model(model, MaskedDoRAConfig(**dict(CONFIG, importance="magnitude"), target_groups=("mlp",),
                                              allocation="global"))
    assert model.masked_dora.save_form == "plain"
    randomize_adapters(model)
    harden(model)
    with torch.no_grad():
        ref = model(input_ids=IDS).logits
        small = compact_model(model)
    widths = [b.mlp.down_proj.in_features for b in small.model.layers]
    assert widths[:2] == [64, 48] and widths[2:] != [32, 24] * 3  # the sparse layers whole, the others their own
    small.save_pretrained(str(tmp_path))
    reloaded = transformers.Gemma3nForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert reloaded.config.intermediate_size == widths
    with torch.no_grad():
        assert rel_err(reloaded(input_ids=IDS).logits, ref) < TOL


def test_gemma3n_text_compacts_for_training_outside_its_sparse_and_kv_sharing_layers():
    """compact_for_training on the released layout: the groups leave the blocks that have them (the MLP of blocks
    2-7 and the heads of blocks 0-3 at the kept size), the kept-whole modules stay as they were, and the logits
    equal the hardened masked model's."""
    from masked_dora.models import compact_for_training

    model = _gemma3n_text(**RELEASED_LAYOUT)
    with pytest.warns(UserWarning, match="per-layer form"):
        prepare_model(model, MaskedDoRAConfig(**CONFIG))
    randomize_adapters(model)
    harden(model)
    with torch.no_grad():
        ref = model(input_ids=IDS).logits
        compact_for_training(model)
        assert rel_err(model(input_ids=IDS).logits, ref) < TOL
    assert [b.mlp.down_proj.in_features for b in model.model.layers] == [64, 48] + [32, 24] * 3
    assert [b.self_attn.q_proj.out_features for b in model.model.layers] == [16] * 4 + [32] * 4


def test_gemma3n_text_heads_alone_plan_the_per_layer_form():
    """Heads alone on the released layout (one MLP width in every block, which a plain config could say): the blocks
    that keep them whole keep the config's counts, the others half, so prepare_model plans the per-layer form (a
    plain config holds one count), and compaction does not find it planned wrong."""
    import warnings

    model = _gemma3n_text(**dict(RELEASED_LAYOUT, intermediate_size=[64] * 8))
    with pytest.warns(UserWarning, match=r"per-layer form \(the layers keep different sizes\)"):
        prepare_model(model, MaskedDoRAConfig(**CONFIG, target_groups=("heads",)))
    assert model.masked_dora.save_form == "per_layer"
    harden(model)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        small = compact_model(model)
    assert not [w for w in caught if "planned a plain checkpoint" in str(w.message)]
    assert [b.self_attn.q_proj.out_features for b in small.model.layers] == [16] * 4 + [32] * 4


def test_gemma3n_text_from_peft_merges_the_adapters_of_kept_whole_modules():
    """A PEFT DoRA adapter on every projection of the released layout: from_peft keeps the adapters of the modules
    that prune (wrapped) and merges those of the modules the blocks keep whole (block_refusals: nothing wraps them),
    so the model computes the PEFT model's logits, and it hardens and compacts to the masked model's."""
    from peft import LoraConfig, get_peft_model

    from masked_dora.models import from_peft
    from masked_dora.nn import MaskedDoRALinear

    members = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(_gemma3n_text(**RELEASED_LAYOUT),
                                LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=members,
                                           init_lora_weights=False)).eval()
    with torch.no_grad():
        ref = peft_model(input_ids=IDS).logits
    model = from_peft(peft_model, MaskedDoRAConfig(**CONFIG)).eval()
    layers = model.model.layers
    assert isinstance(layers[2].mlp.down_proj, MaskedDoRALinear) and isinstance(layers[0].self_attn.q_proj,
                                                                                MaskedDoRALinear)
    assert not isinstance(layers[0].mlp.down_proj, MaskedDoRALinear)  # sparse: kept whole, its adapter merged
    assert not isinstance(layers[6].self_attn.q_proj, MaskedDoRALinear)  # KV sharing: kept whole, merged
    with torch.no_grad():
        assert rel_err(model(input_ids=IDS).logits, ref) < TOL
    harden(model)
    with torch.no_grad():
        masked = model(input_ids=IDS).logits
        assert rel_err(compact_model(model)(input_ids=IDS).logits, masked) < TOL


def test_gemma3n_text_prunes_its_reloaded_compact_model_again(tmp_path):
    """A second pruning of the released layout's compacted model (load_compact): its pruned blocks have one KV head
    each, the kept-whole ones still two, so gqa='kv_groups' can prune no head and says so for the blocks whose heads
    prune, not as if the whole model were multi-query; gqa='query_heads' prunes again to equal logits."""
    model = _gemma3n_text(**RELEASED_LAYOUT)
    with pytest.warns(UserWarning, match="per-layer form"):
        _, small, _ = _prune_compact_compare(model, ("mlp", "heads"), IDS)
    small.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=r"'gemma3n_text' model, in each block whose heads prune \(the others keep "
                                         r"theirs whole: 4 of 8 blocks\), has one KV head for its 2 query heads"):
        prepare_model(load_compact(str(tmp_path)), MaskedDoRAConfig(**CONFIG))
    reloaded = load_compact(str(tmp_path))
    with pytest.warns(UserWarning, match="per-layer form"):
        prepare_model(reloaded, MaskedDoRAConfig(**CONFIG, gqa="query_heads"))
    randomize_adapters(reloaded)
    harden(reloaded)
    with torch.no_grad():
        again = compact_model(reloaded)
        assert rel_err(again(input_ids=IDS).logits, reloaded(input_ids=IDS).logits) < TOL
    assert [b.self_attn.q_proj.out_features for b in again.model.layers] == [8] * 4 + [32] * 4


def test_gemma3n_text_refuses_a_group_only_where_every_block_keeps_it_whole():
    """Activation sparsity in every block refuses the MLP (its gaussian top-k cut reads the mean and std over all
    the gate's channels); KV sharing in every block (each storing or reusing keys and values) refuses the heads.
    Each refusal names the model and the reason before anything changes, and the other group still prunes to the
    masked model's logits (the KV-sharing block has no k/v projections of its own)."""
    sparse = _gemma3n_text(activation_sparsity_pattern=[0.95, 0.5])
    with pytest.raises(ValueError, match=r"'mlp' cannot be pruned in a 'gemma3n_text' model: in every block, its "
                                         r"activation sparsity"):
        prepare_model(sparse, MaskedDoRAConfig(**CONFIG))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in sparse.modules())
    _prune_compact_compare(sparse, ("heads",), IDS)
    # 3 blocks, the last reading the keys and values of the full-attention one before it; the sliding-window one
    # stores its own too (the last of its layer type before the shared blocks)
    shared = _gemma3n_text(num_kv_shared_layers=1, num_hidden_layers=3, intermediate_size=[64, 48, 64],
                           activation_sparsity_pattern=[0.0] * 3,
                           layer_types=["sliding_attention", "full_attention", "full_attention"])
    assert not hasattr(shared.model.layers[2].self_attn, "k_proj")
    with pytest.raises(ValueError, match=r"'heads' cannot be pruned in a 'gemma3n_text' model: in every block, "
                                         r"(later layers reuse|the layer reuses)"):
        prepare_model(shared, MaskedDoRAConfig(**CONFIG))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in shared.modules())
    _prune_compact_compare(shared, ("mlp",), IDS)


def test_block_refusals_are_checked():
    """A block refusal names a kind with one group per block and an attribute; one whose attribute a block lacks
    (the spec no longer describes the modules) is an error naming it, not a silent prune."""
    from dataclasses import replace

    from masked_dora.models.blocks import block_refusal
    from masked_dora.models.specs import ModelSpec

    spec = spec_for(_gemma3n_text())
    with pytest.raises(ValueError, match="block_refusals names a kind"):
        replace(spec, block_refusals=(("hidden", "mlp.activation_sparsity", "why"),))
    assert isinstance(spec, ModelSpec)
    block = _gemma3n_text().model.layers[0]
    missing = replace(spec, block_refusals=(("mlp", "mlp.no_such_flag", "why"),))
    with pytest.raises(ValueError, match="has no attribute 'no_such_flag'"):
        block_refusal(block, missing, "mlp")
    assert block_refusal(block, spec, "mlp") is None
    # terms joined by "&" must all hold; a dotted path walks attributes (the attention's config's head_dim)
    both = replace(spec, block_refusals=(("mlp", "mlp.hidden_size&self_attn.config.head_dim", "why"),))
    one = replace(spec, block_refusals=(("mlp", "mlp.hidden_size&mlp.activation_sparsity", "why"),))
    assert (block_refusal(block, both, "mlp"), block_refusal(block, one, "mlp")) == ("why", None)


def test_gemma3n_vlm_chain_keeps_everything_outside_the_language_models_blocks(tmp_path):
    """Gemma 3n (a stand-in vision tower: timm's is no test dependency): prepare (MLP and heads of gemma3n_text)
    → a training step on image inputs → harden → compact (equal logits on text and image inputs, the image
    reaching them; the vision and audio towers, their embedders, the embeddings and the head bit-identical) → save →
    load_compact (equal logits, equal generate() tokens with an image)."""
    import transformers

    if not hasattr(transformers, "Gemma3nForConditionalGeneration"):
        pytest.skip("this transformers has no Gemma 3n")
    with gemma3n_stand_in_tower():
        torch.manual_seed(0)
        model = transformers.Gemma3nForConditionalGeneration(gemma3n(transformers)).eval()
        assert spec_for(model).name == "gemma3n+gemma3n_text"
        image = _image_inputs(8)
        labeled = dict(image, labels=image["input_ids"].masked_fill(image["input_ids"] == IMAGE_ID, -100))
        c = _chain(model, ["model.language_model.layers"], lambda m: train_step(m, labeled), image, tmp_path)
        assert [layer.mlp.down_proj.in_features for layer in c["small"].model.language_model.layers] == [32, 24]
        reloaded = load_compact(str(tmp_path))
        with torch.no_grad():
            for kind, v in c["inputs"].items():
                assert rel_err(reloaded(**v).logits, c["ref"][kind]) < TOL, kind
        row = {k: v[:1] for k, v in image.items()}
        gen = dict(max_new_tokens=5, do_sample=False)
        assert torch.equal(reloaded.generate(**row, **gen), model.generate(**row, **gen))


def test_shieldgemma2_classifier_prunes_its_gemma3_language_model(tmp_path):
    """ShieldGemma 2, an image classifier around a Gemma 3 VLM (its logits: the Yes/No token logits at the last
    position): prepare (MLP and heads) → a training step on a cross-entropy over its two logits → harden → compact
    (equal logits on text and image inputs, the image reaching them; everything outside the blocks bit-identical)
    → save → plain from_pretrained (equal logits: Gemma 3's text config says the pruned sizes)."""
    import transformers

    if not hasattr(transformers, "ShieldGemma2ForImageClassification"):
        pytest.skip("this transformers has no ShieldGemma 2")
    torch.manual_seed(0)
    model = transformers.ShieldGemma2ForImageClassification(shieldgemma2(transformers)).eval()
    with torch.no_grad():  # Gemma 3's mm_input_projection_weight starts at 0, which would drop the image
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.05)
    assert spec_for(model).name == f"shieldgemma2+{spec_for(model.config.text_config).name}"  # Gemma 3's
    image = _image_inputs(32)

    def train(m):  # a cross-entropy over its two logits (it takes no labels)
        m.train()
        torch.nn.functional.cross_entropy(m(**image).logits, torch.tensor([0, 1])).backward()
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-2).step()
        m.eval()

    c = _chain(model, ["model.model.language_model.layers"], train, image, tmp_path)
    small, inputs, ref = c["small"], c["inputs"], c["ref"]
    text = small.config.text_config
    assert (text.intermediate_size, text.num_attention_heads, text.num_key_value_heads) == (32, 2, 1)
    reloaded = transformers.ShieldGemma2ForImageClassification.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        for kind, v in inputs.items():
            assert rel_err(reloaded(**v).logits, ref[kind]) < TOL, kind
