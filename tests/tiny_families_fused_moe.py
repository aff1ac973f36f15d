"""Tiny decoders with fused or unusual attention layouts, and MoE decoders (see tests/tiny_family_table.py)."""

from tiny_family_table import TinyFamily

_DECODER = dict(vocab_size=97, max_position_embeddings=64)
_GQA_MOE = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                num_hidden_layers=2, **_DECODER)
_GPT2_LIKE = dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0)

TINY = {
    # 4 experts of width 32, top-2, and a shared expert of width 48 (kept whole) with its sigmoid gate
    "qwen2_moe": TinyFamily(("Qwen2MoeConfig", "Qwen2MoeModel", "Qwen2MoeForCausalLM"),
                            dict(_GQA_MOE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                 shared_expert_intermediate_size=48),
                            kv_heads=2, causal_lm=True),
    # dense blocks among the expert ones: block 0 holds a dense MLP of width intermediate_size (64), pruned as its
    # own group (ModelSpec(dense_mlp=...)); Qwen3-MoE by mlp_only_layers, Qwen2-MoE by decoder_sparse_step=2 (block
    # 1 is sparse: (1 + 1) % 2 == 0), with its shared expert in the sparse block
    "qwen3_moe-dense": TinyFamily(("Qwen3MoeConfig", "Qwen3MoeModel", "Qwen3MoeForCausalLM"),
                                  dict(_GQA_MOE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                       head_dim=8, mlp_only_layers=[0]),
                                  kv_heads=2, causal_lm=True),
    "qwen2_moe-dense": TinyFamily(("Qwen2MoeConfig", "Qwen2MoeModel", "Qwen2MoeForCausalLM"),
                                  dict(_GQA_MOE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                       shared_expert_intermediate_size=48, decoder_sparse_step=2),
                                  kv_heads=2, causal_lm=True),
    "phimoe": TinyFamily(("PhimoeConfig", "PhimoeModel", "PhimoeForCausalLM"),
                         dict(_GQA_MOE, num_local_experts=4, num_experts_per_tok=2, input_jitter_noise=0.0),
                         kv_heads=2, causal_lm=True),
    "granitemoe": TinyFamily(("GraniteMoeConfig", "GraniteMoeModel", "GraniteMoeForCausalLM"),
                             dict(_GQA_MOE, num_local_experts=4, num_experts_per_tok=2),
                             kv_heads=2, causal_lm=True),
    # multi_query (StarCoder 1, SantaCoder): one KV head, heads prune as query heads
    "gpt_bigcode": TinyFamily(("GPTBigCodeConfig", "GPTBigCodeModel", "GPTBigCodeForCausalLM"), dict(_GPT2_LIKE),
                              kv_heads=1, causal_lm=True),
    "gpt_bigcode-mha": TinyFamily(("GPTBigCodeConfig", "GPTBigCodeModel", "GPTBigCodeForCausalLM"),
                                  dict(_GPT2_LIKE, multi_query=False), causal_lm=True),
    "gptj": TinyFamily(("GPTJConfig", "GPTJModel", "GPTJForCausalLM"), dict(_GPT2_LIKE, rotary_dim=4),
                       causal_lm=True),  # rotary on the first 4 of each head's 8 dims
    # qkv_proj in 4 chunks of one head each here (the heads keep the same count per chunk: all 4 at 50%; the 8-head
    # CodeGen of tests/test_models_fused_moe.py prunes them)
    "codegen": TinyFamily(("CodeGenConfig", "CodeGenModel", "CodeGenForCausalLM"), dict(_GPT2_LIKE, rotary_dim=4),
                          causal_lm=True),
    "gpt_neo": TinyFamily(("GPTNeoConfig", "GPTNeoModel", "GPTNeoForCausalLM"),
                          dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                               attention_types=[[["global", "local"], 1]], window_size=4, embed_dropout=0.0,
                               attention_dropout=0.0, resid_dropout=0.0, **_DECODER),
                          causal_lm=True),
    "biogpt": TinyFamily(("BioGptConfig", "BioGptModel", "BioGptForCausalLM"),
                         dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, activation_dropout=0.0,
                              layerdrop=0.0, **_DECODER),
                         causal_lm=True),
    "persimmon": TinyFamily(("PersimmonConfig", "PersimmonModel", "PersimmonForCausalLM"),
                            dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                 hidden_dropout=0.0, attention_dropout=0.0, **_DECODER),
                            causal_lm=True),
    # one dense block (first_k_dense_replace), then an MoE block of 4 experts (width 32, top-2) and a shared expert;
    # MLA attention (heads refused)
    "deepseek_v3": TinyFamily(("DeepseekV3Config", "DeepseekV3Model", "DeepseekV3ForCausalLM"),
                              dict(_GQA_MOE, num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=4,
                                   num_experts_per_tok=2, n_group=1, topk_group=1, n_shared_experts=1,
                                   first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4,
                                   qk_nope_head_dim=4, v_head_dim=8),
                              causal_lm=True, heads=False),
    # Mistral 4: the same blocks and MLA (heads refused) under its own classes (transformers 5.24)
    "mistral4": TinyFamily(("Mistral4Config", "Mistral4Model", "Mistral4ForCausalLM"),
                           dict(_GQA_MOE, num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=4,
                                num_experts_per_tok=2, n_group=1, topk_group=1, n_shared_experts=1,
                                first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4,
                                qk_nope_head_dim=4, v_head_dim=8),
                           causal_lm=True, heads=False),
    # Llama's MLP (width 64) under MLA (heads refused), residual branches scaled by scale_depth
    "minicpm3": TinyFamily(("MiniCPM3Config", "MiniCPM3Model", "MiniCPM3ForCausalLM"),
                           dict(_GQA_MOE, num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4,
                                qk_nope_head_dim=4, v_head_dim=8, scale_emb=2, dim_model_base=16),
                           causal_lm=True, heads=False),
    # ALiBi: heads refused; MLP width 4 * hidden (128), no config key: per-layer form
    "bloom": TinyFamily(("BloomConfig", "BloomModel", "BloomForCausalLM"),
                        dict(vocab_size=97, hidden_size=32, n_layer=2, n_head=4, hidden_dropout=0.0,
                             attention_dropout=0.0),
                        causal_lm=True, heads=False),
    "mpt": TinyFamily(("MptConfig", "MptModel", "MptForCausalLM"),
                      dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=64, resid_pdrop=0.0,
                           emb_pdrop=0.0),
                      causal_lm=True, heads=False),
}
