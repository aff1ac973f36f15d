"""Family specs of image and speech encoders (ViT, DeiT, ViT-MSN, I-JEPA, BEiT, data2vec-vision, DINOv2, CLIP /
SigLIP / MetaCLIP 2 towers and two-tower models, Wav2Vec2, HuBERT, data2vec-audio, SEW, UniSpeech(-SAT), WavLM,
Wav2Vec2-Conformer, and the hierarchical Swin, Swin V2, Donut-Swin, MaskFormer-Swin, SegFormer, PVT and PVT v2, one
stack per stage; SEW-D is DeBERTa-v2's), merged into the shipped table (:data:`masked_dora.models.families.SPECS`).
Whisper's encoder-decoder has BART's modules and keys: it is in the ``bart`` spec of that table. Moonshine's
encoder-decoder
(raw audio, rotary attention, a gated decoder MLP) is here.

Their blocks are a text encoder's (pre- or post-LN attention and a two-layer MLP); only the model's input differs
(``pixel_values``, ``input_values``), which the specs never see. Most of these attentions hold nothing per head
besides the q/k/v rows and the output columns (no relative-position table, no per-head scale), so heads prune
exactly; each reads its head size from ``hidden_size // heads`` (ViT and DeiT: ``getattr(config, "head_dim", ...)``).
BEiT's and data2vec-vision's relative-position bias tables hold one column per head: cut per head (``per_head``).
WavLM's attention (F.multi_head_attention_forward on its projections' weights, a gated relative-position bias per
head) does not: its heads are refused. The conformer's relative position terms are cut per head (``per_head``).
"""

from __future__ import annotations

from dataclasses import replace as replace_dataclass
from typing import Dict

from .spec_types import HeadSpec, MLPSpec, ModelSpec, PerHeadSpec, StagesSpec

# ViT, DeiT (transformers >= 5.17): ``layers`` of attention.q/k/v/o_proj and mlp.fc1/fc2. Their attention takes
# head_dim from the config when it has one (else hidden_size // heads), so pruned heads save as a plain checkpoint
# whose config gets head_dim
VIT = dict(
    layers=("layers",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("mlp.fc1",), consumer="mlp.fc2", size_key="intermediate_size"),
    heads=HeadSpec(query="attention.q_proj", key="attention.k_proj", value="attention.v_proj",
                   output="attention.o_proj", heads_key="num_attention_heads", head_dim_key="head_dim",
                   attention="attention", attrs=(("num_attention_heads", "heads"),)),
)

# BEiT (transformers >= 5.17: ViT's module names and head_dim from the config) and data2vec-vision (BERT's layout
# under attention.attention, head size hidden_size // heads: pruned heads save per layer). With
# use_relative_position_bias each block's relative_position_bias_table is (distances, heads): its columns follow the
# heads (a kept head reads only its own column). The layer scales lambda_1 / lambda_2 are over the hidden size, after
# the attention output and the MLP: they do not see pruned units. A bias shared by every block
# (use_shared_relative_position_bias, BEiT's pre-training checkpoints) is added to every block's attention scores with
# num_attention_heads columns: one per-block count of heads cannot follow it
SHARED_RELATIVE_BIAS = (("heads", "use_shared_relative_position_bias",
                         "use_shared_relative_position_bias: one relative-position bias table (a column per head) is "
                         "added to every block's attention scores, so no block can keep fewer heads than the config's "
                         "num_attention_heads (fine-tuned checkpoints use per-block tables: "
                         "use_relative_position_bias)"),)
BEIT = dict(VIT, heads=replace_dataclass(VIT["heads"], per_head=(
    PerHeadSpec("relative_position_bias", "heads", dim=1, flag="use_relative_position_bias"),)))
DATA2VEC_VISION = dict(
    layers=("encoder.layer",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("intermediate.dense",), consumer="output.dense", size_key="intermediate_size"),
    heads=HeadSpec(query="attention.attention.query", key="attention.attention.key",
                   value="attention.attention.value", output="attention.output.dense",
                   heads_key="num_attention_heads", attention="attention.attention",
                   attrs=(("num_attention_heads", "heads"), ("all_head_size", "width")),
                   per_head=(PerHeadSpec("attention.attention.relative_position_bias", "heads", dim=1,
                                         flag="use_relative_position_bias"),)),
)

