"""Tiny encoder-decoders of masked_dora/models/families_seq2seq.py (see tests/tiny_family_table.py): 2 layers per
stack, hidden 32, 4 heads of 8, MLP 64, vocab 97; decoder inputs given, generate() from the input ids compared."""

from tiny_family_table import TinyFamily

_GEMMA2_STACK = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, max_position_embeddings=64,
                     sliding_window=4, layer_types=["sliding_attention", "full_attention"], pad_token_id=0,
                     bos_token_id=1, eos_token_id=2)
_TOKENS = dict(vocab_size=97, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_BART_LIKE = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=48,
                  encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=64, dropout=0.0,
                  attention_dropout=0.0, activation_dropout=0.0, decoder_start_token_id=2, **_TOKENS)
_BERT = dict(model_type="bert", vocab_size=97, num_hidden_layers=2, max_position_embeddings=64, hidden_size=32,
             intermediate_size=64, num_attention_heads=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
             pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _bart_like(prefix: str, heads: bool = True, **config) -> TinyFamily:
    """A BART-like encoder-decoder whose classes are ``<prefix>Config``, ``<prefix>Model``,
    ``<prefix>ForConditionalGeneration``."""
    return TinyFamily((f"{prefix}Config", f"{prefix}Model", f"{prefix}ForConditionalGeneration"),
                      dict(_BART_LIKE, **config), auto="AutoModelForSeq2SeqLM", seq2seq=True, heads=heads)


TINY = {
    # two stacks of Gemma 2 blocks (2 KV heads), each sized by its own sub-config; the decoder's MLP narrower
    "t5gemma": TinyFamily(("T5GemmaConfig", "T5GemmaModel", "T5GemmaForConditionalGeneration"),
                          dict(encoder=_GEMMA2_STACK, decoder=dict(_GEMMA2_STACK, intermediate_size=48), **_TOKENS),
                          kv_heads=2, auto="AutoModelForSeq2SeqLM", seq2seq=True),
    # Gemma 3 blocks: the encoder's text model beside a 1-layer SigLIP tower (kept whole), run on text; the decoder's
    # merged self+cross attention prunes its heads exactly (a plain checkpoint)
    "t5gemma2": TinyFamily(("T5Gemma2Config", "T5Gemma2Model", "T5Gemma2ForConditionalGeneration"),
                           dict(encoder=dict(text_config=_GEMMA2_STACK, mm_tokens_per_image=4, boi_token_index=93,
                                             eoi_token_index=94, image_token_index=95,
                                             vision_config=dict(hidden_size=16, intermediate_size=32,
                                                                num_hidden_layers=1, num_attention_heads=2,
                                                                image_size=8, patch_size=4)),
                                decoder=dict(_GEMMA2_STACK, intermediate_size=48), image_token_index=95),
                           kv_heads=2, auto="AutoModelForSeq2SeqLM", seq2seq=True),
    # BART's stacks with heads refused: LED's Longformer encoder (windows of 4), PEGASUS-X's global-local encoder
    # (blocks of 4, 2 global tokens), FSMT (source and target vocabularies)
    "led": _bart_like("LED", heads=False, attention_window=4),
    "pegasus_x": _bart_like("PegasusX", heads=False, block_size=4, num_global_tokens=2),
    "fsmt": _bart_like("FSMT", heads=False, langs=["en", "de"], src_vocab_size=97, tgt_vocab_size=97),
    # BigBird's full attention in the encoder (attention_type="original_full": block_sparse refuses the heads)
    "bigbird_pegasus": _bart_like("BigBirdPegasus", attention_type="original_full"),
    # block 0 of each stack dense (its MLP prunes), block 1 a mixture of 4 experts (kept whole); T5's heads refused
    "switch_transformers": TinyFamily(
        ("SwitchTransformersConfig", "SwitchTransformersModel", "SwitchTransformersForConditionalGeneration"),
        dict(vocab_size=97, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=4,
             num_experts=4, encoder_sparse_step=2, decoder_sparse_step=2, expert_capacity=64, dropout_rate=0.0,
             pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
        auto="AutoModelForSeq2SeqLM", seq2seq=True, heads=False),
    # block 1 of each stack a top-2 mixture of 4 experts (kept whole), block 0 dense; heads prune in every block
    # two models joined (EncoderDecoderModel): a BERT encoder and a BERT decoder with cross-attention (MLP 48)
    "encoder-decoder": TinyFamily(("EncoderDecoderConfig", "EncoderDecoderModel", "EncoderDecoderModel"),
                                  dict(encoder=_BERT, decoder=dict(_BERT, intermediate_size=48, is_decoder=True,
                                                                   add_cross_attention=True),
                                       decoder_start_token_id=2, pad_token_id=0),
                                  auto="AutoModelForSeq2SeqLM", seq2seq=True),
    # a ViT image encoder (8 x 8 images of 4 x 4 patches) and a GPT-2 decoder with cross-attention
    "vision-encoder-decoder": TinyFamily(
        ("VisionEncoderDecoderConfig", "VisionEncoderDecoderModel", "VisionEncoderDecoderModel"),
        dict(encoder=dict(model_type="vit", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, image_size=8, patch_size=4, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0),
             decoder=dict(model_type="gpt2", vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                          add_cross_attention=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1,
                          eos_token_id=2),
             decoder_start_token_id=1, pad_token_id=0),
        inputs="pixel_values", seq2seq=True),
    "nllb-moe": _bart_like("NllbMoe", num_experts=4, expert_capacity=64, encoder_sparse_step=2, decoder_sparse_step=2),
}
