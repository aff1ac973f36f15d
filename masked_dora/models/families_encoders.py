"""Text encoders beyond BERT itself (:mod:`masked_dora.models.families` adds them to ``SPECS``): BERT's modules
under other model types, the Llama-named encoders (NomicBERT, GTE, Jina v3, ESM C), ALBERT's shared layer, and
the encoders whose heads (or whole layout) the spec types cannot describe exactly, each with the reason.

What each adds beside BERT's block (read in its modeling file) and why its groups stay exact:

* pre-LN blocks (ESM-2, Megatron-BERT): a LayerNorm before ``attention.self`` and before ``intermediate``; the
  projections are BERT's, so MLP channels and heads prune as BERT's.
* rotary positions (ESM-2's ``position_embedding_type="rotary"``, RoFormer, NomicBERT, GTE, Jina v3): one
  rotation per position over ``head_dim``, the same for every head, so a kept head sees the same rotation.
* X-MOD's per-language adapters (``output.adapter_modules``) act on the block output after the residual sum, a
  hidden-size stream: they are kept whole and the MLP channels and heads prune as BERT's.
* BigBird's block-sparse attention treats each head alone; its random blocks are drawn per head while training
  (a pruned model draws others, as any new draw) and are fixed in eval, so the masked and compacted models agree.
"""

from __future__ import annotations

from dataclasses import replace as replace_dataclass
from typing import Dict

from .spec_types import HeadSpec, MLPSpec, ModelSpec, PerHeadSpec

# BERT's module names (encoder.layer, attention.self.query, intermediate.dense, ...) under other model types
BERT_LAYOUT_TYPES = ("ernie", "roformer", "layoutlm", "markuplm", "rembert", "roc_bert", "xmod", "big_bird", "esm",
                     "megatron-bert")

LAYOUTLMV3_BIAS = ("the encoder computes one relative-position bias (rel_pos_bias, and rel_pos_x_bias / "
                   "rel_pos_y_bias with has_spatial_attention_bias: Linear layers with one output per head) and adds "
                   "head h's to head h of every layer: exact head pruning would need the same kept heads in every "
                   "layer (and those layers cut to them), which per-layer head masks do not give; with both "
                   "has_relative_attention_bias and has_spatial_attention_bias off, the heads prune")
LILT_HEADS = ("its layout stream has attention heads of its own (layout_query / layout_key / layout_value, head size "
              "hidden_size / channel_shrink_ratio / heads) whose scores are added to the text heads' scores, head "
              "by head: a pruned text head would need its layout head cut too, which the head spec (one head size "
              "for q/k/v) does not describe; the text stream's MLP prunes (the layout MLP is kept whole)")
CONVBERT_HEADS = ("its mixed attention concatenates num_attention_heads // head_ratio self-attention heads with as "
                  "many span-convolution heads (key_conv_attn_layer, conv_kernel_layer, conv_out_layer, with a "
                  "head size of their own) before attention.output.dense, which the head spec does not describe")
CONVBERT_GROUPED_MLP = ("with num_groups > 1 its intermediate.dense and output.dense are GroupedLinearLayer blocks "
                        "(one weight per group), not nn.Linear layers the MLP group can wrap")
DEBERTA_HEADS = ("its attention projects q/k/v through one fused in_proj (rows [q_h k_h v_h] per head) and adds "
                 "q_bias / v_bias (one head_dim block per head) outside it, and with relative_attention projects the "
                 "relative embeddings through pos_proj / pos_q_proj (rows one block per head): per-head parameters "
                 "beside a fused projection, which the head spec does not describe")
ALBERT_GROUPS = ("its num_hidden_groups > 1 layer groups are separate block lists (albert_layer_groups.<g>), each "
                 "shared by num_hidden_layers / num_hidden_groups depths, and the spec names one block list "
                 "(albert_layer_groups.0.albert_layers); the config's intermediate_size and num_attention_heads "
                 "would also size the unpruned groups")
ESMC_QK_NORM = ("its q/k LayerNorms normalise over all heads' width together, so removing a head would change every "
                "kept head's output (the compacted model would not equal the masked one)")
LONGFORMER_HEADS = ("its attention projects every head twice, through the local query / key / value and through "
                    "query_global / key_global / value_global (for the tokens given global attention), all viewed "
                    "by num_heads x head_dim: a head's rows are in six projections, and the head spec names three "
                    "(query, key, value); its MLP (BERT's) prunes")

BERT_HEADS = HeadSpec(query="attention.self.query", key="attention.self.key", value="attention.self.value",
                      output="attention.output.dense", heads_key="num_attention_heads", attention="attention.self",
                      attrs=(("num_attention_heads", "heads"), ("all_head_size", "width")))


