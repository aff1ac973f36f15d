"""bench/gpu_check.sh (the one-command GPU run) works end to end on a CPU (--dry-run), keeps going past a
stage that times out, never pulls in the CPU venv's install from make, and its helpers behave:
the MASKED_DORA_AUTOTUNE=small config set and gpu_report.py's per-section writes and size options."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.gpu_stack  # CI: on the GPU machine's stack (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")
STAGES = ["env", "build", "registration", "selftest", "cuda_tests", "sanitize", "bench", "triton_tests"]
KERNELS = ["row_norm_kernel", "dora_linear_kernel", "dora_linear_backward_kernel", "compact_linear_kernel"]


def _run_check(out_dir, python=sys.executable, timeout=240, **env_extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "MASKED_DORA_BACKEND", "OUT") and not k.startswith("GPU_CHECK_")}
    env.update(PYTHON=python, GPU_CHECK_OUT=str(out_dir), **env_extra)
    proc = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    summary = json.loads((out_dir / "summary.json").read_text())
    return proc, summary, {s["stage"]: s for s in summary["stages"]}


def _extension_loaded() -> bool:
    import masked_dora

    return masked_dora.backend_status().get("extension") == "loaded"


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    out = tmp_path / "gpu-check"
    proc, summary, stages = _run_check(out)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [s["stage"] for s in summary["stages"]] == STAGES, log
    assert summary["complete"] is True and summary["mode"] == "dry-run"
    ext = _extension_loaded()  # without the C++ extension no CPU kernel is registered: that stage fails
    expected = {"env": "passed", "build": "skipped", "registration": "passed" if ext else "failed",
                "selftest": "passed", "cuda_tests": "skipped", "sanitize": "passed", "bench": "passed", "triton_tests": "skipped"}
    assert {s: stages[s]["status"] for s in STAGES} == expected, log
    assert proc.returncode == (0 if ext else 1) == summary["exit_code"], log
    for s in STAGES:
        assert (out / stages[s]["log"]).is_file(), s
    md = (out / "summary.md").read_text()
    assert all(f"| {s} | {expected[s]} |" in md for s in STAGES), md
    # env: versions for real, no GPU expected here
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["mode"] == "dry-run"
    assert "## python" in (out / "env.txt").read_text()
    # build: the exact command, not run
    build = (out / "build.log").read_text()
    assert "pip install" in build and "--no-build-isolation" in build and "MASKED_DORA_CUDA_ARCHS=" in build
    # registration: every kernel op reported for CPU and CUDA; CUDA not expected on a CPU machine
    reg = json.loads((out / "registration.json").read_text())
    assert sorted(reg["kernels"]) == sorted(KERNELS) and reg["expect_cuda"] is False
    assert all(set(v) == {"CPU", "CUDA"} for v in reg["kernels"].values())
    if ext:
        assert reg["ok"] and all(reg["kernels"][k]["CPU"] for k in KERNELS[1:])
    # selftest: every CPU backend checked against float64; the verdict file written, nothing recorded on a CPU
    st = json.loads((out / "selftest.json").read_text())
    assert st["environment"]["device"] == "cpu" and st["verified"] == {}
    st_ops = {"row_norm", "dora_linear", "dora_linear_backward", "compact_linear"}
    assert {r["op"] for r in st["rows"] if r["status"] == "passed"} == st_ops
    assert stages["selftest"]["note"].startswith(f"{sum(r['status'] == 'passed' for r in st['rows'])} passed, 0 failed")
    # cuda tests: collected and skipped (exit 0, not pytest's 5 "no tests collected")
    assert stages["cuda_tests"]["rc"] == 0 and stages["cuda_tests"]["note"].startswith("all tests skipped")
    assert (out / "cuda_tests.xml").is_file()
    # sanitizer workload on the CPU: the selftest's quick checks, every op, none failed
    san = json.loads((out / "sanitize.json").read_text())
    assert san["environment"]["device"] == "cpu"
    ran = [r for r in san["rows"] if r["status"] != "skipped"]
    assert {r["op"] for r in ran} == set(st_ops) and all(r["status"] == "passed" for r in ran)
    assert {r["backend"] for r in ran} == ({"cpp", "torch"} if ext else {"torch"})
    # benchmark: the CPU smoke report, complete, labelled as not GPU results
    reports = sorted((out / "bench").glob("cpu-smoke-*.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["complete"] is True
    assert "NOT GPU results" in reports[0].with_suffix(".md").read_text()


def test_a_timed_out_stage_does_not_stop_the_next(tmp_path):
    """A python whose pytest hangs: the cuda_tests stage is stopped at its cap, sanitize still runs."""
    slow = tmp_path / "slowpython"
    slow.write_text(f'#!/usr/bin/env bash\nif [[ " $* " == *" pytest "* ]]; then sleep 60; fi\n'
                    f'exec "{sys.executable}" "$@"\n')
    slow.chmod(0o755)
    out = tmp_path / "out"
    proc, summary, stages = _run_check(out, python=str(slow), GPU_CHECK_STAGES="cuda_tests sanitize",
                                       GPU_CHECK_CAPS="cuda_tests=12")
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert stages["cuda_tests"]["status"] == "timed_out" and stages["cuda_tests"]["rc"] == 124, log
    assert stages["cuda_tests"]["seconds"] < 12 + 5, log
    assert stages["sanitize"]["status"] == "passed", log
    assert all(stages[s]["note"].startswith("not selected") for s in STAGES if s not in ("cuda_tests", "sanitize"))
    assert proc.returncode == 1 == summary["exit_code"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["gpu-check", "gpu-report"])
def test_make_gpu_targets_do_not_install_the_cpu_venv(target):
    out = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "torch==2.13.0" not in out.stdout and ".masked_dora-installed" not in out.stdout, out.stdout
    assert ("bench/gpu_check.sh" if target == "gpu-check" else "bench/gpu_report.py") in out.stdout


# ---------------------------------------------------------------- MASKED_DORA_AUTOTUNE

def test_small_autotune_set(monkeypatch):
    kernels = pytest.importorskip("masked_dora.kernels")
    from masked_dora.kernels import _common, compact_linear
    from masked_dora.kernels import dora_linear

    del kernels
    tuned = lambda dtype: _common.TunedKernel._tuned.__wrapped__(dora_linear.FWD, dtype)  # noqa: E731, no cache
    monkeypatch.delenv("MASKED_DORA_AUTOTUNE", raising=False)
    assert _common.autotune_rows(_common.GEMM_16) == _common.GEMM_16
    assert len(tuned(torch.bfloat16).configs) == len(_common.GEMM_16)
    full = len(compact_linear._autotuned(torch.bfloat16, False).configs)
    assert full == len(compact_linear.CONFIGS_16BIT)
    monkeypatch.setenv("MASKED_DORA_AUTOTUNE", "small")
    assert _common.autotune_rows(_common.GEMM_16) == _common.GEMM_16[:2]
    assert len(tuned(torch.bfloat16).configs) == 2
    for small_m in (False, True):
        assert len(compact_linear._autotuned(torch.float32, small_m).configs) <= 2
    assert len(compact_linear._autotuned(torch.bfloat16, False).configs) == 2
    # the compile targets keep every config whatever the autotune set
    assert len(compact_linear.configs_for(torch.bfloat16, False)) == full
    monkeypatch.setenv("MASKED_DORA_AUTOTUNE", "tiny")
    with pytest.raises(ValueError, match="MASKED_DORA_AUTOTUNE"):
        _common.autotune_rows(_common.GEMM_16)


# ---------------------------------------------------------------- gpu_report.py

@pytest.fixture
def gpu_report(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import gpu_report

    return gpu_report


def test_report_is_written_after_each_section(gpu_report, monkeypatch, tmp_path):
    seen = {}

    def first(smoke, device, **sizes):
        seen["first"] = sizes
        return [{"section": "dora_train", "ms": 1.0, "impl": "x"}]

    def second(smoke, device, **sizes):  # runs after the first section's results are on disk
        seen["second"] = sizes
        (path,) = tmp_path.glob("cpu-smoke-*.json")
        on_disk = json.loads(path.read_text())
        assert on_disk["complete"] is False and on_disk["pending"] == ["compact_linear", "block"]
        assert on_disk["sections"]["dora_train"][0]["ms"] == 1.0
        raise RuntimeError("boom")

    monkeypatch.setitem(gpu_report.SECTIONS, "dora_train", first)
    monkeypatch.setitem(gpu_report.SECTIONS, "compact_linear", second)
    rc = gpu_report.main(["--cpu-smoke", "--out", str(tmp_path), "--shapes", "64x96", "32x48", "--tokens", "16",
                          "--ranks", "2", "--compact-tokens", "1", "3", "--keeps", "0.5", "--patterns", "runs8",
                          "--no-compile", "--quick"])
    assert rc == 1  # a failed section is reported, the run goes on
    assert seen["first"] == {"shapes": [(64, 96), (32, 48)], "tokens": [16], "ranks": [2]}
    assert seen["second"] == {"tokens": [1, 3], "keeps": [0.5], "patterns": ["runs8"], "with_compile": False}
    (path,) = tmp_path.glob("cpu-smoke-*.json")
    report = json.loads(path.read_text())
    assert report["complete"] is True and "boom" in report["errors"]["compact_linear"]
    assert len(list(tmp_path.iterdir())) == 2  # no temporary files left behind
    assert "FAILED: RuntimeError: boom" in path.with_suffix(".md").read_text()


def test_quick_preset_is_for_the_gpu_only(gpu_report):
    args = argparse.Namespace(quick=True, cpu_smoke=False, shapes=None, tokens=None, ranks=None, impls=None,
                              compact_tokens=None, keeps=None, patterns=None, layers=None, no_compile=False,
                              block_layers=None, prefill_tokens=None, decode_batch=None, context=None)
    sizes = gpu_report.section_sizes(args)
    assert sizes["dora_train"] == {"shapes": [(4096, 11008)], "tokens": [8192], "ranks": [16]}
    assert sizes["compact_linear"]["tokens"] == [1, 8192]
    args.tokens = [1024]  # an explicit option wins over the preset
    assert gpu_report.section_sizes(args)["dora_train"]["tokens"] == [1024]
    args.cpu_smoke = True  # the smoke run keeps its toy sizes
    assert gpu_report.section_sizes(args) == {"dora_train": {"tokens": [1024]}, "compact_linear": {}, "block": {}}
