"""The shipped family table: each supported ``model_type``'s spec (the types are in
:mod:`masked_dora.models.spec_types`; :mod:`masked_dora.models.specs` looks a model up and registers more)."""

from __future__ import annotations

from dataclasses import replace as replace_dataclass
from typing import Dict

from .families_audio_lm import AUDIO_LM_WRAPPERS
from .families_classic import REFUSED_CLASSIC_TYPES, classic_specs
from .families_decoders import LLAMA_SEMANTICS, QK_NORM_SPANS_HEADS, decoder_specs
from .families_encoders import REFUSED_ENCODER_TYPES, encoder_specs
from .families_fused_moe import FUSED_MOE_SPECS
from .families_hybrid import REFUSED_MODEL_TYPES, hybrid_specs
from .families_moe import moe_specs
from .families_seq2seq import seq2seq_specs
from .families_vision_speech import VISION_REFUSED_MODEL_TYPES, VISION_SPEECH_SPECS
from .families_vlm import VLM_WRAPPERS, vlm_text_specs
from .families_vlm_2026 import VLM_WRAPPERS_2026, vlm_like_specs_2026, vlm_text_specs_2026
from .hidden_spec import BERT_PER_BLOCK, DISTILBERT_PER_BLOCK, LLAMA_HIDDEN, LLAMA_PER_BLOCK, XLMR_XL_PER_BLOCK
from .spec_types import HeadSpec, MLPSpec, ModelSpec, PerHeadSpec

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

# DeBERTa-v2's (and SEW-D's) heads where the relative embeddings have projections of their own
DEBERTA_SEPARATE_POS_PROJ = ("with relative_attention and share_att_key=False, each block projects the relative "
                             "embeddings through pos_key_proj / pos_query_proj, whose rows are one block per head "
                             "and which no head spec cuts (the compacted model would mismatch); DeBERTa-v3's and "
                             "most DeBERTa-v2 checkpoints share the attention's key/query projections "
                             "(share_att_key=True), whose heads prune")

DEBERTA_V2 = dict(
    layers=("encoder.layer",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("intermediate.dense",), consumer="output.dense", size_key="intermediate_size"),
    heads=HeadSpec(query="attention.self.query_proj", key="attention.self.key_proj",
                   value="attention.self.value_proj", output="attention.output.dense",
                   heads_key="num_attention_heads", attention="attention.self",
                   attrs=(("num_attention_heads", "heads"), ("all_head_size", "width"))),
    unsupported=(("heads", "relative_attention&!share_att_key", DEBERTA_SEPARATE_POS_PROJ),),
)

MPNET = dict(BERT_STYLE, heads=HeadSpec(  # BERT's layout, but attention.attn.q/k/v/o
    query="attention.attn.q", key="attention.attn.k", value="attention.attn.v", output="attention.attn.o",
    heads_key="num_attention_heads", attention="attention.attn",
    attrs=(("num_attention_heads", "heads"), ("all_head_size", "width"))))
MPNET_HEADS = (("heads", "", "the encoder computes one relative-position bias (relative_attention_bias, one column "
                             "per head) and adds column h to head h of every layer: exact head pruning would need "
                             "the same kept heads in every layer (and the bias cut to them), which per-layer head "
                             "masks do not give"),)

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

MODERNBERT_DECODER = dict(MODERNBERT, heads=HeadSpec(  # ModernBERT's fused Wi; separate q/k/v, output attn.Wo
    query="attn.q_proj", key="attn.k_proj", value="attn.v_proj", output="attn.Wo", heads_key="num_attention_heads",
    attention="attn", attrs=(("num_heads", "heads"), ("all_head_size", "width"))))

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


def _t5_decoder(mlp: MLPSpec, heads: HeadSpec = T5_ENCODER["heads"]) -> ModelSpec:
    """T5's decoder stack: the encoder's MLP one sublayer later (layer.1 is the cross-attention)."""
    return ModelSpec(name="t5-decoder", model_types=(), stack="decoder", layers=("decoder.block",),
                     hidden_key="d_model", heads=replace_dataclass(heads, cross_attention="layer.1.EncDecAttention"),
                     mlp=replace_dataclass(mlp, consumer=mlp.consumer.replace("layer.1.", "layer.2."),
                                           producers=tuple(p.replace("layer.1.", "layer.2.") for p in mlp.producers)))


