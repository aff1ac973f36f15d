"""Masked-DoRA training layer vs PEFT DoRA vs PEFT LoRA, as rows for the GPU report.

``dora_train_section()`` is called by ``bench/gpu_report.py``. For each shape
(Llama-7B: 4096x4096, 4096->11008, 11008->4096), rank and implementation it
measures the forward (``fwd``, grad enabled so activations are saved as in
training) and the forward + backward (``fwd_bwd``):

* ``ms``: median time (``triton.testing.do_bench`` on a GPU, L2 flushed; the
  median of wall-clock repeats on the CPU, smoke runs only);
* ``saved_mb``: memory still allocated after the forward (the activations
  kept for the backward, plus the output), ``torch.cuda.memory_allocated`` delta;
* ``activations_mb``: ``saved_mb`` less the output's own bytes (what the layer keeps for its
  backward; the DESIGN target compares this, "output excluded"), and
  ``activations_vs_peft_dora`` its ratio to PEFT DoRA's;
* ``peak_mb``: peak allocated above the starting point during fwd (or
  fwd+bwd): activations + transients, ``torch.cuda.max_memory_allocated`` delta
  (parameter gradients included, they are the same size for every adapter impl).

Implementations: ``masked_dora`` (MaskedDoRALinear, automatic backend: on a GPU
the verified kernels, CUDA extension first, else the torch reference; see
``masked-dora selftest --enable``, which bench/gpu_check.sh runs before this),
``masked_dora_triton`` / ``masked_dora_cuda`` / ``masked_dora_torch`` (the same
layer forced to one backend, timed only where the op registry says that backend
supports the device and dtype, see :func:`timed_impls`: no CUDA extension on CPU
tensors, no Triton interpreter timings), ``peft_dora``, ``peft_lora``. PEFT layers
are built with ``autocast_adapter_dtype=False`` so every layer runs entirely in
the benchmark dtype. MaskedDoRALinear recomputes the row norm on every call
here (its cache is cleared), the cost it pays once per optimizer step; 25% of
its channels are pruned (fixed mask) as in the DESIGN targets.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from masked_dora import MaskedDoRALinear
from masked_dora.ops import _registry, registered, select, use_backend

from timing import median_timer

LLAMA7B_SHAPES: Tuple[Tuple[int, int], ...] = ((4096, 4096), (4096, 11008), (11008, 4096))  # (in, out)
IMPLS = ("masked_dora", "masked_dora_triton", "masked_dora_cuda", "masked_dora_torch", "peft_dora",
         "peft_dora_accelerated", "peft_lora")
FORCED_BACKEND = {"masked_dora_triton": "triton", "masked_dora_cuda": "cuda", "masked_dora_torch": "torch"}


class _Holder(nn.Module):
    """One nn.Linear named ``proj``, the module PEFT targets."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.proj = linear

    def forward(self, x):
        return self.proj(x)


def build_layer(impl: str, k: int, n: int, r: int, dtype: torch.dtype, device: str, sparsity: float = 0.25,
                seed: int = 0) -> nn.Module:
    """One layer of ``impl`` with non-zero LoRA B (so every term does real work)."""
    torch.manual_seed(seed)
    if impl == "masked_dora" or impl in FORCED_BACKEND:
        layer = MaskedDoRALinear(k, n, rank=r, alpha=2 * r, dtype=dtype, device=device)
        with torch.no_grad():
            layer.lora_B.normal_(0, 0.02)
        keep = torch.ones(n, dtype=torch.bool, device=device)
        keep[torch.randperm(n, device=device)[: int(n * sparsity)]] = False
        layer.set_mask(keep)
        return layer.train()
    if impl not in ("peft_dora", "peft_lora", "peft_dora_accelerated"):
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    import peft

    base = _Holder(nn.Linear(k, n, dtype=dtype, device=device))
    config = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"], use_dora=impl != "peft_lora",
                             init_lora_weights=False, lora_dropout=0.0)
    model = peft.get_peft_model(base, config, autocast_adapter_dtype=False).train()
    if impl == "peft_dora_accelerated":  # the same PEFT layer after masked_dora.accelerate_peft(model)
        from masked_dora.nn.peft_accelerate import accelerate_peft

        accelerate_peft(model)
    return model


def timed_impls(impls: Sequence[str], device: str, dtype: torch.dtype) -> List[str]:
    """The implementations of ``impls`` to time on ``device`` in ``dtype``.

    A forced-backend implementation (``FORCED_BACKEND``) is timed only when that backend
    implements the forward and backward ops and can run them here (``_registry.unavailable``:
    device, dtype, and on a GPU kernels built for its compute capability):
    the registry decides, not whether the extension happens to have CUDA kernels (a CUDA
    build does, yet cannot run CPU tensors). Triton on a CPU (the interpreter) is never
    timed: its timings mean nothing.
    """
    dev = torch.device(device)
    chosen = []
    for impl in impls:
        backend = FORCED_BACKEND.get(impl)
        if backend == "triton" and dev.type != "cuda":
            continue
        if backend is not None and not all(
                backend in registered(op) and _registry.unavailable(registered(op)[backend], dev, dtype) is None
                for op in ("dora_linear", "dora_linear_backward")):
            continue
        chosen.append(impl)
    return chosen