def _llama_named_heads(head_dim_key) -> HeadSpec:
    """q/k/v/o_proj under self_attn, reshaped with -1 heads (no head-count attribute to follow); ``head_dim_key``:
    the config key of the head size where the config class has one (NomicBERT), else ``None`` (hidden // heads:
    pruned heads then save in the per-layer form)."""
    return HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                    output="self_attn.o_proj", heads_key="num_attention_heads", head_dim_key=head_dim_key,
                    attention="self_attn")


# MobileBERT's released configs stack num_feedforward_networks=4 MLPs in a layer: ffn.0 .. ffn.2, then BERT's
MOBILEBERT_STACKED_FFNS = 3


def _mobilebert() -> ModelSpec:
    """MobileBERT: BERT's module names inside bottlenecks (the attention and the MLPs work at true_hidden_size,
    the intra-bottleneck width; value reads the block input or the bottleneck by use_bottleneck_attention), and
    num_feedforward_networks - 1 more MLPs (``ffn.<i>``) before BERT's own, each of width intermediate_size: one
    stack per MLP over the same blocks (the first, "block", holds the head groups), in_some_blocks where a config
    stacks fewer. Its norms (NoNorm: an elementwise scale and shift) work at the hidden widths, which stay."""
    def mlp(prefix: str, some: bool) -> MLPSpec:
        return MLPSpec(producers=(f"{prefix}intermediate.dense",), consumer=f"{prefix}output.dense",
                       size_key="intermediate_size", in_some_blocks=some)

    heads = HeadSpec(query="attention.self.query", key="attention.self.key", value="attention.self.value",
                     output="attention.output.dense", heads_key="num_attention_heads", attention="attention.self",
                     attrs=(("num_attention_heads", "heads"), ("all_head_size", "width")))
    common = dict(layers=("encoder.layer",), hidden_key="true_hidden_size", heads=heads)
    ffns = tuple(ModelSpec(name=f"mobilebert-ffn{i}", model_types=(), stack=f"ffn{i}", attention_of="block",
                           mlp=mlp(f"ffn.{i}.", True), **common) for i in range(MOBILEBERT_STACKED_FFNS))
    return ModelSpec(name="mobilebert", model_types=("mobilebert",), stack="block", mlp=mlp("", False),
                     stacks=ffns, **common)


