"""Compile-check the CUDA sources without a GPU, so a kernel that would not build fails CI.

* every ``csrc/cuda/*.cu`` (CUDA headers only) goes through ``nvcc -c`` for
  sm_80 and sm_90: host compiler, device front end and ptxas; the static
  shared memory ptxas reports must fit the arch;
* every ``csrc/cuda/*.cpp`` (torch glue) goes through ``g++ -fsyntax-only``
  against torch's and CUDA's headers. A CPU build of torch ships the c10/cuda
  headers but not the one header a CUDA build generates at configure time,
  ``c10/cuda/impl/cuda_cmake_macros.h`` (a single ``#define
  C10_CUDA_BUILD_SHARED_LIBS``); the test writes that header into a scratch
  include directory, which is cheaper than installing a multi-GB CUDA torch;
* every kernel the CPU and CUDA sources register has its schema defined in Python, and goes
  through the one C++ signature in csrc/kernel_signatures.h.

Skipped when nvcc is not on the machine; linking and running need the GPU machine.
"""

import os
import re
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import masked_dora  # noqa: F401  (defines the kernel schemas)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")
NVCC = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                if os.environ.get("CUDA_HOME") else None)
SMEM_LIMIT = {80: 166912, 90: 232448}  # bytes of shared memory per block (opt-in maximum)
CU_SOURCES = sorted(f for f in os.listdir(CUDA_DIR) if f.endswith(".cu")) if os.path.isdir(CUDA_DIR) else []
CPP_SOURCES = sorted(f for f in os.listdir(CUDA_DIR) if f.endswith(".cpp")) if os.path.isdir(CUDA_DIR) else []

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: CUDA sources not compile-checked")
# CI's CUDA stack check (.ci/cuda_build_check.sh) builds the extension with its CUDA kernels against that stack's
# torch just before its suite, and sets this: the glue compiled there, and the .cu files, which include CUDA's
# headers only, were compiled by the same nvcc in `make test`'s run of this file beside it
BUILT_WITH_CUDA_HERE = os.environ.get("MASKED_DORA_CI_BUILT_WITH_CUDA") == "1"


def cuda_include_dir():
    """CUDA's include directory: CUDA_HOME as torch finds it, else next to nvcc's real location."""
    from torch.utils import cpp_extension

    candidates = (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME,
                  "/usr/local/cuda", os.path.dirname(os.path.dirname(os.path.realpath(NVCC))))
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h")):
            return os.path.join(home, "include")
    pytest.skip("CUDA headers (cuda_runtime_api.h) not found next to nvcc or in CUDA_HOME")


def nvcc(source, arch, tmp_path):
    out = tmp_path / f"{source}.sm{arch}.o"
    cmd = [NVCC, "-c", "-std=c++17", "-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
           "-Werror", "all-warnings", os.path.join(CUDA_DIR, source), "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_cuda_sources_exist():
    assert CU_SOURCES and CPP_SOURCES, "csrc/cuda has no kernels"


@needs_nvcc
@pytest.mark.slow
@pytest.mark.skipif(BUILT_WITH_CUDA_HERE, reason="CI compiles the .cu files (CUDA headers only) with the same nvcc in "
                                                 "`make test`'s run beside this one (MASKED_DORA_CI_BUILT_WITH_CUDA=1)")
def test_every_cu_file_compiles_for_sm80_and_sm90(tmp_path):
    jobs = [(src, arch) for src in CU_SOURCES for arch in (80, 90)]
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        results = list(pool.map(lambda job: (job, nvcc(job[0], job[1], tmp_path)), jobs))
    for (src, arch), res in results:
        assert res.returncode == 0, f"nvcc {src} sm_{arch} failed:\n{res.stderr[-4000:]}"
        for smem in re.findall(r"(\d+) bytes smem", res.stderr):
            assert int(smem) <= SMEM_LIMIT[arch], f"{src} sm_{arch}: {smem} bytes of shared memory"


@needs_nvcc
@pytest.mark.slow
@pytest.mark.skipif(BUILT_WITH_CUDA_HERE, reason="the CUDA stack check built this glue against this torch with nvcc "
                                                 "just before its suite (MASKED_DORA_CI_BUILT_WITH_CUDA=1)")
@pytest.mark.parametrize("source", CPP_SOURCES)
def test_cuda_glue_compiles_against_torch_headers(source, tmp_path):
    from torch.utils import cpp_extension

    shim = tmp_path / "include" / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    includes += [f"-I{tmp_path / 'include'}", f"-I{sysconfig.get_paths()['include']}", f"-I{cuda_include_dir()}"]
    cxx = os.environ.get("CXX", "g++")
    cmd = [cxx, "-fsyntax-only", "-std=c++20", "-DMASKED_DORA_WITH_CUDA", *includes, os.path.join(CUDA_DIR, source)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{cxx} -fsyntax-only {source} failed:\n{res.stderr[-4000:]}"


def kernel_names():
    """Kernel struct -> op name, from csrc/kernel_signatures.h (the one place C++ signatures are declared)."""
    with open(os.path.join(ROOT, "csrc", "kernel_signatures.h")) as f:
        header = f.read()
    return dict(re.findall(r'struct (\w+) \{\s*static constexpr const char\* name = "(\w+)";', header))


def test_every_registered_kernel_has_a_python_schema():
    names = kernel_names()
    assert names, "csrc/kernel_signatures.h declares no kernel"
    for struct, name in names.items():
        assert hasattr(torch.ops.masked_dora, name), f"{struct} registers {name} but Python defines no schema for it"
    sources = [os.path.join(CUDA_DIR, s) for s in CPP_SOURCES]
    sources += [os.path.join(ROOT, "csrc", "cpu", s) for s in os.listdir(os.path.join(ROOT, "csrc", "cpu"))]
    registered = set()
    for path in sources:
        with open(path) as f:
            text = f.read()
        assert "TORCH_LIBRARY_IMPL" not in text and "m.impl(" not in text, \
            f"{path}: register through kernels::impl<Kernel> (csrc/kernel_signatures.h), not m.impl directly"
        registered |= set(re.findall(r"kernels::impl<kernels::(\w+)>", text))
    assert registered == set(names), (registered, names)