# CLIP's and SigLIP's towers (CLIPVisionModel, CLIPTextModel, SiglipVisionModel, ...): encoder.layers of
# self_attn.q/k/v/out_proj and mlp.fc1/fc2; head_dim is hidden_size // heads (pruned heads: the per-layer form)
CLIP_TOWER = dict(
    layers=("encoder.layers",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("mlp.fc1",), consumer="mlp.fc2", size_key="intermediate_size"),
    heads=HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                   output="self_attn.out_proj", heads_key="num_attention_heads", attention="self_attn",
                   attrs=(("num_heads", "heads"),)),
)
# SiglipVisionModel's attention-pooling head (vision_use_head, on by default) builds its own MLP
# intermediate_size wide (and its nn.MultiheadAttention num_attention_heads wide): the key does not say the encoder's
# MLP width alone, so a pruned MLP saves in the per-layer form (the head keeps its sizes)
SIGLIP_VISION = dict(CLIP_TOWER, mlp=MLPSpec(producers=("mlp.fc1",), consumer="mlp.fc2", size_key=""))

# Wav2Vec2, HuBERT, UniSpeech, UniSpeech-SAT (and their stable-layer-norm variants, the same module names):
# encoder.layers of attention.q/k/v/out_proj and feed_forward.intermediate_dense/output_dense; the convolutional
# feature encoder, the positional convolution and the task heads (which read the hidden size) are not pruned
WAV2VEC2 = dict(
    layers=("encoder.layers",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("feed_forward.intermediate_dense",), consumer="feed_forward.output_dense",
                size_key="intermediate_size"),
    heads=HeadSpec(query="attention.q_proj", key="attention.k_proj", value="attention.v_proj",
                   output="attention.out_proj", heads_key="num_attention_heads", attention="attention",
                   attrs=(("num_heads", "heads"),)),
)

# WavLM: Wav2Vec2's module names, but its attention is not Wav2Vec2's. It hands q/k/v_proj's and out_proj's weights
# and biases to F.multi_head_attention_forward (use_separate_proj_weight) instead of calling the modules, so a wrapped
# projection's gates and DoRA adapter would never run (the masked model would ignore its head masks), and that
# function views q/k/v as embed_dim (hidden_size) wide, so a compacted attention fails. And its gated
# relative-position bias slices the block's input per head, which no head count but the config's keeps
WAVLM_HEADS = (("heads", "", "its attention passes the q/k/v/out projections' weights to "
                             "F.multi_head_attention_forward instead of calling them (a masked projection's gates and "
                             "adapter would never run) and that function needs q/k/v as wide as hidden_size; and its "
                             "gated relative-position bias splits each block's input (hidden_size wide, which head "
                             "pruning keeps) into num_attention_heads slices, one per head's gate "
                             "(gru_rel_pos_linear), and the first block's bias is shared by every block: fewer heads "
                             "would change every kept head's gate"),)

# Wav2Vec2-Conformer: a conformer block holds two feed-forward modules (ffn1 before the attention, ffn2 after the
# convolution module), both intermediate_size wide. A spec has one MLP per block, so the family is two stacks
# over the same block list, the first pruning ffn1 and the attention's heads, the second ffn2 alone
# (ModelSpec.attention_of: its blocks' attention is the ffn1 stack's); uniform pruning keeps one MLP width in both,
# as their shared key needs. Heads prune exactly with every position_embeddings_type:
# * "relative" (the default): linear_pos projects the relative position embeddings into head-sized row blocks, as
#   the key; pos_bias_u / pos_bias_v hold a (head_dim) row per head, parameters of the attention itself. A kept
#   head reads only its own rows of them; a pruned head's values are gated (zero), so what its position terms
#   make never reaches the output; compaction cuts all three to the kept heads (per_head entries).
# * "rotary": the rotation applies to the attention's input (hidden_size, which head pruning keeps), viewed as
#   num_attention_heads x head_size before linear_q / linear_k; the attention keeps num_heads as the config says
#   (no attrs: it views q/k/v by head_size, -1 heads), so the rotation stays the original one.
# The attention derives head_size from hidden_size // num_attention_heads: pruned heads save per layer
CONFORMER_HEAD_SPEC = HeadSpec(query="self_attn.linear_q", key="self_attn.linear_k", value="self_attn.linear_v",
                               output="self_attn.linear_out", heads_key="num_attention_heads", attention="self_attn",
                               per_head=(PerHeadSpec("self_attn.linear_pos", "heads", head_rows=True,
                                                     flag="position_embeddings_type=relative"),
                                         PerHeadSpec("self_attn", "heads",
                                                     flag="position_embeddings_type=relative")))


