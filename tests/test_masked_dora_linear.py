"""MaskedDoRALinear: construction, masks, forward/backward, merging, errors."""

import math

import pytest
import torch
from torch import nn

from masked_dora import MaskedDoRALinear
from masked_dora.masks import GumbelSigmoidGate

from helpers import assert_close_rel, dense_masked_dora_f64, kernel_tolerance, leaf


def trained_layer(k=24, n=16, r=4, bias=True, dtype=torch.float32, **kw):
    layer = MaskedDoRALinear(k, n, bias=bias, rank=r, alpha=8, dtype=dtype, **kw)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.1)
        layer.magnitude.mul_(torch.rand(n, dtype=dtype) + 0.5)
    return layer


def test_constructor_parameters_and_init():
    layer = MaskedDoRALinear(20, 12, rank=4, alpha=16)
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"weight", "bias", "lora_A", "lora_B", "magnitude", "mask_logits"}
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert all(getattr(layer, n).requires_grad for n in ("lora_A", "lora_B", "magnitude", "mask_logits"))
    assert layer.lora_A.shape == (4, 20) and layer.lora_B.shape == (12, 4)
    assert (layer.lora_B == 0).all()
    assert torch.allclose(layer.magnitude, layer.weight.norm(dim=1))
    assert layer.scaling == 4.0
    assert MaskedDoRALinear(20, 12, rank=4, alpha=16, use_rslora=True).scaling == 8.0
    assert layer.sparsity == 0.0
    assert "rank=4" in repr(layer) and "hard_concrete" in repr(layer)


def test_initial_output_equals_base_linear():
    """B = 0 and m = ||W0||: the adapter starts as the identity on the base layer."""
    lin = nn.Linear(24, 16)
    layer = MaskedDoRALinear.from_linear(lin, rank=4).eval()
    x = torch.randn(5, 24)
    assert_close_rel(layer(x), lin(x), torch.float32)


def test_from_linear_shares_and_freezes_base():
    lin = nn.Linear(10, 6, bias=False)
    layer = MaskedDoRALinear.from_linear(lin, rank=2, alpha=4, gate="gumbel_sigmoid")
    assert layer.weight is lin.weight and layer.bias is None
    assert layer.weight.data_ptr() == lin.weight.data_ptr()
    assert not lin.weight.requires_grad
    assert isinstance(layer.gate, GumbelSigmoidGate)
    assert layer.lora_A.device == lin.weight.device and layer.magnitude.dtype == lin.weight.dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(6,), (2, 3), (1, 1)], ids=str)
def test_forward_backward_against_float64(dtype, shape):
    layer = trained_layer(dtype=dtype).eval()
    keep = torch.rand(16) > 0.3
    layer.set_mask(keep)
    x = torch.randn(*shape, 24).to(dtype).requires_grad_()
    y = layer(x)
    assert y.shape == (*shape, 16) and y.dtype == dtype
    x64 = x.detach().double().requires_grad_()
    A = layer.lora_A.detach().double().requires_grad_()
    B = layer.lora_B.detach().double().requires_grad_()
    m = layer.magnitude.detach().double().requires_grad_()
    y_ref = dense_masked_dora_f64(x64, layer.weight, layer.bias, A, B, layer.scaling, m, keep.double())
    assert_close_rel(y, y_ref, dtype, "y")
    g = torch.randn_like(y_ref)
    y.backward(g.to(dtype))
    y_ref.backward(g)
    for ours, ref, name in ((x.grad, x64.grad, "x"), (layer.lora_A.grad, A.grad, "A"),
                            (layer.lora_B.grad, B.grad, "B"), (layer.magnitude.grad, m.grad, "m")):
        assert_close_rel(ours, ref, dtype, f"grad {name}")


