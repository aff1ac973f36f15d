"""Exact compaction of a producer -> consumer pair (up/gate -> down, v -> o).

A pruned output channel of a :class:`MaskedDoRALinear` is exactly 0 in eval
mode, so the consumer's matching input column only ever multiplies 0: dropping
the producer's pruned rows *and* the consumer's matching columns changes
nothing (up to the dtype's rounding of the merged weight), and the pair then
runs with no gather and no scatter at all. Anything between the two layers
must map 0 to 0 per channel (SiLU, GELU, ReLU, an elementwise product with
another producer of the same group, attention's weighted sum of value rows).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .compact_linear import CompactLinear
from .masked_dora_linear import MaskedDoRALinear

Consumer = Union[nn.Linear, MaskedDoRALinear, CompactLinear]


def _consumer_weight(consumer: Consumer, width: int):
    """``(weight, bias, out_idx, out_features)`` of the consumer, full input width ``width``."""
    if isinstance(consumer, MaskedDoRALinear):
        if consumer.in_features != width:
            raise ValueError(f"consumer: expected in_features={width} (the producer's out_features), "
                             f"got {consumer.in_features}")
        weight, bias = consumer.merged_weight()
        rows = torch.nonzero(consumer.keep_mask()).flatten().to(weight.device)
        if rows.numel() == 0:
            raise ValueError("consumer: every output channel of the consumer is pruned; nothing to build")
        if rows.numel() == consumer.out_features:
            return weight, bias, None, consumer.out_features
        return (weight.index_select(0, rows), None if bias is None else bias.index_select(0, rows),
                rows, consumer.out_features)
    if isinstance(consumer, CompactLinear):
        if consumer.in_idx is not None or consumer.in_features != width:
            raise ValueError(f"consumer: a CompactLinear consumer must read the producer's whole output "
                             f"(in_idx=None, in_features={width}); got in_features={consumer.in_features}, "
                             f"gather={consumer.in_idx is not None}")
        b = None if consumer.bias is None else consumer.bias.detach()
        return consumer.weight.detach(), b, consumer.out_idx, consumer.out_features
    if isinstance(consumer, nn.Linear):
        if consumer.in_features != width:
            raise ValueError(f"consumer: expected in_features={width} (the producer's out_features), "
                             f"got {consumer.in_features}")
        b = None if consumer.bias is None else consumer.bias.detach()
        return consumer.weight.detach(), b, None, consumer.out_features
    raise TypeError(f"consumer: expected nn.Linear, MaskedDoRALinear or CompactLinear, "
                    f"got {type(consumer).__name__}")


@torch.no_grad()
def compact_pair(producer: Union[MaskedDoRALinear, Sequence[MaskedDoRALinear]], consumer: Consumer
                 ) -> Tuple[Union[CompactLinear, List[CompactLinear]], CompactLinear]:
    """Compact a producer (or producers sharing one mask: gate + up) and its consumer together.

    Returns ``(compact_producer, compact_consumer)`` (a list of compact
    producers when a sequence was given). Each producer becomes its merged
    weight ``c * (W0 + s B A)`` with the pruned rows removed and a compact
    output (no scatter); the consumer keeps only the input columns of the kept
    channels, with no gather. A :class:`MaskedDoRALinear` consumer is merged
    too; if its own rows are pruned it scatters into its full output width
    (exact zeros there), so the pair's output equals the masked pair's in
    eval mode. Raises if the producers' keep masks differ or keep nothing.
    """
    producers = [producer] if isinstance(producer, MaskedDoRALinear) else list(producer)
    if not producers:
        raise ValueError("producer: expected a MaskedDoRALinear or a non-empty sequence of them")
    for i, p in enumerate(producers):
        if not isinstance(p, MaskedDoRALinear):
            raise TypeError(f"producer[{i}]: expected a MaskedDoRALinear, got {type(p).__name__}")
    keep = producers[0].keep_mask()
    for i, p in enumerate(producers[1:], 1):
        if p.out_features != producers[0].out_features or not torch.equal(p.keep_mask().to(keep.device), keep):
            raise ValueError(f"producer[{i}]: its keep mask differs from producer[0]'s; producers that feed "
                             f"one consumer must share one mask (a coupled group)")
    kept: Tensor = torch.nonzero(keep).flatten()
    if kept.numel() == 0:
        raise ValueError("producer: every output channel is pruned; remove the pair instead of compacting it")
    compact_producers = [p.to_compact(scatter=False) for p in producers]
    weight, bias, out_idx, out_features = _consumer_weight(consumer, producers[0].out_features)
    cols = weight.index_select(1, kept.to(weight.device)).clone()
    bias = None if bias is None else bias.clone()
    compact_consumer = CompactLinear(cols, bias, cols.shape[1], out_features,
                                     in_idx=None, out_idx=out_idx)
    return (compact_producers[0] if isinstance(producer, MaskedDoRALinear) else compact_producers), compact_consumer
