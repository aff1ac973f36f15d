"""Distributed training on PyTorch's own engines, 2 CPU processes over gloo, launched by torchrun.

``tests/dist_train.py`` trains a prepared tiny Llama and a tiny BERT for a few steps with the mask penalty hook the HF
Trainer callback uses; DDP, FSDP2 (``fully_shard`` per block and at the root), FSDP2 with a bf16
``MixedPrecisionPolicy`` and FSDP2 with gradient checkpointing must give the one-process losses and
parameter updates on the same global batch (to rounding; to bf16 rounding with the bf16 policy), the same
hard mask decision on every rank at every step, and the same Lagrangian multipliers.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import warnings

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "dist_train.py")
ACCELERATE_FSDP2 = os.path.join(HERE, "accelerate_fsdp2.yaml")  # the README's accelerate config file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# torchrun's report of a worker killed by a signal (SIGABRT, SIGSEGV, SIGBUS), not a Python exception (exit 1)
_WORKER_SIGNAL = re.compile(r"exitcode\s*:\s*-(6|7|11)\b")


def _launch(mode: str, out: str, nproc: int, script: str, family: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MASKED_DORA_BACKEND", "TRITON_INTERPRET")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a worker that aborts prints every thread's Python stack
    if nproc == 1:
        cmd = [sys.executable, script, mode, out, family]
    elif mode.startswith("accelerate"):  # `accelerate launch`, as users start the Trainer with a config file
        engine = (["--config_file", ACCELERATE_FSDP2] if mode.endswith("fsdp2") else ["--multi_gpu"])
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *engine, "--num_processes", str(nproc),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), script, mode, out, family]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), script, mode, out, family]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _run(mode: str, out: str, nproc: int, script: str = SCRIPT, family: str = "llama") -> None:
    """Run ``script mode out family`` on ``nproc`` processes; fail with its output if it fails.

    A multi-process run whose worker was killed by a signal (CI saw one FSDP2 run over gloo abort with
    "terminate called without an active exception" and no Python error, once in six FSDP2 launches; 40
    launches here never did) is launched once more, with a warning carrying the first run's output, so
    such a crash stays visible; a second failure, or any failure that is not a signal, fails the test. The
    results the test compares come from the run that succeeded, and are checked in full."""
    res = _launch(mode, out, nproc, script, family)
    if res.returncode != 0 and nproc > 1 and _WORKER_SIGNAL.search(res.stderr):
        warnings.warn(f"{os.path.basename(script)} {mode} {family}: a worker was killed by a signal; launching once more. "
                      f"Its output:\n{res.stdout[-2000:]}{res.stderr[-12000:]}")
        res = _launch(mode, out, nproc, script, family)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-12000:]


_LAUNCHES: dict = {}  # the arguments of a launch -> None once it succeeded, or the failed launch's message


def _run_once(mode: str, out: str, nproc: int, family: str, script: str = SCRIPT) -> None:
    """:func:`_run` once per set of arguments: one launch trains several runs (comma-separated families, and
    modes of ``tests/dist_train.py``, in turn in the same processes) and serves every test that reads one of
    them; a launch that failed fails each of those tests with its output."""
    key = (mode, out, nproc, family, script)
    if key not in _LAUNCHES:
        try:
            _run(mode, out, nproc, script, family)
            _LAUNCHES[key] = None
        except AssertionError as exc:
            _LAUNCHES[key] = str(exc)
    if _LAUNCHES[key] is not None:
        pytest.fail(f"{os.path.basename(script)} {mode} {family} on {nproc} processes failed:\n{_LAUNCHES[key]}",
                    pytrace=False)


def _version(package: str) -> tuple:
    from importlib.metadata import version

    return tuple(int(part) for part in re.findall(r"\d+", version(package))[:2])


FAMILIES = ("llama", "bert")  # a decoder (causal LM) and an encoder (masked LM)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dist"))


def _load(out, family, mode, rank):
    return torch.load(os.path.join(out, f"{family}-{mode}-rank{rank}.pt"))


TRAIN_FAMILIES = FAMILIES + ("llama-hidden",)
# the Trainer's families: with a quantized base too (QLoRA-style: the test-only int8 layer), under DDP
TRAINER_FAMILIES = FAMILIES + ("llama-int8",)
TOLERANCES = {  # mode: (loss, parameters, multipliers)
    "ddp": (1e-5, 1e-5, 1e-6),
    "fsdp2": (1e-5, 1e-5, 1e-6),
    "fsdp2_ckpt": (1e-5, 1e-5, 1e-6),
    # bf16 parameters in forward/backward: losses, gradients and the gates' expected keep (which drives the
    # multipliers) to bf16 rounding, 2^-8 = 3.9e-3 relative (measured, llama / bert: loss 2.3e-4 / 1.9e-3,
    # parameters 9.2e-3 / 1.5e-3, multipliers 9.9e-5 / 1.8e-4)
    "fsdp2_mp": (1e-2, 0.04, 1e-3),
}


def _train_launch(runs: str, nproc: int) -> None:
    """The launch of ``tests/dist_train.py`` on ``nproc`` processes (1: the references; 2: every mode), each run
    once and read by every test: by ``test_two_processes_train_like_one`` and, through their last run
    (``checkpoint``: ``tests/dist_checkpoint.py``), by the sharded checkpoint test."""
    modes = "single" if nproc == 1 else ",".join(TOLERANCES)
    _run_once(modes + ",checkpoint", runs, nproc, ",".join(TRAIN_FAMILIES))


@pytest.mark.parametrize("family", TRAIN_FAMILIES)
@pytest.mark.parametrize("mode", TOLERANCES)
def test_two_processes_train_like_one(runs, family, mode):
    """Every family under every engine, against the one-process run. Two launches serve them all (one
    process for the references, two for the 12 multi-process runs): a process start costs 10 to 15 s of CI."""
    loss_tol, param_tol, lambda_tol = TOLERANCES[mode]
    _train_launch(runs, 1)
    ref = _load(runs, family, "single", 0)
    _train_launch(runs, 2)
    # the masks change their hard decision during the run, so comparing the decisions says something
    assert any(not torch.equal(a[k], b[k]) for a, b in zip(ref["hard"], ref["hard"][1:]) for k in a)
    ranks = [_load(runs, family, mode, r) for r in (0, 1)]
    for rec in ranks:
        # every forward's cached row norm is the norm of the parameters FSDP2 just gathered (not last step's)
        assert rec["row_norm_gap"] <= 1e-6, rec["row_norm_gap"]
        assert len(rec["loss"]) == len(ref["loss"])
        for a, b in zip(rec["loss"], ref["loss"]):
            assert abs(a - b) <= loss_tol * abs(b), (mode, rec["loss"], ref["loss"])
        for step_masks, ref_masks in zip(rec["hard"], ref["hard"]):  # the same decision at every step
            assert step_masks.keys() == ref_masks.keys()
            assert all(torch.equal(step_masks[k], ref_masks[k]) for k in ref_masks)
        for lam, ref_lam in zip(rec["lambda"], ref["lambda"]):
            assert all(abs(lam[k] - ref_lam[k]) <= lambda_tol for k in ref_lam), (mode, lam, ref_lam)
        assert rec["params"].keys() == ref["params"].keys()
        worst = max(float((rec["params"][k] - ref["params"][k]).abs().max()) for k in ref["params"])
        assert worst <= param_tol, (mode, worst)
    # every rank holds the same state
    for k in ranks[0]["params"]:
        assert torch.equal(ranks[0]["params"][k], ranks[1]["params"][k]), k


TRAINER_SCRIPT = os.path.join(HERE, "dist_trainer.py")


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dist_trainer"))


TRAINER_MODES = {"accumulate": 1, "ddp": 2, "fsdp2": 2, "zero3": 2, "accelerate-ddp": 2, "accelerate-fsdp2": 2}


def _trainer_skip(mode: str, family: str) -> str:
    """Why the Trainer test does not run ``family`` under ``mode`` ("" where it does)."""
    if family == "llama-int8" and mode not in ("single", "accumulate", "ddp"):
        if mode == "accelerate-ddp":
            return "DDP over a quantized base runs in the ddp launch (one launch per engine is enough)"
        return ("FSDP and DeepSpeed over a quantized base are refused when the Trainer is built "
                "(tests/test_quantized_base_training.py)")
    if mode == "accelerate-fsdp2" and family != "llama":
        return "the config file wraps LlamaDecoderLayer"
    if (mode, family) == ("fsdp2", "bert"):
        return ("accelerate's FSDP2 preparation puts BERT's tied decoder bias (cls.predictions.bias) in two FSDP "
                "groups, which torch 2.13 refuses at the first forward; a plain BERT, without masked_dora, fails the "
                "same way. tests/dist_train.py's own fully_shard trains BERT.")
    return ""


def _resume_skip(mode: str) -> str:
    """Why the resume test does not run ``mode`` ("" where it does)."""
    if mode == "ddp" and _version("transformers") < (5, 24):
        return ("transformers before 5.24 loads a multi-process run's optimizer state onto args.device, 'cpu:0' on "
                "CPU processes, which torch cannot restore (fixed upstream; on GPUs the device is cuda:N)")
    return ""


RESUME_MODES = {"single": 1, "ddp": 2, "fsdp2": 2, "zero3": 2}


# the Trainer modes CI runs on .venv on its second core once the CUDA stack check is done, beside the end of `make
# test` (tests/conftest.py): DeepSpeed, which only .venv has, and, to balance the two cores (measured on a clean
# clone: the second core was done 240 s before `make test`), FSDP2 and the `accelerate launch` modes, and (done 180 s
# before it on a clean clone of 3a1c09e) DDP, which the CUDA stack's own run of this file covers there as well
SECOND_CORE_MODES = ("zero3", "fsdp2", "ddp", "accelerate-ddp", "accelerate-fsdp2")


def _on_second_core(*mode_and_args):
    """A mode's parameters, marked ``second_core`` where the mode is in ``SECOND_CORE_MODES`` (the mark is by mode,
    so the Trainer test and the resume test, which share a mode's launch, run it in the same session)."""
    marks = [pytest.mark.second_core] if mode_and_args[0] in SECOND_CORE_MODES else []
    return pytest.param(*mode_and_args, marks=marks, id="-".join(map(str, mode_and_args)))


