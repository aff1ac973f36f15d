"""The remaining encoder-decoders (T5Gemma, ...): their specs over existing capabilities, and the types refused;
:mod:`masked_dora.models.families` adds them to ``SPECS`` and ``REFUSED``.

Each was checked against its modeling file in transformers 5.24: which Linear layers form the MLP and the heads of
each stack, which config (the model's, or a stack's own sub-config) sizes them, and what the decoder's
cross-attention reads.
"""

from __future__ import annotations

from dataclasses import replace as replace_dataclass
from typing import Dict

from .spec_types import ModelSpec

# model types masked_dora knows it cannot prune exactly, and why (spec_for raises it)
REFUSED_SEQ2SEQ_TYPES: Dict[str, str] = {}


def seq2seq_specs(llama_style: dict) -> Dict[str, ModelSpec]:
    """The specs of this module, built on the fields of the ``llama`` spec (``llama_style``)."""
    # T5Gemma: two stacks of Gemma 2 blocks (gated gate/up/down MLP of width intermediate_size, GQA attention with
    # an explicit head_dim, pre/post norms over the hidden size, logit soft-capping per head, sliding layers), each
    # sized by its own sub-config (config.encoder, config.decoder); the decoder's cross_attn reads the decoder's
    # head counts too and keeps every head (pruned decoder heads save in the per-layer form)
    t5gemma_decoder = ModelSpec(
        name="t5gemma-decoder", model_types=(), stack="decoder", text_config="decoder",
        **dict(llama_style, layers=("decoder.layers",),
               heads=replace_dataclass(llama_style["heads"], cross_attention="cross_attn")))
    # T5Gemma 2: Gemma 3 blocks (q/k RMSNorms over head_dim, one weight for all heads). The encoder's text blocks
    # (encoder.text_model, sized by config.encoder.text_config) beside a SigLIP vision tower and its projector (kept
    # whole: the image features enter the embeddings, not a pruned width); the decoder's merged attention runs the
    # same q/k/v/o projections over the decoder's and the encoder's tokens at once, so its heads prune as one and
    # config.decoder says them (plain checkpoints)
    t5gemma2_decoder = ModelSpec(name="t5gemma2-decoder", model_types=(), stack="decoder", text_config="decoder",
                                 **dict(llama_style, layers=("decoder.layers",)))
    return {
        "t5gemma": ModelSpec(name="t5gemma", model_types=("t5gemma",), stack="encoder", text_config="encoder",
                             **dict(llama_style, layers=("encoder.layers",)), stacks=(t5gemma_decoder,)),
        "t5gemma2": ModelSpec(name="t5gemma2", model_types=("t5gemma2",), stack="encoder",
                              text_config="encoder.text_config",
                              **dict(llama_style, layers=("encoder.text_model.layers",)), stacks=(t5gemma2_decoder,)),
    }
