"""Drop-in modules."""

from .functional import masked_dora_linear
from .masked_dora_linear import MaskedDoRALinear

__all__ = ["MaskedDoRALinear", "masked_dora_linear"]
