"""With every channel kept, MaskedDoRALinear is Hugging Face PEFT's DoRA: outputs and gradients."""

import pytest
import torch
from torch import nn

from masked_dora import MaskedDoRALinear

from helpers import assert_close_rel

peft = pytest.importorskip("peft")


class OneLayer(nn.Module):
    def __init__(self, k, n, bias, dtype):
        super().__init__()
        self.proj = nn.Linear(k, n, bias=bias, dtype=dtype)

    def forward(self, x):
        return self.proj(x)


def peft_dora_and_ours(k, n, r, alpha, bias, use_rslora, dtype):
    torch.manual_seed(1)
    base = OneLayer(k, n, bias, dtype)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], use_dora=True,
                             init_lora_weights=False, lora_dropout=0.0, use_rslora=use_rslora)
    model = peft.get_peft_model(base, config)
    lora = model.base_model.model.proj
    ours = MaskedDoRALinear.from_linear(lora.base_layer, rank=r, alpha=alpha, use_rslora=use_rslora)
    with torch.no_grad():
        ours.lora_A.copy_(lora.lora_A["default"].weight)
        ours.lora_B.copy_(lora.lora_B["default"].weight)
        ours.magnitude.copy_(lora.lora_magnitude_vector["default"].weight)
    ours.set_mask(torch.ones(n, dtype=torch.bool))
    assert ours.scaling == pytest.approx(lora.scaling["default"])
    peft_params = {"lora_A": lora.lora_A["default"].weight, "lora_B": lora.lora_B["default"].weight,
                   "magnitude": lora.lora_magnitude_vector["default"].weight}
    return model, peft_params, ours


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("k, n, r, alpha, bias, use_rslora", [
    (32, 24, 4, 8, True, False),
    (48, 17, 3, 16, False, False),
    (20, 40, 5, 10, True, True),
])
def test_matches_peft_dora(k, n, r, alpha, bias, use_rslora, dtype):
    model, peft_params, ours = peft_dora_and_ours(k, n, r, alpha, bias, use_rslora, dtype)
    x = torch.randn(3, 5, k, dtype=dtype)
    x_peft, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_peft = model(x_peft)
    y_ours = ours(x_ours)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_close_rel(y_ours, y_peft, dtype, "output", tol=tol)
    grad = torch.randn_like(y_peft)
    y_peft.backward(grad)
    y_ours.backward(grad)
    assert_close_rel(x_ours.grad, x_peft.grad, dtype, "grad x", tol=tol)
    for name, p in peft_params.items():
        assert_close_rel(getattr(ours, name).grad, p.grad, dtype, f"grad {name}", tol=tol)
    # neither formed a gradient for the frozen base weight
    assert ours.weight.grad is None


def test_eval_mode_with_positive_logits_is_peft_dora():
    """No fixed mask: in eval mode logits > 0 keep every channel, and that is DoRA too."""
    model, _, ours = peft_dora_and_ours(16, 12, 2, 4, True, False, torch.float32)
    ours.clear_mask()
    ours.eval()
    model.eval()
    x = torch.randn(6, 16)
    assert_close_rel(ours(x), model(x), torch.float32)
