"""Drop-in modules."""

from .compact_linear import CompactLinear
from .compaction import compact_pair
from .functional import masked_dora_linear
from .masked_dora_linear import MaskedDoRALinear

__all__ = ["CompactLinear", "MaskedDoRALinear", "compact_pair", "masked_dora_linear"]
