"""The remaining encoder-decoders (T5Gemma, T5Gemma 2, LED, PEGASUS-X, FSMT, BigBird-Pegasus, Switch Transformers,
NLLB-MoE): their specs over existing capabilities, which :mod:`masked_dora.models.families` adds to ``SPECS``; and
the encoder-decoders of two models (``PAIRS``: EncoderDecoderModel, VisionEncoderDecoderModel), whose spec is their
halves' (:mod:`masked_dora.models.pair_spec`, looked up by :func:`masked_dora.models.specs.spec_for`).

Each was checked against its modeling file in transformers 5.24: which Linear layers form the MLP and the heads of
each stack, which config (the model's, or a stack's own sub-config) sizes them, and what the decoder's
cross-attention reads.
"""

from __future__ import annotations

from dataclasses import replace as replace_dataclass
from typing import Dict

from .pair_spec import PairSpec
from .spec_types import HeadSpec, MLPSpec, ModelSpec

# encoder-decoders of two models, each half pruned as its own model type says (:mod:`masked_dora.models.pair_spec`)
PAIRS: Dict[str, PairSpec] = {"encoder-decoder": PairSpec(), "vision-encoder-decoder": PairSpec()}


_INPUT_WIDTH_HEADS = ("its attentions reshape their output to the width of their input (hidden_states.size(-1)), "
                      "not to the kept heads x head_dim, so a block with fewer heads cannot run")
_LED_HEADS = ("its encoder's Longformer attention (local and global: query/key/value and query_global/key_global/"
              "value_global) and its decoder's attention reshape their output to the width of their input "
              "(hidden_states.size(-1)), not to the kept heads x head_dim, so a block with fewer heads cannot run")
_PEGASUS_X_HEADS = ("its encoder's global-local attention reshapes its local and global outputs to the width of its "
                    "input (DimensionInfo.hidden_dim), not to the kept heads x head_dim, so an encoder block with "
                    "fewer heads cannot run")
_BLOCK_SPARSE_HEADS = ("with attention_type='block_sparse' the encoder switches to full attention for inputs shorter "
                       "than its blocks need, rebuilding each block's attention (self_attn.self) from the config's "
                       "head count, which a block with fewer heads does not have; attention_type='original_full' "
                       "prunes them")


def _bart_mlp_only(bart_encoder: dict, bart_decoder: ModelSpec, name: str, encoder_heads: HeadSpec, reason: str):
    """BART's stacks (fc1/fc2 of width encoder_ffn_dim / decoder_ffn_dim), their heads refused for ``reason``."""
    unsupported = (("heads", "", reason),)
    decoder = replace_dataclass(bart_decoder, name=f"{name}-decoder", unsupported=unsupported)
    return ModelSpec(name=name, model_types=(name,), **dict(bart_encoder, heads=encoder_heads), stacks=(decoder,),
                     unsupported=unsupported)


def _dense_mlp(producer: str, consumer: str) -> MLPSpec:
    """The dense MLP of an MoE encoder-decoder's dense blocks (its sparse blocks, whose experts are modules of their
    own, keep them whole: no MLP group there); its width key also sizes the experts, so pruned widths save in the
    per-layer form."""
    return MLPSpec(producers=(producer,), consumer=consumer, size_key="", in_some_blocks=True)


def seq2seq_specs(llama_style: dict, bart_encoder: dict, bart_decoder: ModelSpec, t5_encoder: dict,
                  t5_heads: tuple) -> Dict[str, ModelSpec]:
    """The specs of this module, built on the fields of the ``llama`` spec (``llama_style``), of the ``bart``
    spec's stacks (``bart_encoder``, ``bart_decoder``) and of T5's encoder stack (``t5_encoder``; its heads refused
    for ``t5_heads``)."""
    longformer = "self_attn.longformer_self_attn"
    led_heads = HeadSpec(query=f"{longformer}.query", key=f"{longformer}.key", value=f"{longformer}.value",
                         output="self_attn.output", heads_key="encoder_attention_heads", attention=longformer,
                         attrs=(("num_heads", "heads"),))
    # BigBird-Pegasus: the encoder's attention is BigBird's (self_attn.self: query/key/value of all_head_size, each
    # head alone; self_attn.output), the decoder's BART's (its output reshaped to heads x head_dim); its
    # cross-attention (encoder_attn) keeps every head. Head sizes follow from d_model / heads: per-layer form
    bigbird_heads = HeadSpec(query="self_attn.self.query", key="self_attn.self.key", value="self_attn.self.value",
                             output="self_attn.output", heads_key="encoder_attention_heads",
                             attention="self_attn.self",
                             attrs=(("num_attention_heads", "heads"), ("all_head_size", "width")))
    bigbird_refusal = (("heads", "attention_type=block_sparse", _BLOCK_SPARSE_HEADS),)
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
        # LED, PEGASUS-X, FSMT: BART's stacks and MLP (fc1/fc2), heads refused
        "led": _bart_mlp_only(bart_encoder, bart_decoder, "led", led_heads, _LED_HEADS),
        "pegasus_x": _bart_mlp_only(bart_encoder, bart_decoder, "pegasus_x", bart_encoder["heads"], _PEGASUS_X_HEADS),
        "fsmt": _bart_mlp_only(bart_encoder, bart_decoder, "fsmt", bart_encoder["heads"], _INPUT_WIDTH_HEADS),
        "bigbird_pegasus": ModelSpec(
            name="bigbird_pegasus", model_types=("bigbird_pegasus",), **dict(bart_encoder, heads=bigbird_heads),
            stacks=(replace_dataclass(bart_decoder, name="bigbird_pegasus-decoder", unsupported=bigbird_refusal),),
            unsupported=bigbird_refusal),
        # Switch Transformers: T5's stacks (heads refused as T5's); every encoder_sparse_step-th block's MLP is a
        # top-1 mixture of experts (mlp.experts, a ModuleDict of expert MLPs, which the packed-experts wrapper does
        # not take: kept whole with the router), the other blocks' dense wi/wo MLP (layer.1.mlp, the decoder's
        # layer.2.mlp) prunes
        "switch_transformers": ModelSpec(
            name="switch_transformers", model_types=("switch_transformers",),
            **dict(t5_encoder, mlp=_dense_mlp("layer.1.mlp.wi", "layer.1.mlp.wo")), unsupported=t5_heads,
            stacks=(ModelSpec(name="switch_transformers-decoder", model_types=(), stack="decoder",
                              layers=("decoder.block",), hidden_key="d_model",
                              mlp=_dense_mlp("layer.2.mlp.wi", "layer.2.mlp.wo"),
                              heads=replace_dataclass(t5_encoder["heads"], cross_attention="layer.1.EncDecAttention"),
                              unsupported=t5_heads),)),
        # NLLB-MoE: BART's stacks and attention (heads prune; head sizes follow from d_model / heads: per-layer
        # form); every *_sparse_step-th block's ffn is a top-2 mixture of experts (ffn.experts, a ModuleDict: kept
        # whole with the router), the other blocks' dense ffn.fc1 / ffn.fc2 prunes
        "nllb-moe": ModelSpec(
            name="nllb-moe", model_types=("nllb-moe",), **dict(bart_encoder, mlp=_dense_mlp("ffn.fc1", "ffn.fc2")),
            stacks=(replace_dataclass(bart_decoder, name="nllb-moe-decoder", mlp=_dense_mlp("ffn.fc1", "ffn.fc2")),)),
    }
