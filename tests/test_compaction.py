"""CompactLinear (module), MaskedDoRALinear.to_compact and compact_pair: exact compaction."""

import io

import pytest
import torch
from torch import nn

from masked_dora.nn import CompactLinear, MaskedDoRALinear, compact_pair
from masked_dora.ops import use_backend

from helpers import assert_close_rel

BACKENDS = ["torch", "cpp"]


def trained_layer(k, n, dtype=torch.float32, keep_frac=0.5, bias=True, rank=4):
    layer = MaskedDoRALinear(k, n, bias=bias, rank=rank, alpha=8, dtype=dtype)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.1)
        layer.magnitude.mul_(torch.rand(n, dtype=dtype) + 0.5)
    keep = torch.rand(n) < keep_frac
    keep[0] = True
    layer.set_mask(keep)
    return layer.eval()


def dropped_features(x, keep_in):
    return x * keep_in.to(x.dtype)


# ---------------------------------------------------------------- CompactLinear.from_linear

@pytest.mark.parametrize("scatter", [True, False])
def test_from_linear_masks_and_unsorted_indices(scatter):
    lin = nn.Linear(40, 30)
    keep_in = torch.rand(40) < 0.5
    keep_out_idx = torch.tensor([17, 3, 25, 9, 0])  # unsorted: from_linear sorts
    layer = CompactLinear.from_linear(lin, keep_in=keep_in, keep_out=keep_out_idx, scatter=scatter)
    assert layer.out_idx is None if not scatter else layer.out_idx.tolist() == [0, 3, 9, 17, 25]
    assert layer.in_idx.tolist() == torch.nonzero(keep_in).flatten().tolist()
    x = torch.randn(4, 6, 40)
    with torch.no_grad():
        ref = lin.double()(dropped_features(x.double(), keep_in))
    y = layer(x)
    if scatter:
        keep_out = torch.zeros(30, dtype=torch.bool)
        keep_out[keep_out_idx] = True
        assert y.shape == (4, 6, 30)
        assert_close_rel(y, ref * keep_out.double(), torch.float32, "from_linear scatter")
    else:
        assert y.shape == (4, 6, 5)
        assert_close_rel(y, ref[..., [0, 3, 9, 17, 25]], torch.float32, "from_linear compact")


def test_from_linear_copies_weights_and_residual_path():
    lin = nn.Linear(16, 12, bias=False)
    layer = CompactLinear.from_linear(lin, keep_out=torch.arange(12) % 3 == 0)
    assert layer.weight.data_ptr() != lin.weight.data_ptr()
    x, res = torch.randn(5, 16), torch.randn(5, 12)
    y = layer(x, res)
    ref = res.double() + (x.double() @ lin.weight.double().t()) * (torch.arange(12) % 3 == 0).double()
    assert_close_rel(y, ref, torch.float32, "residual add")
    assert not torch.equal(y, res)  # residual is not modified in place
    assert "kept_out=4" in repr(layer) and "scatter=True" in repr(layer) and "gather=False" in repr(layer)


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(keep_in=torch.zeros(16, dtype=torch.bool)), ValueError, "keep_in: the keep mask keeps no channel"),
    (dict(keep_out=torch.tensor([1, 1, 2])), ValueError, "keep_out: duplicate index 1"),
    (dict(keep_out=torch.tensor([0, 12])), ValueError, "keep_out: index 12 is out of range"),
    (dict(keep_in=torch.ones(15, dtype=torch.bool)), ValueError, "keep_in: expected shape"),
])
def test_from_linear_rejects_bad_keep_sets(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        CompactLinear.from_linear(nn.Linear(16, 12), **kw)


def test_constructor_rejects_inconsistent_arguments():
    w = torch.randn(4, 6)
    with pytest.raises(ValueError, match="in_features: expected 6"):
        CompactLinear(w, None, 10, 4)
    with pytest.raises(ValueError, match="in_idx: expected 6 indices"):
        CompactLinear(w, None, 10, 4, in_idx=torch.arange(5))
    with pytest.raises(ValueError, match="out_idx: indices must be sorted ascending"):
        CompactLinear(w, None, 6, 9, out_idx=torch.tensor([0, 5, 2, 7]))


def test_state_dict_round_trip_is_bit_exact():
    lin = nn.Linear(32, 24).to(torch.bfloat16)
    layer = CompactLinear.from_linear(lin, keep_in=torch.rand(32) < 0.6, keep_out=torch.rand(24) < 0.5)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf)
    assert set(state) == {"weight", "bias", "in_idx", "out_idx"}
    n, k = layer.weight.shape
    fresh = CompactLinear(torch.zeros(n, k, dtype=torch.bfloat16), torch.zeros(n, dtype=torch.bfloat16), 32, 24,
                          in_idx=torch.arange(k), out_idx=torch.arange(n))
    fresh.load_state_dict(state)
    for name, t in layer.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], t), name
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    assert torch.equal(fresh(x), layer(x))
    bad = dict(state, in_idx=state["in_idx"].flip(0))
    with pytest.raises(RuntimeError, match="in_idx: indices must be sorted ascending"):
        fresh.load_state_dict(bad)


