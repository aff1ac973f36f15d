"""Forward + backward of one training layer: masked DoRA vs PEFT DoRA vs PEFT LoRA (pytest-benchmark).

On the CPU (the DESIGN.md CPU target: 1024 -> 4096, 1024 tokens, r = 16,
fp32, 25% of channels pruned): masked DoRA with the default backend (the C++
``cpp`` kernels when the extension is built) and with the PyTorch reference
backend vs PEFT DoRA (as PEFT runs it, and after ``masked_dora.accelerate_peft``) vs PEFT LoRA; target <= 1.15x LoRA and >= 1.25x faster
than DoRA. On a CUDA GPU (Llama-7B 4096x4096, 8192 tokens,
bf16) ``masked_dora`` is the automatic GPU backend (CUDA extension or Triton).
The row-norm cache is cleared before every call (the cost paid once per
optimizer step). See bench/gpu_report.py for the full GPU report with memory.

Run: ``pytest bench/bench_dora_train.py --benchmark-enable --benchmark-group-by=param:device``
"""

import pytest
import torch

from gpu_dora import build_layer, mark_adapters_stepped
from masked_dora.ops import use_backend

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
# (in_features, out_features, tokens, rank, dtype)
CONFIG = (4096, 4096, 8192, 16, torch.bfloat16) if ON_GPU else (1024, 4096, 1024, 16, torch.float32)
IMPLS = ["masked_dora", "masked_dora_torch", "peft_dora", "peft_dora_accelerated", "peft_lora"]


def _step(layer, x, dy):
    mark_adapters_stepped(layer)
    layer(x).backward(dy)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", [DEVICE])
def test_dora_train_fwd_bwd(benchmark, impl, device):
    k, n, tokens, r, dtype = CONFIG
    layer = build_layer(impl, k, n, r, dtype, device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, k, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    dy = torch.randn(tokens, n, generator=gen).to(device=device, dtype=dtype)
    backend = "torch" if impl == "masked_dora_torch" else None

    def run():
        with use_backend(backend):
            _step(layer, x, dy)
        if device == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up (Triton autotuning on a GPU)
    benchmark.extra_info.update(impl=impl, in_features=k, out_features=n, tokens=tokens, rank=r,
                                dtype=str(dtype))
    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