def test_pruned_channels_are_exactly_zero_including_bias():
    layer = trained_layer().eval()
    keep = torch.ones(16, dtype=torch.bool)
    keep[[0, 3, 15]] = False
    layer.set_mask(keep)
    y = layer(torch.randn(4, 24))
    assert (y[:, ~keep] == 0).all() and (y[:, keep] != 0).all()
    assert layer.sparsity == pytest.approx(3 / 16)
    assert torch.equal(layer.keep_mask(), keep)


def test_mask_logits_get_gradient_in_training():
    layer = trained_layer()
    layer.train()
    y = layer(torch.randn(8, 24))
    y.pow(2).sum().backward()
    assert layer.mask_logits.grad is not None and layer.mask_logits.grad.abs().sum() > 0
    assert layer.weight.grad is None and layer.bias.grad is None


def test_eval_gate_is_hard_and_deterministic():
    layer = trained_layer().eval()
    with torch.no_grad():
        layer.mask_logits.copy_(torch.linspace(-2, 2, 16))
    z = layer.gate_values()
    assert set(z.tolist()) <= {0.0, 1.0}
    assert torch.equal(z.bool(), layer.mask_logits > 0)
    x = torch.randn(3, 24)
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer.gate_values(), layer.gate_values())  # stochastic relaxation


def test_set_mask_overrides_gate_and_clear_mask_restores():
    layer = trained_layer()
    keep = torch.zeros(16, dtype=torch.bool)
    keep[:5] = True
    layer.set_mask(keep)
    layer.train()
    assert torch.equal(layer.gate_values(), keep.float())
    layer.clear_mask()
    assert torch.equal(layer.keep_mask(), layer.mask_logits.detach() > 0)


def test_eval_output_equals_merged_linear_full_and_compact():
    layer = trained_layer(k=30, n=20, r=3).eval()
    keep = torch.rand(20) > 0.4
    keep[0] = True
    layer.set_mask(keep)
    x = torch.randn(2, 7, 30)
    y = layer(x)
    full = layer.to_linear()
    assert isinstance(full, nn.Linear) and full.weight.shape == (20, 30)
    assert (full.weight[~keep] == 0).all() and (full.bias[~keep] == 0).all()
    assert_close_rel(full(x), y, torch.float32)
    compact, kept = layer.to_linear(compact=True)
    assert torch.equal(kept, torch.nonzero(keep).flatten())
    assert compact.weight.shape == (int(keep.sum()), 30)
    assert_close_rel(compact(x), y[..., kept], torch.float32)


def test_all_pruned_layer_outputs_zero_and_cannot_compact():
    layer = trained_layer().eval()
    layer.set_mask(torch.zeros(16, dtype=torch.bool))
    assert (layer(torch.randn(3, 24)) == 0).all()
    assert layer.sparsity == 1.0
    with pytest.raises(ValueError, match="every output channel is pruned"):
        layer.to_linear(compact=True)


