"""Every shipped family end to end on a tiny config, as a user runs it.

prepare → one training step → harden → compact (equal outputs) → save → reload (plain transformers in a
process that never imports masked_dora where the config can express the sizes, ``load_compact`` otherwise)
→ equal outputs, and ``generate()`` with the KV cache giving the masked model's tokens for the causal LMs.
Families whose heads cannot be pruned exactly are refused at ``prepare_model`` and run the chain for the MLP.
"""

from __future__ import annotations

import os

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, compact_model, get_state, harden, load_compact, prepare_model,
                                register_spec, spec_for)
from masked_dora.models import specs as specs_module
from masked_dora.models.blocks import model_blocks
from masked_dora.models.compact import LAYER_SIZES_KEY


from tiny_family_table import AVAILABLE as TABLE_FAMILIES
from tiny_family_table import TABLE, UNAVAILABLE
from tiny_models import (DECODER_LMS, FAMILIES, MLP_ONLY_FAMILIES, QK_NORM_FAMILIES, harden_and_compact, output_tensor,
                         prune_kwargs, randomize_adapters, reload_plain_in_clean_process, tiny_config, tiny_inputs,
                         tiny_model)

AUTO = {**{f: "AutoModelForCausalLM" for f in DECODER_LMS}, "bart": "AutoModelForSeq2SeqLM", "t5": "T5EncoderModel",
        "t5-gated": "T5EncoderModel", "mt5": "MT5EncoderModel"}
AUTO.update({f: t.auto for f, t in TABLE_FAMILIES.items() if t.auto})
CHAIN = [(f, ("mlp", "heads")) for f in FAMILIES] + [(f, ("mlp",)) for f in MLP_ONLY_FAMILIES]


@pytest.mark.parametrize("family", UNAVAILABLE or ["-"])
def test_table_families_this_transformers_lacks_are_reported(family):
    """A family of tests/tiny_families_*.py whose classes the installed transformers lacks does not run: say so."""
    if family == "-":
        return
    import transformers

    pytest.skip(f"transformers {transformers.__version__} has no {TABLE[family].classes}: {family!r} is not tested")


