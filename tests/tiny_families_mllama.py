"""Llama 3.2 Vision's text model alone (``MllamaForCausalLM``, masked_dora/models/families_vlm.py ``mllama_text``):
2 layers, layer 0 self-attention, layer 1 cross-attention (``cross_attention_layers``), hidden 32, 4 heads of 8
with 2 KV heads, MLP 64, vocab 97. On text alone the cross-attention layer is skipped (it has no image to read);
both layers' MLPs and heads prune, the heads in the per-layer form (head_dim is hidden_size // heads)."""

from tiny_family_table import TinyFamily

TINY = {
    "mllama_text_model": TinyFamily(
        classes=("MllamaTextConfig", "MllamaTextModel", "MllamaForCausalLM"),
        config=dict(vocab_size=97, num_hidden_layers=2, cross_attention_layers=[1], max_position_embeddings=64,
                    hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2,
                    rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        kv_heads=2, causal_lm=True),
}
