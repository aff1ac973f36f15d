"""The README's "Training with the HF Trainer" example, run as written (in a scratch folder), and what it claims.

At the defaults (mask_lr, lambda_2_init, the hard-concrete gate) and a LoRA learning rate, a 120-step Trainer
run with only MaskedDoRACallback brings the expected kept MLP fraction within 0.05 of the target before
hardening, and hardening keeps exactly the target.
"""

import os
import re

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    match = re.search(r"<!-- trainer-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md: the Trainer example (after <!-- trainer-example -->) is missing"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_readme_trainer_example_reaches_the_target(precision, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)                 # output_dir="out" lands here
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code = readme_example()
    if precision == "bf16":                     # the Trainer's mixed precision (autocast), as users run it
        assert 'save_strategy="no")' in code
        code = code.replace('save_strategy="no")', 'save_strategy="no", bf16=True, use_cpu=True)')
    scope = {}
    exec(compile(code, "README.md:trainer-example", "exec"), scope)
    callback, model = scope["callback"], scope["model"]
    history = callback.history
    assert history and history[-1]["step"] == 120
    expected = history[-1]["sparsity/mlp_expected_keep"]
    assert abs(expected - 0.5) < 0.05, [round(h["sparsity/mlp_expected_keep"], 3) for h in history]
    assert history[0]["sparsity/mlp_expected_keep"] > 0.8  # it really moved from the init (logits at +3)
    from masked_dora.models import kept_fraction

    assert kept_fraction(model, "mlp") == 0.5   # the example's harden() ran: exactly the target
    printed = capsys.readouterr().out
    assert "'kept': 512, 'total': 1024, 'sparsity': 0.5" in printed
    if precision == "bf16":  # the README's note: accelerate's autocast wrapper stays on forward; unwrapped, the
        # trained model and its compacted twin agree
        from accelerate.utils import extract_model_from_parallel

        from masked_dora.models import compact_model

        small = compact_model(model)
        extract_model_from_parallel(model, keep_fp32_wrapper=False)
        ids = torch.randint(3, 97, (2, 16), generator=torch.Generator().manual_seed(1))
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, small(ids).logits, rtol=1e-4, atol=1e-5)


def test_callback_gives_the_mask_logits_their_own_group(tmp_path):
    """The Trainer's own AdamW (one lr, weight decay) gets a mask group at mask_lr with no decay; the
    linear schedule goes on for the other groups and keeps the mask lr constant."""
    import torch
    from transformers import Trainer, TrainingArguments

    from masked_dora.models import MaskedDoRACallback, MaskedDoRAConfig, param_groups, prepare_model
    from tiny_models import tiny_model

    model = prepare_model(tiny_model("llama", kind="lm"), MaskedDoRAConfig(
        rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5, mask_lr=0.07))
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 97, (8, 9))]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=2e-4, weight_decay=0.1, report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[MaskedDoRACallback(model)])
    trainer.train()
    groups = trainer.optimizer.param_groups
    masks = [g for g in groups if g.get("name") == "masked_dora.mask_logits"]
    assert len(masks) == 1 and masks[0]["lr"] == 0.07 and masks[0]["weight_decay"] == 0.0
    mask_ids = {id(p) for p in masks[0]["params"]}
    assert len(mask_ids) == 4 and all(id(p) not in mask_ids for g in groups if g is not masks[0] for p in g["params"])
    assert groups[0]["lr"] < 2e-4                # the Trainer's linear decay still runs its own groups
    # param_groups: the same split for a hand-built optimizer
    named = {g["name"]: g for g in param_groups(model, lr=1e-3, weight_decay=0.01)}
    assert named["masked_dora.mask_logits"]["lr"] == 0.07 and named["masked_dora.magnitudes"]["weight_decay"] == 0
    assert named["masked_dora.adapters"]["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="mask_lr"):
        param_groups(model, lr=1e-3, mask_lr=0.0)
