"""accelerate_peft: PEFT's DoRA layers through masked_dora's fused op, equal to PEFT's own forward and
backward (float64: 1e-10, float32: 1e-5) with and without dropout, rsLoRA, biases, several adapters; undone by
restore_peft; PEFT's state dict and save_pretrained unchanged."""

import pytest
import torch

from masked_dora.nn import peft_accelerate
from masked_dora.nn.peft_accelerate import accelerate_peft, restore_peft

from tiny_models import tiny_inputs, tiny_model

peft = pytest.importorskip("peft")

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _peft_model(family, dtype, dropout=0.0, rslora=False, seed=0):
    model = tiny_model(family, kind="lm").to(dtype)
    targets = ["q_proj", "v_proj", "up_proj", "down_proj"] if family == "llama" else ["query", "value", "dense"]
    cfg = peft.LoraConfig(r=4, lora_alpha=8, use_dora=True, lora_dropout=dropout, use_rslora=rslora,
                          target_modules=targets, init_lora_weights=False)  # B != 0: DoRA is not the base model
    torch.manual_seed(seed)
    model = peft.get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:  # m != ||W0 + s B A||
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=gen, dtype=p.dtype))
    return model


def _step(model, inputs, seed=3):
    """Logits and every trainable parameter's gradient of one forward+backward (dropout's RNG seeded)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), grads


def _count_fused_calls(monkeypatch) -> list:
    """A list that gets one entry per call of the fused op from an accelerated layer."""
    calls = []
    fused = peft_accelerate.dora_linear
    monkeypatch.setattr(peft_accelerate, "dora_linear", lambda *a, **k: calls.append(1) or fused(*a, **k))
    return calls


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _assert_same(fast, slow, tol):
    assert _rel(fast[0], slow[0]) <= tol, _rel(fast[0], slow[0])
    assert fast[1].keys() == slow[1].keys()
    worst = max(_rel(fast[1][k], slow[1][k]) for k in slow[1])
    assert worst <= tol, worst


@pytest.mark.parametrize("family", ["llama", "bert"])  # bert: biases
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dropout, rslora", [(0.0, False), (0.3, False), (0.0, True)])
def test_accelerated_peft_dora_equals_peft(family, dtype, dropout, rslora, monkeypatch):
    model = _peft_model(family, dtype, dropout, rslora)
    model.train()
    inputs = tiny_inputs()
    slow = _step(model, inputs)
    calls = _count_fused_calls(monkeypatch)
    patched = accelerate_peft(model)
    assert patched == sum(1 for n, m in model.named_modules() if type(m).__name__ == "Linear" and hasattr(m, "lora_A"))
    fast = _step(model, inputs)
    assert len(calls) == patched  # every layer took the fused path
    _assert_same(fast, slow, TOL[dtype])
    model.eval()
    with torch.no_grad():
        fast_eval = model(**inputs).logits
        assert restore_peft(model) == patched
        slow_eval = model(**inputs).logits
    assert _rel(fast_eval, slow_eval) <= TOL[dtype]
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_several_adapters_switch_and_fall_back(tmp_path):
    """Two adapters loaded: the active one runs fused, switching follows set_adapter; merged adapters, a
    disabled adapter and two active adapters at once go through PEFT's own forward; state dict and
    save_pretrained are unchanged by the patch."""
    model = _peft_model("llama", torch.float64)
    model.add_adapter("other", peft.LoraConfig(r=2, lora_alpha=4, use_dora=True, target_modules=["q_proj"],
                                               init_lora_weights=False))
    inputs = tiny_inputs()
    reference = {}
    for adapter in ("default", "other"):
        model.set_adapter(adapter)
        reference[adapter] = _step(model, inputs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    accelerate_peft(model)
    assert accelerate_peft(model) == 0  # already patched
    for adapter in ("default", "other"):
        model.set_adapter(adapter)
        _assert_same(_step(model, inputs), reference[adapter], 1e-10)
    model.base_model.set_adapter(["default", "other"])  # both active: PEFT's forward
    both = _step(model, inputs)
    restore_peft(model)
    _assert_same(both, _step(model, inputs), 0.0)
    assert model.state_dict().keys() == before.keys()
    model.set_adapter("default")
    model.eval()
    with torch.no_grad():
        plain = model(**inputs).logits
        with model.disable_adapter():
            disabled = model(**inputs).logits
        accelerate_peft(model)
        with model.disable_adapter():
            assert torch.equal(model(**inputs).logits, disabled)
        model.merge_adapter()
        assert _rel(model(**inputs).logits, plain) <= 1e-10
        model.unmerge_adapter()
        assert _rel(model(**inputs).logits, plain) <= 1e-10
    model.save_pretrained(str(tmp_path))
    loaded = peft.PeftModel.from_pretrained(tiny_model("llama", kind="lm").double(), str(tmp_path)).eval()
    with torch.no_grad():
        assert _rel(loaded(**inputs).logits, plain) <= 1e-10


def test_bad_model_argument():
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        accelerate_peft("model")
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        restore_peft(None)


def test_a_peft_trainer_run_with_one_added_line_trains_the_same(tmp_path):
    """A PEFT DoRA model (dropout on) trained by the HF Trainer for 4 steps, as PEFT runs it and after
    accelerate_peft: the same logged losses and final adapters, to float32 rounding."""
    from transformers import Trainer, TrainingArguments

    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 97, (8, 9), generator=torch.Generator().manual_seed(0))]

    def run(accelerate):
        model = _peft_model("llama", torch.float32, dropout=0.1)
        if accelerate:
            assert accelerate_peft(model) > 0
        args = TrainingArguments(output_dir=str(tmp_path / str(accelerate)), max_steps=4, per_device_train_batch_size=2,
                                 learning_rate=0.05, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                                 seed=0, disable_tqdm=True,
                                 # SGD: an update linear in the gradient, so the runs differ by float32 rounding
                                 # only (AdamW turns rounding in a near-zero gradient element into a step of up
                                 # to the learning rate; see tests/dist_train.py's make_optimizer)
                                 optim="sgd", optim_args="momentum=0.9")
        trainer = Trainer(model=model, args=args, train_dataset=rows)
        trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        return losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    slow_losses, slow_params = run(False)
    fast_losses, fast_params = run(True)
    assert len(fast_losses) == 4
    for a, b in zip(fast_losses, slow_losses):
        assert abs(a - b) <= 1e-5 * abs(b), (fast_losses, slow_losses)
    assert max(_rel(fast_params[k], slow_params[k]) for k in slow_params) <= 1e-4


def test_adapters_written_in_place_with_their_version_kept_are_seen():
    """FSDP2 re-gathers a PEFT model's adapters into the same buffers with the version counter kept: the
    accelerated layer still computes with the new values (its row norm is not cached on versions)."""
    model = _peft_model("llama", torch.float64).eval()
    inputs = tiny_inputs()
    accelerate_peft(model)
    with torch.no_grad():
        model(**inputs)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                with torch.autograd._unsafe_preserve_version_counter(p):
                    p.add_(0.05)
        fast = model(**inputs).logits
        restore_peft(model)
        assert _rel(fast, model(**inputs).logits) <= 1e-10


def test_bf16_model_with_peft_default_fp32_adapters(monkeypatch):
    """The common setting: a bf16 base model, PEFT's default float32 adapters. The fused path runs (the input
    has the base weight's dtype; the adapters are cast to it, the scale stays float32) and is as close to the
    float64 model as PEFT's own bf16 run is (measured: logits 1.19e-2 vs PEFT's 1.12e-2, gradients 2.8e-2 vs
    3.6e-2; a whole model in bf16 is past the one-op 1e-2)."""
    import copy

    model = tiny_model("llama", kind="lm").to(torch.bfloat16)
    torch.manual_seed(0)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, use_dora=True, init_lora_weights=False,
                                                       target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    inputs = tiny_inputs()
    exact = _step(copy.deepcopy(model).double(), inputs)
    slow = _step(model, inputs)
    calls = _count_fused_calls(monkeypatch)
    accelerate_peft(model)
    fast = _step(model, inputs)
    assert len(calls) == 8
    assert fast[1].keys() == exact[1].keys() and all(g.dtype == torch.float32 for g in fast[1].values())

    def err(run):
        return (_rel(run[0].double(), exact[0]), max(_rel(run[1][k].double(), exact[1][k]) for k in exact[1]))

    (fast_logits, fast_grads), (slow_logits, slow_grads) = err(fast), err(slow)
    assert fast_logits <= max(1e-2, 1.5 * slow_logits), (fast_logits, slow_logits)
    assert fast_grads <= max(1e-2, 1.5 * slow_grads), (fast_grads, slow_grads)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing(reentrant):
    """HF gradient checkpointing (reentrant or not) recomputes the accelerated layers: PEFT's gradients."""
    model = _peft_model("llama", torch.float64, dropout=0.2)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.enable_input_require_grads()  # PEFT's recipe for reentrant checkpointing with frozen embeddings
    model.train()
    inputs = tiny_inputs()
    slow = _step(model, inputs)
    accelerate_peft(model)
    _assert_same(_step(model, inputs), slow, 1e-10)


def test_a_trained_base_weight_goes_through_peft(monkeypatch):
    """The fused op forms no gradient for W0: a layer whose base weight trains keeps PEFT's own forward, and
    that weight gets PEFT's gradient."""
    model = _peft_model("llama", torch.float64)
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    q.base_layer.weight.requires_grad_(True)
    inputs = tiny_inputs()
    slow = _step(model, inputs)
    calls = _count_fused_calls(monkeypatch)
    patched = accelerate_peft(model)
    fast = _step(model, inputs)
    assert len(calls) == patched - 1
    _assert_same(fast, slow, 1e-10)
