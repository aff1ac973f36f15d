"""``load_compact``'s rebuilding of parameters transformers saved under other names (``compact_load``)."""

import math

import torch
from torch import nn

from masked_dora.models import compact_load


class _Tower(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3)


def _group_rename(model, shapes):
    """A save-time conversion that renames ``bn.*`` to ``vq.bn.*`` only with the whole group present (as Kimi-K2.5's
    vision blocks), listing the int64 counter first: the saved names with the numbers of the elements they hold."""
    if set(shapes) != set(dict(model.named_buffers()) | dict(model.named_parameters())):
        return None
    numbered, start = {}, 0
    for key, shape in shapes.items():
        numbered[key] = torch.arange(start, start + math.prod(shape)).view(shape)
        start += math.prod(shape)
    order = sorted(numbered, key=lambda k: not k.endswith("num_batches_tracked"))
    return {"vq." + key: numbered[key] for key in order}


def test_pieces_of_different_dtypes_rebuilt_together_keep_their_own_dtype(monkeypatch):
    """A BatchNorm's int64 ``num_batches_tracked`` rebuilt in one group with its float weights: each parameter
    keeps its own saved dtype and values (the first version cast every piece to the first piece's dtype, so an
    int64 counter first truncated the weights)."""
    model = _Tower()
    saved = {"vq.bn.weight": torch.tensor([0.25, -1.5, 2.75]), "vq.bn.bias": torch.tensor([0.5, 0.125, -0.375]),
             "vq.bn.running_mean": torch.tensor([0.1, 0.2, 0.3]), "vq.bn.running_var": torch.tensor([1.1, 1.2, 1.3]),
             "vq.bn.num_batches_tracked": torch.tensor(7)}
    monkeypatch.setattr(compact_load, "_saved_layout", _group_rename)
    missing = list(model.state_dict())
    rebuilt = compact_load._from_saved_layout(model, saved, missing)
    assert set(rebuilt) == set(missing)
    for key in missing:
        want = saved["vq." + key]
        assert rebuilt[key].dtype == want.dtype and torch.equal(rebuilt[key], want), key
    model.load_state_dict(rebuilt)
    assert int(model.bn.num_batches_tracked) == 7 and torch.equal(model.bn.weight.data, saved["vq.bn.weight"])