T5_HEADS = (("heads", "", "block 0 computes the relative-position bias, one column per head, and the stack passes "
                          "it to every later block, which adds column h to its own head h: exact head pruning would "
                          "need the same kept heads in every block (and the bias cut to them), which per-layer head "
                          "masks do not give"),)

# UMT5: T5's layout, but every block's self-attention has its own relative_attention_bias (buckets, heads), whose
# columns follow their heads
UMT5_HEADS = replace_dataclass(T5_ENCODER["heads"], per_head=(PerHeadSpec(
    "layer.0.SelfAttention.relative_attention_bias", "heads", dim=1, count_attr="embedding_dim"),))
UMT5_ENCODER = dict(T5_ENCODER, heads=UMT5_HEADS)
UMT5_GATED_ENCODER = dict(T5_GATED_ENCODER, heads=UMT5_HEADS)


def _longt5(kind: str, attention: str, gated: bool) -> ModelSpec:
    """LongT5 with ``encoder_attention_type`` ``kind`` (``attention``: the encoder's self-attention module in
    layer.0) and T5's decoder; block 0 computes the relative-position bias of its stack, as in T5."""
    encoder = T5_GATED_ENCODER if gated else T5_ENCODER
    heads = replace_dataclass(encoder["heads"], **{role: f"layer.0.{attention}.{name}" for role, name in (
        ("query", "q"), ("key", "k"), ("value", "v"), ("output", "o"))}, attention=f"layer.0.{attention}")
    name = f"longt5-{kind}" + ("-gated" if gated else "")
    return ModelSpec(name=name, model_types=("longt5",), **dict(encoder, heads=heads),
                     stacks=(_t5_decoder(encoder["mlp"]),), unsupported=T5_HEADS,
                     when=(("encoder_attention_type", kind), ("is_gated_act", gated)))


LONGT5 = {spec.name: spec for spec in (_longt5(kind, attention, gated) for kind, attention in (
    ("local", "LocalSelfAttention"), ("transient-global", "TransientGlobalSelfAttention")) for gated in (False, True))}

MIXTRAL_STYLE = dict(LLAMA_STYLE, mlp=MLPSpec(  # experts packed as gate_up_proj (E, 2I, H), down_proj (E, H, I)
    producers=("gate_up_proj",), consumer="down_proj", size_key="intermediate_size", segments=(2,),
    experts="mlp.experts", size_attrs=(("mlp.experts", "intermediate_dim"),)))

GRANITEMOE = dict(MIXTRAL_STYLE, mlp=replace_dataclass(MIXTRAL_STYLE["mlp"], experts="block_sparse_moe.experts",
                                                     size_attrs=(("block_sparse_moe.experts", "intermediate_dim"),)))