def _train_step(model, family):
    """One optimizer step on the adapters and mask logits (the training path, not just prepare)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-2)
    out = output_tensor(model(**tiny_inputs(family=family)))
    out.float().pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    opt.step()
    model.eval()


def _run_chain(family, groups, path):
    model = tiny_model(family, kind="lm")
    prepare_model(model, MaskedDoRAConfig(target_groups=groups, rank=4, alignment={"mlp": 8}, importance="none",
                                          target_sparsity=0.5, **prune_kwargs(family)))
    randomize_adapters(model)
    _train_step(model, family)
    harden(model)
    inputs = tiny_inputs(family=family)
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        small = compact_model(model)
        out = output_tensor(small(**inputs))
    small.save_pretrained(path)
    torch.save(inputs, os.path.join(path, "inputs.pt"))
    plain = not hasattr(small.config, LAYER_SIZES_KEY)
    return model, small, ref, out, plain


class _Chains(dict):
    """Each family's chain result, ``(path, model, small, ref, out, plain)``, run on first access (a ``-k``
    selection of one family runs only its chain); :meth:`every` runs them all, in :data:`CHAIN` order."""

    def __init__(self, tmp_path_factory):
        super().__init__()
        self._groups, self._tmp = dict(CHAIN), tmp_path_factory

    def __missing__(self, family):
        path = str(self._tmp.mktemp(family.replace("-", "_")))
        self[family] = (path,) + _run_chain(family, self._groups[family], path)
        return self[family]

    def every(self) -> dict:
        return {family: self[family] for family, _ in CHAIN}


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    return _Chains(tmp_path_factory)


@pytest.mark.parametrize("family", [f for f, _ in CHAIN])
def test_family_compacts_saves_reloads_and_generates_equal(chains, family):
    path, model, small, ref, out, plain = chains[family]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert get_state(model).save_form == ("plain" if plain else "per_layer")  # as prepare_model said it would
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < sum(p.numel() for n, p in model.named_parameters()
                         if not any(k in n for k in ("lora_", "magnitude", "mask_logits")))
    reloaded = load_compact(path)  # loads both forms (the plain one is also checked without masked_dora below)
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(reloaded(**tiny_inputs(family=family))), ref, rtol=1e-4, atol=1e-5)
    gen = dict(max_new_tokens=6, do_sample=False)
    if family in DECODER_LMS:
        ids = tiny_inputs()["input_ids"][:1]
        assert torch.equal(reloaded.generate(ids, **gen), model.generate(ids, **gen))
    if family in TABLE_FAMILIES and TABLE_FAMILIES[family].seq2seq:  # from the encoder's input (Whisper's audio)
        kind = TABLE_FAMILIES[family].inputs
        source = {kind: tiny_inputs(family=family)[kind][:1]}
        tokens = model.generate(**source, **gen)
        assert tokens.shape[1] > 1 and torch.equal(reloaded.generate(**source, **gen), tokens)


def test_plain_checkpoints_reload_with_plain_transformers(chains):
    """Every family whose config expresses its pruned sizes reloads in a process without masked_dora."""
    chains = chains.every()
    jobs = [(path, AUTO.get(family, "AutoModelForMaskedLM")) for family, (path, *_rest, plain) in chains.items()
            if plain]
    plain_families = sorted(f for f, v in chains.items() if v[-1])
    # the Llama-style decoders with head_dim in their config are plain after head pruning
    assert {"llama", "qwen3", "gemma", "gemma2", "gemma3_text", "granite", "phi", "phi3", "cohere", "cohere-qk-norm",
            "olmo2"} <= set(plain_families), plain_families
    outputs = reload_plain_in_clean_process(jobs)
    plain = [(family, ref) for family, (path, _model, _small, ref, _out, is_plain) in chains.items() if is_plain]
    for (family, ref), out in zip(plain, outputs):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5, msg=family)


@pytest.mark.parametrize("family, flag", [("olmo2", None), ("t5", None), ("t5-gated", None), ("mpnet", None),
                                          ("longt5-local", None), ("longt5-tglobal", None), ("falcon-rw", "alibi"),
                                          ("falcon", "alibi"), ("mvp", "use_prompt")]
                         + [(f, None) for f in ("olmo3", "bloom", "mpt", "deepseek_v3", "deepseek_v2", "deepseek_v4",
                                                "hy_v4", "olmoe", "flex_olmo", "gemma4_text", "gemma4_text-moe",
                                                "gemma4_unified_text", "diffllama", "doge", "qwen3_5_text",
                                                "olmo_hybrid", "falcon_h1", "bamba", "lfm2", "granitemoehybrid",
                                                "jamba-dense", "lfm3", "recurrent_gemma", "qwen3_next",
                                                "qwen3_5_moe_text", "qwen4_exp_text", "deepseek_v32", "glm_moe_dsa",
                                                "glm4_moe_lite", "minicpm3", "kimi_linear", "lfm2_moe",
                                                "mimo_v2_flash", "laguna", "minimax", "layoutlmv3", "lilt", "convbert",
                                                "deberta", "esmc", "youtu", "zaya", "trocr", "cpmant", "prophetnet",
                                                "lara_mini", "dots3_note_text", "inkling2_text", "axk1", "axk2",
                                                "inkling_text", "longcat_flash", "sarvam_mla",
                                                "bailing_hybrid", "inkling2_loop_text", "led", "pegasus_x", "fsmt",
                                                "mistral4")
                            if f in TABLE_FAMILIES])
def test_heads_that_cannot_be_pruned_exactly_are_refused_before_anything_changes(family, flag):
    import transformers as t

    config = tiny_config(family)
    if flag:
        setattr(config, flag, True)
    model = getattr(t, type(tiny_model(family, kind="lm")).__name__)(config)
    refused = rf"'heads' cannot be pruned in a '{config.model_type}' model: .*target_groups=\('mlp',\)"
    with pytest.raises(ValueError, match=refused):
        prepare_model(model, MaskedDoRAConfig(importance="none"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), importance="none"))  # the MLP still prunes
    blocks = model_blocks(model, spec_for(model))
    assert sorted(get_state(model).groups) == sorted(f"mlp_{b.index}" for b in blocks)


@pytest.mark.parametrize("model_type, classes, config, why", [
    ("dory", ("DoryConfig", "DoryForCausalLM"), dict(vocab_size=97, hidden_size=32, intermediate_size=64,
                                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                     head_dim=8), "ffn_sub_norm L2-normalises over the whole MLP"),
    ("bitnet", ("BitNetConfig", "BitNetForCausalLM"), dict(vocab_size=97, hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=2, num_attention_heads=4,
                                                         num_key_value_heads=2),
     "ffn_sub_norm RMS-normalises over the whole MLP width"),
    ("jetmoe", ("JetMoeConfig", "JetMoeForCausalLM"), dict(vocab_size=97, hidden_size=32, intermediate_size=32,
                                                         num_hidden_layers=2, num_attention_heads=4,
                                                         num_key_value_heads=2, kv_channels=8, num_local_experts=4,
                                                         num_experts_per_tok=2),
     "two JetMoeParallelExperts modules")])
def test_decoders_that_cannot_prune_exactly_are_refused_with_the_reason(model_type, classes, config, why):
    """A decoder whose every group is coupled beyond what the spec types describe (Dory's L2 norms over the whole
    MLP width and all heads' width) is refused at prepare_model with the reason, before anything changes."""
    import transformers as t

    if not all(hasattr(t, name) for name in classes):
        pytest.skip(f"transformers {t.__version__} has no {classes}")
    model = getattr(t, classes[1])(getattr(t, classes[0])(**config))
    for target_groups in (("mlp",), ("mlp", "heads")):
        with pytest.raises(ValueError, match=rf"masked_dora cannot prune a '{model_type}' model exactly: .*{why}"):
            prepare_model(model, MaskedDoRAConfig(target_groups=target_groups, importance="none"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


def _head_norm_rows(attention, name):
    """The per-head weights of a q/k norm as a (heads, head_dim) tensor (Cohere: the weight; StableLM: one
    LayerNorm per head)."""
    norm = getattr(attention, name)
    if hasattr(norm, "norms"):
        assert norm.num_heads == len(norm.norms)
        return torch.stack([n.weight for n in norm.norms])
    return norm.weight


@pytest.mark.parametrize("family", list(QK_NORM_FAMILIES))
@pytest.mark.parametrize("gqa", ["kv_groups", "query_heads"])
@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_per_head_qk_norms_keep_the_kept_heads_in_both_save_forms(tmp_path, family, gqa, allocation):
    """Cohere's use_qk_norm (weight rows per head) and StableLM's qk_layernorm (a LayerNorm per head): the
    compacted model holds the kept heads' norms (query norms follow the query heads, key norms the KV heads),
    and it reloads with equal outputs, plain (uniform Cohere) or per layer (StableLM, allocation='global').
    Layer 0 keeps its last heads: a norm list cut to its first entries would not pass."""
    model = tiny_model(family, kind="lm")
    norm_names = ("q_norm", "k_norm") if family.startswith("cohere") else ("q_layernorm", "k_layernorm")
    norms = [[_head_norm_rows(layer.self_attn, n).detach().clone() for n in norm_names] for layer in model.model.layers]
    sparsity = {"uniform": 0.5, "global": 0.25}[allocation]  # global: layer 1 keeps every head, layer 0 not
    prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none", gqa=gqa,
                                          allocation=allocation, target_sparsity={"mlp": 0.5, "heads": sparsity}))
    randomize_adapters(model)
    with torch.no_grad():  # the last heads (of every KV group) score highest; layer 1 above layer 0
        for layer, group in enumerate(get_state(model).groups_of("heads")):
            group.mask_logits.copy_(torch.linspace(-1.0, 1.0, group.num_units) + 5.0 * layer)
    ref, small, out = harden_and_compact(model)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    inputs = tiny_inputs()
    plain = not hasattr(small.config, LAYER_SIZES_KEY)
    assert plain == (family.startswith("cohere") and allocation == "uniform")
    if allocation == "global":  # the per-layer form with different head counts per layer
        heads = [s["heads"] for s in getattr(small.config, LAYER_SIZES_KEY)]
        assert heads[0] < heads[1] == 4, heads
    small.save_pretrained(tmp_path)
    reloaded = load_compact(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(reloaded(**inputs)), ref, rtol=1e-4, atol=1e-5)
    for i, (masked, compact) in enumerate(zip(model.model.layers, reloaded.model.layers)):
        kept_q = masked.self_attn.q_proj.keep_mask().view(4, 8).all(1)
        kept_kv = masked.self_attn.k_proj.keep_mask().view(2, 8).all(1)
        assert i or not kept_q[0], "layer 0 should lose its first head"
        for name, old, kept in zip(norm_names, norms[i], (kept_q, kept_kv)):
            torch.testing.assert_close(_head_norm_rows(compact.self_attn, name), old[kept], rtol=0, atol=0)
    ids = inputs["input_ids"][:1]
    gen = dict(max_new_tokens=6, do_sample=False)
    assert torch.equal(reloaded.generate(ids, **gen), model.generate(ids, **gen))


def test_no_spec_error_names_the_matching_style_and_register_spec_adds_it(monkeypatch):
    monkeypatch.setattr(specs_module, "SPECS", dict(specs_module.SPECS))
    model = tiny_model("llama")
    model.config.model_type = "my-llama"
    with pytest.raises(ValueError, match=r"laid out like the 'llama' spec: masked_dora.register_spec\('my-llama', "
                                         r"like='llama'\)"):
        prepare_model(model, MaskedDoRAConfig(importance="none"))
    spec = register_spec("my-llama", like="llama")
    assert spec_for(model) is spec and spec.model_types == ("my-llama",)
    prepare_model(model, MaskedDoRAConfig(importance="none"))
    with pytest.raises(ValueError, match="already has the spec"):
        register_spec("my-llama", like="bert")
    assert register_spec("my-llama", like="bert", replace=True).heads.query == "attention.self.query"
    with pytest.raises(ValueError, match="exactly one of"):
        register_spec("other")
    with pytest.raises(ValueError, match="like: expected one of"):
        register_spec("other", like="nope")
    with pytest.raises(TypeError, match="spec: expected a ModelSpec"):
        register_spec("other", spec="llama")


def test_a_per_head_module_must_hold_one_entry_per_head(monkeypatch):
    """Qwen3's q/k RMSNorm is one head_dim-sized weight shared by every head: declared per head, prepare_model
    refuses it (dim 0 is 8, not the 4 query heads) before anything changes. A bad PerHeadSpec / HeadSpec is
    refused when it is made."""
    from dataclasses import replace

    from masked_dora.models import HeadSpec, PerHeadSpec

    monkeypatch.setattr(specs_module, "SPECS", dict(specs_module.SPECS))
    llama = specs_module.SPECS["llama"]
    heads = replace(llama.heads, per_head=(PerHeadSpec("self_attn.q_norm", "heads"),))
    register_spec("qwen3", spec=replace(llama, name="qwen3-norm-per-head", model_types=("qwen3",), heads=heads),
                  replace=True)
    model = tiny_model("qwen3")
    with pytest.raises(ValueError, match=r"layers.0.self_attn.q_norm holds \[8\] rows .*expected 4, one per query"):
        prepare_model(model, MaskedDoRAConfig(importance="none"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())
    with pytest.raises(ValueError, match="PerHeadSpec.follows: expected one of"):
        PerHeadSpec("self_attn.q_norm", "groups")
    with pytest.raises(ValueError, match="fused qkv projection"):
        HeadSpec(query="", key="", value="", output="attn.o", heads_key="n", qkv="attn.qkv", per_head=heads.per_head)


def test_a_model_matching_no_spec_says_what_cannot_be_expressed():
    import transformers as t

    # (GPT-J, the example before, has a spec now)
    model = t.XLNetModel(t.XLNetConfig(vocab_size=50, d_model=16, n_layer=1, n_head=2, d_inner=32))
    with pytest.raises(ValueError, match=r"no masked_dora spec for model_type 'xlnet'.*MoE experts packed into 3-D "
                                         r"parameters \(MLPSpec\(experts=...\)"):
        prepare_model(model, MaskedDoRAConfig(importance="none"))


def test_gpt2_conv1d_layers_train_as_linear_and_compact_back_to_conv1d():
    """GPT-2's Conv1D layers (weight stored (in, out)) become masked-DoRA linears with the same map, and the
    compacted model has Conv1D layers again, transposed back, of the kept sizes."""
    model = tiny_model("gpt2", kind="lm")
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
    prepare_model(model, MaskedDoRAConfig(rank=2, importance="none", alignment={"mlp": 8}, target_sparsity=0.5))
    assert type(model.transformer.h[0].mlp.c_fc).__name__ == "MaskedDoRALinear"
    with torch.no_grad():  # nothing pruned or trained yet: the same function
        torch.testing.assert_close(output_tensor(model(**inputs)), ref, rtol=1e-5, atol=1e-5)
    harden(model)
    small = compact_model(model)
    block = small.transformer.h[0]
    assert all(type(m).__name__ == "Conv1D" for m in (block.mlp.c_fc, block.mlp.c_proj, block.attn.c_attn,
                                                       block.attn.c_proj))
    assert tuple(block.mlp.c_fc.weight.shape) == (32, 32) and tuple(block.attn.c_attn.weight.shape) == (32, 48)


def test_fused_projections_prune_query_heads_and_phi3_heads_need_the_plain_form():
    """Phi-3's fused qkv_proj with gqa='query_heads': a unit per query head gates its q rows, the K/V rows stay
    (ALWAYS_KEPT), o_proj's input is cut, and the compacted model keeps both KV heads with one query head each
    (a plain checkpoint). Its attention reads the head counts from the config, so pruned heads with a per-layer
    result (allocation='global') are refused at prepare_model."""
    model = prepare_model(tiny_model("phi3", kind="lm"), MaskedDoRAConfig(gqa="query_heads", importance="none",
                                                                          alignment={"mlp": 8}, target_sparsity=0.5))
    heads = get_state(model).group("heads", 0)
    assert (heads.num_units, heads.partitions) == (4, 2)
    heads.set_mask(torch.tensor([False, True, True, False]))  # one query head in each KV group
    attn = model.model.layers[0].self_attn
    q_kept = [h in (1, 2) for h in range(4) for _ in range(8)]
    assert attn.qkv_proj.keep_mask().tolist() == q_kept + [True] * 32  # the K/V rows stay
    assert attn.o_proj.keep_mask().all()  # its columns go at compaction; its input is gated meanwhile
    seen = {}
    attn.o_proj.register_forward_hook(lambda m, args, out: seen.update(x=args[0].detach()))
    with torch.no_grad():
        model(**tiny_inputs())
    assert seen["x"].reshape(-1, 4, 8)[:, [0, 3]].eq(0).all() and seen["x"].reshape(-1, 4, 8)[:, [1, 2]].ne(0).any()
    harden(model)
    small = compact_model(model)
    config = small.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 2, 8)
    assert get_state(model).save_form == "plain" and not hasattr(config, LAYER_SIZES_KEY)
    assert tuple(small.model.layers[0].self_attn.qkv_proj.weight.shape) == ((2 + 2 * 2) * 8, 32)
    with pytest.raises(ValueError, match="reads its head counts from the model config.*allocation='global'"):
        prepare_model(tiny_model("phi3"), MaskedDoRAConfig(allocation="global", importance="none"))
    model = prepare_model(tiny_model("phi3"), MaskedDoRAConfig(target_groups=("mlp",), allocation="global",
                                                               importance="none"))
    assert get_state(model).save_form == "per_layer"  # the MLP alone may go per layer


def _runs(*pairs):
    """``[unit] * count`` for each ``(unit, count)``, concatenated (-1: ALWAYS_KEPT)."""
    return [unit for unit, count in pairs for _ in range(count)]


K = -1  # ALWAYS_KEPT: a row no unit gates
FUSED_ROWS = {  # 4 query heads of 8; rows of the fused q/k/v projection -> unit
    ("gpt_neox", "kv_groups"): _runs(*[(h, 24) for h in range(4)]),  # per head [q_h k_h v_h]
    ("falcon-rw", "kv_groups"): _runs(*[(h, 24) for h in range(4)]),  # the same per-head layout
    ("modernbert", "kv_groups"): _runs(*[(h, 8) for h in range(4)]) * 3,  # [q | k | v], no GQA
    ("phi3", "kv_groups"): _runs((0, 16), (1, 16), (0, 8), (1, 8), (0, 8), (1, 8)),  # [q | k | v], 2 KV heads
    ("phi3", "query_heads"): _runs((0, 8), (1, 8), (2, 8), (3, 8), (K, 32)),
    ("falcon-new", "kv_groups"): _runs((0, 32), (1, 32)),  # per KV head [q_1 q_2 | k | v]
    ("falcon-new", "query_heads"): _runs((0, 8), (1, 8), (K, 16), (2, 8), (3, 8), (K, 16)),
    ("falcon", "query_heads"): _runs((0, 8), (1, 8), (2, 8), (3, 8), (K, 16)),  # multi-query [q | k | v]
}


@pytest.mark.parametrize("family, gqa", list(FUSED_ROWS))
def test_fused_rows_follow_their_units(family, gqa):
    """Each row of a fused projection is gated by its own unit: the gate_up halves by the same channel, the
    q/k/v rows by their KV head (gqa='kv_groups') or, by query head, the q rows only (gqa='query_heads': the
    K/V rows are always kept), in every layout (blocks, per head, grouped by KV head); a kept row set compacts
    to the layout the smaller model reads."""
    from masked_dora.models.blocks import role_paths

    model = prepare_model(tiny_model(family, kind="lm"), MaskedDoRAConfig(rank=2, importance="magnitude", gqa=gqa,
                                                                          alignment={"mlp": 8}, target_sparsity=0.5))
    state = get_state(model)
    heads = state.group("heads", 0)
    assert heads.index("qkv").tolist() == FUSED_ROWS[family, gqa]
    kept = heads.per_channel("qkv", heads.hard())
    assert kept[heads.index("qkv") == K].all()
    if family in ("phi3", "modernbert"):
        mlp = state.group("mlp", 0)
        producer = mlp.index("producer0")
        assert producer.tolist() == list(range(64)) * 2
    assert set(role_paths(state.spec, "heads")) == {"qkv", "output"}
    randomize_adapters(model)
    harden(model)
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(compact_model(model)(**inputs)), output_tensor(model(**inputs)),
                                   rtol=1e-4, atol=1e-5)