def _trainer_launch(trainer_runs: str, mode: str) -> int:
    """The one launch of ``tests/dist_trainer.py`` for ``mode`` (its process count returned): every family the
    mode runs, then, where the resume test takes the mode, the resumed run (``llama:resume``). Both tests read
    it, so a process start (10 to 15 s of CI per process) is paid once per mode, and once for all the
    one-process modes (``single``, the references, and ``accumulate``: ``llama@accumulate``)."""
    nproc = 1 if mode == "single" else TRAINER_MODES[mode]
    modes = [mode] if nproc > 1 else ["single", *(m for m, n in TRAINER_MODES.items() if n == 1)]
    runs = []
    for each in modes:  # the one-process modes in one launch, the others in their own
        own = "" if each == modes[0] else f"@{each}"
        runs += [f + own for f in TRAINER_FAMILIES if not _trainer_skip(each, f)]
        if each in RESUME_MODES and not _resume_skip(each):
            runs.append(f"llama{own}:resume")
    _run_once(modes[0], trainer_runs, nproc, ",".join(runs), TRAINER_SCRIPT)
    return nproc


@pytest.mark.parametrize("family", TRAINER_FAMILIES)
@pytest.mark.parametrize("mode", [_on_second_core(m) for m in TRAINER_MODES])
def test_trainer_with_the_callback_trains_like_one_process(trainer_runs, family, mode):
    """The HF Trainer + MaskedDoRACallback: 2 gradient-accumulation steps, DDP over 2 processes, FSDP2
    through the Trainer's accelerate integration, DeepSpeed ZeRO-3 (every parameter partitioned and released
    after use), and DDP and FSDP2 started by ``accelerate launch`` (FSDP2 from the README's config file) give
    the one-process, one-micro-batch run; with a quantized base (``llama-int8``, QLoRA-style) under DDP too. (The
    penalty used to count once per micro-batch and
    process: transformers 5 sums token-normalised losses over micro-batches and scales them by the process
    count, so the penalty weighed 2x here. Under ZeRO-3 the mask logits, read outside their own module, were
    never gathered: "size of tensor a (2) must match the size of tensor b (0)". The "fsdp2" run was DDP until
    the script checked: accelerate drops FSDP on CPU processes; under FSDP2 the logged statistics read the
    sharded logits: "got mixed torch.Tensor and DTensor".)"""
    if mode == "zero3":
        pytest.importorskip("deepspeed")
    if _trainer_skip(mode, family):
        pytest.skip(_trainer_skip(mode, family))
    _trainer_launch(trainer_runs, "single")
    ref = _load(trainer_runs, family, "single", 0)
    nproc = _trainer_launch(trainer_runs, mode)
    for rank in range(nproc):
        rec = _load(trainer_runs, family, mode, rank)
        assert len(rec["loss"]) == len(ref["loss"]) == 4
        for a, b in zip(rec["loss"], ref["loss"]):
            assert abs(a - b) <= 1e-5 * abs(b), (mode, rec["loss"], ref["loss"])
        assert all(torch.equal(rec["hard"][k], ref["hard"][k]) for k in ref["hard"])
        assert all(abs(rec["lambda"][k] - ref["lambda"][k]) <= 1e-6 for k in ref["lambda"])
        worst = max(float((rec["params"][k] - ref["params"][k]).abs().max()) for k in ref["params"])
        assert worst <= 2e-5, (mode, worst)


