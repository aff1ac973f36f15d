"""Declarative specs: which modules of a model family form which coupled pruning group.

A spec names, relative to one transformer block, the producers (layers whose
output rows a group removes) and the consumer (the layer whose input columns
go with them), the config keys that hold the group's size, and the module
attributes that must follow a per-layer size change. Nothing here is code per
model: adding a family is adding a table entry (see ``SPECS``). :mod:`masked_dora.models.blocks` reads a
spec against a model (its blocks, each group's member modules, the head layout).

Groups (DESIGN.md, "Coupled structure"); besides these two per-block kinds, ``hidden`` (the residual stream:
one group, ``HiddenSpec``, :mod:`~masked_dora.models.hidden`; or one per block, ``PerBlockHiddenSpec``):

* ``mlp``: one channel of the MLP's inner width; rows of ``producers``
  (``gate_proj``/``up_proj``, ``fc1``/``intermediate.dense``), columns of the
  ``consumer`` (``down_proj``/``output.dense``). A pruned channel is exactly 0 at
  the consumer's input because every producer is gated and the activations of
  these families map 0 to 0 (SiLU, GELU, ReLU).
* ``heads``: attention heads; rows of ``query``/``key``/``value`` in head-sized
  blocks, columns of ``output``. With GQA (fewer KV heads than query heads) a KV
  head takes its query heads along (``gqa="kv_groups"``: whole KV groups go), or
  the same number of query heads goes inside every group (``gqa="query_heads"``:
  KV heads stay). A KV head's dims are never split.

  Parameters held per head outside the projections (``HeadSpec.per_head``: Cohere's
  q/k LayerNorm with ``use_qk_norm``, one weight row per head; StableLM's
  ``qk_layernorm``, one LayerNorm per head) follow their heads: compaction keeps the
  query norm of every kept query head and the key norm of every kept KV head. This is
  exact because each head is normalised over its own ``head_dim`` only, so no kept head
  reads a pruned one (unlike OLMo-2's q/k RMSNorm over all heads' width, refused); what
  a pruned head's norm makes of its gated (zero) q/k rows never reaches the output: its
  values are zero too and its query heads go with it (``kv_groups``), or ``output``'s
  input is gated for it (``query_heads``). (While training, a soft gate on q/k rows is
  undone by such a norm, which is scale-invariant; the mask still learns through the
  gated values or ``output``'s input.)
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as replace_dataclass
from typing import Dict, Optional, Tuple

from torch import nn

from .hidden_spec import (BERT_PER_BLOCK, DISTILBERT_PER_BLOCK, HIDDEN_UNCOVERED, LLAMA_HIDDEN, LLAMA_PER_BLOCK,
                          PER_BLOCK_UNCOVERED, HiddenSpec, PerBlockHiddenSpec)

GROUP_KINDS = ("mlp", "heads", "hidden")
BLOCK_KINDS = ("mlp", "heads")  # the kinds with one group per block (``hidden``: one group for the model)
QKV_LAYOUTS = ("blocks", "grouped", "per_head")


@dataclass(frozen=True)
class MLPSpec:
    """The MLP channel group of one block (module paths relative to the block)."""

    producers: Tuple[str, ...]
    consumer: str
    size_key: str  # config key of the inner width
    # attributes to set on a module when its block's width changes: (module path, attribute)
    size_attrs: Tuple[Tuple[str, str], ...] = ()
    # per producer, how many width-sized row blocks it stacks (2 for a fused gate/up projection whose rows are
    # [gate | up]); empty: one each
    segments: Tuple[int, ...] = ()
    # a mixture of experts (Mixtral, Qwen3-MoE): the path of the experts module, whose packed 3-D parameters
    # (experts, out, in) ``producers``/``consumer`` then name (("gate_up_proj",), "down_proj", segments=(2,)));
    # size_key is one expert's width. prepare_model wraps it in a MaskedDoRAExperts (one MaskedDoRALinear per
    # expert and projection, member paths "<experts>.<name>.<e>"); every expert keeps the same count
    experts: str = ""

    def __post_init__(self):
        if self.experts and (len(self.producers) != 1 or self.segments != (2,)):
            raise ValueError("MLPSpec: experts are supported as one packed [gate | up] producer (producers=(name,), "
                             f"segments=(2,)) and a packed down projection, got producers={self.producers}, "
                             f"segments={self.segments}")

    def segments_of(self, producer_index: int) -> int:
        return self.segments[producer_index] if self.segments else 1


HEAD_COUNTS = ("heads", "kv_heads")


@dataclass(frozen=True)
class PerHeadSpec:
    """A module of one block holding parameters per attention head (paths relative to the block).

    ``follows``: ``"heads"`` (one entry per query head, e.g. a query norm) or ``"kv_heads"`` (a key norm).
    Without ``modules``, every parameter of the module at ``path`` has the head as dim 0 (Cohere's q/k
    LayerNorm weight, ``(heads, head_dim)``); with it, ``modules`` names the module's ``ModuleList`` of one
    module per head (StableLM's ``StableLmLayerNormPerHead.norms``) and ``count_attr`` the module's attribute
    holding that count (``num_heads``), if any. ``flag``: the config flag under which the family builds the
    module (``""``: always).
    """

    path: str
    follows: str
    modules: str = ""
    count_attr: str = ""
    flag: str = ""

    def __post_init__(self):
        if self.follows not in HEAD_COUNTS:
            raise ValueError(f"PerHeadSpec.follows: expected one of {HEAD_COUNTS}, got {self.follows!r}")

    def built_by(self, config) -> bool:
        """Whether a model with ``config`` has this module."""
        return not self.flag or bool(getattr(config, self.flag, False))


@dataclass(frozen=True)
class HeadSpec:
    """The attention-head group of one block (module paths relative to the block)."""

    query: str
    key: str
    value: str
    output: str
    heads_key: str  # config key of the number of query heads
    kv_heads_key: Optional[str] = None  # config key of the number of KV heads (None: no GQA in this family)
    # the number of KV heads when the attention fixes it whatever the config says (Falcon's multi_query: 1, while
    # its num_kv_heads defaults to the query heads); 0: from kv_heads_key
    fixed_kv_heads: int = 0
    # a fused q/k/v projection (query/key/value then unused): its path and row layout (QKV_LAYOUTS), "blocks"
    # ([q | k | v], Phi-3, ModernBERT, Falcon-7B's multi-query), "grouped" (per KV head [its query heads | k | v],
    # Falcon-40B's new decoder architecture) or "per_head" ([q_h k_h v_h] per head, GPT-NeoX, Falcon-RW; no GQA)
    qkv: str = ""
    qkv_layout: str = "blocks"
    head_dim_key: Optional[str] = None  # config key of an explicit head size (None: hidden // heads)
    attention: str = ""  # path of the attention module whose attributes follow the head counts
    # attribute -> quantity, quantity one of "heads", "kv_heads", "groups" (heads per KV head), "width"
    attrs: Tuple[Tuple[str, str], ...] = ()
    # modules holding parameters per head (q/k norms), which compaction cuts to the kept heads
    per_head: Tuple[PerHeadSpec, ...] = ()

    def __post_init__(self):
        if self.qkv and self.per_head:
            raise ValueError("HeadSpec: per_head modules with a fused qkv projection are not supported")


@dataclass(frozen=True)
class ModelSpec:
    """A model family: where its blocks are and what its groups are."""

    name: str
    model_types: Tuple[str, ...]
    layers: Tuple[str, ...]  # suffixes of the block ModuleList's qualified name, tried in order
    hidden_key: str
    mlp: MLPSpec
    heads: HeadSpec
    # groups this family cannot prune exactly: (kind, config flag, reason); refused when the flag is ""
    # or the model's config sets it truthy (prepare_model raises before anything changes)
    unsupported: Tuple[Tuple[str, str, str], ...] = ()
    # the attention reads its head counts from the model config (Phi-3), so pruned heads need the plain form
    heads_need_plain_config: bool = False
    # config values this spec needs, for a model_type whose module layout follows its config (T5 v1.0's
    # DenseReluDense.wi vs v1.1's gated wi_0/wi_1): ((config attribute, value), ...); the first spec of the
    # model_type whose conditions all hold is the one used
    when: Tuple[Tuple[str, object], ...] = ()
    # an encoder-decoder: this spec's stack of blocks is ``stack`` ("encoder"), and ``stacks`` are the family's
    # further ones ("decoder"), each a ModelSpec of its own block list, groups and size keys (their ``stack``,
    # ``layers``, ``hidden_key``, ``mlp``, ``heads`` and ``unsupported`` are read: a kind one stack refuses is
    # refused for the model); a further stack the model lacks (T5EncoderModel has no decoder) is skipped. Two
    # stacks may share a size key (T5's d_ff): then the plain form needs them to keep the same size
    stack: str = ""
    stacks: Tuple["ModelSpec", ...] = ()
    # the residual stream, for "hidden" pruning (None: refused): hidden_mode="global" and "per_block"
    hidden: Optional[HiddenSpec] = None
    hidden_per_block: Optional[PerBlockHiddenSpec] = None

    def applies_to(self, config) -> bool:
        return all(getattr(config, key, None) == value for key, value in self.when)

    def refusal(self, kind: str, config, hidden_mode: str = "global") -> Optional[str]:
        """Why ``kind`` cannot be pruned in a model with ``config`` (``None``: it can); ``hidden_mode``: for
        ``kind="hidden"``, the mode asked for."""
        model_type = getattr(config, "model_type", "")
        if kind == "hidden" and hidden_mode == "per_block":
            spec = self.hidden_per_block
            return PER_BLOCK_UNCOVERED if spec is None else spec.refusal(model_type)
        if kind == "hidden":
            return HIDDEN_UNCOVERED if self.hidden is None else self.hidden.refusal(model_type)
        for k, flag, reason in self.unsupported:
            if k == kind and (not flag or getattr(config, flag, False)):
                return reason
        return None


LLAMA_STYLE = dict(
    layers=("layers",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("mlp.gate_proj", "mlp.up_proj"), consumer="mlp.down_proj",
                size_key="intermediate_size", size_attrs=(("mlp", "intermediate_size"),)),
    heads=HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                   output="self_attn.o_proj", heads_key="num_attention_heads",
                   kv_heads_key="num_key_value_heads", head_dim_key="head_dim", attention="self_attn",
                   attrs=(("num_key_value_groups", "groups"),)),
)

BERT_STYLE = dict(
    layers=("encoder.layer",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("intermediate.dense",), consumer="output.dense", size_key="intermediate_size"),
    heads=HeadSpec(query="attention.self.query", key="attention.self.key", value="attention.self.value",
                   output="attention.output.dense", heads_key="num_attention_heads",
                   attention="attention.self",
                   attrs=(("num_attention_heads", "heads"), ("all_head_size", "width"))),
)

DISTILBERT = dict(
    layers=("transformer.layer",),
    hidden_key="dim",
    mlp=MLPSpec(producers=("ffn.lin1",), consumer="ffn.lin2", size_key="hidden_dim"),
    heads=HeadSpec(query="attention.q_lin", key="attention.k_lin", value="attention.v_lin",
                   output="attention.out_lin", heads_key="n_heads", attention="attention",
                   attrs=(("n_heads", "heads"),)),
)

PHI = dict(
    layers=("layers",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("mlp.fc1",), consumer="mlp.fc2", size_key="intermediate_size"),
    heads=HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                   output="self_attn.dense", heads_key="num_attention_heads",
                   kv_heads_key="num_key_value_heads", head_dim_key="head_dim", attention="self_attn",
                   attrs=(("num_key_value_groups", "groups"),)),
)

OPT = dict(
    layers=("decoder.layers",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("fc1",), consumer="fc2", size_key="ffn_dim"),
    heads=HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                   output="self_attn.out_proj", heads_key="num_attention_heads", attention="self_attn",
                   attrs=(("num_heads", "heads"),)),
)

DEBERTA_V2 = dict(
    layers=("encoder.layer",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("intermediate.dense",), consumer="output.dense", size_key="intermediate_size"),
    heads=HeadSpec(query="attention.self.query_proj", key="attention.self.key_proj",
                   value="attention.self.value_proj", output="attention.output.dense",
                   heads_key="num_attention_heads", attention="attention.self",
                   attrs=(("num_attention_heads", "heads"), ("all_head_size", "width"))),
)

BART_ENCODER = dict(  # the encoder stack: its own config keys
    stack="encoder",
    layers=("encoder.layers",),
    hidden_key="d_model",
    mlp=MLPSpec(producers=("fc1",), consumer="fc2", size_key="encoder_ffn_dim"),
    heads=HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                   output="self_attn.out_proj", heads_key="encoder_attention_heads", attention="self_attn",
                   attrs=(("num_heads", "heads"),)),
)

BART_DECODER = ModelSpec(  # the decoder's self-attention heads and MLP; its cross-attention (encoder_attn) untouched
    name="bart-decoder", model_types=(), stack="decoder", layers=("decoder.layers",), hidden_key="d_model",
    mlp=MLPSpec(producers=("fc1",), consumer="fc2", size_key="decoder_ffn_dim"),
    heads=HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                   output="self_attn.out_proj", heads_key="decoder_attention_heads", attention="self_attn",
                   attrs=(("num_heads", "heads"),)))

COHERE = dict(LLAMA_STYLE, heads=replace_dataclass(LLAMA_STYLE["heads"], per_head=(  # use_qk_norm: (heads, head_dim)
    PerHeadSpec("self_attn.q_norm", "heads", flag="use_qk_norm"),
    PerHeadSpec("self_attn.k_norm", "kv_heads", flag="use_qk_norm"))))

STABLELM = dict(LLAMA_STYLE, heads=HeadSpec(  # head_dim is hidden // heads in its attention: per-layer form
    query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj", output="self_attn.o_proj",
    heads_key="num_attention_heads", kv_heads_key="num_key_value_heads", attention="self_attn",
    attrs=(("num_heads", "heads"), ("num_key_value_heads", "kv_heads"), ("num_key_value_groups", "groups")),
    per_head=(  # qk_layernorm: StableLmLayerNormPerHead, one LayerNorm per head in .norms
        PerHeadSpec("self_attn.q_layernorm", "heads", modules="norms", count_attr="num_heads", flag="qk_layernorm"),
        PerHeadSpec("self_attn.k_layernorm", "kv_heads", modules="norms", count_attr="num_heads",
                    flag="qk_layernorm"))))

_QK_NORM_SPANS_HEADS = ("its q/k norms normalise over all heads' width together, so removing a head would change "
                        "every kept head's output (the compacted model would not equal the masked one)")

PHI3 = dict(  # fused projections: gate_up_proj rows [gate | up], qkv_proj rows [q | k | v]
    layers=("layers",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("mlp.gate_up_proj",), consumer="mlp.down_proj", size_key="intermediate_size",
                segments=(2,)),
    heads=HeadSpec(query="", key="", value="", output="self_attn.o_proj", heads_key="num_attention_heads",
                   kv_heads_key="num_key_value_heads", head_dim_key="head_dim", attention="self_attn",
                   attrs=(("num_key_value_heads", "kv_heads"), ("num_key_value_groups", "groups")),
                   qkv="self_attn.qkv_proj"),
)

MODERNBERT = dict(  # fused: Wi rows [input | gate], Wqkv rows [q | k | v]
    layers=("layers",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("mlp.Wi",), consumer="mlp.Wo", size_key="intermediate_size", segments=(2,)),
    heads=HeadSpec(query="", key="", value="", output="attn.Wo", heads_key="num_attention_heads", attention="attn",
                   qkv="attn.Wqkv"),
)

GPT_NEOX = dict(  # fused query_key_value, rows [q_h k_h v_h] per head
    layers=("layers",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("mlp.dense_h_to_4h",), consumer="mlp.dense_4h_to_h", size_key="intermediate_size"),
    heads=HeadSpec(query="", key="", value="", output="attention.dense", heads_key="num_attention_heads",
                   attention="attention", qkv="attention.query_key_value", qkv_layout="per_head"),
)

GPT2 = dict(  # Conv1D layers (weights stored transposed); fused c_attn, rows [q | k | v]
    layers=("h",),
    hidden_key="n_embd",
    mlp=MLPSpec(producers=("mlp.c_fc",), consumer="mlp.c_proj", size_key="n_inner"),
    heads=HeadSpec(query="", key="", value="", output="attn.c_proj", heads_key="n_head", attention="attn",
                   attrs=(("num_heads", "heads"), ("split_size", "width")), qkv="attn.c_attn"),
)

FALCON_MLP = MLPSpec(producers=("mlp.dense_h_to_4h",), consumer="mlp.dense_4h_to_h", size_key="ffn_hidden_size")
FALCON_HEADS = dict(query="", key="", value="", output="self_attention.dense", heads_key="num_attention_heads",
                    attention="self_attention", qkv="self_attention.query_key_value",
                    attrs=(("num_heads", "heads"), ("num_kv_heads", "kv_heads")))
# Falcon's fused query_key_value follows its config (FalconAttention._split_heads); head_dim is hidden // heads
FALCON_NEW = dict(  # new_decoder_architecture (Falcon-40B/180B): per KV head [its query heads | k | v]
    layers=("h",), hidden_key="hidden_size", mlp=FALCON_MLP,
    heads=HeadSpec(**FALCON_HEADS, kv_heads_key="num_kv_heads", qkv_layout="grouped"))
FALCON_MULTI_QUERY = dict(  # multi_query (Falcon-7B): [q | k | v] with one KV head, whatever num_kv_heads says
    layers=("h",), hidden_key="hidden_size", mlp=FALCON_MLP,
    heads=HeadSpec(**FALCON_HEADS, fixed_kv_heads=1, qkv_layout="blocks"))
FALCON_PER_HEAD = dict(  # neither (Falcon-RW): [q_h k_h v_h] per head, no GQA
    layers=("h",), hidden_key="hidden_size", mlp=FALCON_MLP,
    heads=HeadSpec(**FALCON_HEADS, qkv_layout="per_head"))
FALCON_ALIBI = (("heads", "alibi", "with alibi its attention adds ALiBi biases whose slopes follow each head's index "
                                   "and the head count (build_alibi_tensor), so the kept heads of a smaller model "
                                   "would get other slopes"),)

T5_ENCODER = dict(  # the encoder stack of T5 v1.0 (DenseReluDense.wi)
    stack="encoder",
    layers=("encoder.block",),
    hidden_key="d_model",
    mlp=MLPSpec(producers=("layer.1.DenseReluDense.wi",), consumer="layer.1.DenseReluDense.wo", size_key="d_ff"),
    heads=HeadSpec(query="layer.0.SelfAttention.q", key="layer.0.SelfAttention.k", value="layer.0.SelfAttention.v",
                   output="layer.0.SelfAttention.o", heads_key="num_heads", head_dim_key="d_kv",
                   attention="layer.0.SelfAttention", attrs=(("n_heads", "heads"), ("inner_dim", "width"))),
)

T5_GATED_ENCODER = dict(T5_ENCODER, mlp=MLPSpec(  # T5 v1.1, Flan-T5, mT5: gated wi_0 (activation) and wi_1
    producers=("layer.1.DenseReluDense.wi_0", "layer.1.DenseReluDense.wi_1"), consumer="layer.1.DenseReluDense.wo",
    size_key="d_ff"))


def _t5_decoder(mlp: MLPSpec) -> ModelSpec:
    """T5's decoder stack: the encoder's MLP one sublayer later (layer.1 is the cross-attention)."""
    return ModelSpec(name="t5-decoder", model_types=(), stack="decoder", layers=("decoder.block",),
                     hidden_key="d_model", heads=T5_ENCODER["heads"],
                     mlp=replace_dataclass(mlp, consumer=mlp.consumer.replace("layer.1.", "layer.2."),
                                           producers=tuple(p.replace("layer.1.", "layer.2.") for p in mlp.producers)))


T5_HEADS = (("heads", "", "block 0 computes the relative-position bias, one column per head, and the stack passes "
                          "it to every later block, which adds column h to its own head h: exact head pruning would "
                          "need the same kept heads in every block (and the bias cut to them), which per-layer head "
                          "masks do not give"),)

MIXTRAL_STYLE = dict(LLAMA_STYLE, mlp=MLPSpec(  # experts packed as gate_up_proj (E, 2I, H), down_proj (E, H, I)
    producers=("gate_up_proj",), consumer="down_proj", size_key="intermediate_size", segments=(2,),
    experts="mlp.experts", size_attrs=(("mlp.experts", "intermediate_dim"),)))

SPECS: Dict[str, ModelSpec] = {
    "llama": ModelSpec(name="llama", model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
                                                  "gemma3_text", "granite"), **LLAMA_STYLE, hidden=LLAMA_HIDDEN,
                       hidden_per_block=LLAMA_PER_BLOCK),
    "cohere": ModelSpec(name="cohere", model_types=("cohere",), **COHERE),
    "olmo2": ModelSpec(name="olmo2", model_types=("olmo2",), **LLAMA_STYLE,
                       unsupported=(("heads", "", _QK_NORM_SPANS_HEADS),)),
    "stablelm": ModelSpec(name="stablelm", model_types=("stablelm",), **STABLELM),
    "mixtral": ModelSpec(name="mixtral", model_types=("mixtral",), **MIXTRAL_STYLE),
    "qwen3_moe": ModelSpec(name="qwen3_moe", model_types=("qwen3_moe",), **dict(MIXTRAL_STYLE, mlp=replace_dataclass(
        MIXTRAL_STYLE["mlp"], size_key="moe_intermediate_size"))),  # dense MLP blocks among them: refused
    "phi": ModelSpec(name="phi", model_types=("phi",), **PHI),
    "phi3": ModelSpec(name="phi3", model_types=("phi3",), **PHI3, heads_need_plain_config=True),
    "modernbert": ModelSpec(name="modernbert", model_types=("modernbert",), **MODERNBERT),
    "gpt_neox": ModelSpec(name="gpt_neox", model_types=("gpt_neox",), **GPT_NEOX),
    "gpt2": ModelSpec(name="gpt2", model_types=("gpt2",), **GPT2),
    "falcon-new": ModelSpec(name="falcon-new", model_types=("falcon",), **FALCON_NEW, unsupported=FALCON_ALIBI,
                            when=(("new_decoder_architecture", True),)),
    "falcon": ModelSpec(name="falcon", model_types=("falcon",), **FALCON_MULTI_QUERY, unsupported=FALCON_ALIBI,
                        when=(("new_decoder_architecture", False), ("multi_query", True))),
    "falcon-rw": ModelSpec(name="falcon-rw", model_types=("falcon",), **FALCON_PER_HEAD, unsupported=FALCON_ALIBI,
                           when=(("new_decoder_architecture", False), ("multi_query", False))),
    "opt": ModelSpec(name="opt", model_types=("opt",), **OPT),
    "bert": ModelSpec(name="bert", model_types=("bert", "roberta", "xlm-roberta", "electra"), **BERT_STYLE,
                      hidden_per_block=BERT_PER_BLOCK),
    "deberta-v2": ModelSpec(name="deberta-v2", model_types=("deberta-v2",), **DEBERTA_V2),
    "distilbert": ModelSpec(name="distilbert", model_types=("distilbert",), **DISTILBERT,
                            hidden_per_block=DISTILBERT_PER_BLOCK),
    "bart": ModelSpec(name="bart", model_types=("bart",), **BART_ENCODER, stacks=(BART_DECODER,)),
    "t5": ModelSpec(name="t5", model_types=("t5", "mt5"), **T5_ENCODER, stacks=(_t5_decoder(T5_ENCODER["mlp"]),),
                    when=(("is_gated_act", False),), unsupported=T5_HEADS),
    "t5-gated": ModelSpec(name="t5-gated", model_types=("t5", "mt5"), **T5_GATED_ENCODER,
                          stacks=(_t5_decoder(T5_GATED_ENCODER["mlp"]),), when=(("is_gated_act", True),),
                          unsupported=T5_HEADS),
}


# names the encoder-only specs had before their families' decoders were pruned too
RENAMED_SPECS = {"bart-encoder": "bart", "t5-encoder": "t5", "t5-gated-encoder": "t5-gated"}


def spec_for(model_or_config) -> ModelSpec:
    """The spec of a model (or config) by its ``config.model_type``; a clear error if there is none.

    Given a model without a spec, the error says which existing spec its module names match (one
    :func:`register_spec` call away) or that none does.
    """
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise TypeError(f"model: expected a transformers model or config with a model_type, "
                        f"got {type(model_or_config).__name__}")
    variants = [spec for spec in SPECS.values() if model_type in spec.model_types]
    for spec in variants:
        if spec.applies_to(config):
            return spec
    if variants:
        raise ValueError(f"model: the config of this {model_type!r} model matches none of its specs' conditions: "
                         + "; ".join(f"{s.name} needs {dict(s.when)}" for s in variants))
    known = sorted({t for s in SPECS.values() for t in s.model_types})
    msg = f"model: no masked_dora spec for model_type {model_type!r} (known: {known}). "
    like = matching_specs(model_or_config) if isinstance(model_or_config, nn.Module) else []
    if like:
        msg += (f"Its modules are laid out like the {like[0]!r} spec: masked_dora.register_spec({model_type!r}, "
                f"like={like[0]!r}) adds it (then check that the compacted model equals the masked one, as the "
                f"tests of the shipped families do).")
    else:
        msg += ("A spec names the block list (e.g. 'model.layers'), the MLP producers/consumer and its size key, "
                "and the attention q/k/v/o projections with their head-count keys: masked_dora.register_spec("
                f"{model_type!r}, spec=ModelSpec(...)). A fused q/k/v or gate/up projection is expressible "
                "(MLPSpec(segments=...), "
                "HeadSpec(qkv=..., qkv_layout=...)), as are GPT-2's Conv1D layers and MoE experts packed into 3-D "
                "parameters (MLPSpec(experts=...), see the 'mixtral' spec).")
    raise ValueError(msg)


def matching_specs(model: nn.Module) -> list:
    """Names of the registered specs whose block list and group modules (all ``nn.Linear``) ``model`` has."""
    from .blocks import block_modules, find_layers, is_conv1d, packed_experts

    names = []
    for name, spec in SPECS.items():
        try:
            _, layers = find_layers(model, spec)
            kinds = BLOCK_KINDS
            if spec.mlp.experts and len(layers):  # packed expert parameters, not modules, before prepare_model
                packed_experts(layers[0], spec)
                kinds = ("heads",)
            mods = block_modules(layers[0], spec, kinds) if len(layers) else {}
        except ValueError:
            continue
        if mods and all(isinstance(m, nn.Linear) or is_conv1d(m) for roles in mods.values() for m in roles.values()):
            names.append(name)
    return names


def register_spec(model_type: str, like: Optional[str] = None, spec: Optional[ModelSpec] = None,
                  *, replace: bool = False) -> ModelSpec:
    """Teach masked_dora a model family: ``like=`` an existing spec's name (the family's module names and
    config keys are that spec's), or a full ``spec=ModelSpec(...)``. Returns the registered spec.

    ``model_type`` is the config's ``model_type``. A type that already has a spec is refused unless
    ``replace=True``. The registration lasts for the process (call it before ``prepare_model`` and before
    ``load_compact``).
    """
    if not isinstance(model_type, str) or not model_type:
        raise TypeError(f"model_type: expected a non-empty str, got {model_type!r}")
    if (like is None) == (spec is None):
        raise ValueError("register_spec: give exactly one of like= (an existing spec's name) or spec= (a ModelSpec)")
    if like is not None:
        if like in RENAMED_SPECS:
            import warnings

            warnings.warn(f"like: the spec {like!r} is now {RENAMED_SPECS[like]!r} (it prunes the decoder stack too; "
                          f"MaskedDoRAConfig(stacks=('encoder',)) prunes the encoder alone)", DeprecationWarning,
                          stacklevel=2)
            like = RENAMED_SPECS[like]
        if like not in SPECS:
            raise ValueError(f"like: expected one of {sorted(SPECS)}, got {like!r}")
        spec = replace_dataclass(SPECS[like], name=model_type, model_types=(model_type,))
    elif not isinstance(spec, ModelSpec):
        raise TypeError(f"spec: expected a ModelSpec, got {type(spec).__name__}")
    elif model_type not in spec.model_types:
        spec = replace_dataclass(spec, model_types=tuple(spec.model_types) + (model_type,))
    owners = [n for n, s in SPECS.items() if model_type in s.model_types]  # several where configs pick a variant
    if owners and not replace:
        raise ValueError(f"model_type: {model_type!r} already has the spec {' / '.join(owners)}; pass replace=True "
                         f"to override it")
    for owner in owners:
        old = SPECS[owner]
        SPECS[owner] = replace_dataclass(old, model_types=tuple(t for t in old.model_types if t != model_type))
    if spec.name in SPECS and spec.name not in owners and not replace:
        raise ValueError(f"spec.name: {spec.name!r} is already registered; pick another name or replace=True")
    SPECS[spec.name] = spec
    return spec
