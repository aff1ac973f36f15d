"""Declarative specs: which modules of a model family form which coupled pruning group.

A spec names, relative to one transformer block, the producers (layers whose
output rows a group removes) and the consumer (the layer whose input columns
go with them), the config keys that hold the group's size, and the module
attributes that must follow a per-layer size change. Nothing here is code per
model: adding a family is adding a table entry (``SPECS`` in :mod:`masked_dora.models.families`).
:mod:`masked_dora.models.blocks` reads a spec against a model (its blocks, each group's member modules, the head
layout).

Groups (DESIGN.md, "Coupled structure"); besides these two per-block kinds, ``hidden`` (the residual stream:
one group, ``HiddenSpec``, :mod:`~masked_dora.models.hidden`; or one per block, ``PerBlockHiddenSpec``):

* ``mlp``: one channel of the MLP's inner width; rows of ``producers``
  (``gate_proj``/``up_proj``, ``fc1``/``intermediate.dense``), columns of the
  ``consumer`` (``down_proj``/``output.dense``). A pruned channel is exactly 0 at
  the consumer's input because every producer is gated and the activations of
  these families map 0 to 0 (SiLU, GELU, ReLU); where one does not (Apertus's xIELU),
  ``MLPSpec.gate_consumer_input`` gates the consumer's input too.
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
from typing import Optional, Tuple

from .hidden_spec import HIDDEN_UNCOVERED, PER_BLOCK_UNCOVERED, HiddenSpec, PerBlockHiddenSpec
from .stage_spec import StageConfig, StagesSpec

GROUP_KINDS = ("mlp", "heads", "hidden")
BLOCK_KINDS = ("mlp", "heads")  # the kinds with one group per block (``hidden``: one group for the model)
QKV_LAYOUTS = ("blocks", "grouped", "per_head", "chunked")


EXPERT_GLUS = ("act", "clamped_swiglu", "clamped_act", "act_clamped", "act_pair")


@dataclass(frozen=True)
class ExpertsLayout:
    """How an MoE experts module stores its packed parameters, and how an expert combines gate and up.

    The default is Mixtral's: ``gate_up_proj`` (experts, 2I, H) with rows [gate | up], ``down_proj`` (experts, H,
    I), no bias, ``act_fn(gate) * up``. gpt-oss stores them transposed, ``(experts, in, out)``, its gate and up
    outputs interleaved (gate of channel c at 2c, up at 2c + 1), a bias ``<name>_bias`` (experts, out) beside each,
    and combines them with a clamped SwiGLU. A pruned channel's gate and up outputs are both gated to exactly 0
    (bias included), and every ``glu`` here maps (0, 0) to 0, so the channel adds nothing at ``down_proj``.

    DBRX stores each projection as a 2-D parameter of the experts' matrices stacked (``flat``: (E * I, H)), the gate
    rows (``w1``) and the up rows (``up``: ``v1``) in parameters of their own, and the down projection as the
    transpose of each expert's (``down_transposed``: ``w2`` (E * I, H), each expert's (in, out)). Parameter names
    may be dotted paths below the experts module (``mlp.w1``).
    """

    transposed: bool = False  # packed (experts, in, out) (gpt_oss, llama4), not (experts, out, in)
    interleaved: bool = False  # gate/up outputs alternate per channel (gpt_oss), not [gate | up]
    bias: bool = False  # a "<parameter>_bias" (experts, out) beside each packed parameter (gpt_oss)
    # "act": the module's act_fn(gate) * up; "clamped_swiglu": gpt-oss's (clamp(up, +-limit) + 1) * g * sigmoid(
    # alpha * g) with g = clamp(gate, max=limit), alpha and limit read from the module's attributes of those names;
    # "clamped_act": DeepSeek-V4's act_fn(clamp(gate, max=limit)) * clamp(up, +-limit), limit read from the module's
    # attribute limit_attr and act_fn from its act_fn or, where its forward hard-codes one (HY-V4's F.silu), from
    # transformers' ACT2FN[act]; "act_clamped": Step-3.7's clamp(act_fn(gate), max=limit) * clamp(up, +-limit) (the
    # activated gate clipped), limit and act_fn read as for "clamped_act"
    # "act_pair": the module's act_fn(gate, up), which combines them itself (Inkling 2's softcapped SwiGLU,
    # softcap(g) * sigmoid(g) * softcap(up): (0, 0) -> 0)
    glu: str = "act"
    flat: bool = False  # each parameter 2-D, the experts' matrices stacked along dim 0 (DBRX: (E * I, H))
    up: str = ""  # the up rows' own parameter (DBRX's "mlp.v1"), the producer holding the gate rows only
    down_transposed: bool = False  # the consumer alone stored (in, out) per expert (DBRX's w2)
    act_fn: str = "act_fn"  # the experts module's activation (glu="act", "act_pair", "clamped_act"...), a dotted path
    limit_attr: str = "limit"
    act: str = ""
    # glu="clamped_swiglu": the module's attribute holding alpha (gpt-oss's alpha; MiniMax-M3's swiglu_alpha)
    alpha_attr: str = "alpha"

    def __post_init__(self):
        if self.glu not in EXPERT_GLUS:
            raise ValueError(f"ExpertsLayout.glu: expected one of {EXPERT_GLUS}, got {self.glu!r}")
        if (self.flat or self.up or self.down_transposed) and (self.bias or self.interleaved or self.transposed):
            raise ValueError("ExpertsLayout: flat, up and down_transposed describe DBRX's layout (no bias, gate and up "
                             "in parameters of their own, gate/up stored (out, in)); they do not combine with bias, "
                             "interleaved or transposed")
        if self.glu not in ("clamped_act", "act_clamped") and (self.act or self.limit_attr != "limit"):
            raise ValueError(f"ExpertsLayout: act and limit_attr describe glu='clamped_act', got glu={self.glu!r} "
                             f"(and glu='act_clamped')")
        if self.glu != "clamped_swiglu" and self.alpha_attr != "alpha":
            raise ValueError(f"ExpertsLayout: alpha_attr describes glu='clamped_swiglu', got glu={self.glu!r}")
        if self.glu == "clamped_swiglu" and self.act_fn != "act_fn":
            raise ValueError(f"ExpertsLayout: glu='clamped_swiglu' computes gpt-oss's (clamp(up) + 1) * g * sigmoid("
                             f"alpha * g) itself and reads no act_fn, got act_fn={self.act_fn!r}")


@dataclass(frozen=True)
class MLPSpec:
    """The MLP channel group of one block (module paths relative to the block)."""

    producers: Tuple[str, ...]
    consumer: str
    # config key of the inner width; "": none says this width alone (BLOOM's blocks fix it at 4 * hidden; DeepSeek-V3's
    # moe_intermediate_size also sizes its shared experts), so a pruned MLP saves in the per-layer form
    size_key: str
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
    # the activation does not map 0 to 0 (Apertus's xIELU: alpha_n * expm1(-1e-6), about -8e-7), so a gated
    # channel would still feed the consumer: prepare_model also multiplies the consumer's input by the group's
    # mask (an InputGate, as query heads at the output under gqa="query_heads"), and the masked model equals the
    # compacted one
    gate_consumer_input: bool = False
    # how the experts module stores its packed parameters (transposed, interleaved gate/up, biases) and combines
    # gate and up (with experts only)
    experts_layout: ExpertsLayout = ExpertsLayout()
    # the MLP is in some blocks only (a hybrid's MLP blocks among its mixer blocks: NemotronH's "mlp" blocks, whose
    # mixer is the MLP; Jamba's dense blocks among its MoE ones): a block where neither the producers nor the
    # consumer exist has no MLP group, keeps what it holds and reports an MLP width of 0
    # (:func:`masked_dora.models.blocks.holds_spec_mlp`); one that has only some of them is an error
    in_some_blocks: bool = False
    # size_key holds a list, one width per block of the stack (Gemma 3n's intermediate_size, which each block's MLP
    # reads at its layer index): a plain config says every block's pruned width there, so the blocks need not keep
    # the same one
    size_per_layer: bool = False
    # depthwise convolutions between the producers and the consumer (SegFormer's and PVT v2's Mix-FFN: fc1, a 3 x 3
    # convolution with one filter per channel, the activation, fc2), paths relative to the block: channel c of the
    # group is the convolution's channel c, so a pruned channel's filter and bias go with it (compaction cuts
    # them, and the convolution's channel counts and groups, to the kept channels). Its bias turns a gated channel's
    # zeros into a constant, so such an MLP also gates the consumer's input (gate_consumer_input)
    depthwise: Tuple[str, ...] = ()

    def __post_init__(self):
        if self.depthwise and (self.experts or not self.gate_consumer_input or any(n != 1 for n in self.segments)):
            raise ValueError(f"MLPSpec: depthwise convolutions {self.depthwise} sit between one-segment producers "
                             f"and the consumer of a dense MLP and need gate_consumer_input=True (a convolution's "
                             f"bias makes a gated channel non-zero); got experts={self.experts!r}, "
                             f"gate_consumer_input={self.gate_consumer_input}, segments={self.segments}")
        if self.size_per_layer and not self.size_key:
            raise ValueError("MLPSpec: size_per_layer says size_key holds a width per block; it needs a size_key")
        if self.in_some_blocks and self.experts:
            raise ValueError("MLPSpec: in_some_blocks is supported for a dense MLP, not with experts")
        if self.experts and (len(self.producers) != 1 or self.segments != (2,)):
            raise ValueError("MLPSpec: experts are supported as one packed [gate | up] producer (producers=(name,), "
                             f"segments=(2,)) and a packed down projection, got producers={self.producers}, "
                             f"segments={self.segments}")
        if not self.experts and self.experts_layout != ExpertsLayout():
            raise ValueError("MLPSpec: experts_layout describes packed experts; it needs experts=...")
        if self.experts and self.gate_consumer_input:
            raise ValueError("MLPSpec: gate_consumer_input is supported for a dense MLP, not with experts")

    def segments_of(self, producer_index: int) -> int:
        return self.segments[producer_index] if self.segments else 1


HEAD_COUNTS = ("heads", "kv_heads")


@dataclass(frozen=True)
class PerHeadSpec:
    """A module of one block holding parameters per attention head (paths relative to the block).

    ``follows``: ``"heads"`` (one entry per query head, e.g. a query norm) or ``"kv_heads"`` (a key norm).
    Without ``modules``, every parameter of the module at ``path`` has the head as dim ``dim`` (Cohere's q/k
    LayerNorm weight, ``(heads, head_dim)``: 0; UMT5's per-layer ``relative_attention_bias`` embedding,
    ``(buckets, heads)``: 1); with it, ``modules`` names the module's ``ModuleList`` of one module per head
    (StableLM's ``StableLmLayerNormPerHead.norms``). ``head_rows``: dim ``dim`` holds ``head_dim`` entries per head,
    in head order (a projection whose output rows come in head-sized blocks as q/k/v's: Wav2Vec2-Conformer's
    ``linear_pos``, which projects the relative position embeddings per head). ``count_attr``: the module's
    attribute holding the head count (``num_heads``; an ``nn.Embedding``'s ``embedding_dim``), if any. ``flag``: the
    config flag under which the family builds the module (``""``: always; ``"key=value"``: where the config's
    ``key`` is the string ``value``, as the conformer's ``position_embeddings_type="relative"``).

    Only the module's own parameters are cut (not its submodules'): ``path="self_attn"`` names the parameters the
    attention holds directly (the conformer's ``pos_bias_u`` / ``pos_bias_v``, ``(heads, head_dim)``).
    """

    path: str
    follows: str
    modules: str = ""
    count_attr: str = ""
    flag: str = ""
    dim: int = 0
    head_rows: bool = False

    def __post_init__(self):
        if self.follows not in HEAD_COUNTS:
            raise ValueError(f"PerHeadSpec.follows: expected one of {HEAD_COUNTS}, got {self.follows!r}")
        if self.dim < 0 or (self.dim and self.modules):
            raise ValueError(f"PerHeadSpec.dim: expected a dim >= 0 of the parameters (0 with modules), got {self.dim}")
        if self.head_rows and self.modules:
            raise ValueError("PerHeadSpec.head_rows: describes a parameter's dim, not a ModuleList (modules)")

    def built_by(self, config) -> bool:
        """Whether a model with ``config`` has this module."""
        if "=" in self.flag:
            key, _, value = self.flag.partition("=")
            return str(getattr(config, key, None)) == value
        return not self.flag or bool(getattr(config, self.flag, False))

    def entries_per_head(self, head_dim: int) -> int:
        """How many entries of dim ``dim`` one head holds."""
        return head_dim if self.head_rows else 1


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
    # Falcon-40B's new decoder architecture), "per_head" ([q_h k_h v_h] per head, GPT-NeoX, Falcon-RW; no GQA) or
    # "chunked" (qkv_chunks equal chunks, each the q, k and v rows (in any order) of its own run of heads: CodeGen's
    # mp_num=4 [q | v | k]; no GQA): the attention splits the rows into that many chunks, so the heads prune as
    # qkv_chunks partitions that keep the same count each
    qkv: str = ""
    qkv_layout: str = "blocks"
    qkv_chunks: int = 0
    head_dim_key: Optional[str] = None  # config key of an explicit head size (None: hidden // heads)
    # config key of the output projection's input width where the attention builds it from that key, not from
    # heads * head_dim (Helium: hidden_size): a config cannot describe pruned heads then (the per-layer form)
    output_width_key: Optional[str] = None
    attention: str = ""  # path of the attention module whose attributes follow the head counts
    # attribute -> quantity, quantity one of "heads", "kv_heads", "groups" (heads per KV head), "width"; a dotted
    # "owner.attribute" is set on the attention's own copy of its ``owner`` (Moonshine's "config.num_key_value_heads":
    # its forward reads the count from a config shared by every attention of the model)
    attrs: Tuple[Tuple[str, str], ...] = ()
    # modules holding parameters per head (q/k norms), which compaction cuts to the kept heads
    per_head: Tuple[PerHeadSpec, ...] = ()
    # a decoder's cross-attention whose head count ``heads_key`` also sets (T5's layer.1.EncDecAttention): it
    # keeps every head, so pruned heads need the per-layer form even where the config has a head size
    cross_attention: str = ""

    def __post_init__(self):
        if self.qkv and self.per_head:
            raise ValueError("HeadSpec: per_head modules with a fused qkv projection are not supported")
        if (self.qkv_layout == "chunked") != (self.qkv_chunks > 0) or (self.qkv_chunks and not self.qkv):
            raise ValueError(f"HeadSpec: qkv_layout='chunked' needs a fused qkv and qkv_chunks >= 1, and qkv_chunks "
                             f"goes with it only; got qkv={self.qkv!r}, qkv_layout={self.qkv_layout!r}, "
                             f"qkv_chunks={self.qkv_chunks}")

    @property
    def partitions(self) -> int:
        """Equal parts of the heads that each keep the same count (the chunks of a "chunked" qkv; else 1)."""
        return self.qkv_chunks or 1


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
    # or the model's config sets it truthy (prepare_model raises before anything changes). A flag may be
    # "!name" (refused when the config's name is false or missing), "name=value" (refused when the config's name,
    # as a string, is value: Molmo2's qk_norm_type=olmo), "name!=value" (when it is not: ALBERT's
    # num_hidden_groups!=1), and terms joined by "&" must all hold
    # ("relative_attention&!share_att_key")
    unsupported: Tuple[Tuple[str, str, str], ...] = ()
    # groups some blocks cannot prune exactly: (kind, attributes, reason), an attribute a dotted path from the block
    # ("mlp.activation_sparsity": the block's mlp module's; "self_attn.config.num_kv_shared_layers": its attention's
    # config's), several joined by "&"; a block where they are all truthy keeps that kind whole (no group, nothing
    # wrapped, its full size), the other blocks prune it
    # (:func:`masked_dora.models.blocks.holds_group`). Read from the built modules, so it follows what each block
    # was built to do (Gemma 3n: the layers whose MLP is sparse, whose attention reuses or stores the keys and
    # values that KV sharing passes on); a kind every targeted block refuses is refused for the model
    block_refusals: Tuple[Tuple[str, str, str], ...] = ()
    # the attention reads its head counts from the model config (Phi-3), so pruned heads need the plain form
    heads_need_plain_config: bool = False
    # config values this spec needs, for a model_type whose module layout follows its config (T5 v1.0's
    # DenseReluDense.wi vs v1.1's gated wi_0/wi_1): ((config attribute, value), ...); the first spec of the
    # model_type whose conditions all hold is the one used
    when: Tuple[Tuple[str, object], ...] = ()
    # module paths, relative to a block of the first stack, that a model of this spec has: for a model_type whose
    # module names changed between transformers releases with the same config (DINOv2's attention.attention.query
    # became attention.q_proj), spec_for(model) uses the first spec whose conditions hold and whose modules the
    # model has; given a config alone it cannot look, and takes the first whose conditions hold
    when_modules: Tuple[str, ...] = ()
    # an encoder-decoder: this spec's stack of blocks is ``stack`` ("encoder"), and ``stacks`` are the family's
    # further ones ("decoder"), each a ModelSpec of its own block list, groups and size keys (their ``stack``,
    # ``layers``, ``hidden_key``, ``mlp``, ``heads`` and ``unsupported`` are read: a kind one stack refuses is
    # refused for the model); a further stack the model lacks (T5EncoderModel has no decoder) is skipped. Two
    # stacks may share a size key (T5's d_ff): then the plain form needs them to keep the same size. Other uses: a
    # two-tower model's "text" and "vision" stacks (CLIPModel; each its own text_config), and a block with two MLPs
    # as two stacks over the same block list, one MLP each (Wav2Vec2-Conformer's "ffn1" and "ffn2"; the second
    # says attention_of="ffn1": the first stack's head groups prune the blocks' attention)
    stack: str = ""
    stacks: Tuple["ModelSpec", ...] = ()
    # the residual stream, for "hidden" pruning (None: refused): hidden_mode="global" and "per_block"
    hidden: Optional[HiddenSpec] = None
    hidden_per_block: Optional[PerBlockHiddenSpec] = None
    # an MoE family (mlp.experts) whose config puts dense MLP blocks among the expert ones (DeepSeek-V3's
    # first_k_dense_replace): their MLP, a group of its own size key; such a block's spec is this one with
    # mlp=dense_mlp (:func:`masked_dora.models.blocks.block_spec`). None: the MLP of such blocks is refused
    dense_mlp: Optional[MLPSpec] = None
    # the attention of the blocks that lack ``heads``'s modules, at other paths (Mllama's cross-attention decoder
    # layers among its self-attention ones: cross_attn.q_proj, ...), with the same config keys: such a block's spec is
    # this one with heads=heads_elsewhere (:func:`masked_dora.models.blocks.block_spec`). None: every block has
    # ``heads``'s modules
    heads_elsewhere: Optional[HeadSpec] = None
    # a language model inside a multimodal model (a VLM; :class:`WrapperSpec`): the model config's attribute that
    # holds the language model's config, where this spec's keys (sizes, head counts, flags) are read and the
    # compacted sizes written; "": the model config itself. Each stack reads its own: a two-tower CLIPModel's
    # text stack "text_config", its vision stack "vision_config"; a dotted path for a config nested deeper (T5Gemma
    # 2's encoder stack: "encoder.text_config")
    text_config: str = ""
    # a stack over the same blocks as the stack of this name (Wav2Vec2-Conformer's "ffn2" over "ffn1": a block with
    # two MLPs): their attention is that stack's, whose head groups prune it, so this stack has none (its blocks'
    # attention is not read through it); "": a stack of its own blocks
    attention_of: str = ""
    # a hierarchical encoder (Swin): one stack per stage of its config, each with its own block list and sizes
    # (:mod:`masked_dora.models.stage_spec`); spec_for expands the family's spec for the model's stage count, and
    # each stage's keys are read through its StageConfig. ``layers`` and ``stacks`` then come from the expansion
    stages: Optional[StagesSpec] = None

    def __post_init__(self):
        bad = [(kind, attr) for kind, attr, _ in self.block_refusals if kind not in BLOCK_KINDS or not attr]
        if bad:
            raise ValueError(f"ModelSpec {self.name!r}: block_refusals names a kind of {BLOCK_KINDS} and a block's "
                             f"module attribute, got {bad}")
        if self.stages is not None and self.stages.index < 0 and self.stacks:
            raise ValueError(f"ModelSpec {self.name!r}: a spec with stages gets one stack per stage from the config; "
                             f"it cannot have further stacks, got {[s.stack for s in self.stacks]}")
        if self.dense_mlp is not None and (not self.mlp.experts or self.dense_mlp.experts):
            raise ValueError(f"ModelSpec {self.name!r}: dense_mlp is the dense MLP of an MoE family's other blocks: "
                             f"expected mlp with experts and dense_mlp without, got mlp.experts={self.mlp.experts!r}, "
                             f"dense_mlp.experts={self.dense_mlp.experts!r}")
        owners = {s.stack: s.layers for s in (self,) + tuple(self.stacks)}
        for s in self.stacks:  # (a further stack checked in the spec that holds it)
            if s.attention_of and owners.get(s.attention_of, ()) != s.layers:
                raise ValueError(f"ModelSpec {self.name!r}: the stack {s.stack!r} has attention_of="
                                 f"{s.attention_of!r}, which names no stack of this spec over the same blocks "
                                 f"({list(s.layers)}); stacks: {sorted(owners)}")
        elsewhere = self.heads_elsewhere
        if elsewhere is not None and (self.heads.qkv or elsewhere.qkv
                                      or _head_keys(elsewhere) != _head_keys(self.heads)):
            raise ValueError(f"ModelSpec {self.name!r}: heads_elsewhere is the same attention at other paths: "
                             f"separate q/k/v projections and the heads' config keys, got heads={self.heads}, "
                             f"heads_elsewhere={elsewhere}")

    def applies_to(self, config) -> bool:
        return all(getattr(config, key, None) == value for key, value in self.when)

    def sized_config(self, config):
        """The config holding this spec's keys: ``config.<text_config>`` for a VLM's language model (given that
        text config itself, or without a ``text_config``: ``config``); for one stage of a hierarchical encoder, that
        config as the stage sees it (:class:`~masked_dora.models.stage_spec.StageConfig`)."""
        for name in self.text_config.split(".") if self.text_config else ():  # (T5Gemma 2: "encoder.text_config")
            config = getattr(config, name, config)
        if self.stages is not None and self.stages.index >= 0 and not isinstance(config, StageConfig):
            return StageConfig(config, self.stages)  # (one stage of a hierarchical encoder: its own sizes)
        return config

    def listed_refusal(self, kind: str, config) -> Optional[str]:
        """Why ``unsupported`` refuses ``kind`` for a model with ``config`` (``None``: it does not)."""
        config = self.sized_config(config)
        for k, flag, reason in self.unsupported:
            if k == kind and (not flag or all(_flag_term_holds(config, term) for term in flag.split("&"))):
                return reason
        return None

    def refusal(self, kind: str, config, hidden_mode: str = "global") -> Optional[str]:
        """Why ``kind`` cannot be pruned in a model with ``config`` (``None``: it can); ``hidden_mode``: for
        ``kind="hidden"``, the mode asked for."""
        listed = self.listed_refusal(kind, config)
        if listed is not None:
            return listed
        model_type = getattr(self.sized_config(config), "model_type", "")
        if kind == "hidden" and hidden_mode == "per_block":
            spec = self.hidden_per_block
            return PER_BLOCK_UNCOVERED if spec is None else spec.refusal(model_type)
        if kind == "hidden":
            return HIDDEN_UNCOVERED if self.hidden is None else self.hidden.refusal(model_type)
        return None


def _head_keys(heads: HeadSpec) -> Tuple[str, Optional[str], Optional[str]]:
    """The config keys of a head spec's head counts and head size."""
    return heads.heads_key, heads.kv_heads_key, heads.head_dim_key


def _flag_term_holds(config, term: str) -> bool:
    """One term of an ``unsupported`` flag: ``name`` holds where the config sets it truthy, ``!name`` where it
    is false or missing, ``name=value`` where it is ``value`` (compared as strings: a flag names a layout that a
    string config key selects, Molmo2's ``qk_norm_type``), ``name!=value`` where it is not (ALBERT's
    ``num_hidden_groups!=1``: any other count of layer groups)."""
    if "!=" in term:
        name, value = term.split("!=", 1)
        return str(getattr(config, name, None)) != value
    if "=" in term:
        name, value = term.split("=", 1)
        return str(getattr(config, name, None)) == value
    if term.startswith("!"):
        return not getattr(config, term[1:], False)
    return bool(getattr(config, term, False))