@pytest.mark.parametrize("mode, nproc", [_on_second_core(*item) for item in RESUME_MODES.items()])
def test_trainer_checkpoint_resumes_bit_exactly(trainer_runs, mode, nproc):
    """The Trainer saves a checkpoint after 2 of 4 steps (its own format for each engine: safetensors, FSDP2's
    sharded state, DeepSpeed's ZeRO-3 checkpoint); a fresh model with other adapters and mask logits, and a
    fresh Trainer and callback, resume from it and end bit for bit where the uninterrupted run ended: losses,
    hard masks, the controller's multipliers and ramp step, every trainable parameter. (The controller's state
    used to be left out of the Trainer's checkpoints: a resumed run restarted its multipliers from zero.)"""
    if mode == "zero3":
        pytest.importorskip("deepspeed")
    if _resume_skip(mode):
        pytest.skip(_resume_skip(mode))
    assert _trainer_launch(trainer_runs, mode) == nproc
    for rank in range(nproc):
        rec = torch.load(os.path.join(trainer_runs, f"llama-{mode}-resume-rank{rank}.pt"))
        straight, resumed = rec["straight"], rec["resumed"]
        assert len(straight["loss"]) == 4 and resumed["loss"] == straight["loss"]
        assert all(torch.equal(resumed["hard"][k], straight["hard"][k]) for k in straight["hard"])
        assert straight["controller"].keys() == resumed["controller"].keys()
        assert all(torch.equal(resumed["controller"][k], straight["controller"][k]) for k in straight["controller"])
        assert int(resumed["controller"]["controllers.mlp.step"]) == 4
        assert all(torch.equal(resumed["params"][k], straight["params"][k]) for k in straight["params"])


