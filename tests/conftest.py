"""Test set-up: Triton runs under its interpreter when there is no GPU.

TRITON_INTERPRET must be set before any @triton.jit function is created, so
it is set here, before masked_dora (and its kernels) are imported.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


# CI (.ci/run) runs the suite on two stacks side by side, one per core: this one (`make test`) and the GPU
# machine's (.ci/cuda_build_check.sh: torch 2.11, transformers 5.17). The tests of the GPU machine's own tooling
# (gpu_stack marker: bench/gpu_check.sh end to end) run on that machine's stack only there; .ci/run sets this
# variable for `make test`. Everywhere else (a developer's `make test`) they run.
GPU_STACK_ELSEWHERE = os.environ.get("MASKED_DORA_CI_GPU_STACK_ELSEWHERE") == "1"
# CI's second core ends its CUDA stack check minutes before `make test` ends: it then runs, on this stack's .venv,
# the tests marked second_core (packages only .venv has, DeepSpeed and TRL, and some multi-process launches, to
# balance the cores; .ci/second_core.sh), and CI sets this variable for `make test` so they do not run twice.
SECOND_CORE_ELSEWHERE = os.environ.get("MASKED_DORA_CI_SECOND_CORE_ELSEWHERE") == "1"


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (cuda marker); not run on this machine")
    skip_gpu_stack = pytest.mark.skip(reason="CI runs this on the GPU machine's stack (.ci/cuda_build_check.sh), "
                                             "beside this run (MASKED_DORA_CI_GPU_STACK_ELSEWHERE=1)")
    skip_second_core = pytest.mark.skip(reason="CI runs this on its second core once the CUDA stack check is done "
                                               "(.ci/second_core.sh; MASKED_DORA_CI_SECOND_CORE_ELSEWHERE=1)")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
        if "gpu_stack" in item.keywords and GPU_STACK_ELSEWHERE:
            item.add_marker(skip_gpu_stack)
        if "second_core" in item.keywords and SECOND_CORE_ELSEWHERE:
            item.add_marker(skip_second_core)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=["torch", "cpp"])
def torch_and_cpp_backend(request):
    """Runs a test under the PyTorch reference backend and under the C++ CPU backend (skipped where the extension
    is not built); a module makes it autouse with ``def backend(torch_and_cpp_backend)``. row_norm has no C++
    kernel: under ``cpp`` it takes the automatic choice (its warning is silenced)."""
    import warnings

    from masked_dora.ops import use_backend

    if request.param == "cpp" and not torch._C._dispatch_has_kernel_for_dispatch_key(
            "masked_dora::dora_linear_kernel", "CPU"):
        pytest.skip("masked_dora._C has no C++ CPU kernel for dora_linear (extension not built)")
    with use_backend(request.param), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no kernel for op 'row_norm'")
        yield request.param
