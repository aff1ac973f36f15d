"""CPU forward+backward of one layer: masked DoRA (default backend) vs PEFT DoRA vs PEFT LoRA.

The DESIGN.md CPU target: 1024 -> 4096, 1024 tokens, r = 16, fp32, 25% of the
channels pruned: masked DoRA <= 1.15x PEFT LoRA and >= 1.25x faster than PEFT DoRA.

Run: ``make bench`` or
``pytest bench/bench_dora_cpu.py --benchmark-enable --benchmark-group-by=param:shape``.
"""

import pytest
import torch

from layers import fwd_bwd, masked_dora_layer, peft_layer

SHAPES = {"1024x4096-r16": (1024, 4096, 16), "4096x1024-r16": (4096, 1024, 16)}
TOKENS = 1024


def build(impl, shape):
    k, n, r = shape
    if impl == "masked_dora":
        return masked_dora_layer(k, n, r, sparsity=0.25)
    return peft_layer(k, n, r, use_dora=(impl == "peft_dora"))


@pytest.mark.parametrize("impl", ["masked_dora", "peft_dora", "peft_lora"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
def test_fwd_bwd(benchmark, impl, shape):
    k, n, r = SHAPES[shape]
    torch.manual_seed(0)
    layer = build(impl, SHAPES[shape])
    x = torch.randn(TOKENS, k, requires_grad=True)
    fwd_bwd(layer, x)  # warm-up (and the norm cache's first fill)
    benchmark.extra_info.update(impl=impl, shape=shape, tokens=TOKENS, rank=r)
    benchmark.pedantic(fwd_bwd, args=(layer, x), rounds=15, warmup_rounds=2)


@pytest.mark.parametrize("impl", ["masked_dora", "peft_dora", "peft_lora"])
def test_forward_only(benchmark, impl):
    k, n, r = SHAPES["1024x4096-r16"]
    torch.manual_seed(0)
    layer = build(impl, SHAPES["1024x4096-r16"])
    x = torch.randn(TOKENS, k)
    benchmark.extra_info.update(impl=impl, shape="1024x4096-r16", tokens=TOKENS, rank=r)
    with torch.no_grad():
        benchmark.pedantic(layer, args=(x,), rounds=15, warmup_rounds=2)
