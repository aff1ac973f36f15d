"""Drop-in modules."""

from .compact_linear import CompactLinear
from .compaction import compact_pair
from .deferred_scatter import DeferredScatter
from .functional import masked_dora_linear
from .masked_dora_experts import ClampedGLU, ClampedSwiGLU, MaskedDoRAExperts
from .masked_dora_linear import MaskedDoRALinear
from .peft_accelerate import accelerate_peft, restore_peft
from .quantized_base import QuantizedBaseDoRALinear

__all__ = ["ClampedGLU", "ClampedSwiGLU", "CompactLinear", "DeferredScatter", "MaskedDoRAExperts", "MaskedDoRALinear",
           "QuantizedBaseDoRALinear", "accelerate_peft", "compact_pair", "masked_dora_linear", "restore_peft"]
