"""Activation memory of one masked-DoRA layer and of a training step, against PEFT LoRA and PEFT DoRA (issue 16).

    python bench/activation_memory.py                        # both parts, results into bench/results/
    python bench/activation_memory.py --parts layer          # the per-layer bytes only (seconds)

**Per layer** (the issue's measure): the tensors autograd keeps for the backward of one layer, found by walking
its autograd graph after the forward (:func:`graph_saved_bytes`), each storage once;
the layer's parameters and buffers, its input and its own output are not counted (the neighbouring ops keep
those anyway). 1024 -> 4096, 1024 tokens, r = 16, fp32 (``--dtype``), 25% of the output channels gated off.
Masked DoRA is measured with its mask fixed (after ``harden``) and while it learns (hard-concrete samples: the
25% with negative logits sample exactly 0). Target: at most PEFT LoRA's bytes plus M * r elements.

**Training step** of a Llama-shaped model (hidden 2048, MLP 5632, 16 / 4 heads, 4 layers, vocabulary 1024,
batch 1 x 1024 tokens, fp32 (``--dtype``), every q/k/v/o/gate/up/down adapted, r = 16), each configuration in
a fresh process: the bytes the whole forward saves for the backward (each storage once, parameters excluded),
and the peak memory of forward + backward above what the process held before the forward, after one warm-up
step. On a CPU that is the peak resident size (Linux ``VmHWM``, reset before the step, after ``malloc_trim`` so
that the step cannot reuse freed memory unseen): it includes the C allocator's fragmentation, so read it as a
cross-check of the saved bytes. With ``--device cuda`` it is ``torch.cuda.max_memory_allocated`` (UNRUN on a
GPU so far; ``bench/gpu_check.sh`` runs it).

``--library PATH`` measures the masked_dora found at PATH (e.g. a worktree of an older commit) instead of
this checkout's, for a before/after table.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import commit_of, cpu_name, write_results  # noqa: E402

MIB = 2 ** 20
LAYER = dict(k=1024, n=4096, m=1024, r=16, pruned=0.25)
MODEL = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=4, num_attention_heads=16,
             num_key_value_heads=4, head_dim=128, vocab_size=1024, max_position_embeddings=2048)
TOKENS = 1024
KINDS = ("masked_dora_fixed", "masked_dora_learning", "peft_lora", "peft_dora")


def _storage(t: torch.Tensor) -> tuple:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def graph_saved_bytes(outputs, exclude=()) -> int:
    """Bytes of every storage the autograd graph behind ``outputs`` holds for its backward, once each.

    Walks the graph's nodes: a built-in node's ``_saved_*`` tensors, a custom Function's ``saved_tensors`` and
    the output ``dora_linear`` keeps on its context (``kept_output``). No saved-tensor hooks: with hooks active
    the op keeps ``P`` instead (see ``masked_dora/ops/_saved_output.py``), so hooks would measure another path.
    Storages of ``exclude`` (parameters, the input, the output) are not counted."""
    skip = {_storage(t)[0] for t in exclude}
    found, seen = {}, set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]

    def add(value):
        for t in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(t, torch.Tensor):
                ptr, nbytes = _storage(t)
                if ptr not in skip:
                    found[ptr] = nbytes

    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_") or name in ("saved_tensors", "kept_output"):
                try:
                    add(getattr(node, name))
                except RuntimeError:  # released, or not a tensor attribute
                    pass
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sum(found.values())


# ---------------------------------------------------------------- one layer

def _layer(kind: str, device: str, dtype: torch.dtype):
    import torch.nn as nn

    k, n, r = LAYER["k"], LAYER["n"], LAYER["r"]
    torch.manual_seed(0)
    pruned = torch.randperm(n)[: int(n * LAYER["pruned"])]
    if kind.startswith("masked_dora"):
        from masked_dora.nn import MaskedDoRALinear

        layer = MaskedDoRALinear.from_linear(nn.Linear(k, n, device=device, dtype=dtype), rank=r, alpha=2 * r)
        keep = torch.ones(n, dtype=torch.bool)
        keep[pruned] = False
        if kind == "masked_dora_fixed":
            layer.set_mask(keep.to(device))
        else:  # learning: logits +3 / -3, hard-concrete samples (the 25% at -3 are exactly 0 almost always)
            with torch.no_grad():
                layer.mask_logits.copy_(torch.where(keep, 3.0, -3.0).to(device))
        return layer.train(), layer
    import peft

    base = nn.Sequential()
    base.add_module("proj", nn.Linear(k, n, device=device, dtype=dtype))
    model = peft.get_peft_model(base, peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"],
                                                       use_dora=kind == "peft_dora"),
                                 autocast_adapter_dtype=False)
    return model.train(), model.base_model.model.proj


def layer_bytes(kind: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    model, layer = _layer(kind, device, dtype)
    x = torch.randn(LAYER["m"], LAYER["k"], device=device, dtype=dtype, requires_grad=True)
    y = model(x)
    counted = graph_saved_bytes([y], exclude=[x, y, *model.parameters(), *model.buffers()])
    y.sum().backward()  # the saved set is complete and usable
    return dict(part="layer", kind=kind, saved_bytes=counted, saved_mib=counted / MIB)


# ---------------------------------------------------------------- a training step

def _model(kind: str, device: str, dtype: torch.dtype):
    import transformers as t

    torch.manual_seed(0)
    with torch.device(device):
        model = t.LlamaForCausalLM(t.LlamaConfig(**MODEL)).to(dtype)
    model.train()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if kind.startswith("masked_dora"):
        from masked_dora.models import MaskedDoRAConfig, harden, prepare_model

        prepare_model(model, MaskedDoRAConfig(rank=16, alpha=32.0, importance="none", target_sparsity=0.25,
                                              save_form="per_layer"))
        if kind == "masked_dora_fixed":
            harden(model)
        return model
    import peft

    for p in model.parameters():
        p.requires_grad_(False)
    return peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules=targets,
                                                      use_dora=kind == "peft_dora"), autocast_adapter_dtype=False)


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) * 1024  # kB


def step_memory(kind: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    import gc

    model = _model(kind, device, dtype)
    ids = torch.randint(0, MODEL["vocab_size"], (1, TOKENS), generator=torch.Generator().manual_seed(1)).to(device)
    model(input_ids=ids, labels=ids).loss.backward()  # warm-up: lazy buffers, gradients allocated
    gc.collect()
    cuda = device.startswith("cuda")
    if cuda:  # the allocator's own statistics (UNRUN on a GPU so far: bench/gpu_check.sh runs it)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:  # hand the C allocator's free memory back first, or the step reuses it unseen
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:  # Linux: reset the peak resident size (VmHWM) to now
            f.write("5")
        before = _status_bytes("VmRSS")
    loss = model(input_ids=ids, labels=ids).loss
    counted = graph_saved_bytes([loss], exclude=[*model.parameters(), *model.buffers()])
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_bytes("VmHWM")
    return dict(part="step", kind=kind, saved_bytes=counted, saved_mib=counted / MIB,
                peak_above_start_mib=max(0, peak - before) / MIB)


# ---------------------------------------------------------------- report

def markdown(rows, meta) -> str:
    lines = [f"# Activation memory (issue 16): `{meta['command']}`", "",
             f"{meta['date']} | {meta['machine']}, {meta['threads']} threads | torch {meta['torch']} | "
             f"transformers {meta['transformers']} | peft {meta['peft']} | masked_dora {meta['library']}", ""]
    layer = [r for r in rows if r["part"] == "layer"]
    if layer:
        lora = next((r["saved_bytes"] for r in layer if r["kind"] == "peft_lora"), None)
        elt = torch.finfo(getattr(torch, meta["dtype"])).bits // 8
        lines += [f"## One layer: {LAYER['k']} -> {LAYER['n']}, {LAYER['m']} tokens, r = {LAYER['r']}, "
                  f"{LAYER['pruned']:.0%} gated off, {meta['dtype']} on {meta['device']}", "",
                  "Saved for backward, each storage once; parameters, input and output not counted. "
                  "Target: masked DoRA <= PEFT LoRA + M*r elements"
                  + (f" = {(lora + LAYER['m'] * LAYER['r'] * elt) / MIB:.3f} MiB." if lora is not None else "."),
                  "", "| layer | saved MiB | within the target |", "|---|---|---|"]
        target = None if lora is None else lora + LAYER["m"] * LAYER["r"] * elt
        within = lambda r: ("" if target is None or not r["kind"].startswith("masked")  # noqa: E731
                            else "yes" if r["saved_bytes"] <= target else "no")
        lines += [f"| {r['kind']} | {r['saved_mib']:.3f} | {within(r)} |" for r in layer]
        lines.append("")
    step = [r for r in rows if r["part"] == "step"]
    if step:
        lines += [f"## Training step: Llama-shaped ({MODEL['num_hidden_layers']} x {MODEL['hidden_size']}, "
                  f"MLP {MODEL['intermediate_size']}, {MODEL['num_attention_heads']}/{MODEL['num_key_value_heads']}"
                  f" heads), 1 x {TOKENS} tokens, {meta['dtype']} on {meta['device']}, r = 16 on all 7 projections", "",
                  "| model | saved by the forward, MiB | peak above start, MiB (CPU: resident size; GPU: allocated) |",
                  "|---|---|---|"]
        lines += [f"| {r['kind']} | {r['saved_mib']:.1f} | {r['peak_above_start_mib']:.0f} |" for r in step]
        lines.append("")
    return "\n".join(lines)


def _one(kind: str, part: str, device: str, dtype: str) -> dict:
    dt = getattr(torch, dtype)
    return layer_bytes(kind, device, dt) if part == "layer" else step_memory(kind, device, dt)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["layer", "step"], choices=["layer", "step"])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--library", default=None, help="import masked_dora from this directory")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (the GPU peak: allocator statistics)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", default=f"bench/results/cpu-{datetime.date.today()}-activation-memory",
                        help="output path without extension (default: %(default)s)")
    parser.add_argument("--one", nargs=4, metavar=("KIND", "PART", "DEVICE", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # a child process: one measurement, one JSON line
        print(json.dumps(_one(*args.one)))
        return 0
    env = dict(os.environ)
    if args.library:
        env["PYTHONPATH"] = os.path.abspath(args.library) + os.pathsep + env.get("PYTHONPATH", "")
    rows = []
    for part in args.parts:
        for kind in args.kinds:
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", kind, part, args.device,
                                   args.dtype], env=env,
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{kind} {part} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    import peft
    import transformers

    commit = commit_of(args.library)
    meta = dict(date=str(datetime.date.today()), device=args.device, dtype=args.dtype,
                command=" ".join(["python bench/activation_memory.py"] + list(argv or sys.argv[1:])),
                machine=cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__,
                transformers=transformers.__version__, peft=peft.__version__, library=commit)
    write_results(args.out, meta, rows, markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
