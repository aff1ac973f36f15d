"""The HF Trainer with MaskedDoRACallback on one or several processes (gloo, CPU), as users launch it.

    python tests/dist_trainer.py single OUT
    python tests/dist_trainer.py accumulate OUT          # batch 2, 2 gradient-accumulation steps
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_trainer.py ddp OUT
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_trainer.py fsdp2 OUT

The same 4 sequences form the global batch of every step (one step per epoch), so one process with
batch 4 and two with batch 2 each see the same data whatever the samplers' order. The gate is the
noise-free ``sigmoid_ste`` (the Trainer's samplers draw from the global RNG differently on one and on
several processes). Writes ``OUT/<mode>-rank<r>.pt``: the logged losses, the final hard masks, the
Lagrangian multipliers and the trainable parameters (full tensors).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from masked_dora.models import MaskedDoRACallback, MaskedDoRAConfig, get_state, prepare_model  # noqa: E402
from tiny_models import randomize_adapters, tiny_model  # noqa: E402

EPOCHS, GLOBAL_BATCH, SEQ = 4, 4, 9


class Sequences(torch.utils.data.Dataset):
    def __init__(self):
        self.ids = torch.randint(3, 97, (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(123))

    def __len__(self):
        return GLOBAL_BATCH

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def main(mode: str, out: str) -> None:
    from transformers import Trainer, TrainingArguments

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5,
                                          mask_init=0.5, gate="sigmoid_ste"))
    randomize_adapters(model)
    extra = {}
    if mode == "fsdp2":
        extra = dict(fsdp="full_shard auto_wrap",
                     fsdp_config={"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                                  "reshard_after_forward": True})
    elif mode not in ("single", "accumulate", "ddp"):
        raise SystemExit(f"mode: expected single, accumulate, ddp or fsdp2, got {mode!r}")
    accumulate = 2 if mode == "accumulate" else 1
    args = TrainingArguments(output_dir=os.path.join(out, f"trainer-{mode}"),
                             per_device_train_batch_size=GLOBAL_BATCH // world // accumulate,
                             gradient_accumulation_steps=accumulate,
                             # SGD with momentum (the Trainer's own, named by optim): updates linear in the gradient,
                             # so the runs differ by reduction rounding only (AdamW's per-element normalisation turns
                             # rounding in a near-cancelling gradient into a step of up to the learning rate; see
                             # dist_train.make_optimizer). The Trainer's default AdamW: tests/test_trainer_readme.py.
                             optim="sgd", optim_args="momentum=0.9",
                             num_train_epochs=EPOCHS, learning_rate=0.1, lr_scheduler_type="constant",
                             warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0, logging_steps=1, save_strategy="no",
                             report_to=[], use_cpu=True, ddp_backend="gloo" if world > 1 else None, seed=0,
                             dataloader_drop_last=False, disable_tqdm=True, **extra)
    callback = MaskedDoRACallback(model, mask_lr=1.0)
    trainer = Trainer(model=model, args=args, train_dataset=Sequences(), callbacks=[callback])
    trainer.train()
    state = get_state(model)
    record = {"loss": [e["loss"] for e in trainer.state.log_history if "loss" in e],
              "hard": {k: (_full(g.mask_logits.detach()) > 0).clone() for k, g in state.groups.items()},
              "lambda": {k: float(c.lambda_1.detach()) for k, c in callback.mask_trainer.controller.controllers.items()},
              "params": {n.replace("_fsdp_wrapped_module.", ""): _full(p.detach()).float().clone()
                         for n, p in trainer.model.named_parameters() if p.requires_grad}}
    os.makedirs(out, exist_ok=True)
    torch.save(record, os.path.join(out, f"{mode}-rank{rank}.pt"))
    if world > 1 and dist.is_initialized():
        dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
