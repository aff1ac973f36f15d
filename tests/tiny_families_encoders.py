"""Tiny encoders and encoder-decoders added as table entries (:mod:`tiny_family_table`)."""

from tiny_family_table import TinyFamily

_ENCODER = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64)
# BART-like encoder-decoders (2 + 2 layers, decoder MLP 48). mbart and plbart shift input_ids into decoder inputs,
# so the family chain calls them with input_ids + attention_mask; marian, m2m_100, pegasus and blenderbot need
# decoder inputs: tests/test_models_seq2seq_families.py runs them
SEQ2SEQ = dict(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=48,
               encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=64, dropout=0.0,
               attention_dropout=0.0, activation_dropout=0.0)

TINY = {
    "mpnet": TinyFamily(("MPNetConfig", "MPNetModel", "MPNetForMaskedLM"), _ENCODER, heads=False),
    "camembert": TinyFamily(("CamembertConfig", "CamembertModel", "CamembertForMaskedLM"), _ENCODER),
    "data2vec-text": TinyFamily(("Data2VecTextConfig", "Data2VecTextModel", "Data2VecTextForMaskedLM"), _ENCODER),
    "roberta-prelayernorm": TinyFamily(("RobertaPreLayerNormConfig", "RobertaPreLayerNormModel",
                                        "RobertaPreLayerNormForMaskedLM"), _ENCODER),
    "xlm-roberta-xl": TinyFamily(("XLMRobertaXLConfig", "XLMRobertaXLModel", "XLMRobertaXLForMaskedLM"), _ENCODER),
    "mbart": TinyFamily(("MBartConfig", "MBartModel", "MBartForConditionalGeneration"), SEQ2SEQ,
                        auto="AutoModelForSeq2SeqLM"),
    "plbart": TinyFamily(("PLBartConfig", "PLBartModel", "PLBartForConditionalGeneration"), SEQ2SEQ,
                         auto="AutoModelForSeq2SeqLM"),
}
