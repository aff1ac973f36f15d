"""A fused optimizer step (torch.optim.AdamW(fused=True): the HF Trainer's default optimizer, adamw_torch_fused,
in transformers 5) updates lora_A/lora_B without bumping their version counters, which the cached DoRA row norm
is keyed on (masked_dora.nn.norm_cache): the next forward must still use the norm of the updated weights."""

import pytest
import torch

from masked_dora.nn import MaskedDoRALinear


class _KernelSGD(torch.optim.Optimizer):
    """Updates through ``.data``, as optimizers with kernels of their own (bitsandbytes' 8-bit ones) do: no
    version counter moves."""

    def __init__(self, params, lr):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data.add_(p.grad, alpha=-group["lr"])


@pytest.mark.parametrize("fused", [False, True, "own kernel"])
def test_an_optimizer_step_refreshes_the_row_norm(fused):
    torch.manual_seed(0)
    layer = MaskedDoRALinear.from_linear(torch.nn.Linear(16, 8), rank=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.invalidate_norm_cache()
    x = torch.randn(3, 16)
    params = [p for p in layer.parameters() if p.requires_grad]
    optimizer = _KernelSGD(params, 0.1) if fused == "own kernel" else torch.optim.AdamW(params, lr=0.1, fused=fused)
    layer(x).sum().backward()
    optimizer.step()
    layer.eval()  # no gate noise: the two forwards below differ only by the norm they use
    with torch.no_grad():
        after_step = layer(x)
        layer.invalidate_norm_cache()
        torch.testing.assert_close(after_step, layer(x))


def test_the_trainers_default_optimizer_trains_the_model_compact_model_saves(tmp_path):
    """The HF Trainer (transformers 5: optim="adamw_torch_fused" by default), 10 steps: the trained model's
    outputs are compact_model's (they differed by 0.24 on logits of 0.46: the norm stayed the first step's)."""
    from transformers import Trainer, TrainingArguments

    from masked_dora.models import MaskedDoRACallback, MaskedDoRAConfig, compact_model, harden, prepare_model

    from tiny_models import tiny_inputs, tiny_model

    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 97, (8, 9), generator=gen)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4, learning_rate=1e-2,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                             optim="adamw_torch_fused")  # the default of transformers 5.x, said explicitly
    Trainer(model=model, args=args, train_dataset=data, callbacks=[MaskedDoRACallback(model)]).train()
    model.eval()
    harden(model)
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(compact_model(model)(**inputs).logits, model(**inputs).logits, rtol=1e-4, atol=1e-5)