def _conformer(name: str = "wav2vec2-conformer", model_type: str = "wav2vec2-conformer",
               size_key: str = "intermediate_size", when=()) -> ModelSpec:
    def ffn(stack: str) -> dict:
        return dict(layers=("encoder.layers",), hidden_key="hidden_size", stack=stack, heads=CONFORMER_HEAD_SPEC,
                    mlp=MLPSpec(producers=(f"{stack}.intermediate_dense",), consumer=f"{stack}.output_dense",
                                size_key=size_key))

    return ModelSpec(name=name, model_types=(model_type,), **ffn("ffn1"), when=when,
                     stacks=(ModelSpec(name=f"{name}-ffn2", model_types=(), attention_of="ffn1", **ffn("ffn2")),))


# Wav2Vec2-BERT (Wav2Vec2BertModel, Wav2Vec2BertForCTC, ...): the conformer's blocks and module names over log-mel
# frames (feature_projection), one more position type, "relative_key" (its default): a distance_embedding of
# head_size entries per distance, the same for every head, so a kept head reads what it read. Its optional adapter
# (add_adapter: strided convolutions and layers of their own, adapter.layers, kept whole) and the feed-forward
# before it (use_intermediate_ffn_before_adapter) are also intermediate_size wide, and the adapter's attention has
# num_attention_heads: with an adapter a pruned MLP saves in the per-layer form (size_key "")
_NO_W2V_BERT_ADAPTER = (("add_adapter", False), ("use_intermediate_ffn_before_adapter", False))
WAV2VEC2_BERT = {spec.name: spec for spec in (
    _conformer("wav2vec2-bert", "wav2vec2-bert", when=_NO_W2V_BERT_ADAPTER),
    _conformer("wav2vec2-bert-adapter", "wav2vec2-bert", size_key=""))}


# Parakeet (ParakeetForCTC): a conformer over log-mel frames behind a strided
# convolutional subsampling (kept), the sizes in config.encoder_config (the encoder's own config). Each block holds
# two feed-forward modules (feed_forward1 / feed_forward2: linear1, SiLU, linear2, both intermediate_size wide),
# two stacks over the same blocks as Wav2Vec2-Conformer's. Its attention adds Transformer-XL's relative terms:
# relative_k_proj projects the position embeddings into head-sized row blocks (one per query head) and bias_u /
# bias_v hold a (head_dim) row per head, cut to the kept heads; the forward views them by
# ``self.config.num_attention_heads``, the encoder config every attention shares, so a compacted attention gets its
# own copy with its kept count (a dotted attr, as Moonshine's). Its KV heads always equal its heads (the config
# sets num_key_value_heads so). head_dim is hidden_size // heads: pruned heads save in the per-layer form
PARAKEET_HEADS = HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                          output="self_attn.o_proj", heads_key="num_attention_heads", attention="self_attn",
                          attrs=(("config.num_attention_heads", "heads"), ("config.num_key_value_heads", "heads")),
                          per_head=(PerHeadSpec("self_attn.relative_k_proj", "heads", head_rows=True),
                                    PerHeadSpec("self_attn", "heads")))


# LASR (LasrForCTC, Google's MedASR): Parakeet's block layout (feed_forward1 / feed_forward2 of linear1 / linear2,
# weighted residuals, a convolution module, kept) with plain rotary attention (one rotation over head_dim, the same
# for every head) and nothing per head besides q/k/v/o_proj; KV heads equal to its heads (the config sets them so)
LASR_HEADS = HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                      output="self_attn.o_proj", heads_key="num_attention_heads", attention="self_attn")

# Granite Speech 5 (GraniteSpeech5ForCTC): Parakeet's block layout whose attention runs within blocks of
# context_size frames, with a relative-position embedding of head_dim entries per distance, the same for every head;
# it views q/k/v and the output by ``self.config.num_attention_heads`` (the shared encoder config: a copy of its own
# per compacted attention), head_dim from the config. Some blocks (subsample_layers) subsample by 2 in their
# convolution module (kept); the mid-network CTC layers (out, out_mid) read the hidden size, kept
GRANITE_SPEECH5_HEADS = HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                                 output="self_attn.o_proj", heads_key="num_attention_heads", head_dim_key="head_dim",
                                 attention="self_attn", attrs=(("config.num_attention_heads", "heads"),
                                                               ("config.num_key_value_heads", "heads")))


