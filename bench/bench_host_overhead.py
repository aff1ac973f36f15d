"""Host (Python + launch) time of one training layer call, at a size where the arithmetic is negligible.

Why: on an H100 the masked-DoRA layer took ~3 ms for forward + backward whether it had 1024 or 8192
tokens, while PEFT LoRA took 0.45-0.8 ms at 1024 (bench/results/2026-11-27-h100-run2.md): the host,
not the GPU, set the pace. This measures that host cost where it can be measured without a GPU: a
64 -> 64 layer, 8 tokens, rank 4, float32, on the CPU, so each call's time is almost all Python,
dispatcher and op-launch overhead. Compared side by side: ``nn.Linear``, PEFT LoRA, PEFT DoRA, and
masked DoRA with its automatic backend (C++ kernels where built) and the torch reference. The row-norm
cache is cleared before each call (its once-per-optimizer-step cost, as in bench_dora_train.py).
On a GPU machine the same file measures the same calls on CUDA (no per-call synchronize: the host
time is what is measured; one synchronize after the rounds).

Run: ``pytest bench/bench_host_overhead.py --benchmark-enable --benchmark-columns=median,iqr,rounds``
"""

import pytest
import torch
from torch import nn

from gpu_dora import build_layer, mark_adapters_stepped
from masked_dora.ops import use_backend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
K = N = 64
TOKENS, RANK = 8, 4
IMPLS = ["linear", "peft_lora", "peft_dora", "masked_dora", "masked_dora_torch"]


def _layer(impl: str) -> nn.Module:
    if impl == "linear":
        torch.manual_seed(0)
        return nn.Linear(K, N, device=DEVICE)
    return build_layer("masked_dora" if impl == "masked_dora_torch" else impl, K, N, RANK, torch.float32, DEVICE)


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("impl", IMPLS)
def test_host_overhead(benchmark, impl, mode):
    layer = _layer(impl)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(TOKENS, K, generator=gen).to(DEVICE).requires_grad_(True)
    dy = torch.randn(TOKENS, N, generator=gen).to(DEVICE)
    backend = "torch" if impl == "masked_dora_torch" else None

    def call():
        mark_adapters_stepped(layer)
        with use_backend(backend):
            y = layer(x)
            if mode == "fwd_bwd":
                y.backward(dy)

    for _ in range(20):  # warm-up
        call()
    benchmark.extra_info.update(impl=impl, mode=mode, device=DEVICE, shape=f"{TOKENS}x{K}->{N}", rank=RANK)
    benchmark.pedantic(call, rounds=400, iterations=1, warmup_rounds=20)
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", ["eager", "compact_linear", "compact_linear_"])
def test_host_overhead_compact_linear(benchmark, impl):
    """One pruned serving layer at decode size (1 token, 64 -> 64 with 48 of 64 inputs and outputs kept):
    eager ``index_select`` + ``linear`` + ``index_add_`` vs the ``compact_linear`` op (automatic backend) and
    its in-place form, all with a residual."""
    from masked_dora.ops import compact_linear, compact_linear_, validate_indices

    gen = torch.Generator().manual_seed(0)
    keep = torch.randperm(K, generator=gen)[:48].sort().values
    in_idx = validate_indices("in_idx", keep, K).to(DEVICE)
    out_idx = validate_indices("out_idx", keep, N).to(DEVICE)
    weight = torch.randn(48, 48, generator=gen).to(DEVICE)
    bias = torch.randn(48, generator=gen).to(DEVICE)
    x = torch.randn(1, K, generator=gen).to(DEVICE)
    residual = torch.randn(1, N, generator=gen).to(DEVICE)

    if impl == "eager":
        def call():
            y = torch.nn.functional.linear(x.index_select(1, in_idx), weight, bias)
            return residual.clone().index_add_(1, out_idx, y)
    elif impl == "compact_linear":
        def call():
            return compact_linear(x, weight, bias, in_idx, out_idx, N, residual)
    else:
        def call():
            return compact_linear_(residual, x, weight, bias, in_idx, out_idx)

    with torch.no_grad():
        for _ in range(20):
            call()
        benchmark.extra_info.update(impl=impl, device=DEVICE, shape=f"1x{K}->{N}, 48 kept")
        benchmark.pedantic(call, rounds=400, iterations=1, warmup_rounds=20)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