def test_zero_weight_rows_give_finite_outputs_and_grads():
    lin = nn.Linear(12, 8)
    with torch.no_grad():
        lin.weight[:3] = 0.0
    layer = MaskedDoRALinear.from_linear(lin, rank=2)
    layer.set_mask(torch.ones(8, dtype=torch.bool))
    x = torch.randn(4, 12, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(layer.magnitude.grad).all() and torch.isfinite(layer.lora_B.grad).all()


def test_norm_cache_reused_until_adapter_changes():
    layer = trained_layer()
    n1 = layer.weight_norm()
    assert layer.weight_norm() is n1  # cached: no recomputation between micro-batches
    with torch.no_grad():
        layer.lora_B.add_(0.5)  # an optimiser step bumps the version
    n2 = layer.weight_norm()
    assert n2 is not n1
    dense = (layer.weight + layer.scaling * layer.lora_B @ layer.lora_A).norm(dim=1)
    assert_close_rel(n2, dense.detach(), torch.float32)


def test_state_dict_round_trip_is_bit_exact():
    layer = trained_layer()
    layer.set_mask(torch.rand(16) > 0.5)
    layer.gate.set_temperature(0.3)
    other = MaskedDoRALinear(24, 16, rank=4, alpha=8)
    other.load_state_dict(layer.state_dict())
    for key, value in layer.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    layer.eval(), other.eval()
    x = torch.randn(3, 24)
    assert torch.equal(layer(x), other(x))


def test_torch_compile_fullgraph_train_step():
    """Forward + loss compile as one graph (no break); AOTAutograd compiles the backward."""
    layer = trained_layer(k=16, n=12, r=2)
    layer.set_mask(torch.rand(12) > 0.3)  # deterministic, so eager and compiled agree
    params = [p for p in layer.parameters() if p.requires_grad]
    x = torch.randn(2, 3, 16)

    def loss_fn(x):
        return layer(x).pow(2).mean()

    eager = loss_fn(x)
    eager_grads = torch.autograd.grad(eager, params)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    loss.backward()
    assert_close_rel(loss, eager, torch.float32)
    for p, g in zip(params, eager_grads):
        assert_close_rel(p.grad, g, torch.float32)
    torch.optim.SGD(params, lr=0.1).step()
    assert torch.isfinite(compiled(x))  # runs again after the step (norm recomputed in-graph)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(rank=0), ValueError, "rank: expected a positive int"),
    (dict(rank=13), ValueError, "rank: expected at most min"),
    (dict(rank=2.5), ValueError, "rank: expected a positive int"),
    (dict(alpha=0), ValueError, "alpha: expected a positive float"),
    (dict(gate="bernoulli"), ValueError, "gate: expected one of"),
    (dict(dtype=torch.int32), TypeError, "dtype: expected a floating-point dtype"),
])
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    args = dict(in_features=20, out_features=12)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        MaskedDoRALinear(**args)


def test_forward_rejects_bad_input_before_computing():
    layer = trained_layer()
    with pytest.raises(ValueError, match="x: expected last dimension in_features=24"):
        layer(torch.randn(3, 23))
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        layer(torch.ones(3, 24, dtype=torch.long))
    with pytest.raises(TypeError, match="x: expected dtype torch.float32"):
        layer(torch.randn(3, 24, dtype=torch.float64))
    with pytest.raises(ValueError, match="x: expected device cpu"):
        layer(torch.randn(3, 24, device="meta"))
    with pytest.raises(TypeError, match="keep: expected a bool tensor"):
        layer.set_mask(torch.ones(16))
    with pytest.raises(ValueError, match=r"keep: expected shape \(16,\)"):
        layer.set_mask(torch.ones(15, dtype=torch.bool))
    with pytest.raises(TypeError, match="linear: expected an nn.Linear"):
        MaskedDoRALinear.from_linear(nn.Conv1d(3, 3, 1))


def test_training_reduces_loss_against_teacher():
    """A few Adam steps move the adapter toward a teacher (the math trains)."""
    torch.manual_seed(3)
    teacher = nn.Linear(16, 8)
    student = MaskedDoRALinear.from_linear(nn.Linear(16, 8), rank=4, alpha=8)
    student.set_mask(torch.ones(8, dtype=torch.bool))
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=3e-2)
    x = torch.randn(64, 16)
    target = teacher(x).detach()
    first = None
    for _ in range(60):
        loss = (student(x) - target).pow(2).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert math.isfinite(loss.item())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cuda_forward_backward_against_float64(dtype):
    """Same check on a GPU at a real size (default backend there)."""
    layer = trained_layer(k=1024, n=768, r=16, dtype=dtype).cuda().eval()
    keep = (torch.rand(768) > 0.25).cuda()
    layer.set_mask(keep)
    x = torch.randn(4, 256, 1024, device="cuda", dtype=dtype, requires_grad=True)
    y = layer(x)
    x64 = x.detach().double().requires_grad_()
    A = layer.lora_A.detach().double().requires_grad_()
    B = layer.lora_B.detach().double().requires_grad_()
    y_ref = dense_masked_dora_f64(x64, layer.weight, layer.bias, A, B, layer.scaling,
                                  layer.magnitude.detach(), keep.double())
    tol = kernel_tolerance(dtype, "cuda")  # fp32: 5e-4 only while TF32 matmuls are allowed
    assert_close_rel(y, y_ref, dtype, "y", tol=tol)
    g = torch.randn_like(y_ref)
    y.backward(g.to(dtype))
    y_ref.backward(g)
    for ours, ref, name in ((x.grad, x64.grad, "x"), (layer.lora_A.grad, A.grad, "A"), (layer.lora_B.grad, B.grad, "B")):
        assert_close_rel(ours, ref, dtype, f"grad {name}", tol=tol)


