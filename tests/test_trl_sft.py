"""TRL's SFTTrainer with MaskedDoRACallback, at TRL's defaults (lr 2e-5, gradient checkpointing, loss_type="nll").

TRL (1.16) computes the loss from its fused LM head's per-token log-probabilities, never from ``outputs.loss``,
where the callback's hook adds the sparsity penalty: without ``PenaltyThroughLogProbs`` the penalty was dropped
and the masks never moved toward the target (Lagrangian multiplier still 0 after 40 steps). A probe added to the
penalty measures its weight in the loss exactly: one penalty per optimizer step, shared out over the accumulation
micro-batches by their tokens. No downloads: a word-level tokenizer and a chat template built here.
"""

import pytest
import torch

pytestmark = pytest.mark.second_core  # CI: on its second core, beside the end of `make test` (tests/conftest.py)
pytest.importorskip("trl")  # a test-only dependency: the GPU machine and the CUDA CI stack have none
pytest.importorskip("datasets")

from tiny_models import tiny_model  # noqa: E402

WORDS = [f"w{i}" for i in range(88)]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} {% if m['role'] == 'assistant' %}{% generation %}"
                 "{{ m['content'] }} </s>{% endgeneration %}{% else %}{{ m['content'] }} {% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}assistant {% endif %}")


def tokenizer():
    """A whitespace word-level tokenizer over the tiny Llama's 97 ids, with a chat template that marks the
    assistant's turns (``{% generation %}``, for ``assistant_only_loss``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = ["<pad>", "<s>", "</s>", "<unk>", "user", "assistant"] + WORDS
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(names)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def sentences(n: int, lo: int, hi: int, seed: int):
    """``n`` random sentences of ``lo`` to ``hi - 1`` words (lengths differ, so micro-batches hold different token
    counts)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=gen)
    return [" ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (int(k),), generator=gen)) for k in lengths]


def dataset(kind: str, n: int = 32, seed: int = 0):
    from datasets import Dataset

    if kind == "text":
        return Dataset.from_dict({"text": sentences(n, 4, 24, seed)})
    prompts, answers = sentences(n, 2, 10, seed), sentences(n, 2, 10, seed + 1)
    return Dataset.from_dict({"messages": [[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
                                           for p, a in zip(prompts, answers)]})


def prepared():
    from masked_dora.models import MaskedDoRAConfig, prepare_model

    return prepare_model(tiny_model("llama", kind="lm"), MaskedDoRAConfig(
        rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5, target_groups=("mlp",)))


def sft(model, callback, data, tmp_path, **overrides):
    """An SFTTrainer at TRL's defaults but for the sizes, CPU and logging."""
    from trl import SFTConfig, SFTTrainer

    sizes = dict(max_steps=2, per_device_train_batch_size=4, max_length=32, logging_steps=1)
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, save_strategy="no",
                     disable_tqdm=True, **{**sizes, **overrides})
    return SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer(), callbacks=[callback])


def probe_penalty(callback) -> torch.Tensor:
    """A zero leaf added to every penalty the callback computes: its gradient is the penalty's total weight in the
    losses backpropagated (nothing zeroes it: it is in no optimizer)."""
    probe = torch.zeros((), requires_grad=True)
    penalty = callback.mask_trainer.penalty
    callback.mask_trainer.penalty = lambda: penalty() + probe
    return probe


@pytest.mark.parametrize("setup", ["text", "text-accumulation", "chat-packing", "chat-assistant-only"])
def test_sft_adds_one_penalty_per_step(setup, tmp_path):
    """At TRL's defaults the penalty reaches the loss with weight 1 per optimizer step: with gradient
    accumulation over micro-batches of different token counts (each gets its tokens' share), with packing
    (padding-free rows, position_ids), and with a chat dataset whose loss covers only the assistant's tokens."""
    from masked_dora.models import MaskedDoRACallback

    model = prepared()
    callback = MaskedDoRACallback(model)
    overrides = {"text": {}, "text-accumulation": dict(gradient_accumulation_steps=2, per_device_train_batch_size=2),
                 "chat-packing": dict(packing=True), "chat-assistant-only": dict(assistant_only_loss=True)}[setup]
    trainer = sft(model, callback, dataset(setup.split("-")[0]), tmp_path, **overrides)
    assert trainer.args.learning_rate == 2e-5 and trainer.args.loss_type == "nll"  # TRL's defaults
    batch = next(iter(trainer.get_train_dataloader()))
    if setup == "chat-packing":
        assert "position_ids" in batch and "attention_mask" not in batch  # padding-free
    if setup == "chat-assistant-only":  # the user's turns are not trained on
        assert batch["labels"].eq(-100).sum() > batch["input_ids"].eq(0).sum()
    probe = probe_penalty(callback)
    trainer.train()
    assert model.is_gradient_checkpointing  # TRL's default, on
    assert probe.grad is not None, "the penalty never reached the loss"
    torch.testing.assert_close(probe.grad, torch.tensor(2.0), rtol=1e-5, atol=0)  # 2 steps, one penalty each
    masks = [g for g in trainer.optimizer.param_groups if g.get("name") == "masked_dora.mask_logits"]
    assert len(masks) == 1 and masks[0]["lr"] == 0.05  # masked_dora's default mask_lr, next to TRL's 2e-5
    assert callback.history[-1]["sparsity/mlp_lambda1"] > 0  # the multiplier ascended


