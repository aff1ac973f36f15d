"""Sharded training state saved and resumed, and a sharded model compacted on rank 0.

    python tests/dist_checkpoint.py single OUT
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_checkpoint.py fsdp2 OUT

(``tests/dist_train.py`` runs it too, as its last run, where its modes list ``checkpoint``: its launches then serve
both tests, and a process start is paid once.)

``fsdp2``: 2 steps of ``tests/dist_train.py``'s FSDP2 run; the model and optimizer saved with
``torch.distributed.checkpoint`` (sharded, ``get_state_dict``), the Lagrangian controller and its optimizer
(``MaskTrainer.state_dict()``) and the RNG state with ``torch.save``; a fresh FSDP2 model loads them (``set_state_dict``) and trains steps 2-3.
Then the full state dict is gathered on rank 0 (``full_state_dict=True, cpu_offload=True``), loaded into an
unsharded prepared model, hardened and compacted. ``single``: the same 4 steps on one process, then harden
and compact. Tiny Llama only. Writes ``OUT/<mode>-resume-rank<r>.pt`` (the steps' record and final parameters) and
``OUT/<mode>-compact.pt`` (the compacted model's logits on a probe batch, its config sizes).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dist_train import STEPS, build, global_batches, train_steps, trainable  # noqa: E402
from masked_dora.models import compact_model, harden  # noqa: E402


def _compact(model, out: str, mode: str) -> None:
    harden(model)
    small = compact_model(model)
    with torch.no_grad():
        logits = small(input_ids=global_batches()[0]).logits
    sizes = (small.config.intermediate_size, small.config.num_attention_heads, small.config.num_key_value_heads)
    torch.save({"logits": logits, "sizes": sizes}, os.path.join(out, f"{mode}-compact.pt"))


def main(mode: str, out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if mode == "fsdp2":
        dist.init_process_group("gloo")
    run(mode, out, world, int(os.environ.get("RANK", "0")))
    if mode == "fsdp2":
        dist.destroy_process_group()


def run(mode: str, out: str, world: int, rank: int) -> None:
    """The ``mode`` run (``single``, or ``fsdp2`` in an initialised process group of ``world`` processes)."""
    os.makedirs(out, exist_ok=True)
    record = {"loss": [], "hard": [], "lambda": []}
    if mode == "single":
        model, wrapped, trainer, opt = build("single", 1)
        torch.manual_seed(1)
        train_steps(model, wrapped, trainer, opt, range(STEPS), 1, 0, record)
        record["params"] = trainable(model)
        torch.save(record, os.path.join(out, f"{mode}-resume-rank0.pt"))
        _compact(model, out, mode)
        return
    if mode != "fsdp2":
        raise SystemExit(f"mode: expected single or fsdp2, got {mode!r}")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                         set_state_dict)

    model, wrapped, trainer, opt = build("fsdp2", world)
    torch.manual_seed(1)
    train_steps(model, wrapped, trainer, opt, range(2), world, rank, record)
    model_sd, optim_sd = get_state_dict(model, opt)
    checkpoint = os.path.join(out, "dcp")
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=checkpoint)
    torch.save({"mask_trainer": trainer.state_dict(), "rng": torch.get_rng_state()},
               os.path.join(out, f"extra-rank{rank}.pt"))
    dist.barrier()
    del model, wrapped, trainer, opt, model_sd, optim_sd

    model, wrapped, trainer, opt = build("fsdp2", world)  # fresh: its own random adapters, overwritten now
    model_sd, optim_sd = get_state_dict(model, opt)
    loaded = {"model": model_sd, "optim": optim_sd}
    dcp.load(loaded, checkpoint_id=checkpoint)
    set_state_dict(model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    extra = torch.load(os.path.join(out, f"extra-rank{rank}.pt"))
    trainer.load_state_dict(extra["mask_trainer"])
    torch.set_rng_state(extra["rng"])
    train_steps(model, wrapped, trainer, opt, range(2, STEPS), world, rank, record)
    record["params"] = trainable(model)
    torch.save(record, os.path.join(out, f"{mode}-resume-rank{rank}.pt"))

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        plain, _, _, _ = build("single", 1)
        plain.load_state_dict(full)
        _compact(plain, out, mode)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