def _memory(device: str, layer: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Dict[str, Optional[float]]:
    """Activation (saved) and peak memory deltas in MiB; ``None`` on the CPU (not measured)."""
    if device != "cuda":
        return {"saved_mb": None, "activations_mb": None, "peak_fwd_mb": None, "peak_fwd_bwd_mb": None}
    mib = 1024.0 ** 2
    for p in layer.parameters():
        p.grad = None
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = layer(x)
    torch.cuda.synchronize()
    saved = torch.cuda.memory_allocated() - start
    output = y.numel() * y.element_size()
    peak_fwd = torch.cuda.max_memory_allocated() - start
    y.backward(dy)
    del y
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - start
    return {"saved_mb": saved / mib, "activations_mb": (saved - output) / mib, "peak_fwd_mb": peak_fwd / mib,
            "peak_fwd_bwd_mb": peak / mib}


def mark_adapters_stepped(layer: nn.Module) -> None:
    """As after an optimizer step: bump the version of every adapter ``B`` (an in-place multiply by 1), so a
    cached DoRA row norm (masked DoRA, and a PEFT layer under ``accelerate_peft``) is recomputed on the next
    call, the cost paid once per step, while the frozen ``||W0||^2`` stays cached as it does in training."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "lora_B" in name:
                p.mul_(1)


def dora_train_section(device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
                       shapes: Sequence[Tuple[int, int]] = LLAMA7B_SHAPES,
                       tokens: Union[int, Sequence[int]] = (8192, 1024),
                       ranks: Sequence[int] = (16, 64), impls: Sequence[str] = IMPLS) -> List[dict]:
    """Time and measure every (shape, tokens, rank, impl, mode); one flat dict row each (keys: see module doc)."""
    timer = median_timer(device, cpu_repeats=7, cpu_warmup=2)
    rows: List[dict] = []
    gen = torch.Generator().manual_seed(0)
    token_counts = (tokens,) if isinstance(tokens, int) else tuple(tokens)
    for (k, n), m, r in ((s, t, r) for s in shapes for t in token_counts for r in ranks):
        x = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
        dy = (torch.randn(m, n, generator=gen) * 0.01).to(device=device, dtype=dtype)
        results: Dict[str, dict] = {}
        outputs: Dict[str, torch.Tensor] = {}
        for impl in timed_impls(impls, device, dtype):
            backend = FORCED_BACKEND.get(impl)
            layer = build_layer(impl, k, n, r, dtype, device)
            params = [p for p in layer.parameters() if p.requires_grad]

            def fwd(layer=layer):
                mark_adapters_stepped(layer)
                return layer(x)

            def fwd_bwd(layer=layer, params=params):
                mark_adapters_stepped(layer)
                layer(x).backward(dy)
                for p in params:
                    p.grad = None
                x.grad = None

            with use_backend(backend):
                chosen = (select("dora_linear", x.device, dtype).name
                          if impl.startswith("masked_dora") else "peft")
                if impl.startswith("masked_dora"):  # kept to check the fused path against the reference
                    with torch.no_grad():
                        outputs[impl] = layer(x).float()
                mem = _memory(device, layer, x, dy)
                results[impl] = {"fwd": timer(fwd), "fwd_bwd": timer(fwd_bwd), "mem": mem,
                                 "backend": chosen}
            del layer, params
            if device == "cuda":
                torch.cuda.empty_cache()
        errors = {}
        if "masked_dora_torch" in outputs:
            ref = outputs["masked_dora_torch"]
            for name, out in outputs.items():
                if name != "masked_dora_torch":
                    errors[name] = float((out - ref).norm() / ref.norm().clamp_min(1e-30))
        for impl, res in results.items():
            for mode in ("fwd", "fwd_bwd"):
                t = res[mode]
                row = {"section": "dora_train", "in_features": k, "out_features": n, "tokens": m,
                       "rank": r, "impl": impl, "backend": res["backend"], "mode": mode,
                       "dtype": str(dtype).replace("torch.", ""), "ms": t,
                       "vs_peft_lora": t / results["peft_lora"][mode] if "peft_lora" in results else None,
                       "speedup_vs_peft_dora": (results["peft_dora"][mode] / t
                                                if "peft_dora" in results else None),
                       "saved_mb": res["mem"]["saved_mb"],
                       "activations_mb": res["mem"]["activations_mb"],
                       "peak_mb": res["mem"]["peak_fwd_mb" if mode == "fwd" else "peak_fwd_bwd_mb"],
                       "rel_err_vs_torch": errors.get(impl)}
                dora_peak = results.get("peft_dora", {}).get("mem", {})
                row["activations_vs_peft_dora"] = (row["activations_mb"] / dora_peak["activations_mb"]
                                                   if row["activations_mb"] is not None
                                                   and dora_peak.get("activations_mb") else None)
                key = "peak_fwd_mb" if mode == "fwd" else "peak_fwd_bwd_mb"
                row["peak_vs_peft_dora"] = (row["peak_mb"] / dora_peak[key]
                                            if row["peak_mb"] is not None and dora_peak.get(key) else None)
                rows.append(row)
    return rows