SPECS: Dict[str, ModelSpec] = {
    "llama": ModelSpec(name="llama", model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
                                                  "gemma3_text", "granite") + LLAMA_SEMANTICS, **LLAMA_STYLE,
                       hidden=LLAMA_HIDDEN, hidden_per_block=LLAMA_PER_BLOCK),
    "cohere": ModelSpec(name="cohere", model_types=("cohere",), **COHERE),
    "olmo2": ModelSpec(name="olmo2", model_types=("olmo2",) + QK_NORM_SPANS_HEADS, **LLAMA_STYLE,
                       unsupported=(("heads", "", _QK_NORM_SPANS_HEADS),)),
    "stablelm": ModelSpec(name="stablelm", model_types=("stablelm",), **STABLELM),
    "mixtral": ModelSpec(name="mixtral", model_types=("mixtral", "phimoe"), **MIXTRAL_STYLE),
    # qwen2_moe: its shared_expert (and shared_expert_gate) MLP beside the experts is not pruned. The blocks that
    # mlp_only_layers or decoder_sparse_step > 1 make dense hold Llama's MLP of width intermediate_size: groups of
    # their own (dense_mlp), as DeepSeek-V3's first blocks
    "qwen3_moe": ModelSpec(name="qwen3_moe", model_types=("qwen3_moe", "qwen2_moe"), **dict(
        MIXTRAL_STYLE, mlp=replace_dataclass(MIXTRAL_STYLE["mlp"], size_key="moe_intermediate_size")),
        dense_mlp=LLAMA_STYLE["mlp"]),
    # granitemoeshared: its shared_mlp (width shared_intermediate_size) beside the experts is kept whole
    "granitemoe": ModelSpec(name="granitemoe", model_types=("granitemoe", "granitemoeshared"), **GRANITEMOE),
    # GraniteMoeShared with sliding-window (and NoPE) layers and one learned sink logit per query head
    # (self_attn.sinks, cut to the kept heads)
    "granitemoe_swa": ModelSpec(name="granitemoe_swa", model_types=("granitemoe_swa",), **dict(
        GRANITEMOE, heads=replace_dataclass(GRANITEMOE["heads"], per_head=(PerHeadSpec("self_attn", "heads"),)))),
    "phi": ModelSpec(name="phi", model_types=("phi",), **PHI),
    "phi3": ModelSpec(name="phi3", model_types=("phi3",), **PHI3, heads_need_plain_config=True),
    "modernbert": ModelSpec(name="modernbert", model_types=("modernbert",), **MODERNBERT),
    "modernbert-decoder": ModelSpec(name="modernbert-decoder", model_types=("modernbert-decoder",),
                                    **MODERNBERT_DECODER),
    "eurobert": ModelSpec(name="eurobert", model_types=("eurobert",), **LLAMA_STYLE),  # an encoder of Llama's modules
    "gpt_neox": ModelSpec(name="gpt_neox", model_types=("gpt_neox",), **GPT_NEOX),
    # gpt-sw3: GPT2Config and GPT2LMHeadModel under transformers' own model_type name
    "gpt2": ModelSpec(name="gpt2", model_types=("gpt2", "gpt-sw3"), **GPT2),
    "falcon-new": ModelSpec(name="falcon-new", model_types=("falcon",), **FALCON_NEW, unsupported=FALCON_ALIBI,
                            when=(("new_decoder_architecture", True),)),
    "falcon": ModelSpec(name="falcon", model_types=("falcon",), **FALCON_MULTI_QUERY, unsupported=FALCON_ALIBI,
                        when=(("new_decoder_architecture", False), ("multi_query", True))),
    "falcon-rw": ModelSpec(name="falcon-rw", model_types=("falcon",), **FALCON_PER_HEAD, unsupported=FALCON_ALIBI,
                           when=(("new_decoder_architecture", False), ("multi_query", False))),
    "opt": ModelSpec(name="opt", model_types=("opt",), **OPT),
    "bert": ModelSpec(name="bert", model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert",
                                                "data2vec-text"), **BERT_STYLE,
                      hidden_per_block=BERT_PER_BLOCK),
    # pre-LN variants of the BERT layout (a LayerNorm before attention.self and before intermediate.dense): the
    # MLP and heads prune as BERT's (roberta-prelayernorm's LayerNorm sits inside intermediate, before its dense:
    # no per-block hidden spec)
    "roberta-prelayernorm": ModelSpec(name="roberta-prelayernorm", model_types=("roberta-prelayernorm",),
                                      **BERT_STYLE),
    "xlm-roberta-xl": ModelSpec(name="xlm-roberta-xl", model_types=("xlm-roberta-xl",), **BERT_STYLE,
                                hidden_per_block=XLMR_XL_PER_BLOCK),
    "mpnet": ModelSpec(name="mpnet", model_types=("mpnet",), **MPNET, unsupported=MPNET_HEADS),
    "deberta-v2": ModelSpec(name="deberta-v2", model_types=("deberta-v2",), **DEBERTA_V2),
    # SEW-D (a speech encoder): DeBERTa-v2's disentangled attention and BERT-style MLP under encoder.encoder.layer
    # (its relative embeddings are shared by every block and read through each block's own key/query projections)
    "sew-d": ModelSpec(name="sew-d", model_types=("sew-d",), **dict(DEBERTA_V2, layers=("encoder.encoder.layer",))),
    "distilbert": ModelSpec(name="distilbert", model_types=("distilbert",), **DISTILBERT,
                            hidden_per_block=DISTILBERT_PER_BLOCK),
    # BART's modules and config keys, post-LN (bart, marian, blenderbot-small) or pre-LN (the rest); m2m_100: NLLB;
    # whisper, speech_to_text (Speech2Text): the same stacks behind a convolutional audio front end (not pruned)
    "bart": ModelSpec(name="bart", model_types=("bart", "mbart", "plbart", "marian", "m2m_100", "pegasus",
                                                "blenderbot", "blenderbot-small", "whisper", "speech_to_text"),
                      **BART_ENCODER,
                      stacks=(BART_DECODER,)),
    "t5": ModelSpec(name="t5", model_types=("t5", "mt5"), **T5_ENCODER, stacks=(_t5_decoder(T5_ENCODER["mlp"]),),
                    when=(("is_gated_act", False),), unsupported=T5_HEADS),
    "t5-gated": ModelSpec(name="t5-gated", model_types=("t5", "mt5"), **T5_GATED_ENCODER,
                          stacks=(_t5_decoder(T5_GATED_ENCODER["mlp"]),), when=(("is_gated_act", True),),
                          unsupported=T5_HEADS),
    "umt5": ModelSpec(name="umt5", model_types=("umt5",), **UMT5_ENCODER,
                      stacks=(_t5_decoder(T5_ENCODER["mlp"], UMT5_HEADS),), when=(("is_gated_act", False),)),
    "umt5-gated": ModelSpec(name="umt5-gated", model_types=("umt5",), **UMT5_GATED_ENCODER,
                            stacks=(_t5_decoder(T5_GATED_ENCODER["mlp"], UMT5_HEADS),), when=(("is_gated_act", True),)),
    **LONGT5,  # longt5-local, longt5-local-gated, longt5-transient-global, longt5-transient-global-gated
    **FUSED_MOE_SPECS,
    **VISION_SPEECH_SPECS,
}
SPECS.update(decoder_specs(LLAMA_STYLE))
SPECS.update(encoder_specs(BERT_STYLE))
SPECS.update(moe_specs(LLAMA_STYLE, MIXTRAL_STYLE, _QK_NORM_SPANS_HEADS))
SPECS.update(hybrid_specs(LLAMA_STYLE))
SPECS.update(vlm_text_specs(LLAMA_STYLE, MIXTRAL_STYLE, _QK_NORM_SPANS_HEADS))
SPECS.update(vlm_text_specs_2026(LLAMA_STYLE))
SPECS.update(classic_specs(LLAMA_STYLE, MIXTRAL_STYLE, GPT2, BERT_STYLE, BART_ENCODER, BART_DECODER))
SPECS.update(seq2seq_specs(LLAMA_STYLE, BART_ENCODER, BART_DECODER, T5_ENCODER, T5_HEADS))
SPECS.update(vlm_like_specs_2026(SPECS))  # (after classic_specs: it copies nanochat)
# outer model_type -> WrapperSpec: VLMs', audio LMs' language model
WRAPPERS = dict(VLM_WRAPPERS, **VLM_WRAPPERS_2026, **AUDIO_LM_WRAPPERS)
# model_type -> why it cannot prune exactly (spec_for raises it)
REFUSED = {**REFUSED_MODEL_TYPES, **VISION_REFUSED_MODEL_TYPES, **REFUSED_ENCODER_TYPES, **REFUSED_CLASSIC_TYPES}


# names the encoder-only specs had before their families' decoders were pruned too
RENAMED_SPECS = {"bart-encoder": "bart", "t5-encoder": "t5", "t5-gated-encoder": "t5-gated"}