def encoder_specs(bert_style: dict) -> Dict[str, ModelSpec]:
    """The specs of this module, built on the ``bert`` spec's fields (``BERT_STYLE``)."""
    gated = MLPSpec(producers=("mlp.gate_proj", "mlp.up_proj"), consumer="mlp.down_proj",
                    size_key="intermediate_size")
    return {
        "bert-layout": ModelSpec(name="bert-layout", model_types=BERT_LAYOUT_TYPES, **bert_style),
        # LayoutLMv3 (text path; its image patches, when given, join the same blocks): BERT's blocks
        "layoutlmv3": ModelSpec(name="layoutlmv3", model_types=("layoutlmv3",), **bert_style, unsupported=(
            ("heads", "has_relative_attention_bias", LAYOUTLMV3_BIAS),
            ("heads", "has_spatial_attention_bias", LAYOUTLMV3_BIAS))),
        # LiLT: its layout MLP is intermediate_size // channel_shrink_ratio wide, so a pruned text MLP (whose width
        # no other key says) saves in the per-layer form
        "lilt": ModelSpec(name="lilt", model_types=("lilt",), **dict(bert_style, mlp=replace_dataclass(
            bert_style["mlp"], size_key="")), unsupported=(("heads", "", LILT_HEADS),)),
        "convbert": ModelSpec(name="convbert", model_types=("convbert",), **bert_style, unsupported=(
            ("heads", "", CONVBERT_HEADS), ("mlp", "num_groups!=1", CONVBERT_GROUPED_MLP))),
        # DeBERTa (v1): BERT's MLP; its heads refused (DeBERTa-v2/v3 have a spec of their own)
        "deberta": ModelSpec(name="deberta", model_types=("deberta",), **dict(bert_style, heads=HeadSpec(
            query="", key="", value="", output="attention.output.dense", heads_key="num_attention_heads",
            attention="attention.self", qkv="attention.self.in_proj", qkv_layout="per_head")),
            unsupported=(("heads", "", DEBERTA_HEADS),)),
        # ALBERT: one layer group (num_hidden_groups=1, every released checkpoint) whose inner_group_num layers are
        # called in turn at every depth: each of those modules is one block here, its groups (one mask, one
        # adapter) applied at every call, so the compacted layer, called as often, equals the masked one
        "albert": ModelSpec(
            name="albert", model_types=("albert",), layers=("encoder.albert_layer_groups.0.albert_layers",),
            hidden_key="hidden_size",
            mlp=MLPSpec(producers=("ffn",), consumer="ffn_output", size_key="intermediate_size"),
            heads=HeadSpec(query="attention.query", key="attention.key", value="attention.value",
                           output="attention.dense", heads_key="num_attention_heads", attention="attention",
                           attrs=(("num_attention_heads", "heads"), ("all_head_size", "width"))),
            unsupported=(("mlp", "num_hidden_groups!=1", ALBERT_GROUPS),
                         ("heads", "num_hidden_groups!=1", ALBERT_GROUPS))),
        "mobilebert": _mobilebert(),
        # LUKE: BERT's blocks over the words and entities concatenated; with use_entity_aware_attention (its default)
        # the word-to-entity, entity-to-word and entity-to-entity scores take queries of their own (w2e_query,
        # e2w_query, e2e_query: head-sized row blocks as query's), cut to the kept heads (not adapted); a pruned
        # head's keys and values are gated, so what its extra queries make never reaches the output
        "luke": ModelSpec(name="luke", model_types=("luke",), **dict(bert_style, heads=replace_dataclass(
            bert_style["heads"], per_head=tuple(
                PerHeadSpec(f"attention.self.{q}_query", "heads", head_rows=True, flag="use_entity_aware_attention")
                for q in ("w2e", "e2w", "e2e"))))),
        # Longformer: BERT's block names (attention.self: sliding-window and global attention, attention.output.dense,
        # intermediate.dense / output.dense); its heads refused
        "longformer": ModelSpec(name="longformer", model_types=("longformer",), **bert_style,
                                unsupported=(("heads", "", LONGFORMER_HEADS),)),
        # Llama's module names, post-LN blocks, rotary positions: NomicBERT (SwiGLU, head_dim in its config), GTE
        # (GELU-gated MLP), Jina-embeddings-v3 (fc1/fc2 MLP; transformers' port holds no task LoRA in the model)
        "nomic_bert": ModelSpec(name="nomic_bert", model_types=("nomic_bert",), layers=("layers",),
                                hidden_key="hidden_size", mlp=gated, heads=_llama_named_heads("head_dim")),
        "gte": ModelSpec(name="gte", model_types=("gte",), layers=("layers",), hidden_key="hidden_size", mlp=gated,
                         heads=_llama_named_heads(None)),
        "jina_embeddings_v3": ModelSpec(
            name="jina_embeddings_v3", model_types=("jina_embeddings_v3",), layers=("layers",),
            hidden_key="hidden_size", heads=_llama_named_heads(None),
            mlp=MLPSpec(producers=("mlp.fc1",), consumer="mlp.fc2", size_key="intermediate_size")),
        # ESM C: pre-LN Llama-named blocks, a SwiGLU MLP; its q/k norms span every head
        "esmc": ModelSpec(name="esmc", model_types=("esmc",), layers=("layers",), hidden_key="hidden_size",
                          mlp=gated, heads=_llama_named_heads("head_dim"), unsupported=(("heads", "", ESMC_QK_NORM),)),
    }


# encoder model types whose layout these spec types cannot describe (spec_for raises the reason)
REFUSED_ENCODER_TYPES: Dict[str, str] = {
    "ibert": ("its layers are QuantLinear modules (integer-only quantisation with per-channel weight scales and "
              "QuantAct activation ranges), not nn.Linear layers that masked_dora's adapters wrap"),
    "xlm": ("its blocks are not modules: the model holds parallel lists (attentions, layer_norm1, ffns, layer_norm2) "
            "indexed by depth, and a spec names one block list whose blocks hold both the attention and the MLP"),
    "flaubert": ("XLM's layout: parallel lists (attentions, layer_norm1, ffns, layer_norm2) indexed by depth, not "
                 "one block list whose blocks hold both the attention and the MLP"),
    "squeezebert": ("its projections (attention.query/key/value, post_attention, intermediate, output) are nn.Conv1d "
                    "layers of kernel size 1 over (batch, channels, positions), grouped by default (q_groups, "
                    "k_groups, v_groups, intermediate_groups, output_groups = 4: block-diagonal weights), not "
                    "nn.Linear or GPT-2's Conv1D layers that masked_dora's adapters wrap"),
    "fnet": ("it has no attention (a parameter-free Fourier transform mixes the tokens, fourier.self), and "
             "masked_dora's specs read a head layout (the config's num_attention_heads) for every block, which "
             "FNetConfig lacks; its MLP (intermediate.dense / output.dense, BERT's) would prune exactly with a spec "
             "kind for blocks without attention"),
    "funnel": ("its encoder is several block lists (encoder.blocks.<i>, one per entry of block_sizes) with pooling "
               "between them, plus a decoder list, and a spec names one block list per stack; its relative attention "
               "also holds per-head parameters at several dims (r_w_bias, r_r_bias, r_kernel, r_s_bias, seg_embed)"),
}
