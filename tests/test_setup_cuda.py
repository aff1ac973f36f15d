"""setup.py with a CUDA torch: the CUDA part is optional, an install never fails for it.

These run where torch is a CUDA build (CI's second environment, .ci/cuda_build_check.sh, with the
GPU machine's torch 2.11 CUDA 13.0; no GPU needed) and skip on a CPU torch, where setup.py never
tries CUDA at all.
"""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(torch.version.cuda is None,
                                reason=f"needs a CUDA build of torch (this is {torch.__version__}, CPU)")


def plan(tmp_path, **env_overrides):
    """What setup.py decides to build (``setup.py --name`` runs the planning, builds nothing)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "MASKED_DORA_NO_CUDA")}
    env.update(env_overrides)
    out = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return [line for line in out.stderr.splitlines() if line.startswith("masked_dora:")]


def test_cuda_home_without_headers_builds_the_cpu_extension(tmp_path):
    (tmp_path / "bin").mkdir()  # a toolkit folder with no include/cuda_runtime_api.h
    lines = plan(tmp_path, CUDA_HOME=str(tmp_path))
    assert any("C++ CPU kernels only" in line and "cuda_runtime_api.h" in line and str(tmp_path) in line
               for line in lines), lines


def test_no_cuda_env_builds_the_cpu_extension(tmp_path):
    lines = plan(tmp_path, MASKED_DORA_NO_CUDA="1")
    assert any("C++ CPU kernels only: MASKED_DORA_NO_CUDA=1" in line for line in lines), lines


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_toolkit_found_from_the_nvcc_on_path(tmp_path):
    """torch alone takes dirname(dirname(which nvcc)); a wrapper script in /usr/local/bin then points it at
    /usr/local, which has no CUDA headers. setup.py asks nvcc for its own toolkit folder instead."""
    lines = plan(tmp_path)
    assert any("with C++ CPU and CUDA kernels (CUDA_HOME=" in line for line in lines), lines


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_a_failing_nvcc_falls_back_to_the_cpu_extension(tmp_path):
    """CUDA 13's nvcc rejects sm_70 (Volta): the build says why and ships the C++ CPU kernels."""
    src = tmp_path / "src"  # a scratch copy: the build must not touch the checkout's _C (nor need git)
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info",
                                                             "__pycache__", "*.so", ".pytest_cache", "demo-out"))
    env = dict(os.environ, MASKED_DORA_CUDA_ARCHS="70", MAX_JOBS=str(os.cpu_count() or 1))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", ".",
                          "-w", str(tmp_path / "dist")], cwd=src, env=env, capture_output=True, text=True,
                         timeout=1200)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "building the CUDA kernels failed" in log and "C++ CPU kernels only" in log, log[-4000:]
    (wheel,) = (tmp_path / "dist").glob("masked_dora-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import torch, masked_dora; from masked_dora import _C; assert _C.with_cuda == 0; "
            "assert torch._C._dispatch_has_kernel_for_dispatch_key('masked_dora::dora_linear_kernel', 'CPU'); "
            "assert not torch._C._dispatch_has_kernel_for_dispatch_key('masked_dora::dora_linear_kernel', 'CUDA'); "
            "print(masked_dora.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(site)
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and res.stdout.strip().startswith(str(site)), res.stderr[-3000:]
