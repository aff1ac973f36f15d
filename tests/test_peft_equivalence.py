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


def peft_dora_and_ours(k, n, r, alpha, bias, use_rslora, dtype, lora_dropout=0.0, dropout_mode="peft"):
    torch.manual_seed(1)
    base = OneLayer(k, n, bias, dtype)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], use_dora=True,
                             init_lora_weights=False, lora_dropout=lora_dropout, use_rslora=use_rslora)
    model = peft.get_peft_model(base, config)
    lora = model.base_model.model.proj
    ours = MaskedDoRALinear.from_linear(lora.base_layer, rank=r, alpha=alpha, use_rslora=use_rslora,
                                        lora_dropout=lora_dropout, dropout_mode=dropout_mode)
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


def _fwd_bwd(layer, x, grad, seed=5):
    """Output and gradients (x, A, B, m) of one training step; the dropout mask drawn from ``seed``."""
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    y = layer(x)
    y.backward(grad)
    return y.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("bias, use_rslora", [(True, False), (False, True)])
def test_lora_dropout_is_peft_dora_dropout(dtype, bias, use_rslora):
    """Training with lora_dropout (dropout_mode="peft", the default) is PEFT's DoRA with the same dropout
    mask: W0 x + b + (m/n - 1) W0 d(x) + (m/n) s B A d(x); outputs and gradients (PEFT computes its second
    base GEMM on the dropped input, this layer on the dropped part x - d(x))."""
    model, peft_params, ours = peft_dora_and_ours(24, 20, 4, 8, bias, use_rslora, dtype, lora_dropout=0.4)
    model.train()
    ours.train()
    x = torch.randn(3, 5, 24, dtype=dtype)
    grad = torch.randn(3, 5, 20, dtype=dtype)
    y_peft, gx_peft = _fwd_bwd(model, x, grad)
    y_ours, gx_ours = _fwd_bwd(ours, x, grad)
    y_nodrop = ours.eval()(x)
    assert (y_ours - y_nodrop).abs().max() > 1e-2 * y_nodrop.abs().max()  # the dropout did something
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_close_rel(y_ours, y_peft, dtype, "output", tol=tol)
    assert_close_rel(gx_ours, gx_peft, dtype, "grad x", tol=tol)
    for name, p in peft_params.items():
        assert_close_rel(getattr(ours, name).grad, p.grad, dtype, f"grad {name}", tol=tol)


@pytest.mark.parametrize("mode", ["peft", "adapter"])
def test_lora_dropout_modes_against_float64_formulas_with_pruned_channels(mode):
    """Both modes against their formula in float64, with a fixed dropout mask and a fixed mask that prunes
    channels (whose output is exactly 0 in either mode): "peft" z (W0 (x - d) + b) + c (W0 d + s B A d),
    "adapter" c (W0 x + s B A d) + z b, c = m z / n."""
    torch.manual_seed(0)
    k, n, r = 24, 16, 4
    layer = MaskedDoRALinear(k, n, rank=r, alpha=8, lora_dropout=0.3, dropout_mode=mode, dtype=torch.float64)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.1)
        layer.magnitude.mul_(1.3)
    keep = torch.ones(n, dtype=torch.bool)
    keep[::3] = False
    layer.set_mask(keep)
    layer.train()
    x = torch.randn(7, k, dtype=torch.float64)
    torch.manual_seed(9)
    y = layer(x)
    torch.manual_seed(9)
    d = torch.nn.functional.dropout(x, 0.3, training=True)
    W, A, B, s, z = layer.weight, layer.lora_A, layer.lora_B, layer.scaling, keep.double()
    c = layer.magnitude * z / torch.linalg.vector_norm(W + s * B @ A, dim=1)
    if mode == "peft":
        expected = z * (torch.nn.functional.linear(x - d, W) + layer.bias) + c * (d @ W.t() + s * d @ A.t() @ B.t())
    else:
        expected = c * (x @ W.t() + s * d @ A.t() @ B.t()) + z * layer.bias
    assert_close_rel(y, expected, torch.float64, f"{mode} output", tol=1e-10)
    assert torch.equal(y[:, ~keep], torch.zeros_like(y[:, ~keep]))
    layer.eval()  # no dropout in eval mode
    assert_close_rel(layer(x), c * (x @ W.t() + s * x @ A.t() @ B.t()) + z * layer.bias, torch.float64, "eval")


def test_lora_dropout_arguments_are_checked():
    with pytest.raises(ValueError, match=r"lora_dropout: expected a probability in \[0, 1\), got 1.0"):
        MaskedDoRALinear(8, 8, rank=2, lora_dropout=1.0)
    with pytest.raises(ValueError, match="lora_dropout: expected a non-negative float"):
        MaskedDoRALinear(8, 8, rank=2, lora_dropout=-0.1)
    with pytest.raises(ValueError, match=r"dropout_mode: expected one of \('peft', 'adapter'\), got 'both'"):
        MaskedDoRALinear(8, 8, rank=2, dropout_mode="both")
