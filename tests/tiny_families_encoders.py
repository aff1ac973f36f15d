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
# T5-like (2 layers, d_model 32, d_ff 64, 4 heads of d_kv 8); the chain runs the encoder model (the seq2seq
# models need decoder inputs: UMT5's is in tests/test_models_seq2seq_families.py)
T5_LIKE = dict(vocab_size=97, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=4,
               dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)

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
    # UMT5: a relative-position bias per block, cut to its kept heads
    "umt5": TinyFamily(("UMT5Config", "UMT5EncoderModel", "UMT5EncoderModel"),
                       dict(T5_LIKE, feed_forward_proj="gated-gelu"), auto="UMT5EncoderModel"),
    "umt5-relu": TinyFamily(("UMT5Config", "UMT5EncoderModel", "UMT5EncoderModel"),
                            dict(T5_LIKE, feed_forward_proj="relu"), auto="UMT5EncoderModel"),
    # LongT5: block 0's bias serves every block (T5's refusal); its local and transient-global encoder attention
    "longt5-local": TinyFamily(("LongT5Config", "LongT5EncoderModel", "LongT5EncoderModel"),
                               dict(T5_LIKE, encoder_attention_type="local", feed_forward_proj="relu"),
                               heads=False, auto="LongT5EncoderModel"),
    "longt5-tglobal": TinyFamily(("LongT5Config", "LongT5EncoderModel", "LongT5EncoderModel"),
                                 dict(T5_LIKE, encoder_attention_type="transient-global", global_block_size=4,
                                      feed_forward_proj="gated-gelu"), heads=False, auto="LongT5EncoderModel"),
    # EuroBERT: a bidirectional encoder of Llama's modules (GQA: 2 KV heads); ModernBERT-decoder: a causal LM
    "eurobert": TinyFamily(("EuroBertConfig", "EuroBertModel", "EuroBertForMaskedLM"),
                           dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2, mask_token_id=3), kv_heads=2),
    "modernbert-decoder": TinyFamily(("ModernBertDecoderConfig", "ModernBertDecoderModel",
                                      "ModernBertDecoderForCausalLM"),
                                     dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64, max_position_embeddings=64, local_attention=8,
                                          global_attn_every_n_layers=2, pad_token_id=0, bos_token_id=1,
                                          eos_token_id=2, cls_token_id=1, sep_token_id=2), causal_lm=True),
}
