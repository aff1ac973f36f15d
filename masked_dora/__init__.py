"""masked_dora: learn which channels can go while fine-tuning with DoRA, then serve the smaller model.

Importing the package never initialises CUDA and never fails for a missing
compiled extension or a missing Triton: those backends are optional.
"""

__version__ = "0.1.0"

from . import masks, nn, ops  # noqa: E402
from ._backends import status as backend_status  # noqa: E402
from .nn import MaskedDoRALinear, accelerate_peft, restore_peft  # noqa: E402

__all__ = ["MaskedDoRALinear", "accelerate_peft", "backend_status", "masks", "nn", "ops", "restore_peft",
           "__version__"]

# Hugging Face model support (masked_dora.models) is loaded on first use, so that
# `import masked_dora` stays cheap and never imports transformers.
_MODELS_EXPORTS = ("MaskedDoRAConfig", "prepare_model", "harden", "compact_model", "compact_for_training",
                   "load_compact", "from_peft",
                   "export_peft",
                   "save_training_state", "load_training_state", "MaskedDoRACallback", "train_masked",
                   "SparsityController", "param_groups", "register_spec", "ModelSpec", "MLPSpec", "HeadSpec",
                   "PerHeadSpec", "ExpertsLayout")
__all__ += list(_MODELS_EXPORTS) + ["models"]


def __getattr__(name):
    if name in _MODELS_EXPORTS or name == "models":
        import importlib

        models = importlib.import_module(".models", __name__)
        return models if name == "models" else getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