def _parakeet(name: str = "parakeet", model_type: str = "parakeet_ctc", heads: HeadSpec = PARAKEET_HEADS
              ) -> ModelSpec:
    """A CTC conformer of Parakeet's layout: ``encoder.layers`` blocks with two feed-forward modules (two stacks),
    the sizes in ``config.encoder_config``."""
    def ffn(stack: str) -> dict:
        return dict(layers=("encoder.layers",), hidden_key="hidden_size", stack=stack, heads=heads,
                    text_config="encoder_config",
                    mlp=MLPSpec(producers=(f"{stack}.linear1",), consumer=f"{stack}.linear2",
                                size_key="intermediate_size"))

    return ModelSpec(name=name, model_types=(model_type,), **ffn("feed_forward1"),
                     stacks=(ModelSpec(name=f"{name}-ffn2", model_types=(), attention_of="feed_forward1",
                                       **ffn("feed_forward2")),))


# the two-tower models (CLIPModel, SiglipModel, Siglip2Model): two stacks, the text tower's blocks then the vision
# tower's, each with its own sub-config (ModelSpec.text_config: the sizes are read from and written to
# config.text_config / config.vision_config). The projections (text_projection, visual_projection, SigLIP's text
# head), logit_scale / logit_bias and the embeddings are not pruned: they read and write the towers' hidden sizes,
# which block pruning keeps


def _two_tower(name: str, model_types, text: dict, vision: dict) -> ModelSpec:
    """The spec of a two-tower model whose towers are laid out as ``text`` and ``vision`` (block-relative paths
    and keys of the tower alone), under ``text_model`` / ``vision_model``."""
    def tower(kind: str, spec: dict) -> dict:
        return dict(spec, layers=tuple(f"{kind}_model.{suffix}" for suffix in spec["layers"]), stack=kind,
                    text_config=f"{kind}_config")

    return ModelSpec(name=name, model_types=model_types, **tower("text", text),
                     stacks=(ModelSpec(name=f"{name}-vision", model_types=(), **tower("vision", vision)),))


def _dinov2(swiglu: bool, layout: str) -> ModelSpec:
    """DINOv2 (and with registers): encoder.layer blocks whose module names follow the transformers release
    (``layout``: "q_proj" in 5.2x, attention.q/k/v/o_proj and a SwiGLU gate/up/down_proj; "query" in 5.17,
    BERT's attention.attention.query/key/value with attention.output.dense and a fused SwiGLU weights_in rows
    [gate | up]); ``swiglu``: its config's use_swiglu_ffn. The MLP width follows from the float mlp_ratio, no key
    says it: a pruned MLP saves in the per-layer form. The layer scales (lambda1/lambda2) are over the hidden size,
    after the attention output and the MLP, so they do not see pruned units."""
    if layout == "q_proj":  # its attention reads head_dim from the config when it has one: pruned heads save plain
        heads = HeadSpec(query="attention.q_proj", key="attention.k_proj", value="attention.v_proj",
                         output="attention.o_proj", heads_key="num_attention_heads", head_dim_key="head_dim",
                         attention="attention", attrs=(("num_attention_heads", "heads"),))
        mlp = (MLPSpec(producers=("mlp.gate_proj", "mlp.up_proj"), consumer="mlp.down_proj", size_key="")
               if swiglu else MLPSpec(producers=("mlp.fc1",), consumer="mlp.fc2", size_key=""))
    else:
        heads = HeadSpec(query="attention.attention.query", key="attention.attention.key",
                         value="attention.attention.value", output="attention.output.dense",
                         heads_key="num_attention_heads", attention="attention.attention",
                         attrs=(("num_attention_heads", "heads"), ("all_head_size", "width")))
        mlp = (MLPSpec(producers=("mlp.weights_in",), consumer="mlp.weights_out", size_key="", segments=(2,))
               if swiglu else MLPSpec(producers=("mlp.fc1",), consumer="mlp.fc2", size_key=""))
    return ModelSpec(name=f"dinov2-{layout}" + ("-swiglu" if swiglu else ""),
                     model_types=("dinov2", "dinov2_with_registers"), layers=("encoder.layer",),
                     hidden_key="hidden_size", mlp=mlp, heads=heads, when=(("use_swiglu_ffn", swiglu),),
                     when_modules=(heads.query,))


DINOV2 = {spec.name: spec for spec in (_dinov2(swiglu, layout) for layout in ("q_proj", "query")
                                       for swiglu in (False, True))}