def test_sharded_checkpoint_resumes_bit_exactly_and_compacts_on_rank0(runs):
    """FSDP2 state saved with torch.distributed.checkpoint after 2 steps and loaded into a fresh sharded model
    continues exactly as the uninterrupted run (bit for bit); the full state dict gathered on rank 0 hardens
    and compacts to the one-process compacted model. (``tests/dist_checkpoint.py``, run by the training launches.)"""
    _train_launch(runs, 1)
    _train_launch(runs, 2)
    for rank in (0, 1):
        straight = _load(runs, "llama", "fsdp2", rank)
        resumed = torch.load(os.path.join(runs, f"fsdp2-resume-rank{rank}.pt"))
        assert resumed["loss"] == straight["loss"]
        assert all(torch.equal(a[k], b[k]) for a, b in zip(resumed["hard"], straight["hard"]) for k in a)
        assert resumed["lambda"] == straight["lambda"]
        assert all(torch.equal(resumed["params"][k], straight["params"][k]) for k in straight["params"])
    ref = torch.load(os.path.join(runs, "single-compact.pt"))
    sharded = torch.load(os.path.join(runs, "fsdp2-compact.pt"))
    assert sharded["sizes"] == ref["sizes"] == (32, 2, 1)
    torch.testing.assert_close(sharded["logits"], ref["logits"], rtol=1e-4, atol=1e-5)
