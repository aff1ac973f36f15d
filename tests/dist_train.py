"""A prepared tiny Llama (or another family of ``tests/tiny_models.py``: FAMILY, default llama) trained on several processes (gloo, CPU), step for step as on one.

    python tests/dist_train.py single OUT [FAMILY]                                    # the reference
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_train.py ddp OUT [FAMILY]
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_train.py fsdp2 OUT [FAMILY]
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_train.py fsdp2_mp OUT [FAMILY]   # + MixedPrecisionPolicy
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_train.py fsdp2_ckpt OUT [FAMILY] # + checkpointing
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_train.py ddp,fsdp2 OUT llama,bert  # 4 runs
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_train.py fsdp2,checkpoint OUT    # + dist_checkpoint

MODE and FAMILY may be comma-separated lists: every (family, mode) pair then runs in turn in the same
processes (one process group, a fresh model, optimizer and seeds per run), so the start of a process,
importing torch and transformers (10 to 15 s per process on a 2-core CI machine), is paid once per launch. The mode ``checkpoint`` runs ``tests/dist_checkpoint.py`` last, once (its
``single`` on one process, ``fsdp2`` on several; the latter reads this launch's ``fsdp2`` run).

Every process draws the same global batch and trains on its slice of it; the mask gates' noise comes from
the same seed on every rank (one draw per model forward, as on one process), the sparsity penalty is added
by the same forward hook the HF Trainer callback uses, and the Lagrangian multipliers take the same
ascent step everywhere. Writes ``OUT/<family>-<mode>-rank<r>.pt``: per-step losses (the global-batch mean),
per-step hard masks and multipliers, the final trainable state (full tensors), and the largest gap between a
layer's cached row norm and a fresh one seen in any forward (:func:`watch_row_norms`).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from masked_dora.models import MaskedDoRAConfig, get_state, param_groups, prepare_model  # noqa: E402
from masked_dora.models.blocks import find_layers  # noqa: E402
from masked_dora.models.specs import spec_for  # noqa: E402
from masked_dora.models.training import MaskTrainer, _AddPenalty  # noqa: E402
from tiny_models import randomize_adapters, tiny_model  # noqa: E402

STEPS, GLOBAL_BATCH, SEQ = 4, 4, 9


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def build(mode: str, world: int, family: str = "llama"):
    """``(model, wrapped, trainer, optimizer)``: the prepared tiny ``family`` LM (dropout off), wrapped for
    ``mode``."""
    torch.manual_seed(0)
    # "llama-hidden": the residual stream pruned too (hidden_mode="global": one gate sample read by every block)
    groups = ("mlp", "heads", "hidden") if family == "llama-hidden" else ("mlp", "heads")
    model = tiny_model(family.replace("-hidden", ""), kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5,
                                          mask_init=0.5, target_groups=groups))
    randomize_adapters(model)
    model.train()
    if mode.endswith("_ckpt"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainer = MaskTrainer(model)
    model.register_forward_hook(_AddPenalty(trainer), with_kwargs=True)  # as MaskedDoRACallback does
    model.row_norm_gaps = watch_row_norms(model)
    wrapped = model
    if mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    elif mode.startswith("fsdp2"):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if mode == "fsdp2_mp" else MixedPrecisionPolicy()
        for block in find_layers(model, spec_for(model))[1]:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
    elif mode != "single":
        raise SystemExit(f"mode: expected single, ddp, fsdp2, fsdp2_mp or fsdp2_ckpt, got {mode!r}")
    return model, wrapped, trainer, make_optimizer(model)


def watch_row_norms(model) -> list:
    """Forward pre-hooks on every masked-DoRA layer; the returned list gets, per layer forward, the largest
    relative gap between the row norm the layer has cached and one computed afresh from the parameters this
    forward sees. FSDP2 gathers the parameters again for every forward, into buffers that can keep their
    address: a cache keyed on the wrong thing would serve the last step's norm (one-process runs would go
    stale the same way, so comparing against them cannot catch it)."""
    from masked_dora.nn import MaskedDoRALinear
    from masked_dora.ops.row_norm import row_norm, weight_sq_norm

    gaps = []

    def check(layer, args):
        with torch.no_grad():
            w = layer.weight
            fresh = row_norm(w, layer.lora_A.to(w.dtype), layer.lora_B.to(w.dtype), layer.scaling, weight_sq_norm(w),
                             layer.norm_eps)
            gaps.append(float(((layer.weight_norm() - fresh).abs() / fresh.abs()).max()))

    for module in model.modules():
        if isinstance(module, MaskedDoRALinear):
            module.register_forward_pre_hook(check)
    return gaps


def make_optimizer(model):
    """SGD with momentum: an update linear in the gradient, so a sharded run differs from the one-process run
    by the rounding of its gradient reductions and no more. (Adam divides each element by its own gradient
    scale: an element whose gradient nearly cancels turns a rounding difference into a step of up to ``lr``.
    Gradients perturbed by 1e-7 of their largest element moved Adam-trained parameters by 1.3e-2 here, and a CI
    machine whose CPU rounds differently saw 7.5e-4 for FSDP2.) The rates make the masks change their hard
    decision during the 4 steps, so the per-step mask comparison is not vacuous."""
    return torch.optim.SGD(param_groups(model, lr=0.1, mask_lr=3.0), momentum=0.9)


def global_batches():
    gen = torch.Generator().manual_seed(123)
    return [torch.randint(3, 97, (GLOBAL_BATCH, SEQ), generator=gen) for _ in range(STEPS)]


def train_steps(model, wrapped, trainer, opt, steps, world, rank, record):
    """Train on ``steps`` (indices into :func:`global_batches`), each rank on its slice; append to ``record``."""
    state = get_state(model)
    batches = global_batches()
    for step in steps:
        local = batches[step].chunk(world)[rank]
        trainer.begin_step(step)
        loss = wrapped(input_ids=local, labels=local).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        trainer.end_step()
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
            mean /= world
        record["loss"].append(float(mean))
        record["hard"].append({k: (_full(g.mask_logits.detach()) > 0).clone() for k, g in state.groups.items()})
        record["lambda"].append({k: float(c.lambda_1.detach()) for k, c in trainer.controller.controllers.items()})


def trainable(model):
    return {n: _full(p.detach()).float().clone() for n, p in model.named_parameters() if p.requires_grad}


def run(mode: str, out: str, family: str, world: int, rank: int) -> None:
    """One run: train ``family`` under ``mode`` for :data:`STEPS` steps, save its record."""
    model, wrapped, trainer, opt = build(mode, world, family)
    torch.manual_seed(1)  # the gates' noise: the same draws on every rank
    record = {"loss": [], "hard": [], "lambda": []}
    train_steps(model, wrapped, trainer, opt, range(STEPS), world, rank, record)
    record["params"] = trainable(model)
    record["row_norm_gap"] = max(model.row_norm_gaps)
    os.makedirs(out, exist_ok=True)
    torch.save(record, os.path.join(out, f"{family}-{mode}-rank{rank}.pt"))
    if world > 1:
        dist.barrier()


def main(modes: str, out: str, families: str = "llama") -> None:
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    modes = modes.split(",")
    for family in families.split(","):
        for mode in modes:
            if mode != "checkpoint":
                run(mode, out, family, world, rank)
    if "checkpoint" in modes:
        import dist_checkpoint

        dist_checkpoint.run("fsdp2" if world > 1 else "single", out, world, rank)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