# Moonshine (MoonshineModel, MoonshineForConditionalGeneration): an encoder-decoder over raw audio behind a
# convolutional front end (conv1-3 and a GroupNorm, kept), pre-LN blocks with rotary self-attention. The encoder's
# MLP is fc1 / GELU / fc2; the decoder's is gated, fc1 2 x intermediate_size wide, chunked into [value | gate] with
# act(gate) * value, so channel i is fc1's rows i and intermediate_size + i (segments=2: both go, and (0, 0) maps to
# 0). Both MLPs are intermediate_size wide (one key). The attention views q/k/v by ``self.config.num_key_value_heads``
# at forward, and ``self.config`` is the model's config, shared by every attention (the constructor writes each
# stack's head counts into it); a compacted attention gets its own copy with its kept counts (dotted attrs), so the
# decoder's cross-attention (encoder_attn), which keeps every head, still reads the model's. head_dim is
# hidden_size // heads, fixed at build (pruned heads save in the per-layer form); pad_head_dim_to_multiple_of pads
# each head's q/k/v with zeros up to a multiple before the attention and drops them after, per head, so fewer heads
# change nothing. (transformers' Moonshine runs with equal query and KV head counts only: it views the queries by
# the KV count, and its constructor gives the decoder the encoder's head counts.)
def _moonshine_heads(prefix: str, cross_attention: str = "", config_counts: bool = True,
                     head_dim_key=None) -> HeadSpec:
    """The self-attention of a Moonshine block whose config keys are ``<prefix>num_attention_heads`` ...;
    ``config_counts``: its forward reads the KV head count from ``self.config`` (the decoder attention)."""
    counts = (("config.num_attention_heads", "heads"), ("config.num_key_value_heads", "kv_heads"))
    return HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                    output="self_attn.o_proj", heads_key=f"{prefix}num_attention_heads",
                    kv_heads_key=f"{prefix}num_key_value_heads", head_dim_key=head_dim_key, attention="self_attn",
                    attrs=(counts if config_counts else ()) + (("num_key_value_groups", "groups"),),
                    cross_attention=cross_attention)


def _moonshine_decoder(name: str, head_dim_key=None, prefix: str = "decoder_") -> ModelSpec:
    """Moonshine's decoder stack: the gated MLP, fc1 rows [value | gate]; the cross-attention kept whole."""
    return ModelSpec(name=name, model_types=(), stack="decoder", layers=("decoder.layers",), hidden_key="hidden_size",
                     heads=_moonshine_heads(prefix, cross_attention="encoder_attn", head_dim_key=head_dim_key),
                     mlp=MLPSpec(producers=("mlp.fc1",), consumer="mlp.fc2", size_key="intermediate_size",
                                 segments=(2,)))


_MOONSHINE_ENCODER_MLP = MLPSpec(producers=("mlp.fc1",), consumer="mlp.fc2", size_key="intermediate_size")
MOONSHINE = ModelSpec(
    name="moonshine", model_types=("moonshine",), stack="encoder", layers=("encoder.layers",),
    hidden_key="hidden_size", heads=_moonshine_heads("encoder_"), mlp=_MOONSHINE_ENCODER_MLP,
    stacks=(_moonshine_decoder("moonshine-decoder"),))

# Moonshine Streaming: a frame embedder and two causal convolutions (kept), an encoder of its own config
# (``encoder_config``: sizes, head_dim, sliding windows per layer, over the positions, not per head) whose attention
# views q/k/v by head_dim (-1 heads) and reads no count at forward, and Moonshine's decoder (the model config, with
# head_dim). Both configs have head_dim: the encoder's pruned heads can save plainly, the decoder's not (its
# num_attention_heads also sizes the cross-attention)
MOONSHINE_STREAMING = ModelSpec(
    name="moonshine_streaming", model_types=("moonshine_streaming",), stack="encoder", layers=("encoder.layers",),
    hidden_key="hidden_size", text_config="encoder_config", mlp=_MOONSHINE_ENCODER_MLP,
    heads=_moonshine_heads("", config_counts=False, head_dim_key="head_dim"),
    stacks=(_moonshine_decoder("moonshine_streaming-decoder", head_dim_key="head_dim", prefix=""),))