def test_falcon_spec_follows_its_config_and_keeps_falcon_linear():
    """Falcon's query_key_value layout follows its config: new_decoder_architecture (grouped by KV head),
    multi_query (one KV head whatever num_kv_heads says), neither (per head). Its compacted layers stay
    FalconLinear (its own matmul-then-bias forward), and their attention gets the kept head counts."""
    from masked_dora.models.blocks import head_layout

    expected = {"falcon": ("falcon", 1), "falcon-new": ("falcon-new", 2), "falcon-rw": ("falcon-rw", 4)}
    for family, (name, kv) in expected.items():
        config = tiny_config(family)
        spec = spec_for(config)
        assert spec.name == name and head_layout(config, spec).kv_heads == kv
    assert tiny_config("falcon").num_kv_heads == 4  # the config's default, which multi_query ignores
    model = prepare_model(tiny_model("falcon-new", kind="lm"),
                          MaskedDoRAConfig(rank=2, importance="none", alignment={"mlp": 8}, target_sparsity=0.5))
    harden(model)
    attn = compact_model(model).transformer.h[0].self_attention
    assert type(attn.query_key_value).__name__ == type(attn.dense).__name__ == "FalconLinear"
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim) == (2, 1, 8)


def test_one_kv_head_with_kv_groups_is_an_error_naming_query_heads():
    """Multi-query attention (Falcon-7B's default config; any spec's config with one KV head): gqa='kv_groups'
    could remove no head, so prepare_model refuses it before anything changes and names gqa='query_heads'."""
    import transformers as t

    llama = tiny_config("llama")
    llama.num_key_value_heads = 1
    for model in (tiny_model("falcon", kind="lm"), t.LlamaForCausalLM(llama)):
        with pytest.raises(ValueError, match=r"one KV head for its 4 query heads \(multi-query attention\), so "
                                             r"gqa='kv_groups' can prune no head.*use gqa='query_heads'"):
            prepare_model(model, MaskedDoRAConfig(importance="none"))
        assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())
        prepare_model(model, MaskedDoRAConfig(importance="none", gqa="query_heads", alignment={"mlp": 8}))
        assert get_state(model).group("heads", 0).num_units == 4
    mlp_only = prepare_model(tiny_model("falcon"), MaskedDoRAConfig(importance="none", target_groups=("mlp",),
                                                                    alignment={"mlp": 8}))
    assert sorted(get_state(mlp_only).groups) == ["mlp_0", "mlp_1"]


