"""The op dispatcher: automatic choice, MASKED_DORA_BACKEND, and its errors."""

import subprocess
import sys

import pytest
import torch

from masked_dora.ops import _registry, use_backend


@pytest.fixture
def toy_op():
    name = "toy_op_for_tests"
    _registry.register(name, "torch", lambda: "torch", priority=0)
    _registry.register(name, "cpp", lambda: "cpp", priority=10,
                       supports=lambda d, t: d.type == "cpu" and t == torch.float32)
    yield name
    _registry._REGISTRY.pop(name)


CPU = torch.device("cpu")


def test_automatic_choice_prefers_highest_priority_that_supports(toy_op):
    assert _registry.dispatch(toy_op, CPU, torch.float32) == "cpp"
    assert _registry.dispatch(toy_op, CPU, torch.float64) == "torch"


def test_forced_backend(toy_op, monkeypatch):
    monkeypatch.setenv("MASKED_DORA_BACKEND", "torch")
    assert _registry.dispatch(toy_op, CPU, torch.float32) == "torch"
    with use_backend("cpp"):  # the context manager wins over the environment
        assert _registry.dispatch(toy_op, CPU, torch.float32) == "cpp"
        with pytest.raises(RuntimeError, match="MASKED_DORA_BACKEND=cpp: op 'toy_op_for_tests' cannot run"):
            _registry.dispatch(toy_op, CPU, torch.float64)


def test_forced_backend_without_kernel_falls_back_with_warning(toy_op):
    with use_backend("cuda"):
        with pytest.warns(UserWarning, match="has no kernel for op 'toy_op_for_tests'"):
            assert _registry.dispatch(toy_op, CPU, torch.float32) == "cpp"


def test_unknown_backend_is_rejected(monkeypatch):
    monkeypatch.setenv("MASKED_DORA_BACKEND", "tpu")
    with pytest.raises(ValueError, match="MASKED_DORA_BACKEND: expected one of"):
        _registry.forced_backend()
    with pytest.raises(ValueError, match="backend: expected one of"):
        with use_backend("tpu"):
            pass
    with pytest.raises(KeyError, match="no op named"):
        _registry.registered("nope")


def test_every_op_has_a_torch_reference():
    for op in ("dora_linear", "dora_linear_backward", "row_norm"):
        assert "torch" in _registry.registered(op)


def test_import_never_initialises_cuda_and_survives_missing_backends():
    code = (
        "import sys, torch\n"
        "sys.modules['masked_dora._C'] = None\n"      # the extension cannot be imported
        "sys.modules['triton'] = None\n"               # nor can Triton
        "import masked_dora\n"
        "from masked_dora import MaskedDoRALinear\n"
        "assert not torch.cuda.is_initialized()\n"
        "st = masked_dora.backend_status()\n"
        "assert st['extension'].startswith('unavailable') and st['triton'].startswith('unavailable'), st\n"
        "layer = MaskedDoRALinear(8, 4, rank=2).eval()\n"
        "assert layer(torch.randn(2, 8)).shape == (2, 4)\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_forced_backend_reaches_a_backward_on_another_thread(monkeypatch):
    """Autograd runs a CUDA backward on a device thread, where use_backend()'s thread-local is unset:
    the forward's forced backend must still choose the backward's kernel."""
    import dataclasses
    import threading

    from masked_dora.ops import dora_linear

    ran = []
    impls = _registry._REGISTRY["dora_linear_backward"]
    for name in ("torch", "cpp"):
        if name in impls:
            impl = impls[name]
            monkeypatch.setitem(impls, name, dataclasses.replace(
                impl, fn=lambda *a, _fn=impl.fn, _n=name: ran.append(_n) or _fn(*a),
                priority=(100 if name == "cpp" else 0), supports=lambda d, t: True))
    if "cpp" not in impls:  # a stand-in automatic choice that must not run
        monkeypatch.setitem(impls, "cpp", _registry.BackendImpl(
            "cpp", lambda *a: ran.append("cpp"), lambda d, t: True, 100, lambda d, t: ""))
    x = torch.randn(5, 8, requires_grad=True)
    w, a, b = torch.randn(6, 8), torch.randn(2, 8, requires_grad=True), torch.randn(6, 2, requires_grad=True)
    with use_backend("torch"):
        y = dora_linear(x, w, a, b, 0.5, torch.rand(6))
    worker = threading.Thread(target=lambda: y.sum().backward())
    worker.start()
    worker.join()
    assert ran == ["torch"] and x.grad is not None


def test_selection_is_remembered_and_follows_every_change_it_depends_on(monkeypatch):
    """select() caches its answer; a new registration, a forced backend, a different dtype and a
    verification change (``_verified.forget``) each give a fresh answer."""
    from masked_dora.ops import _registry, _verified

    op = "test_cached_selection_op"
    monkeypatch.setitem(_registry._REGISTRY, op, {})
    _registry.register(op, "torch", lambda: "torch", priority=0)
    cpu = torch.device("cpu")
    assert _registry.select(op, cpu, torch.float32).name == "torch"
    assert _registry.select(op, cpu, torch.float32) is _registry.select(op, cpu, torch.float32)
    _registry.register(op, "cpp", lambda: "cpp", priority=10,
                       supports=lambda d, t: t == torch.float32)
    assert _registry.select(op, cpu, torch.float32).name == "cpp"      # new registration seen
    assert _registry.select(op, cpu, torch.float16).name == "torch"    # dtype is part of the key
    with _registry.use_backend("torch"):
        assert _registry.select(op, cpu, torch.float32).name == "torch"  # forced backend in the key
    monkeypatch.setitem(_registry._REGISTRY[op], "cpp", _registry.BackendImpl(
        "cpp", lambda: "x", lambda d, t: False, 10, lambda d, t: "patched out"))
    assert _registry.select(op, cpu, torch.float32).name == "torch"    # a patched entry is seen
    before = _verified.generation
    _verified.forget()
    assert _verified.generation == before + 1
    with _registry.use_backend("cpp"), pytest.raises(RuntimeError, match="patched out"):
        _registry.select(op, cpu, torch.float32)                         # errors are never cached