# Swin, Swin V2 and Donut's Swin: hierarchical encoders. Stage s holds encoder.layers.<s>.blocks, embed_dim * 2**s
# wide with num_heads[s] heads (patch merging between stages, not pruned, doubles the width): one stack per stage
# (StagesSpec), each pruning its blocks' MLP channels and heads as its own groups. The MLP is int(mlp_ratio * width)
# wide, a float ratio and no key for the width: a pruned MLP saves in the per-layer form; each attention derives
# its head size from the stage's width / heads, so pruned heads do too (load_compact). Each block's relative-position
# bias has one column (Swin, Donut) or one output row of its continuous position-bias MLP (Swin V2) per head, and
# Swin V2 a logit scale per head (its cosine attention normalises each head's q and k over that head alone): cut
# per head. The layer norms (and Swin V2's post-norms) are over the width, which block pruning keeps
SWIN_STAGES = StagesSpec(layers="encoder.layers.{stage}.blocks", count_key="depths", per_stage_keys=("num_heads",),
                         width_key="embed_dim")
# Swin (transformers >= 5.17): attention.q/k/v/o_proj viewed by head_dim (-1 heads), the table in
# attention.relative_position_bias
SWIN = ModelSpec(
    name="swin", model_types=("swin",), layers=(SWIN_STAGES.layers,), hidden_key="embed_dim", stages=SWIN_STAGES,
    mlp=MLPSpec(producers=("mlp.fc1",), consumer="mlp.fc2", size_key=""),
    heads=HeadSpec(query="attention.q_proj", key="attention.k_proj", value="attention.v_proj",
                   output="attention.o_proj", heads_key="num_heads", attention="attention",
                   attrs=(("num_attention_heads", "heads"),),
                   per_head=(PerHeadSpec("attention.relative_position_bias", "heads", dim=1),)))
# Donut's Swin, MaskFormer's Swin and Swin V2: BERT's layout under attention.self, the MLP in intermediate.dense /
# output.dense
_SWIN_SELF = dict(query="attention.self.query", key="attention.self.key", value="attention.self.value",
                  output="attention.output.dense", heads_key="num_heads", attention="attention.self",
                  attrs=(("num_attention_heads", "heads"), ("all_head_size", "width")))
_SWIN_BERT_MLP = MLPSpec(producers=("intermediate.dense",), consumer="output.dense", size_key="")
DONUT_SWIN = ModelSpec(  # (MaskFormer's Swin backbone model too: the same modules and keys)
    name="donut-swin", model_types=("donut-swin", "maskformer-swin"), layers=(SWIN_STAGES.layers,),
    hidden_key="embed_dim", stages=SWIN_STAGES, mlp=_SWIN_BERT_MLP,
    heads=HeadSpec(**_SWIN_SELF, per_head=(PerHeadSpec("attention.self", "heads", dim=1),)))  # its bias table
SWINV2 = ModelSpec(
    name="swinv2", model_types=("swinv2",), layers=(SWIN_STAGES.layers,), hidden_key="embed_dim",
    stages=SWIN_STAGES, mlp=_SWIN_BERT_MLP,
    heads=HeadSpec(**_SWIN_SELF, per_head=(PerHeadSpec("attention.self", "heads", dim=0),  # logit_scale
                                           PerHeadSpec("attention.self.continuous_position_bias_mlp.2", "heads"))))

# SegFormer (SegformerModel, SegformerForImageClassification, SegformerForSemanticSegmentation) and PVT v2 (PvtV2Model,
# PvtV2ForImageClassification, PvtV2Backbone): stage s holds <encoder>.<s>.blocks, hidden_sizes[s] wide (a list: no
# width follows from another) with num_attention_heads[s] heads, one stack per stage. Their Mix-FFN is fc1 (dense1),
# a 3 x 3 depthwise convolution over its channels (MLPSpec.depthwise: cut with them), the activation, fc2 (dense2):
# the convolution's bias makes a gated channel non-zero, so the consumer's input is gated too. The MLP is
# int(hidden_sizes[s] * mlp_ratios[s]) wide, no key says a pruned width: the per-layer form. The spatial reduction
# (a strided convolution and a LayerNorm on the hidden states before the keys and values) is over the width, which
# block pruning keeps. The decode head reads each stage's output at its width
_PER_STAGE_WIDTHS = dict(count_key="depths", per_stage_keys=("num_attention_heads",), widths_key="hidden_sizes")
SEGFORMER_STAGES = StagesSpec(layers="stages.{stage}.blocks", **_PER_STAGE_WIDTHS)
# SegFormer's attention views q/k/v by head_dim (-1 heads), hidden_sizes[s] // heads fixed at build: pruned heads
# save in the per-layer form too (load_compact)
SEGFORMER = ModelSpec(
    name="segformer", model_types=("segformer",), layers=(SEGFORMER_STAGES.layers,), hidden_key="hidden_sizes",
    stages=SEGFORMER_STAGES,
    mlp=MLPSpec(producers=("mlp.fc1",), consumer="mlp.fc2", size_key="", gate_consumer_input=True,
                depthwise=("mlp.dwconv.dwconv",)),
    heads=HeadSpec(query="attention.q_proj", key="attention.k_proj", value="attention.v_proj",
                   output="attention.o_proj", heads_key="num_attention_heads", attention="attention",
                   attrs=(("num_attention_heads", "heads"),)))
