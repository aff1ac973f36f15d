"""A compacted Llama-style model vs the dense one, end to end, as rows for the GPU report.

``block_section()`` is called by ``bench/gpu_report.py``. DESIGN target: the
compacted block, 25% of MLP channels and attention heads removed, runs >= 1.3x
the dense block's throughput, prefill and decode (bf16, H100). The ideal is
1/0.75 = 1.33x: every projection of the block shrinks by 25%.

What is built (the way a user gets a compact model, through the library):

* ``dense``: a ``transformers`` ``LlamaForCausalLM`` with ``layers`` decoder
  layers at Llama-7B sizes (hidden 4096, intermediate 11008, 32 heads of 128),
  a small vocabulary (the embedding and LM head are not what is measured),
  random init, built on ``device``, then cast to ``dtype``; eval mode, SDPA attention;
* ``compact``: a copy of it through ``prepare_model`` (``MaskedDoRAConfig``,
  ``target_sparsity=prune`` for "mlp" and "heads", ``importance="none"``),
  RANDOM mask logits (seeded), ``harden`` (exact top-k: ``prune`` of the MLP
  channels, in blocks of 64, and of the heads of every layer removed), then
  ``compact_model``, called inside ``torch.device(device)`` so the fresh
  model it builds (and overwrites) is initialised on the GPU, not the CPU.
  Its sizes are asserted (Llama-7B: intermediate 8256, 24 heads). 24 heads do
  not divide 4096, which a transformers 5 config refuses: ``compact_model``
  then builds the per-layer form (its expected warning is silenced here); the
  rows' ``form`` says which ("plain" or "per_layer").
  Its logits must be finite, and ``rel_err_vs_masked`` (their relative error
  against the hardened masked model, torch backend, on 2 x 32 tokens) below
  0.1: a gross-error guard (bf16 rounding gives about 1e-2, fp32 about 1e-7).

What is timed (``torch.inference_mode``, same inputs for both models):

* ``prefill``: one forward of batch 1 x ``prefill_tokens`` (no KV cache);
  ``tokens_per_s`` = tokens / time;
* ``decode``: batch ``b`` x one new token against a KV cache of ``context``
  tokens: a ``DynamicCache`` (transformers' default, what ``generate`` uses)
  is filled by one prefill of ``context`` tokens (not timed); each timed call
  is one single-token forward with that cache followed by ``cache.crop(-1)``,
  which drops the token again (a view: no copy, no kernel), so every call sees
  exactly ``context`` cached tokens. The forward's ``torch.cat`` of the cache
  (every DynamicCache step copies it) is part of the time, as in ``generate``;
  ``tokens_per_s`` = b / time. At batch 1 with 2 layers the HF eager forward can be
  bound by Python / kernel-launch time rather than the GPU; then the speedup
  understates what the compacted block gains.

Timing: ``triton.testing.do_bench(warmup=25, rep=100, return_mode="median")``
on CUDA (L2 flushed); the median of wall-clock repeats on the CPU (smoke runs
only). ``speedup_vs_dense`` = dense time / this time (dense rows: 1.0).
``params_m``: all parameters (millions); ``block_params_m``: the decoder layers only.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from masked_dora.models import MaskedDoRAConfig, compact_model, get_state, harden, prepare_model
from masked_dora.models.compact import LAYER_SIZES_KEY
from masked_dora.ops import use_backend

from timing import median_timer

MLP_ALIGNMENT = 64  # MaskedDoRAConfig's default: kept MLP channels come in blocks of 64
HIDDEN_ALIGNMENT = 8  # and kept hidden channels in blocks of 8


def build_dense(device, dtype, layers, hidden, intermediate, heads, kv_heads, vocab, seed,
                max_positions=4096) -> nn.Module:
    import transformers as t

    config = t.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                           head_dim=hidden // heads, max_position_embeddings=max_positions,
                           attn_implementation="sdpa")
    torch.manual_seed(seed)
    with torch.device(device):  # random init on the GPU: seconds on a CPU for 0.4B parameters
        model = t.LlamaForCausalLM(config)
    return model.to(dtype).eval()


def build_compact(dense: nn.Module, prune: Union[float, Dict[str, float]], seed: int,
                  hidden_mode: Optional[str] = None) -> Tuple[nn.Module, nn.Module]:
    """The library path: prepare (a copy), random mask logits, harden, compact_model; returns the hardened
    masked model too (the reference for the compact model's outputs). ``prune``: one sparsity for the MLP and
    the heads, or one per group kind; ``hidden_mode`` (``"global"`` or ``"per_block"``) prunes the hidden
    dimension too, at ``prune["hidden"]``."""
    device = next(dense.parameters()).device
    groups = ("mlp", "heads") + (("hidden",) if hidden_mode else ())
    extra = dict(hidden_mode=hidden_mode) if hidden_mode else {}
    targets = {k: prune[k] for k in groups} if isinstance(prune, dict) else prune  # only the kinds pruned
    masked = prepare_model(copy.deepcopy(dense), MaskedDoRAConfig(
        target_groups=groups, target_sparsity=targets, importance="none", **extra)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in get_state(masked).groups.values():  # random pruning: random logits, hardened to top-k
            group.mask_logits.copy_(torch.randn(group.num_units, generator=gen))
    harden(masked)
    with warnings.catch_warnings(), torch.device(device):
        warnings.filterwarnings("ignore", message=".*cannot express the pruned sizes as a plain checkpoint")
        compact = compact_model(masked)
    return masked, compact


def block_sizes(model: nn.Module) -> Dict[str, int]:
    """intermediate / heads / kv_heads / hidden (the residual channels q/k/v read) of the first decoder layer
    (read from its Linear shapes)."""
    layer = model.model.layers[0]
    head_dim = layer.self_attn.head_dim
    return {"intermediate": layer.mlp.down_proj.in_features, "heads": layer.self_attn.q_proj.out_features // head_dim,
            "kv_heads": layer.self_attn.k_proj.out_features // head_dim,
            "hidden": layer.self_attn.q_proj.in_features}


def _cache_kwarg(model: nn.Module) -> str:
    """transformers 5.x calls the KV cache argument ``cache``; 4.x ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _params_m(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def block_section(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, layers: int = 2, hidden: int = 4096,
                  intermediate: int = 11008, heads: int = 32, kv_heads: int = 32, prune: float = 0.25,
                  prefill_tokens: Sequence[int] = (2048,), decode_batch: Sequence[int] = (1, 16),
                  context: int = 1024, vocab: int = 1024, seed: int = 0,
                  hidden_mode: Optional[str] = None) -> List[dict]:
    """Time the dense and the compacted model; one row per (phase, batch / tokens, model), keys: module doc.
    ``prune``: a sparsity for the MLP and the heads, or one per kind (``{"mlp":, "heads":, "hidden":}``);
    ``hidden_mode``: prune the hidden dimension too (``"global"`` or ``"per_block"``)."""
    from transformers import DynamicCache

    dense = build_dense(device, dtype, layers, hidden, intermediate, heads, kv_heads, vocab, seed,
                        max_positions=max(4096, *prefill_tokens, context + 1))
    masked, compact = build_compact(dense, prune, seed, hidden_mode)
    from masked_dora.masks.controller import kept_count

    sparsity = prune if isinstance(prune, dict) else {"mlp": prune, "heads": prune}
    kept_kv = kept_count(kv_heads, sparsity["heads"])  # whole KV groups go (gqa="kv_groups", the default)
    expect = {"intermediate": kept_count(intermediate, sparsity["mlp"], MLP_ALIGNMENT),  # the library's rounding
              "heads": kept_kv * (heads // kv_heads), "kv_heads": kept_kv,
              "hidden": kept_count(hidden, sparsity["hidden"], HIDDEN_ALIGNMENT) if hidden_mode else hidden}
    sizes = {"dense": block_sizes(dense), "compact": block_sizes(compact)}
    assert sizes["dense"] == {"intermediate": intermediate, "heads": heads, "kv_heads": kv_heads,
                              "hidden": hidden}, sizes
    assert sizes["compact"] == expect, f"compacted sizes {sizes['compact']}, expected {expect}"
    forms = {"dense": "dense", "compact": "per_layer" if getattr(compact.config, LAYER_SIZES_KEY, None) else "plain"}
    models = {"dense": dense, "compact": compact}
    params = {name: (_params_m(m), _params_m(m.model.layers)) for name, m in models.items()}
    gen = torch.Generator().manual_seed(seed + 1)
    ids = lambda b, n: torch.randint(0, vocab, (b, n), generator=gen).to(device)  # noqa: E731
    with torch.inference_mode():
        probe = ids(2, 32)
        logits = compact(probe).logits.float()
        assert torch.isfinite(logits).all(), "compact model: non-finite logits"
        with use_backend("torch"):  # the reference path: no kernel autotuning in a timing run
            ref = masked(probe).logits.float()
        rel_err = float((logits - ref).norm() / ref.norm().clamp_min(1e-30))
        assert rel_err < 0.1, f"compact model: logits {rel_err:.3g} off the masked model's (wrong channels kept?)"
    del masked
    if device == "cuda":
        torch.cuda.empty_cache()
    timer = median_timer(device, cpu_repeats=5, cpu_warmup=1)
    rows: List[dict] = []

    def add(phase: str, batch: int, tokens: int, ctx: int, times: Dict[str, float]) -> None:
        for name, ms in times.items():
            rows.append({
                "section": "block", "phase": phase, "batch": batch, "tokens": tokens, "context": ctx,
                "model": name, "form": forms[name], "layers": layers, "hidden_mode": hidden_mode, **sizes[name],
                "dtype": str(dtype).replace("torch.", ""), "ms": ms,
                "tokens_per_s": batch * tokens / (ms * 1e-3), "speedup_vs_dense": times["dense"] / ms,
                "params_m": params[name][0], "block_params_m": params[name][1],
                "rel_err_vs_masked": rel_err if name == "compact" else None})

    with torch.inference_mode():
        for n in prefill_tokens:
            x = ids(1, n)
            add("prefill", 1, n, 0, {name: timer(lambda m=m: m(x, use_cache=False).logits)
                                     for name, m in models.items()})
        for b in decode_batch:
            prompt, step = ids(b, context), ids(b, 1)
            times = {}
            for name, m in models.items():
                key = _cache_kwarg(m)
                cache = DynamicCache()
                m(prompt, use_cache=True, **{key: cache})  # the context, not timed

                def decode(m=m, cache=cache, key=key):
                    out = m(step, use_cache=True, **{key: cache})
                    cache.crop(-1)  # back to `context` tokens: every call decodes the same position
                    return out.logits

                decode()
                assert cache.get_seq_length() == context, (cache.get_seq_length(), context)
                times[name] = timer(decode)
                del cache
            add("decode", b, 1, context, times)
    return rows
