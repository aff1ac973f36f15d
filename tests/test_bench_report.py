"""bench/gpu_report.py runs end to end on the CPU (--cpu-smoke) and labels its output as CPU, not GPU."""

import json
import os
import subprocess
import sys

import pytest
import torch

from masked_dora.ops import registered

from helpers import pretend_gpu, sm90_build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_report_cpu_smoke(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MASKED_DORA_BACKEND")}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_report.py"), "--cpu-smoke",
                          "--sections", "dora_train", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and all(f.startswith("cpu-smoke-") for f in files), files
    report = json.load(open(tmp_path / files[0]))
    assert report["environment"]["cpu_smoke"] is True and report["environment"]["device"] == "cpu"
    rows = report["sections"]["dora_train"]
    impls = {r["impl"] for r in rows}
    assert impls == {"masked_dora_torch", "peft_dora", "peft_dora_accelerated", "peft_lora"}  # no Triton on the CPU
    assert all(r["ms"] > 0 and r["peak_mb"] is None for r in rows)      # no (fake) GPU memory numbers
    md = (tmp_path / files[1]).read_text()
    assert "NOT GPU results" in md


def test_block_section_cpu_smoke_compacts_through_the_library(tmp_path, monkeypatch):
    """--cpu-smoke --sections block: a toy Llama pruned by 25% through prepare_model / harden / compact_model
    (4 heads -> 3, 256 MLP channels -> 192), dense and compact timed on the same inputs; the size options
    reach the section."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import gpu_report

    rc = gpu_report.main(["--cpu-smoke", "--sections", "block", "--out", str(tmp_path), "--block-layers", "1",
                          "--prefill-tokens", "8", "--decode-batch", "1", "2", "--context", "4"])
    assert rc == 0
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and all(f.startswith("cpu-smoke-") for f in files), files
    report = json.load(open(tmp_path / files[0]))
    assert report["complete"] and "errors" not in report
    assert report["environment"]["sizes"]["block"] == {"layers": 1, "prefill_tokens": [8], "decode_batch": [1, 2],
                                                       "context": 4}
    rows = report["sections"]["block"]
    timed = (("prefill", 1, 8, 0), ("decode", 1, 1, 4), ("decode", 2, 1, 4))   # phase, batch, tokens, context
    assert {(r["phase"], r["batch"], r["tokens"], r["context"], r["model"]) for r in rows} == {
        (*t, model) for t in timed for model in ("dense", "compact")}
    assert all(set(gpu_report.COLUMNS["block"]) <= set(r) and r["section"] == "block" and r["layers"] == 1
               for r in rows)
    for r in rows:
        assert r["ms"] > 0 and r["tokens_per_s"] == pytest.approx(r["batch"] * r["tokens"] / (r["ms"] * 1e-3))
        if r["model"] == "dense":
            assert (r["intermediate"], r["heads"], r["kv_heads"], r["form"]) == (256, 4, 4, "dense")
            assert r["speedup_vs_dense"] == 1.0 and r["rel_err_vs_masked"] is None
        else:  # really smaller; 3 heads do not divide hidden 64: the per-layer form
            assert (r["intermediate"], r["heads"], r["kv_heads"], r["form"]) == (192, 3, 3, "per_layer")
            assert r["speedup_vs_dense"] > 0 and r["rel_err_vs_masked"] < 1e-4   # fp32: equals the masked model
    dense, compact = (next(r for r in rows if r["model"] == m) for m in ("dense", "compact"))
    assert compact["block_params_m"] < 0.8 * dense["block_params_m"] and compact["params_m"] < dense["params_m"]
    md = (tmp_path / files[1]).read_text()
    assert "## block" in md and "speedup_vs_dense" in md and "NOT GPU results" in md


# ---------------------------------------------------------------- which forced backends a section times

@pytest.fixture
def cuda_build(monkeypatch):
    """Pretend the extension was built with CUDA kernels (as on a GPU build machine); import the bench modules."""
    from masked_dora.ops import _verified

    real = torch._C._dispatch_has_kernel_for_dispatch_key
    monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key",
                        lambda name, key: True if key == "CUDA" else real(name, key))
    # ... on an sm_90 GPU the build covers (the registry asks for the device's compute capability)
    pretend_gpu(monkeypatch, sm90_build())
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    yield
    _verified.forget()


def test_dora_train_section_times_no_cuda_backend_on_cpu(cuda_build):
    """A CUDA build cannot run CPU tensors: the --cpu-smoke section must not force the cuda backend on them."""
    import gpu_dora

    rows = gpu_dora.dora_train_section(device="cpu", dtype=torch.float32, shapes=((16, 24),), tokens=8, ranks=(2,),
                                       impls=("masked_dora_cuda", "masked_dora_triton", "masked_dora_torch"))
    assert {r["impl"] for r in rows} == {"masked_dora_torch"}
    assert gpu_dora.timed_impls(gpu_dora.IMPLS, "cpu", torch.float32) == [
        "masked_dora", "masked_dora_torch", "peft_dora", "peft_dora_accelerated", "peft_lora"]
    on_gpu = gpu_dora.timed_impls(gpu_dora.IMPLS, "cuda", torch.bfloat16)
    assert "masked_dora_cuda" in on_gpu and "masked_dora_cuda" not in gpu_dora.timed_impls(
        gpu_dora.IMPLS, "cuda", torch.float64)                              # the registry's dtypes decide too
    triton_gpu = registered("dora_linear")["triton"].supports(torch.device("cuda"), torch.bfloat16)
    assert ("masked_dora_triton" in on_gpu) == triton_gpu                   # interpreter-only kernels: not timed


def test_compact_linear_section_times_each_backend_only_where_it_runs(cuda_build):
    import gpu_compact

    assert gpu_compact._gpu_backends("cpu", torch.bfloat16) == []
    assert "cuda" in gpu_compact._gpu_backends("cuda", torch.bfloat16)
    assert "cuda" not in gpu_compact._gpu_backends("cuda", torch.float32)  # the CUDA kernel is half-only


def test_host_overhead_benchmark_runs_every_case():
    """bench/bench_host_overhead.py (pytest-benchmark; each case once with --benchmark-disable)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASKED_DORA_BACKEND", "TRITON_INTERPRET")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
                          os.path.join(ROOT, "bench", "bench_host_overhead.py")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0 and "13 passed" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]


def test_result_files_record_the_commit_and_uncommitted_library_changes(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        from timing import commit_of, write_results
    finally:
        sys.path.pop(0)
    repo = tmp_path / "lib"
    (repo / "masked_dora").mkdir(parents=True)
    (repo / "masked_dora" / "a.py").write_text("x = 1\n")
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True, check=True)  # noqa
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = git("rev-parse", "--short", "HEAD").stdout.strip()
    assert commit_of(str(repo)) == head
    (repo / "masked_dora" / "a.py").write_text("x = 2\n")
    assert commit_of(str(repo)) == head + " + uncommitted changes"
    assert commit_of(str(tmp_path / "nowhere")) == ""
    write_results(str(tmp_path / "r"), {"commit": head}, [{"a": 1}], "# table\n")
    assert json.load(open(tmp_path / "r.json")) == {"meta": {"commit": head}, "rows": [{"a": 1}]}
    assert (tmp_path / "r.md").read_text() == "# table\n"