PVT_V2_STAGES = StagesSpec(layers="encoder.layers.{stage}.blocks", **_PER_STAGE_WIDTHS)
# PVT v2's attention reshapes its heads' output to the block's input width (num_channels) before proj: fewer heads
# cannot reshape. With linear_attention its MLP applies a ReLU before the convolution (maps 0 to 0)
PVT_V2_HEADS = (("heads", "", "its attention reshapes the heads' output to the block's input width (hidden_sizes of "
                              "the stage) before its output projection, so it runs only with every head"),)
PVT_V2 = ModelSpec(
    name="pvt_v2", model_types=("pvt_v2",), layers=(PVT_V2_STAGES.layers,), hidden_key="hidden_sizes",
    stages=PVT_V2_STAGES, unsupported=PVT_V2_HEADS,
    mlp=MLPSpec(producers=("mlp.dense1",), consumer="mlp.dense2", size_key="", gate_consumer_input=True,
                depthwise=("mlp.dwconv.dwconv",)),
    heads=HeadSpec(query="attention.query", key="attention.key", value="attention.value", output="attention.proj",
                   heads_key="num_attention_heads", attention="attention",
                   attrs=(("num_attention_heads", "heads"), ("all_head_size", "width"))))

# PVT (v1: PvtModel, PvtForImageClassification): stage s holds encoder.block.<s> (a ModuleList in a ModuleList),
# BERT's attention layout under attention.self / attention.output.dense, which views its context by all_head_size;
# a plain MLP dense1 / dense2. Each stage's patch embedding holds position embeddings (the last a class token too)
# sized by its width, which block pruning keeps. Head size hidden_sizes[s] // heads (pruned heads: per layer)
PVT_STAGES = StagesSpec(layers="encoder.block.{stage}", **_PER_STAGE_WIDTHS)
PVT = ModelSpec(
    name="pvt", model_types=("pvt",), layers=(PVT_STAGES.layers,), hidden_key="hidden_sizes", stages=PVT_STAGES,
    mlp=MLPSpec(producers=("mlp.dense1",), consumer="mlp.dense2", size_key=""),
    heads=HeadSpec(query="attention.self.query", key="attention.self.key", value="attention.self.value",
                   output="attention.output.dense", heads_key="num_attention_heads", attention="attention.self",
                   attrs=(("num_attention_heads", "heads"), ("all_head_size", "width"))))

