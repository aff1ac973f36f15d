"""masked_dora: learn which channels can go while fine-tuning with DoRA, then serve the smaller model.

Importing the package never initialises CUDA and never fails for a missing
compiled extension or a missing Triton: those backends are optional.
"""

__version__ = "0.1.0"

from . import masks, nn, ops  # noqa: E402
from ._backends import status as backend_status  # noqa: E402
from .nn import MaskedDoRALinear  # noqa: E402

__all__ = ["MaskedDoRALinear", "backend_status", "masks", "nn", "ops", "__version__"]
