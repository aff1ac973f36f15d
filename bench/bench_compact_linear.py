"""compact_linear vs its baselines, and the DESIGN.md CPU target for a 50%-kept MLP block.

Layers (fp32 on the CPU, 1024 tokens; Llama-7B shapes in bf16 when a GPU is present):

* ``gather``: a down-projection that reads the kept ``keep`` fraction of a
  4096-wide input (``in_idx``) and writes 1024 outputs;
* ``scatter_residual``: an up-/o-projection whose kept rows are scattered into a
  4096-wide residual stream (``out_idx`` + ``residual``).

Baselines: ``dense`` (F.linear on the full weight), ``ideal`` (F.linear at the
compact shape on pre-gathered contiguous input / no scatter: the floor),
``eager`` (index_select -> F.linear -> index_add). ``compact_linear`` uses the
default backend (cpp on a CPU with the extension built); ``compact_linear_`` is
the in-place residual update (scatter case only).

MLP block (the CPU target): up 1024->4096 -> GELU -> down 4096->1024, 1024
tokens, 50% of the channels kept, compacted as a producer->consumer pair with
:func:`masked_dora.nn.compact_pair` (cpp backend) vs the dense block and vs the
ideal compact GEMMs. Target: >= 1.7x dense, >= 0.9 of ideal.

Run: ``pytest bench/bench_compact_linear.py --benchmark-enable`` (grouped per case)
or, for the interleaved ratio table (robust to a shared, busy CPU):
``python bench/bench_compact_linear.py``.
"""

from __future__ import annotations

import sys
import time

import pytest
import torch
import torch.nn.functional as F

from masked_dora.nn import MaskedDoRALinear, compact_pair
from masked_dora.ops import compact_linear, compact_linear_, use_backend

KEEPS = (0.5, 0.75, 0.9)
GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
DTYPE = torch.bfloat16 if GPU else torch.float32
TOKENS = 4096 if GPU else 1024
HIDDEN, INTER = (4096, 11008) if GPU else (1024, 4096)