def test_a_model_type_with_config_dependent_layouts_picks_its_spec_by_the_config(monkeypatch):
    """T5's model_type covers v1.0 (DenseReluDense.wi) and the gated v1.1 / Flan-T5 / mT5 (wi_0, wi_1): the
    spec is the one whose conditions the config meets; a config that meets none gets an error naming the
    conditions; replacing the model_type's spec removes it from every variant."""
    import transformers as t

    from masked_dora.models import register_spec, spec_for

    assert spec_for(tiny_config("t5")).name == "t5"
    assert spec_for(tiny_config("t5-gated")).name == spec_for(tiny_config("mt5")).name == "t5-gated"
    odd = t.T5Config()
    odd.is_gated_act = None
    with pytest.raises(ValueError, match=r"matches none of its specs' conditions: t5 needs "
                                         r"\{'is_gated_act': False\}; t5-gated needs \{'is_gated_act': True\}"):
        spec_for(odd)
    monkeypatch.setattr(specs_module, "SPECS", dict(specs_module.SPECS))
    with pytest.raises(ValueError, match="'t5' already has the spec t5 / t5-gated"):
        register_spec("t5", like="t5-gated")
    register_spec("t5", like="llama", replace=True)  # named after the model_type: it takes the "t5" entry's place
    assert spec_for(tiny_config("t5-gated")) is specs_module.SPECS["t5"]
    assert specs_module.SPECS["t5"].layers == ("layers",) and not specs_module.SPECS["t5"].when
    assert "t5" not in specs_module.SPECS["t5-gated"].model_types


