"""Tiny text encoders of :mod:`masked_dora.models.families_encoders` (:mod:`tiny_family_table` entries): BERT's
modules under other model types, the Llama-named encoders, ALBERT's shared layer, and the encoders whose heads are
refused (``heads=False``: the chain prunes their MLP)."""

from tiny_family_table import TinyFamily

_ENCODER = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64)
_LLAMA_NAMED = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    max_position_embeddings=64, pad_token_id=0)
_TOKENS = "AutoModelForTokenClassification"  # the families without a masked-LM head


def _bert_layout(name: str, lm: str = "ForMaskedLM", auto: str = "", heads: bool = True, **config) -> TinyFamily:
    return TinyFamily((f"{name}Config", f"{name}Model", f"{name}{lm}"), dict(_ENCODER, **config), auto=auto,
                      heads=heads)


TINY = {
    # BERT's modules: post-LN (ERNIE, LayoutLM, MarkupLM, RemBERT, RoCBert, X-MOD with its language adapters),
    # rotary (RoFormer), pre-LN (Megatron-BERT), pre-LN and rotary (ESM-2), BigBird's full attention
    "ernie": _bert_layout("Ernie"),
    "roformer": _bert_layout("RoFormer"),
    "layoutlm": _bert_layout("LayoutLM"),
    "markuplm": _bert_layout("MarkupLM", lm="ForTokenClassification", auto=_TOKENS, bos_token_id=0, eos_token_id=2),
    "rembert": _bert_layout("RemBert", input_embedding_size=16, output_embedding_size=16),
    "roc_bert": _bert_layout("RoCBert"),
    "xmod": _bert_layout("Xmod", languages=("en_XX", "de_DE"), default_language="en_XX"),
    "big_bird": _bert_layout("BigBird", attention_type="original_full"),
    "megatron-bert": _bert_layout("MegatronBert"),
    "esm": _bert_layout("Esm", position_embedding_type="rotary", pad_token_id=1, mask_token_id=2,
                        token_dropout=True, emb_layer_norm_before=False),
    # LayoutLMv3 (its box embeddings: 4 coordinates and 2 shapes fill hidden_size): heads prune without the
    # encoder-wide relative-position biases; with them (its default) they are refused
    "layoutlmv3-no-bias": _bert_layout("LayoutLMv3", lm="ForTokenClassification", auto=_TOKENS,
                                       coordinate_size=4, shape_size=8, has_relative_attention_bias=False,
                                       has_spatial_attention_bias=False),
    "layoutlmv3": TinyFamily(("LayoutLMv3Config", "LayoutLMv3Model", "LayoutLMv3ForTokenClassification"),
                             dict(_ENCODER, coordinate_size=4, shape_size=8, rel_pos_bins=8, max_rel_pos=16,
                                  rel_2d_pos_bins=8, max_rel_2d_pos=16),
                             heads=False, auto=_TOKENS),
    # LiLT: its layout embeddings take hidden_size // 6 per box coordinate (hidden 48: 4 heads of 12)
    "lilt": TinyFamily(("LiltConfig", "LiltModel", "LiltForTokenClassification"), dict(_ENCODER, hidden_size=48),
                       heads=False, auto=_TOKENS),
    "convbert": TinyFamily(("ConvBertConfig", "ConvBertModel", "ConvBertForMaskedLM"),
                           dict(_ENCODER, embedding_size=32), heads=False),
    "deberta": TinyFamily(("DebertaConfig", "DebertaModel", "DebertaForMaskedLM"),
                          dict(_ENCODER, relative_attention=True, pos_att_type=["p2c", "c2p"],
                               max_relative_positions=16), heads=False),
    # ALBERT: one layer group of two layers (inner_group_num=2), the group run at both depths
    # (tests/test_models_encoders.py: one layer run at every depth)
    "albert": TinyFamily(("AlbertConfig", "AlbertModel", "AlbertForMaskedLM"),
                         dict(_ENCODER, embedding_size=16, inner_group_num=2)),
    # MobileBERT: bottlenecks (true_hidden_size 32 inside, hidden_size 16 between blocks; 4 heads of 8) and 4 MLPs
    # per layer (ffn.0 .. ffn.2, then BERT's)
    "mobilebert": TinyFamily(("MobileBertConfig", "MobileBertModel", "MobileBertForMaskedLM"),
                             dict(_ENCODER, hidden_size=16, embedding_size=16, intra_bottleneck_size=32,
                                  num_feedforward_networks=4)),
    # Longformer: sliding windows of 4 tokens (the 9 tokens padded to 12); heads refused (local and global
    # projections per head): MLP only
    "longformer": _bert_layout("Longformer", heads=False, attention_window=4, pad_token_id=1),
    # LUKE: words only here (tests/test_models_encoders.py: words and entities, entity-aware attention)
    "luke": _bert_layout("Luke", entity_vocab_size=11, entity_emb_size=16, pad_token_id=1),
    "nomic_bert": TinyFamily(("NomicBertConfig", "NomicBertModel", "NomicBertForMaskedLM"), _LLAMA_NAMED),
    "gte": TinyFamily(("GteConfig", "GteModel", "GteForMaskedLM"), _LLAMA_NAMED),  # transformers >= 5.24
    "jina_embeddings_v3": TinyFamily(("JinaEmbeddingsV3Config", "JinaEmbeddingsV3Model",
                                      "JinaEmbeddingsV3ForMaskedLM"), _LLAMA_NAMED),
    "esmc": TinyFamily(("EsmcConfig", "EsmcModel", "EsmcForMaskedLM"), _LLAMA_NAMED, heads=False),
}