def layer_case(kind: str, keep: float, seed: int = 0):
    """Callables ``{impl: fn}`` for one layer case (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    kw = dict(device=DEVICE, dtype=DTYPE)
    kept = int(round(keep * INTER))
    idx = torch.sort(torch.randperm(INTER, generator=g)[:kept]).values.to(DEVICE)
    if kind == "gather":
        h = torch.randn(TOKENS, INTER, generator=g).to(**kw)
        w = (torch.randn(HIDDEN, INTER, generator=g) / INTER ** 0.5).to(**kw)
        wc = w[:, idx].contiguous()
        hc = h[:, idx].contiguous()
        return {"compact_linear": lambda: compact_linear(h, wc, None, idx),
                "dense": lambda: F.linear(h, w),
                "ideal": lambda: F.linear(hc, wc),
                "eager": lambda: F.linear(h.index_select(1, idx), wc)}
    x = torch.randn(TOKENS, HIDDEN, generator=g).to(**kw)
    res = torch.randn(TOKENS, INTER, generator=g).to(**kw)
    w = (torch.randn(INTER, HIDDEN, generator=g) / HIDDEN ** 0.5).to(**kw)
    wc = w[idx].contiguous()
    stream = res.clone()  # the in-place form accumulates into its own copy of the residual
    return {"compact_linear": lambda: compact_linear(x, wc, None, None, idx, INTER, res),
            "compact_linear_": lambda: compact_linear_(stream, x, wc, None, None, idx),
            "dense": lambda: torch.addmm(res, x, w.t()),
            "ideal": lambda: F.linear(x, wc),
            "eager": lambda: res.index_add(1, idx, F.linear(x, wc))}


def mlp_case(keep: float = 0.5, seed: int = 0):
    """``{impl: fn}`` for the MLP block: dense, compact pair (cpp backend), ideal compact GEMMs."""
    torch.manual_seed(seed)
    up = MaskedDoRALinear(HIDDEN, INTER, rank=16, alpha=16, device=DEVICE, dtype=DTYPE)
    down = torch.nn.Linear(INTER, HIDDEN, device=DEVICE, dtype=DTYPE)
    with torch.no_grad():
        up.lora_B.normal_(0, 0.01)
    keep_mask = torch.zeros(INTER, dtype=torch.bool)
    keep_mask[torch.randperm(INTER)[:int(keep * INTER)]] = True
    up.set_mask(keep_mask.to(DEVICE))
    up.eval()
    up_dense = up.to_linear()                      # the merged full-width layer (pruned rows zero)
    up_c, down_c = compact_pair(up, down)
    x = torch.randn(TOKENS, HIDDEN, device=DEVICE, dtype=DTYPE)
    w1, b1, w2, b2 = up_c.weight.detach(), up_c.bias.detach(), down_c.weight.detach(), down_c.bias.detach()
    backend = None if GPU else "cpp"  # GPU: the automatic choice

    def compact():
        with use_backend(backend):
            return down_c(F.gelu(up_c(x)))

    return {"dense": lambda: down(F.gelu(up_dense(x))),
            "compact_pair": compact,
            "ideal": lambda: F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)}


# ---------------------------------------------------------------- pytest-benchmark

@pytest.mark.parametrize("impl", ["compact_linear", "compact_linear_", "dense", "ideal", "eager"])
@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("kind", ["gather", "scatter_residual"])
def test_layer(benchmark, kind, keep, impl):
    fns = layer_case(kind, keep)
    if impl not in fns:
        pytest.skip(f"{impl}: no in-place form for the {kind} case")
    fn = fns[impl]
    benchmark.group = f"{kind}-keep{keep}"
    benchmark.extra_info.update(case=f"{kind}-keep{keep}", impl=impl, tokens=TOKENS, device=DEVICE,
                                dtype=str(DTYPE))
    with torch.no_grad():
        benchmark.pedantic(fn, rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("impl", ["dense", "compact_pair", "ideal"])
def test_mlp_block(benchmark, impl):
    fns = mlp_case(0.5)
    benchmark.group = "mlp-keep0.5"
    benchmark.extra_info.update(case="mlp-keep0.5", impl=impl, tokens=TOKENS, device=DEVICE)
    with torch.no_grad():
        benchmark.pedantic(fns[impl], rounds=10, warmup_rounds=2)


# ---------------------------------------------------------------- interleaved ratio table

def interleaved(fns, rounds: int = 20):
    """Best-of-``rounds`` ms per callable, the callables interleaved round by round."""
    best = {k: float("inf") for k in fns}
    with torch.no_grad():
        for f in fns.values():
            f(), f()
        for _ in range(rounds):
            for k, f in fns.items():
                if GPU:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                f()
                if GPU:
                    torch.cuda.synchronize()
                best[k] = min(best[k], (time.perf_counter() - t) * 1e3)
    return best


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (best-of) per case")
    parser.add_argument("--mlp-only", action="store_true", help="only the MLP-block target")
    args = parser.parse_args(argv)
    rounds = args.rounds
    print(f"# compact_linear on {DEVICE} {DTYPE}, {TOKENS} tokens, {torch.get_num_threads()} threads; "
          f"best of {rounds} interleaved rounds, ms")
    t = interleaved(mlp_case(0.5), rounds)
    print(f"MLP block {HIDDEN}->{INTER}->{HIDDEN}, 50% kept: dense {t['dense']:.2f}  compact pair "
          f"{t['compact_pair']:.2f}  ideal {t['ideal']:.2f}  ->  {t['dense'] / t['compact_pair']:.2f}x dense "
          f"(target >= 1.7), {t['ideal'] / t['compact_pair']:.3f} of ideal (target >= 0.9)")
    for kind in () if args.mlp_only else ("gather", "scatter_residual"):
        for keep in KEEPS:
            t = interleaved(layer_case(kind, keep), rounds)
            c = t["compact_linear"]
            inplace = (f"  compact_linear_ (in place) {t['compact_linear_']:7.2f} "
                       f"(ideal/cl_ {t['ideal'] / t['compact_linear_']:.2f})" if "compact_linear_" in t else "")
            print(f"{kind:17s} keep {keep:.2f}: compact_linear {c:7.2f}  dense {t['dense']:7.2f}  "
                  f"ideal {t['ideal']:7.2f}  eager {t['eager']:7.2f}  | ideal/cl {t['ideal'] / c:.2f}  "
                  f"dense/cl {t['dense'] / c:.2f}  eager/cl {t['eager'] / c:.2f}{inplace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