def test_query_heads_in_one_kv_group_follow_the_heads_alignment():
    """With one KV head, gqa='query_heads' ranks the query heads of one partition in blocks of alignment['heads'],
    and the save form prepare_model plans counts the same: 30% of 4 heads in blocks of 2 keeps 2 (not 3, which a
    LlamaConfig of hidden 32 refuses), so the checkpoint is plain as planned."""
    import transformers as t

    config = tiny_config("llama")
    config.num_key_value_heads = 1
    model = t.LlamaForCausalLM(config)
    prepare_model(model, MaskedDoRAConfig(importance="none", gqa="query_heads", alignment={"mlp": 8, "heads": 2},
                                          target_sparsity={"mlp": 0.5, "heads": 0.3}))
    assert get_state(model).save_form == "plain"
    harden(model)
    small = compact_model(model).config
    assert (small.num_attention_heads, small.num_key_value_heads) == (2, 1) and not hasattr(small, LAYER_SIZES_KEY)


def test_calibration_that_never_runs_a_pruned_stack_is_an_error():
    """Taylor scores from a loss on the encoder alone reach no decoder group: an error naming them, not zero
    scores that would cut the decoder blindly; the encoder alone (stacks=('encoder',)) is fine."""
    def encoder_loss(model, batch):
        return model.get_encoder()(**batch).last_hidden_state.pow(2).mean()

    calibration = [tiny_inputs()]
    with pytest.raises(ValueError, match=r"importance='taylor' saw no activity in the groups \['mlp_2', 'heads_2'"):
        prepare_model(tiny_model("bart", kind="lm"), MaskedDoRAConfig(importance="taylor", rank=2,
                                                                      alignment={"mlp": 8}),
                      calibration=calibration, loss_fn=encoder_loss)
    model = prepare_model(tiny_model("bart", kind="lm"), MaskedDoRAConfig(importance="taylor", rank=2,
                                                                          alignment={"mlp": 8}, stacks=("encoder",)),
                          calibration=calibration, loss_fn=encoder_loss)
    assert sorted(get_state(model).groups) == ["heads_0", "heads_1", "mlp_0", "mlp_1"]
