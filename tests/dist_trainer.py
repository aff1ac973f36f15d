"""The HF Trainer with MaskedDoRACallback on one or several processes (gloo, CPU), as users launch it.

    python tests/dist_trainer.py single OUT [FAMILY]
    python tests/dist_trainer.py accumulate OUT [FAMILY]          # batch 2, 2 gradient-accumulation steps
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_trainer.py ddp OUT [FAMILY]
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_trainer.py fsdp2 OUT [FAMILY]
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_trainer.py zero3 OUT [FAMILY]  # DeepSpeed ZeRO-3
    accelerate launch --multi_gpu --num_processes 2 tests/dist_trainer.py accelerate-ddp OUT [FAMILY]
    accelerate launch --config_file tests/accelerate_fsdp2.yaml tests/dist_trainer.py accelerate-fsdp2 OUT

FAMILY: a family of ``tests/tiny_models.py`` (default llama), trained as its LM (causal or masked), with ``-int8``
its blocks quantized (``llama-int8``: ``tests/quantized_layers.py``, the quantized-base path), or
several, comma-separated (``llama,bert``: each trained in turn by the same processes); ``llama:resume`` runs
that family with the variant ``resume``; ``llama@accumulate`` under another one-process mode than the launch's
(``single`` and ``accumulate`` share a launch: a process start costs 10 to 15 s of CI).
``resume`` as a fourth argument (the variant of every run): the run saves a checkpoint after 2 of its 4 steps (the optimizer built with
``param_groups``, as resuming needs), then a fresh model (other random adapters and mask logits) and a fresh
Trainer resume from it; writes both records to ``OUT/<family>-<mode>-resume-rank<r>.pt``.

The same 4 sequences form the global batch of every step (one step per epoch), so one process with
batch 4 and two with batch 2 each see the same data whatever the samplers' order. The gate is the
noise-free ``sigmoid_ste`` (the Trainer's samplers draw from the global RNG differently on one and on
several processes). Writes ``OUT/<mode>-rank<r>.pt``: the logged losses, the final hard masks, the
Lagrangian multipliers and the trainable parameters (full tensors), to ``OUT/<family>-<mode>-rank<r>.pt``.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from masked_dora.models import (MaskedDoRACallback, MaskedDoRAConfig, get_state, param_groups,  # noqa: E402
                                prepare_model)
from masked_dora.models.blocks import find_layers  # noqa: E402
from masked_dora.models.specs import spec_for  # noqa: E402
from masked_dora.models.training import loss_takes_num_items  # noqa: E402
from quantized_layers import quantize_blocks  # noqa: E402
from tiny_models import randomize_adapters, tiny_model  # noqa: E402

EPOCHS, GLOBAL_BATCH, SEQ = 4, 4, 9
ONE_PROCESS_MODES = ("single", "accumulate")


class Sequences(torch.utils.data.Dataset):
    def __init__(self):
        self.ids = torch.randint(3, 97, (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(123))

    def __len__(self):
        return GLOBAL_BATCH

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def main(mode: str, out: str, families: str = "llama", variant: str = "") -> None:
    """The run of each family (comma-separated: in turn, in the same processes, as the resumed run follows the
    uninterrupted one; a process start costs 10 to 15 s of a 2-core CI machine)."""
    for item in families.split(","):
        item, _, own_variant = item.partition(":")
        family, _, own_mode = item.partition("@")
        if own_mode and (own_mode not in ONE_PROCESS_MODES or mode not in ONE_PROCESS_MODES):
            raise SystemExit(f"family: {item!r} names the mode {own_mode!r}; a launch in {mode!r} runs another "
                             f"mode only between one-process modes {ONE_PROCESS_MODES}")
        run(own_mode or mode, out, family, own_variant or variant)


def run(mode: str, out: str, family: str, variant: str) -> None:
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    os.makedirs(out, exist_ok=True)
    if variant == "resume":
        straight = train(mode, out, family, world, adapters_seed=0, save_steps=2)
        resumed = train(mode, out, family, world, adapters_seed=1, save_steps=2,
                        resume_from=os.path.join(out, f"trainer-{family}-{mode}-resume", "checkpoint-2"))
        torch.save({"straight": straight, "resumed": resumed}, os.path.join(out, f"{family}-{mode}-resume-rank{rank}.pt"))
    elif variant:
        raise SystemExit(f"variant: expected resume or nothing, got {variant!r}")
    else:
        record = train(mode, out, family, world)
        torch.save(record, os.path.join(out, f"{family}-{mode}-rank{rank}.pt"))
    if world > 1 and dist.is_initialized():
        dist.barrier()


def train(mode: str, out: str, family: str, world: int, adapters_seed: int = 0, save_steps: int = 0,
          resume_from: str = None) -> dict:
    """One Trainer run; ``save_steps``: save a checkpoint every that many steps (and build the optimizer with
    ``param_groups``); ``resume_from``: a checkpoint to resume from."""
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    base_family, _, quantized = family.partition("-")
    if quantized not in ("", "int8"):
        raise SystemExit(f"family: expected a tiny family, or one with -int8 (its blocks quantized), got {family!r}")
    model = tiny_model(base_family, kind="lm")
    if quantized:  # QLoRA-style: the blocks' layers quantized (the test-only int8 layer), the quantized path trains
        quantize_blocks(model)
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5,
                                          # the resumed run restores the RNG, so it can take the gate's noise
                                          mask_init=0.5, gate="hard_concrete" if save_steps else "sigmoid_ste"))
    randomize_adapters(model, seed=adapters_seed)
    block_class = type(find_layers(model, spec_for(model))[1][0]).__name__
    if not loss_takes_num_items(model):  # BERT's masked-LM head takes its own mean: the README's setting for it,
        model.accepts_loss_kwargs = False  # without which the Trainer weighs its loss by accumulation x processes
    extra = {}
    if mode == "fsdp2":
        extra = dict(fsdp="full_shard auto_wrap",
                     fsdp_config={"fsdp_version": 2, "transformer_layer_cls_to_wrap": [block_class],
                                  "reshard_after_forward": True})
    elif mode == "zero3":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed on the CPU (gloo); on GPUs it finds them itself
        import importlib

        # DeepSpeed compiles a C++ shared-memory op for its CPU *inference* all-reduce at its first process group
        # (90 s of a fresh CI machine, with g++); training reduces through torch.distributed and never calls it.
        # (The module by its full name: the package's attribute `torch` is torch itself.)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        # persistence threshold 0: every parameter released after use, as the large ones of a real model
        extra = dict(deepspeed={"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                                "train_micro_batch_size_per_gpu": "auto",
                                "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"})
    elif mode not in ("single", "accumulate", "ddp", "accelerate-ddp", "accelerate-fsdp2"):
        raise SystemExit(f"mode: expected single, accumulate, ddp, fsdp2, zero3, accelerate-ddp or accelerate-fsdp2, "
                         f"got {mode!r}")
    accumulate = 2 if mode == "accumulate" else 1
    saving = dict(save_strategy="steps", save_steps=save_steps) if save_steps else dict(save_strategy="no")
    args = TrainingArguments(output_dir=os.path.join(out, f"trainer-{family}-{mode}" + ("-resume" if save_steps else "")),
                             per_device_train_batch_size=GLOBAL_BATCH // world // accumulate,
                             gradient_accumulation_steps=accumulate,
                             # SGD with momentum (the Trainer's own, named by optim): updates linear in the gradient,
                             # so the runs differ by reduction rounding only (AdamW's per-element normalisation turns
                             # rounding in a near-cancelling gradient into a step of up to the learning rate; see
                             # dist_train.make_optimizer). The Trainer's default AdamW: tests/test_trainer_readme.py.
                             optim="sgd", optim_args="momentum=0.9",
                             num_train_epochs=EPOCHS, learning_rate=0.1, lr_scheduler_type="constant",
                             warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0, logging_steps=1, report_to=[], use_cpu=True, ddp_backend="gloo" if world > 1 else None, seed=0,
                             dataloader_drop_last=False, disable_tqdm=True, **saving, **extra)
    callback = MaskedDoRACallback(model, mask_lr=1.0)
    groups = {}
    # DeepSpeed builds the optimizer inside train(), and a resumed optimizer loads its saved state before any
    # callback runs: the mask group must be there from the start
    if mode == "zero3" or save_steps:
        groups = dict(optimizer_cls_and_kwargs=(torch.optim.SGD, {"params": param_groups(model, lr=0.1, mask_lr=1.0),
                                                                  "momentum": 0.9}))
    # accelerate-*: the engine comes from `accelerate launch` and its config file (environment variables)
    fsdp = mode == "fsdp2" or (mode.startswith("accelerate") and os.environ.get("ACCELERATE_USE_FSDP") == "true")
    with _fsdp_on_cpu_processes(fsdp):
        trainer = Trainer(model=model, args=args, train_dataset=Sequences(), callbacks=[callback], **groups)
    if trainer.is_fsdp_enabled != mode.endswith("fsdp2"):
        raise SystemExit(f"{mode}: FSDP is {'on' if trainer.is_fsdp_enabled else 'off'}")
    trainer.train(resume_from_checkpoint=resume_from)
    gathered = contextlib.nullcontext()
    if mode == "zero3":
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(model.parameters()))
    with gathered:
        return _record(trainer, callback, get_state(model))


@contextlib.contextmanager
def _fsdp_on_cpu_processes(enabled: bool):
    """Let accelerate pick FSDP for these CPU processes while the Trainer builds its Accelerator.

    accelerate turns FSDP on only for accelerator processes (``MULTI_GPU``, ``MULTI_NPU``, ...): CPU processes
    get ``MULTI_CPU``, the FSDP plugin is dropped without a word, and the Trainer trains with DDP. (This test did
    exactly that, unnoticed, until it checked ``trainer.is_fsdp_enabled``.) Inside this block the processes
    count as ``MULTI_GPU`` for that one decision, after which accelerate records ``FSDP`` as it does on GPUs;
    everything after it (``fully_shard`` over gloo, the Trainer's FSDP2 steps and checkpoints) runs as
    accelerate runs it there, on the CPU device."""
    if not enabled:
        yield
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    shared = PartialState._shared_state
    PartialState()  # set up (the TrainingArguments already did), so there is a mode to swap
    before = shared["distributed_type"]
    shared["distributed_type"] = DistributedType.MULTI_GPU
    try:
        yield
    finally:  # accelerate writes back the mode it chose (FSDP); undo only an unused swap
        if shared["distributed_type"] == DistributedType.MULTI_GPU:
            shared["distributed_type"] = before


def _record(trainer, callback, state):
    return {"loss": [e["loss"] for e in trainer.state.log_history if "loss" in e],
            "hard": {k: (_full(g.mask_logits.detach()) > 0).clone() for k, g in state.groups.items()},
            "lambda": {k: float(c.lambda_1.detach()) for k, c in callback.mask_trainer.controller.controllers.items()},
            "controller": {k: v.detach().clone() for k, v in callback.mask_trainer.controller.state_dict().items()},
            "params": {n.replace("_fsdp_wrapped_module.", ""): _full(p.detach()).float().clone()
                       for n, p in trainer.model.named_parameters() if p.requires_grad}}


if __name__ == "__main__":
    main(*sys.argv[1:5])
