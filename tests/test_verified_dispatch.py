"""On a GPU, kernels run by default only where they were built for the device and verified there.

No GPU here: the GPU side is simulated by patching the device queries of
``masked_dora.ops._verified`` and registering stand-in ``cuda``/``triton`` entries, so the
dispatcher's decisions (and the selftest that feeds them) are tested on the CPU. The real kernels
on a real GPU are checked by ``masked-dora selftest`` itself (bench/gpu_check.sh runs it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import masked_dora
from masked_dora import cli, selftest
from masked_dora.ops import _registry, _verified, select, use_backend

from helpers import pretend_gpu, sm90_build

CUDA = torch.device("cuda")
OP = "dora_linear"


def _pretend_sm90_with_stand_ins(monkeypatch, tmp_path) -> dict:
    """A pretend sm_90 GPU with stand-in cuda/triton kernels for every op; a private verification cache."""
    state = sm90_build()
    monkeypatch.setenv(_verified.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(_verified.TRUST_ENV, raising=False)
    monkeypatch.delenv(_registry.ENV_VAR, raising=False)
    pretend_gpu(monkeypatch, state)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda idx=None: "Fake H100")
    for op in _registry._REGISTRY:  # stand-ins (a CUDA build registers real ones: not what is tested)
        for name, prio in (("cuda", 30), ("triton", 20)):
            impl = _registry.BackendImpl(name, lambda *a: name, lambda d, t: d.type == "cuda", prio,
                                         lambda d, t: "cpu tensor")
            monkeypatch.setitem(_registry._REGISTRY[op], name, impl)
    _verified.forget()
    return state


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """:func:`_pretend_sm90_with_stand_ins` with nothing verified (no committed table)."""
    monkeypatch.setattr(_verified, "VERIFIED", {})
    yield _pretend_sm90_with_stand_ins(monkeypatch, tmp_path)
    _verified.forget()


def test_unverified_gpu_runs_the_reference_and_warns_once(fake_gpu):
    with pytest.warns(RuntimeWarning, match=r"masked-dora selftest --enable") as caught:
        assert select(OP, CUDA, torch.bfloat16).name == "torch"
    assert "sm_90" in str(caught[0].message) and "cuda/triton" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per device
        assert select(OP, CUDA, torch.bfloat16).name == "torch"


def test_a_forced_backend_still_runs_where_it_was_built(fake_gpu):
    with use_backend("cuda"):
        assert select(OP, CUDA, torch.bfloat16).name == "cuda"


def test_committed_table_enables_per_op_and_backend(fake_gpu, monkeypatch):
    monkeypatch.setattr(_verified, "VERIFIED", {"sm_90": {"triton": (OP,)}})
    _verified.forget()
    with pytest.warns(RuntimeWarning, match="cuda"):  # cuda outranks triton but is unverified
        assert select(OP, CUDA, torch.bfloat16).name == "triton"
    fake_gpu["cap"] = (8, 0)  # the table is per compute capability
    _verified.forget()
    with pytest.warns(RuntimeWarning):
        assert select(OP, CUDA, torch.bfloat16).name == "torch"


def test_user_verification_is_recorded_per_device_and_software(fake_gpu, monkeypatch):
    path = _verified.record_user_verification(CUDA, {"cuda": [OP], "triton": [OP]})
    assert path.startswith(os.environ[_verified.CACHE_ENV])
    data = json.load(open(path))
    (entry,) = data["devices"].values()
    assert entry["passed"] == {"cuda": [OP], "triton": [OP]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select(OP, CUDA, torch.bfloat16).name == "cuda"
    with pytest.warns(RuntimeWarning, match="'row_norm'"):
        assert select("row_norm", CUDA, torch.bfloat16).name == "torch"  # row_norm was not verified
    _verified.forget()  # a new process reads the file again
    assert select(OP, CUDA, torch.bfloat16).name == "cuda"
    monkeypatch.setattr(torch, "__version__", "9.9.9")  # other software: verify again
    _verified.forget()
    with pytest.warns(RuntimeWarning):
        assert select(OP, CUDA, torch.bfloat16).name == "torch"


def test_trust_env_enables_every_built_kernel(fake_gpu, monkeypatch):
    monkeypatch.setenv(_verified.TRUST_ENV, "1")
    assert select(OP, CUDA, torch.bfloat16).name == "cuda"


def test_kernels_not_built_for_the_device_never_run(fake_gpu):
    fake_gpu["build"] = dict(fake_gpu["build"], ptx=None)
    fake_gpu["cap"] = (10, 0)  # SASS for 80/90 only, no PTX: "no kernel image" on sm_100
    _verified.forget()
    with use_backend("cuda"), pytest.raises(RuntimeError, match=r"built for sm_80, sm_90.*this GPU is sm_100"):
        select(OP, CUDA, torch.bfloat16)
    with use_backend("triton"):
        assert select(OP, CUDA, torch.bfloat16).name == "triton"
    fake_gpu["build"] = dict(fake_gpu["build"], ptx=90)  # PTX of 90: newer GPUs JIT it
    _verified.forget()
    with use_backend("cuda"):
        assert select(OP, CUDA, torch.bfloat16).name == "cuda"
    fake_gpu["cap"] = (7, 5)  # older than every build arch, and too old for our Triton kernels
    _verified.forget()
    for backend in ("cuda", "triton"):
        with use_backend(backend), pytest.raises(RuntimeError, match="sm_75"):
            select(OP, CUDA, torch.bfloat16)
    os.environ[_verified.TRUST_ENV] = "1"
    try:
        assert select(OP, CUDA, torch.bfloat16).name == "torch"  # trusted, but not runnable here
    finally:
        del os.environ[_verified.TRUST_ENV]


def test_cpu_dispatch_is_unchanged():
    assert select(OP, torch.device("cpu"), torch.float32).name in ("cpp", "torch")


# ---------------------------------------------------------------- selftest

def test_selftest_cli_on_cpu(tmp_path, capsys):
    out = tmp_path / "selftest.json"
    rc = cli.main(["selftest", "--device", "cpu", "--quick", "--reps", "1", "--json", str(out), "--enable",
                   "--backends", "torch", "cpp"])  # (the interpreter's bf16 tl.dot is wrong: triton #11584)
    text = capsys.readouterr().out
    assert rc == 0, text
    report = json.load(open(out))
    ran = [r for r in report["rows"] if r["status"] != "skipped"]
    assert {r["op"] for r in ran} == set(selftest.OPS)
    assert all(r["status"] == "passed" and r["max_rel_err"] < r["tolerance"] for r in ran)
    assert {r["backend"] for r in ran} >= {"torch"}
    assert "nothing recorded" in text and "| row_norm | torch | float32 |" in text
    assert report["complete"] is True
    assert "  row_norm torch float32: passed" in text  # each check is reported as it finishes


def test_selftest_json_is_written_after_every_check(tmp_path, monkeypatch):
    """A run cut off by a time box (the GPU check's selftest stage) keeps the checks that finished."""
    out = tmp_path / "selftest.json"
    seen = []
    real_check = selftest.check

    def check_then_read(op, backend, dtype, device, quick=False, reps=5):
        if out.exists():
            seen.append(json.load(open(out)))
        return real_check(op, backend, dtype, device, quick=quick, reps=reps)

    monkeypatch.setattr(selftest, "check", check_then_read)
    rc = cli.main(["selftest", "--device", "cpu", "--quick", "--reps", "1", "--json", str(out), "--backends", "torch",
                   "--ops", "row_norm", "dora_linear", "--dtypes", "float32"])
    assert rc == 0
    assert [len(r["rows"]) for r in seen] == [1] and seen[0]["complete"] is False
    assert json.load(open(out))["complete"] is True and len(json.load(open(out))["rows"]) == 2


def test_checks_run_in_spawned_processes():
    """The machinery of the GPU compile warm-up (`selftest --jobs N`), here with CPU checks."""
    cpu = torch.device("cpu")
    todo = selftest.plan(cpu, backends=["torch"], dtypes=[torch.float32], ops_=["row_norm", "compact_linear"])
    assert todo == [("row_norm", "torch", torch.float32), ("compact_linear", "torch", torch.float32)]
    assert selftest.run_in_processes(cpu, todo, jobs=2, quick=True) == ["passed", "passed"]


@pytest.mark.parametrize("op", selftest.OPS)
def test_selftest_runs_the_forced_kernel(op, monkeypatch):
    """Each check runs the backend under test (here Triton under the interpreter), every variant of the op."""
    cpu = torch.device("cpu")
    impl = _registry.registered(op).get("triton")
    if impl is None or not impl.supports(cpu, torch.float32):
        pytest.skip("the Triton backend does not run CPU tensors here (no interpreter)")
    calls = []
    monkeypatch.setitem(_registry._REGISTRY[op], "triton",
                        dataclasses.replace(impl, fn=lambda *a, _fn=impl.fn: calls.append(1) or _fn(*a)))
    row = selftest.check(op, "triton", torch.float32, cpu, quick=True, reps=1)
    assert row.status == "passed", row
    shapes = selftest.QUICK_SHAPES[selftest.CASES[op][0]]
    variants = {key.split("@")[0] for key in row.errors}  # outputs checked per shape
    assert len(row.errors) == len(shapes) * len(variants) and len(variants) >= 2
    assert len(calls) >= 2 * len(shapes)  # the checked run and the timed ones


def _fake_impl(fn, name="cpp"):
    return _registry.BackendImpl(name, fn, lambda d, t: True, 10, lambda d, t: "")


def test_selftest_catches_a_wrong_kernel_and_a_raising_one(monkeypatch):
    ref = _registry._REGISTRY["row_norm"]["torch"].fn
    monkeypatch.setitem(_registry._REGISTRY["row_norm"], "cpp",
                        _fake_impl(lambda *a: ref(*a) * (1 + 1e-3)))
    row = selftest.check("row_norm", "cpp", torch.float32, torch.device("cpu"), quick=True, reps=1)
    assert row.status == "FAILED" and 5e-4 < row.max_rel_err < 2e-3, row

    def boom(*args):
        raise RuntimeError("no kernel image is available for execution on the device")
    monkeypatch.setitem(_registry._REGISTRY["row_norm"], "cpp", _fake_impl(boom))
    row = selftest.check("row_norm", "cpp", torch.float32, torch.device("cpu"), quick=True, reps=1)
    assert row.status == "error" and "no kernel image" in row.detail


def test_verdicts_need_every_check_of_a_backend_op_to_pass():
    rows = [selftest.Row("dora_linear", "cuda", "bfloat16", "", status="passed"),
            selftest.Row("dora_linear", "cuda", "float32", "", status="FAILED"),
            selftest.Row("row_norm", "cuda", "bfloat16", "", status="passed"),
            selftest.Row("row_norm", "cuda", "float32", "", status="skipped"),
            selftest.Row("compact_linear", "triton", "float16", "", status="error"),
            selftest.Row("row_norm", "torch", "float32", "", status="passed")]
    assert selftest.verdicts(rows) == {"cuda": ["row_norm"]}


# ---------------------------------------------------------------- the extension's import

needs_ext = pytest.mark.skipif(masked_dora.backend_status()["extension"] != "loaded",
                               reason=f"masked_dora._C not built: {masked_dora.backend_status()}")


@needs_ext
def test_extension_reports_its_build():
    from masked_dora import _C

    assert _C.torch_version == torch.__version__
    assert _C.with_cuda in (0, 1)
    if _C.with_cuda:
        assert all(a.isdigit() for a in _C.cuda_archs.split(",")) and _C.cuda_ptx_arch.isdigit()
    else:
        assert _C.cuda_archs == "" and _C.cuda_ptx_arch == ""


@needs_ext
def test_a_registration_error_is_an_import_error_not_a_crash():
    """A schema that does not match the compiled kernel: ImportError, and the process lives on.

    (Registration used to run in static initialisers, where any such error called std::terminate:
    a CUDA build with mismatched CPU/CUDA kernel signatures killed ``import masked_dora``.)
    """
    from masked_dora import _C

    code = f"""
import importlib.util, torch
torch.library.define("masked_dora::dora_linear_kernel", "(Tensor x) -> Tensor")  # not what _C implements
spec = importlib.util.spec_from_file_location("_C", {_C.__file__!r})
try:
    importlib.util.module_from_spec(spec)
except ImportError as exc:
    assert "registering the compiled kernels failed" in str(exc), exc
    print("import error:", exc)
else:
    raise SystemExit("the extension imported against a mismatched schema")
assert not torch._C._dispatch_has_kernel_for_dispatch_key("masked_dora::dora_linear_kernel", "CPU")
print("alive")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("alive"), (out.stdout, out.stderr[-3000:])


def test_committed_verification_names_real_ops_backends_and_its_results_file():
    """Every committed VERIFIED entry: an sm_XY key, kernel backends, ops the registry knows, and the
    committed GPU results file it came from (so a claim of verification can be traced to its run)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert set(_verified.VERIFIED) == set(_verified.VERIFIED_RUNS)
    for arch, backends in _verified.VERIFIED.items():
        assert arch.startswith("sm_") and arch[3:].isdigit(), arch
        assert set(backends) <= set(_verified.KERNEL_BACKENDS), backends
        for backend, ops in backends.items():
            assert ops and set(ops) <= set(_registry._REGISTRY), (backend, ops)
        results = os.path.join(root, _verified.VERIFIED_RUNS[arch])
        assert os.path.isfile(results), results
        with open(results) as f:
            text = f.read()
        assert arch in text and "selftest" in text


def test_committed_sm90_verification_makes_the_cuda_kernels_the_default_there(monkeypatch, tmp_path):
    """With the committed table (not a stand-in), an sm_90 GPU picks the verified CUDA kernel without
    any user cache, and no 'not verified' warning is raised."""
    if "sm_90" not in _verified.VERIFIED:
        pytest.skip("no committed sm_90 verification")
    _pretend_sm90_with_stand_ins(monkeypatch, tmp_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert select(OP, CUDA, torch.bfloat16).name == "cuda"
    finally:
        _verified.forget()