def test_autocast_mixed_precision_like_nn_linear():
    """fp32 layer inside torch.autocast(bfloat16): bf16 GEMMs, fp32 gradients, bf16-accurate result."""
    layer = trained_layer().eval()
    layer.set_mask(torch.rand(16) > 0.3)
    x = torch.randn(5, 24, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    x64 = x.detach().double()
    y_ref = dense_masked_dora_f64(x64, layer.weight, layer.bias, layer.lora_A.detach(), layer.lora_B.detach(),
                                  layer.scaling, layer.magnitude.detach(), layer.keep_mask().double())
    assert_close_rel(y, y_ref, torch.bfloat16, "autocast y")
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.lora_A.grad.dtype == torch.float32
    assert torch.isfinite(layer.lora_B.grad).all() and layer.weight.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kept_rows_and_columns_compute_the_full_layer_on_zero_inputs(dtype):
    """keep_output_rows / keep_input_columns (training at the kept size): on inputs that are zero in the dropped
    columns, outputs and gradients are the full layer's at the kept rows, against the float64 definition of the
    full layer (its row norm spans every column)."""
    layer = trained_layer(dtype=dtype).train()
    rows = torch.rand(16) > 0.4
    layer.set_mask(rows)
    cols = torch.rand(24) > 0.5
    W0, A0, B0, m0, b0 = (t.detach().clone() for t in (layer.weight, layer.lora_A, layer.lora_B, layer.magnitude,
                                                          layer.bias))
    layer.keep_input_columns(cols)
    layer.keep_output_rows(rows)
    assert (layer.in_features, layer.out_features) == (int(cols.sum()), int(rows.sum()))
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad and not layer.weight.requires_grad
    x = (torch.randn(5, 24) * cols).to(dtype)
    xs = x[:, cols].clone().requires_grad_()
    y = layer(xs)
    x64 = x.double().requires_grad_()
    A, B, m = (leaf(t, torch.float64) for t in (A0, B0, m0))
    y_ref = dense_masked_dora_f64(x64, W0, b0, A, B, layer.scaling, m, rows.double())[:, rows]
    assert_close_rel(y, y_ref, dtype, "y")
    g = torch.randn_like(y_ref)
    y.backward(g.to(dtype))
    y_ref.backward(g)
    for ours, ref, name in ((xs.grad, x64.grad[:, cols], "x"), (layer.lora_A.grad, A.grad[:, cols], "A"),
                            (layer.lora_B.grad, B.grad[rows], "B"), (layer.magnitude.grad, m.grad[rows], "m")):
        assert_close_rel(ours, ref, dtype, f"grad {name}")
    assert float(A.grad[:, ~cols].abs().max()) == 0.0  # why the dropped columns of A may leave training
    merged, _ = layer.merged_weight()
    full = dense_masked_dora_f64(torch.eye(24, dtype=torch.float64), W0, None, A0, B0, layer.scaling, m0,
                                 rows.double()).t()
    assert_close_rel(merged, full[rows][:, cols], dtype, "merged weight")
    with pytest.raises(ValueError, match="every channel would go"):
        layer.keep_output_rows(torch.zeros(layer.out_features, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"keep: expected shape"):
        layer.keep_input_columns(torch.ones(3, dtype=torch.bool))
