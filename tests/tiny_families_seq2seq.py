"""Tiny encoder-decoders of masked_dora/models/families_seq2seq.py (see tests/tiny_family_table.py): 2 layers per
stack, hidden 32, 4 heads of 8, MLP 64, vocab 97; decoder inputs given, generate() from the input ids compared."""

from tiny_family_table import TinyFamily

_GEMMA2_STACK = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, max_position_embeddings=64,
                     sliding_window=4, layer_types=["sliding_attention", "full_attention"], pad_token_id=0,
                     bos_token_id=1, eos_token_id=2)
_TOKENS = dict(vocab_size=97, pad_token_id=0, bos_token_id=1, eos_token_id=2)

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
}