# ---------------------------------------------------------------- MaskedDoRALinear.to_compact

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_to_compact_equals_masked_layer(backend, dtype):
    layer = trained_layer(48, 40, dtype)
    keep = layer.keep_mask()
    x = torch.randn(2, 7, 48, dtype=dtype)
    with torch.no_grad():
        ref = layer(x)
    assert (ref[..., ~keep] == 0).all()
    full, compact = layer.to_compact(scatter=True), layer.to_compact()
    assert compact.out_features == int(keep.sum()) and full.out_features == 40
    with use_backend(backend), torch.no_grad():
        y_full, y_compact = full(x), compact(x)
    assert_close_rel(y_full, ref, dtype, "to_compact(scatter=True)")
    assert (y_full[..., ~keep] == 0).all()
    assert_close_rel(y_compact, ref[..., keep], dtype, "to_compact()")


def test_to_compact_rejects_fully_pruned_layer():
    layer = trained_layer(8, 6)
    layer.set_mask(torch.zeros(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="every output channel is pruned"):
        layer.to_compact()


# ---------------------------------------------------------------- compact_pair

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mlp_pair_up_down_is_exact(backend, dtype):
    """up (masked) -> GELU -> down (nn.Linear): compacted pair == masked pair, no gather/scatter."""
    up, down = trained_layer(32, 64, dtype), nn.Linear(64, 32).to(dtype)
    up_c, down_c = compact_pair(up, down)
    assert up_c.in_idx is None and up_c.out_idx is None and down_c.in_idx is None and down_c.out_idx is None
    assert down_c.weight.shape == (32, int(up.keep_mask().sum()))
    x = torch.randn(3, 5, 32, dtype=dtype)
    with torch.no_grad():
        ref = down(nn.functional.gelu(up(x)))
        with use_backend(backend):
            y = down_c(nn.functional.gelu(up_c(x)))
    assert_close_rel(y, ref, dtype, "up->down pair")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_mlp_pair_with_pruned_consumer_rows(backend):
    """gate, up (one shared mask) -> silu(gate)*up -> down (masked, hidden rows pruned: scatters + residual)."""
    dtype = torch.float32
    gate, up, down = trained_layer(24, 56, dtype), trained_layer(24, 56, dtype), trained_layer(56, 24, dtype)
    up.set_mask(gate.keep_mask())
    (gate_c, up_c), down_c = compact_pair([gate, up], down)
    assert down_c.out_idx is not None and down_c.out_features == 24
    x, resid = torch.randn(9, 24, dtype=dtype), torch.randn(9, 24, dtype=dtype)
    with torch.no_grad():
        ref = resid + down(nn.functional.silu(gate(x)) * up(x))
        with use_backend(backend):
            y = down_c(nn.functional.silu(gate_c(x)) * up_c(x), residual=resid)
    assert_close_rel(y, ref, dtype, "gated pair with residual")
    assert_close_rel(y - resid, ref - resid, dtype, "gated pair output")
    assert (y[:, ~down.keep_mask()] == resid[:, ~down.keep_mask()]).all()


def test_compact_pair_errors():
    a, b = trained_layer(16, 32), trained_layer(16, 32)
    b.set_mask(~a.keep_mask() | (torch.arange(32) == 0))
    with pytest.raises(ValueError, match=r"producer\[1\]: its keep mask differs"):
        compact_pair([a, b], nn.Linear(32, 16))
    with pytest.raises(ValueError, match="consumer: expected in_features=32"):
        compact_pair(a, nn.Linear(31, 16))
    with pytest.raises(TypeError, match="consumer: expected nn.Linear"):
        compact_pair(a, nn.Conv1d(32, 16, 1))
    a.set_mask(torch.zeros(32, dtype=torch.bool))
    with pytest.raises(ValueError, match="every output channel is pruned"):
        compact_pair(a, nn.Linear(32, 16))



def test_pair_with_compact_linear_consumer_and_unpruned_masked_consumer():
    """Consumer already a CompactLinear (scattering into a residual) or a MaskedDoRALinear with nothing pruned."""
    v = trained_layer(20, 48)
    o_dense = nn.Linear(48, 20)
    o_compact = CompactLinear.from_linear(o_dense, keep_out=torch.arange(20) % 4 != 1)
    o_masked = trained_layer(48, 20)
    o_masked.set_mask(torch.ones(20, dtype=torch.bool))
    x, res = torch.randn(6, 20), torch.randn(6, 20)
    for consumer in (o_compact, o_masked):
        v_c, o_c = compact_pair(v, consumer)
        assert o_c.in_idx is None and (o_c.out_idx is None) == (consumer is o_masked)
        with torch.no_grad():
            assert_close_rel(o_c(v_c(x), res), consumer(v(x), res) if consumer is o_compact else res + consumer(v(x)),
                             torch.float32, f"consumer {type(consumer).__name__}")
    with pytest.raises(ValueError, match="a CompactLinear consumer must read the producer's whole output"):
        compact_pair(v, CompactLinear.from_linear(nn.Linear(48, 20), keep_in=torch.arange(48) < 40))