@pytest.mark.slow
def test_sft_reaches_the_target_then_compacts_and_reloads(tmp_path):
    """A short SFT run at TRL's learning rate brings the expected kept MLP fraction to the target (it stayed at
    0.95 with the penalty dropped); hardened, compacted, saved and reloaded as a plain Llama, the model gives
    the masked model's logits."""
    from transformers import AutoModelForCausalLM

    from masked_dora.models import MaskedDoRACallback, compact_model, harden, kept_fraction

    model = prepared()
    callback = MaskedDoRACallback(model)
    sft(model, callback, dataset("text", n=64), tmp_path, max_steps=60, per_device_train_batch_size=2,
        max_length=16, logging_steps=20).train()
    keeps = [round(h["sparsity/mlp_expected_keep"], 3) for h in callback.history]
    assert keeps[0] > 0.8 and abs(keeps[-1] - 0.5) < 0.1, keeps
    harden(model)
    assert kept_fraction(model, "mlp") == 0.5
    small = compact_model(model)
    small.save_pretrained(tmp_path / "small")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    dense = tiny_model("llama", kind="lm")
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in dense.parameters())
    ids = torch.randint(6, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    model.eval(), small.eval(), reloaded.eval()
    with torch.no_grad():
        reference = model(ids).logits
        for twin in (small, reloaded):
            error = (twin(ids).logits - reference).norm() / reference.norm()
            assert error < 1e-5, error


@pytest.mark.parametrize("setting", ["dft", "label_smoothing"])
def test_sft_refuses_losses_the_penalty_cannot_reach(setting, tmp_path):
    """loss_type="dft" (tokens weighed by their probability) and label smoothing (a loss from logits of a forward
    without labels) would train the masks without the penalty: refused at the start, before anything changes."""
    from masked_dora.models import MaskedDoRACallback
    from masked_dora.models.training import mask_parameters

    model = prepared()
    callback = MaskedDoRACallback(model)
    before = [p.detach().clone() for p in mask_parameters(model)]
    overrides = dict(loss_type="dft") if setting == "dft" else dict(label_smoothing_factor=0.1)
    trainer = sft(model, callback, dataset("text"), tmp_path, **overrides)
    with pytest.raises(ValueError, match="loss_type='dft'" if setting == "dft" else "label_smoothing_factor=0.1"):
        trainer.train()
    assert callback._handle is None and trainer.state.global_step == 0
    assert not any(g.get("name") == "masked_dora.mask_logits" for g in trainer.optimizer.param_groups)
    for p, q in zip(mask_parameters(model), before):
        assert torch.equal(p, q)


def test_other_trl_trainers_are_refused(tmp_path):
    """TRL's preference trainers build their losses from log-probabilities the penalty has no share of."""
    from trl import DPOConfig

    from masked_dora.models.trl_sft import trl_penalty_route

    with pytest.raises(ValueError, match="DPOConfig"):
        trl_penalty_route(DPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False))


def test_sft_with_a_compute_loss_func_trains_under_gradient_checkpointing(tmp_path):
    """A compute_loss_func computes the loss outside the model (the penalty added by hand), and the SFTTrainer then
    runs a second forward, without gradients, for its metrics before the backward. That forward drew new gate
    samples, which TRL's default gradient checkpointing recomputed the blocks with ("A different number of tensors
    was saved during the original forward and recomputation"); it now puts the first forward's samples back."""
    from masked_dora.models import MaskedDoRACallback

    model = prepared()
    callback = MaskedDoRACallback(model)

    def loss_func(outputs, labels, num_items_in_batch=None):
        logits, targets = outputs.logits[:, :-1].float(), labels[:, 1:]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                 ignore_index=-100) + callback.mask_trainer.penalty()

    trainer = sft(model, callback, dataset("text"), tmp_path)
    trainer.compute_loss_func = loss_func
    probe = probe_penalty(callback)
    trainer.train()
    assert model.is_gradient_checkpointing and probe.grad is not None and probe.grad > 0


def test_a_users_sft_config_subclass_is_recognised(tmp_path):
    """An SFTConfig subclass defined in the user's own script (its module is not trl's) is still TRL's SFTTrainer:
    the penalty reaches the loss (read by module name, the route was missed and the penalty dropped)."""
    from trl import SFTConfig, SFTTrainer

    from masked_dora.models import MaskedDoRACallback

    class MyConfig(SFTConfig):
        pass

    model = prepared()
    callback = MaskedDoRACallback(model)
    args = MyConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, save_strategy="no",
                    disable_tqdm=True, max_steps=1, per_device_train_batch_size=4, max_length=32)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset("text"), processing_class=tokenizer(),
                         callbacks=[callback])
    probe = probe_penalty(callback)
    trainer.train()
    assert probe.grad is not None, "the penalty never reached the loss"
    torch.testing.assert_close(probe.grad, torch.tensor(1.0), rtol=1e-5, atol=0)
