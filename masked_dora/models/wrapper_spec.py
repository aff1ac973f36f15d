"""How a multimodal model names its language model: :class:`WrapperSpec`, and :func:`wrap_spec`, the language
model's spec placed under it (VLMs in :mod:`~masked_dora.models.families_vlm`, audio LMs in
:mod:`~masked_dora.models.families_audio_lm`; :func:`masked_dora.models.specs.spec_for` looks them up)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as replace_dataclass
from typing import Callable, Optional, Tuple

from .spec_types import MLPSpec, ModelSpec


@dataclass(frozen=True)
class WrapperSpec:
    """A multimodal model around a language model (a VLM: vision tower, projector, language model, LM head).

    masked_dora prunes the language model's MLP channels and attention heads as the spec of its text config's
    ``model_type`` says (:func:`masked_dora.models.specs.spec_for` wraps that spec: :func:`wrap_spec`), and leaves
    the vision tower and the projector as they are. ``language_model``: the name of the language model module
    (the last part of its qualified name: ``model.language_model`` in transformers 5's Gemma 3, LLaVA, Qwen-VL;
    ``model.text_model`` in Idefics3/SmolVLM; ``language_model.model``, the base model of BLIP-2's causal LM),
    under which the inner spec's block list is looked up (a vision tower has a ``layers`` list of its own);
    ``text_config``: the model config's attribute holding the language model's config (its sizes are read there,
    and the compacted ones written there). ``shared_text_keys``: text config keys that also size a module outside
    the language model (Idefics2's connector MLP is ``text_config.intermediate_size`` wide): a pruned width is not
    written to them (the connector would be built narrower), so a pruned MLP saves in the per-layer form.
    ``text_alone``: whether text without an image runs every block of the language model (not where the forward
    requires ``pixel_values``, BLIP-2's and InstructBLIP's, nor where blocks that read the image are skipped
    without one, Mllama's cross-attention blocks): the CLI, which trains on text, refuses the others.
    ``hidden_refusal``: why hidden pruning is refused (the modality's projector writes into the residual stream).
    ``seq2seq_language_model``: the language
    model's name instead of ``language_model`` where it is an encoder-decoder (its spec has a ``decoder`` stack):
    BLIP-2 and InstructBLIP build a causal LM whose base model holds the blocks (``language_model.model``) or,
    around a Flan-T5, a ``T5ForConditionalGeneration`` whose ``encoder``/``decoder`` stacks sit directly under it
    (``language_model``); ``""``: ``language_model`` either way.
    """

    language_model: str
    text_config: str = "text_config"
    shared_text_keys: Tuple[str, ...] = ()
    text_alone: bool = True
    seq2seq_language_model: str = ""
    hidden_refusal: str = ""  # "": VLM_HIDDEN (the vision projector's)

    def language_model_of(self, inner: "ModelSpec") -> str:
        """The name of the language model whose spec is ``inner`` (an encoder-decoder's where it has its own)."""
        seq2seq = any(stack.stack == "decoder" for stack in inner.stacks)
        return self.seq2seq_language_model if seq2seq and self.seq2seq_language_model else self.language_model


# the projector adds the image features into the language model's residual stream: pruning its channels would
# need the projector's output rows cut too (a writer hidden pruning does not cover)
VLM_HIDDEN = ("the vision projector writes image features into the language model's residual stream, which hidden "
              "pruning does not cut (only the language model's own writers)")


def wrap_spec(model_type: str, wrapper: WrapperSpec, inner: ModelSpec) -> ModelSpec:
    """The spec of a ``model_type`` VLM whose language model has the spec ``inner``: its block lists under
    ``wrapper.language_model`` (or ``seq2seq_language_model`` for an encoder-decoder ``inner``), its keys in
    ``config.<wrapper.text_config>``, hidden pruning refused, an MLP width key in ``wrapper.shared_text_keys`` left
    unwritten."""
    def unshared(mlp: Optional[MLPSpec]) -> Optional[MLPSpec]:
        shared = mlp is not None and mlp.size_key in wrapper.shared_text_keys
        return replace_dataclass(mlp, size_key="") if shared else mlp

    language_model = wrapper.language_model_of(inner)
    hidden_refusal = wrapper.hidden_refusal or VLM_HIDDEN

    def wrap(spec: ModelSpec, name: str, model_types: Tuple[str, ...]) -> ModelSpec:
        return replace_dataclass(
            spec, name=name, model_types=model_types, when=(), text_config=wrapper.text_config,
            mlp=unshared(spec.mlp), dense_mlp=unshared(spec.dense_mlp),
            layers=tuple(f"{language_model}.{suffix}" for suffix in spec.layers),
            hidden=None, hidden_per_block=None, unsupported=(("hidden", "", hidden_refusal),) + tuple(spec.unsupported),
            stacks=tuple(wrap(s, s.name, s.model_types) for s in spec.stacks))
    return wrap(inner, f"{model_type}+{inner.name}", (model_type,))


def inner_spec(config, attr: str, model_type: str, part: str, spec_of: Callable) -> ModelSpec:
    """The spec of the inner model a ``model_type`` model holds and whose config is ``config.<attr>`` (a VLM's
    language model, one half of an encoder-decoder of two models: ``part`` names it in the errors): ``spec_of``
    (the spec lookup) of that config; a clear error where the config is missing or its model type has no spec."""
    sub = getattr(config, attr, None)
    if getattr(sub, "model_type", None) is None:
        raise ValueError(f"model: a {model_type!r} model prunes its {part}, whose config config.{attr} is missing "
                         f"(got {type(sub).__name__})")
    try:
        return spec_of(sub)
    except ValueError as exc:
        raise ValueError(f"model: this {model_type!r} model's {part} (config.{attr}, model_type "
                         f"{sub.model_type!r}) has no spec: {exc}") from exc
