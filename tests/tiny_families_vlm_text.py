"""The language models of VLMs (``masked_dora/models/families_vlm_2026.py``) that transformers also builds alone as
causal LMs: MiniMax-M3's (``MiniMaxM3VLForCausalLM``): 2 layers, hidden 32, 4 heads of 8 with 2 KV heads, vocab 97;
block 0 a "minimax_m3_sparse" layer (its indexer keeps 1 scored block of 4 keys and the local one) with a fused
dense MLP of width 64, block 1 full attention with 4 experts of width 64 (2 per token) beside a shared expert of
width 32 (kept whole), gpt-oss's clamped SwiGLU (limit 0.5 binds). Block 0 keeps its heads whole (its indexer's
choice is per KV group), block 1 prunes them: pruned heads save per layer, the MLP alone plainly."""

from tiny_family_table import TinyFamily

TINY = {
    "minimax_m3_vl_text": TinyFamily(
        classes=("MiniMaxM3VLTextConfig", "MiniMaxM3VLTextModel", "MiniMaxM3VLForCausalLM"),
        config=dict(vocab_size=97, num_hidden_layers=2, max_position_embeddings=64, hidden_size=32, head_dim=8,
                    intermediate_size=64, dense_intermediate_size=64, shared_intermediate_size=32,
                    num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                    rotary_dim=4, swiglu_limit=0.5, mlp_layer_types=["dense", "sparse"],
                    layer_types=["minimax_m3_sparse", "full_attention"], index_n_heads=2, index_head_dim=8,
                    index_block_size=4, index_topk_blocks=1, index_local_blocks=1, pad_token_id=0, bos_token_id=1,
                    eos_token_id=2),
        kv_heads=2, causal_lm=True),
}