VISION_SPEECH_SPECS: Dict[str, ModelSpec] = {
    # ViT-MSN and I-JEPA: ViT's blocks under other embeddings (I-JEPA: no CLS token) and task heads
    "vit": ModelSpec(name="vit", model_types=("vit", "deit", "vit_msn", "ijepa"), **VIT),
    "beit": ModelSpec(name="beit", model_types=("beit",), **BEIT, unsupported=SHARED_RELATIVE_BIAS),
    "data2vec-vision": ModelSpec(name="data2vec-vision", model_types=("data2vec-vision",), **DATA2VEC_VISION,
                                 unsupported=SHARED_RELATIVE_BIAS),
    # MetaCLIP 2: CLIP's towers and two-tower model under its own model types
    "clip-tower": ModelSpec(name="clip-tower", model_types=("clip_vision_model", "clip_text_model",
                                                            "siglip_text_model", "siglip2_text_model",
                                                            "metaclip_2_vision_model", "metaclip_2_text_model"),
                            **CLIP_TOWER),
    "siglip-vision": ModelSpec(name="siglip-vision", model_types=("siglip_vision_model", "siglip2_vision_model"),
                               **SIGLIP_VISION),
    "clip": _two_tower("clip", ("clip", "metaclip_2"), CLIP_TOWER, CLIP_TOWER),
    # SigLIP's vision tower keeps its attention-pooling head (its MLP is intermediate_size wide): a pruned vision MLP
    # saves in the per-layer form
    "siglip": _two_tower("siglip", ("siglip", "siglip2"), CLIP_TOWER, SIGLIP_VISION),
    # data2vec-audio, SEW, UniSpeech, UniSpeech-SAT: Wav2Vec2's blocks (SEW squeezes the sequence before them and
    # upsamples after)
    "wav2vec2": ModelSpec(name="wav2vec2", model_types=("wav2vec2", "hubert", "data2vec-audio", "sew", "unispeech",
                                                        "unispeech-sat"), **WAV2VEC2),
    # OmniASR CTC (OmniASRForCTC): Wav2Vec2's blocks (pre-LN) in the audio tower (model.audio_tower.layers) behind
    # its convolutional subsampling and positional convolution (kept), the sizes in config.audio_config
    "omniasr_ctc": ModelSpec(name="omniasr_ctc", model_types=("omniasr_ctc",),
                             **dict(WAV2VEC2, layers=("audio_tower.layers",), text_config="audio_config")),
    "wavlm": ModelSpec(name="wavlm", model_types=("wavlm",), **WAV2VEC2, unsupported=WAVLM_HEADS),
    "wav2vec2-conformer": _conformer(),
    "parakeet": _parakeet(),
    "lasr": _parakeet("lasr", "lasr_ctc", LASR_HEADS),
    "granite_speech5_ctc": _parakeet("granite_speech5_ctc", "granite_speech5_ctc", GRANITE_SPEECH5_HEADS),
    **WAV2VEC2_BERT,  # wav2vec2-bert, wav2vec2-bert-adapter (with an adapter: the MLP's width per layer)
    "moonshine": MOONSHINE,
    "moonshine_streaming": MOONSHINE_STREAMING,
    **DINOV2,  # dinov2-q_proj, dinov2-q_proj-swiglu, dinov2-query, dinov2-query-swiglu
    "swin": SWIN,
    "donut-swin": DONUT_SWIN,
    "swinv2": SWINV2,
    "segformer": SEGFORMER,
    "pvt_v2": PVT_V2,
    "pvt": PVT,
}


# hierarchical image encoders besides Swin's, SegFormer's and PVT's (the image-classification model types without a
# spec): masked_dora refuses them by name (spec_for says why) rather than "no spec". StagesSpec describes stages with
# per-stage head counts, a width per stage (a list, or the first stage's doubling), blocks in a list per stage, and
# blocks of attention and an MLP (with depthwise convolutions inside: MLPSpec.depthwise). These encoders lay their
# stages out otherwise (a width multiplier) or their blocks hold more than the MLP and attention groups describe
_STAGES = ("a hierarchical encoder: its stages have different widths and head counts, which its config gives per "
           "stage ({keys}), and masked_dora's stages (StagesSpec) read the heads per stage and a width per stage "
           "(a list, or one first-stage width that doubles at each stage)")


def _stages(keys: str, *more: str) -> str:
    return _STAGES.format(keys=keys) + "".join(more)


VISION_REFUSED_MODEL_TYPES: Dict[str, str] = {
    "hiera": _stages("num_heads and depths; embed_dim times embed_dim_multiplier at each stage",
                     "; and its attention projects q/k/v with one fused qkv and pools its queries (query_stride) "
                     "where a stage begins"),
    "convnext": ("a hierarchical encoder with no attention: each block is a 7 x 7 depthwise convolution, a LayerNorm "
                 "and an MLP of pointwise nn.Linear layers (pwconv1 / pwconv2, 4 x the stage's width); the MLP "
                 "channels would prune exactly (the layer scale is over the stage's width, which they keep), but "
                 "masked_dora's specs read a head count for every block and every stage "
                 "(StagesSpec.per_stage_keys), which ConvNextConfig lacks"),
    "convnextv2": ("ConvNeXt's blocks (no attention, which masked_dora's specs need a head count for) with a Global "
                   "Response Norm between pwconv1 and pwconv2 that divides each channel by the mean of every "
                   "channel's spatial norm (and adds a bias per channel): fewer channels change that mean, so even its "
                   "MLP would not prune exactly"),
    "levit": _stages("hidden_sizes, num_attention_heads, key_dim, mlp_ratio",
                     "; and its attention's keys are key_dim wide and its values attention_ratio x key_dim, with "
                     "learned biases per head, and each of its linear layers is followed by a BatchNorm"),
}
