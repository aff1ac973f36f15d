"""Tiny encoders and encoder-decoders added as table entries (:mod:`tiny_family_table`)."""

from tiny_family_table import TinyFamily

_ENCODER = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64)

TINY = {
    "mpnet": TinyFamily(("MPNetConfig", "MPNetModel", "MPNetForMaskedLM"), _ENCODER, heads=False),
    "camembert": TinyFamily(("CamembertConfig", "CamembertModel", "CamembertForMaskedLM"), _ENCODER),
    "data2vec-text": TinyFamily(("Data2VecTextConfig", "Data2VecTextModel", "Data2VecTextForMaskedLM"), _ENCODER),
    "roberta-prelayernorm": TinyFamily(("RobertaPreLayerNormConfig", "RobertaPreLayerNormModel",
                                        "RobertaPreLayerNormForMaskedLM"), _ENCODER),
    "xlm-roberta-xl": TinyFamily(("XLMRobertaXLConfig", "XLMRobertaXLModel", "XLMRobertaXLForMaskedLM"), _ENCODER),
}
