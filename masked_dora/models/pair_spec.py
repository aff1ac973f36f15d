"""Generic encoder-decoders built from two models (transformers' ``EncoderDecoderModel``,
``VisionEncoderDecoderModel``): their spec is the encoder's and the decoder's, composed.

Such a model has no modules of its own between its two halves: ``model.encoder`` is the encoder config's base model
(``AutoModel``), ``model.decoder`` the decoder config's causal LM (``AutoModelForCausalLM``, its blocks under its
base model, ``base_model_prefix``), each sized by its own sub-config (``config.encoder``, ``config.decoder``). So
masked_dora prunes each half as its own spec says, as one stack each ("encoder", "decoder"), reading and writing
its sizes in its sub-config; its refusals are the model's. Hidden pruning is refused (the two halves share no
residual stream, and a projection may join them: ``enc_to_dec_proj``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from dataclasses import replace as replace_dataclass
from typing import Callable

from .spec_types import ModelSpec
from .wrapper_spec import inner_spec

PAIR_HIDDEN = ("the encoder's and the decoder's residual streams are two (the decoder's cross-attention reads the "
               "encoder's output, or its projection enc_to_dec_proj), which hidden pruning does not cut together")


@dataclass(frozen=True)
class PairSpec:
    """An encoder-decoder of two models: the config attributes holding each half's config (its sizes are read and
    written there), and the module names of the halves (``model.<encoder>``: a base model; ``model.<decoder>``: a
    causal LM)."""

    encoder: str = "encoder"
    decoder: str = "decoder"


def pair_spec_for(config, model_type: str, pair: PairSpec, spec_of: Callable) -> ModelSpec:
    """The spec of a ``model_type`` encoder-decoder with ``config``: ``spec_of`` (the spec lookup) of each half's
    config, composed (:func:`compose_pair`); a clear error where a half has no spec or has stacks of its own."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    halves = []
    for role in (pair.encoder, pair.decoder):
        inner = inner_spec(config, role, model_type, role, spec_of)
        sub = getattr(config, role)
        if inner.stacks or inner.stages is not None:
            raise ValueError(f"model: this {model_type!r} model's {role} (model_type {sub.model_type!r}) has stacks "
                             f"of its own ({inner.name!r}: {[s.stack for s in inner.stacks] or 'stages'}), which "
                             f"an encoder-decoder of two models does not compose")
        halves.append(inner)
    decoder_config = getattr(config, pair.decoder)
    known = type(decoder_config) in MODEL_FOR_CAUSAL_LM_MAPPING
    lm_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(decoder_config)] if known else None
    if lm_class is None:
        raise ValueError(f"model: this {model_type!r} model's decoder (model_type {decoder_config.model_type!r}) "
                         f"has no causal LM class in transformers, which the model builds its decoder with")
    return compose_pair(model_type, pair, halves[0], halves[1], lm_class.base_model_prefix)


@functools.lru_cache(maxsize=None)
def compose_pair(model_type: str, pair: PairSpec, encoder: ModelSpec, decoder: ModelSpec,
                 decoder_base: str) -> ModelSpec:
    """``encoder``'s spec as the "encoder" stack (blocks under ``model.<pair.encoder>``), ``decoder``'s as the
    "decoder" stack (under ``model.<pair.decoder>.<decoder_base>``, its causal LM's base model), each reading its
    keys in its sub-config; one object per (type, halves): code comparing specs by identity sees one family."""
    def half(spec: ModelSpec, stack: str, root: str, config_path: str, name: str, model_types: tuple) -> ModelSpec:
        text_config = f"{config_path}.{spec.text_config}" if spec.text_config else config_path
        return replace_dataclass(
            spec, name=name, model_types=model_types, when=(), when_modules=(), stack=stack, text_config=text_config,
            layers=tuple(f"{root}.{suffix}" for suffix in spec.layers), hidden=None, hidden_per_block=None,
            unsupported=(("hidden", "", PAIR_HIDDEN),) + tuple(spec.unsupported))

    decoder_stack = half(decoder, "decoder", f"{pair.decoder}.{decoder_base}", pair.decoder,
                         f"{model_type}-decoder+{decoder.name}", ())
    outer = half(encoder, "encoder", pair.encoder, pair.encoder, f"{model_type}+{encoder.name}+{decoder.name}",
                 (model_type,))
    return replace_dataclass(outer, stacks=(decoder_stack,))
