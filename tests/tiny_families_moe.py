"""Tiny MoE decoders of masked_dora/models/families_moe.py and the MoE types that joined an existing spec
(deepseek_v2, granitemoeshared); see tests/tiny_family_table.py. Each has 4 experts, top-2."""

from tiny_family_table import TinyFamily

_GQA_MOE = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                num_hidden_layers=2, vocab_size=97, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                eos_token_id=2)
# one dense block (width 64), then an MoE block: experts of width 32 and one shared expert of width 32 (kept whole)
_DENSE_THEN_MOE = dict(_GQA_MOE, moe_intermediate_size=32, num_experts_per_tok=2, head_dim=8)
# DeepSeek-V3's blocks under MLA: block 0 dense (width 64), block 1 4 experts (width 32, top-2) and a shared expert
_MLA_MOE = dict(_GQA_MOE, num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
                n_shared_experts=1, n_group=1, topk_group=1, mlp_layer_types=["dense", "sparse"], q_lora_rank=16,
                kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, head_dim=4)

TINY = {
    # experts of width intermediate_size (64); q/k norms over all heads' width: heads refused
    "olmoe": TinyFamily(("OlmoeConfig", "OlmoeModel", "OlmoeForCausalLM"),
                        dict(_GQA_MOE, num_experts=4, num_experts_per_tok=2),
                        kv_heads=2, causal_lm=True, heads=False),
    "flex_olmo": TinyFamily(("FlexOlmoConfig", "FlexOlmoModel", "FlexOlmoForCausalLM"),
                            dict(_GQA_MOE, num_experts=4, num_experts_per_tok=2),
                            kv_heads=2, causal_lm=True, heads=False),
    "minimax_m2": TinyFamily(("MiniMaxM2Config", "MiniMaxM2Model", "MiniMaxM2ForCausalLM"),
                             dict(_GQA_MOE, num_local_experts=4, num_experts_per_tok=2, head_dim=8),
                             kv_heads=2, causal_lm=True, heads=False),
    # per-head q/k norms (use_qk_norm) and partial rotary
    "glm4_moe": TinyFamily(("Glm4MoeConfig", "Glm4MoeModel", "Glm4MoeForCausalLM"),
                           dict(_DENSE_THEN_MOE, n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1,
                                n_group=1, topk_group=1, use_qk_norm=True),
                           kv_heads=2, causal_lm=True),
    "dots1": TinyFamily(("Dots1Config", "Dots1Model", "Dots1ForCausalLM"),
                        dict(_DENSE_THEN_MOE, n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1,
                             n_group=1, topk_group=1),
                        kv_heads=2, causal_lm=True),
    # biases on q/k/v/o and the dense MLP (use_bias)
    "ernie4_5_moe": TinyFamily(("Ernie4_5_MoeConfig", "Ernie4_5_MoeModel", "Ernie4_5_MoeForCausalLM"),
                               dict(_DENSE_THEN_MOE, moe_num_experts=4, moe_k=2, moe_num_shared_experts=1,
                                    moe_layer_start_index=1, use_bias=True),
                               kv_heads=2, causal_lm=True),
    # every block MoE
    "solar_open": TinyFamily(("SolarOpenConfig", "SolarOpenModel", "SolarOpenForCausalLM"),
                             dict(_DENSE_THEN_MOE, n_routed_experts=4, n_shared_experts=1, n_group=1, topk_group=1),
                             kv_heads=2, causal_lm=True),
    # block 0 dense by mlp_layer_types; Exaone-4's attention (per-head q/k norms, a sliding-window layer)
    "exaone_moe": TinyFamily(("ExaoneMoeConfig", "ExaoneMoeModel", "ExaoneMoeForCausalLM"),
                             dict(_DENSE_THEN_MOE, num_experts=4, num_shared_experts=1,
                                  mlp_layer_types=["dense", "sparse"], sliding_window=4, sliding_window_pattern=2),
                             kv_heads=2, causal_lm=True),
    # HY-V3: block 0 dense by mlp_layer_types, per-head q/k norms
    "hy_v3": TinyFamily(("HYV3Config", "HYV3Model", "HYV3ForCausalLM"),
                        dict(_DENSE_THEN_MOE, num_experts=4, num_shared_experts=1, mlp_layer_types=["dense", "sparse"]),
                        kv_heads=2, causal_lm=True),
    # experts and a shared_mlp both of width intermediate_size (64); per-head query/key_layernorm
    "hunyuan_v1_moe": TinyFamily(("HunYuanMoEV1Config", "HunYuanMoEV1Model", "HunYuanMoEV1ForCausalLM"),
                                 dict(_GQA_MOE, num_experts=4, moe_topk=2, head_dim=8),
                                 kv_heads=2, causal_lm=True),
    # block 0 dense (width prefix_dense_intermediate_size, 48), block 1 experts of width 64 and a shared expert
    # of width 64; Cohere-2's sliding-window (rotary) and global (no rotary) layers
    "cohere2_moe": TinyFamily(("Cohere2MoeConfig", "Cohere2MoeModel", "Cohere2MoeForCausalLM"),
                              dict(_GQA_MOE, num_experts=4, num_experts_per_tok=2, num_shared_experts=1, head_dim=8,
                                   mlp_layer_types=["dense", "sparse"], prefix_dense_intermediate_size=48,
                                   layer_types=["sliding_attention", "full_attention"], sliding_window=4),
                              kv_heads=2, causal_lm=True),
    # experts stored (E, in, out) with interleaved gate/up rows, biases and a clamped SwiGLU; per-head attention
    # sinks; a sliding-window and a full-attention layer
    "gpt_oss": TinyFamily(("GptOssConfig", "GptOssModel", "GptOssForCausalLM"),
                          dict(_GQA_MOE, num_local_experts=4, num_experts_per_tok=2, head_dim=8, sliding_window=4,
                               layer_types=["sliding_attention", "full_attention"]),
                          kv_heads=2, causal_lm=True),
    # Llama 4's text model: block 0 dense (width intermediate_size_mlp, 64), block 1 experts (width 32, top-1,
    # stored (E, in, out)) and a shared expert (32); block 0 with rotary and the q/k L2 norm, block 1 NoPE with
    # temperature tuning and chunked attention
    "llama4_text": TinyFamily(("Llama4TextConfig", "Llama4TextModel", "Llama4ForCausalLM"),
                              dict(_GQA_MOE, intermediate_size=32, intermediate_size_mlp=64, head_dim=8,
                                   num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=2,
                                   no_rope_layers=[1, 0], attention_chunk_size=4, use_qk_norm=True,
                                   attn_temperature_tuning=True, floor_scale=2, attn_scale=0.5),
                              kv_heads=2, causal_lm=True),
    # GraniteMoeShared with per-head attention sinks, a full-attention and a sliding-window layer
    "granitemoe_swa": TinyFamily(("GraniteMoeSWAConfig", "GraniteMoeSWAModel", "GraniteMoeSWAForCausalLM"),
                                 dict(_GQA_MOE, num_local_experts=4, num_experts_per_tok=2,
                                      shared_intermediate_size=48, sliding_window=4),
                                 kv_heads=2, causal_lm=True),
    # DeepSeek-V3's blocks and MLA (heads refused)
    "deepseek_v2": TinyFamily(("DeepseekV2Config", "DeepseekV2Model", "DeepseekV2ForCausalLM"),
                              dict(_GQA_MOE, num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=4,
                                   num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
                                   q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4,
                                   v_head_dim=8),
                              causal_lm=True, heads=False),
    # DeepSeek-V3's blocks (block 0 dense by mlp_layer_types) and MLA with the sparse-attention indexer (heads
    # refused); GLM-5's (glm_moe_dsa) the same; GLM-4.7-Flash's without the indexer
    "deepseek_v32": TinyFamily(("DeepseekV32Config", "DeepseekV32Model", "DeepseekV32ForCausalLM"),
                               dict(_MLA_MOE, index_topk=4, index_head_dim=8, index_n_heads=2),
                               causal_lm=True, heads=False),
    "glm_moe_dsa": TinyFamily(("GlmMoeDsaConfig", "GlmMoeDsaModel", "GlmMoeDsaForCausalLM"),
                              dict(_MLA_MOE, index_topk=4, index_head_dim=8, index_n_heads=2),
                              causal_lm=True, heads=False),
    "glm4_moe_lite": TinyFamily(("Glm4MoeLiteConfig", "Glm4MoeLiteModel", "Glm4MoeLiteForCausalLM"), dict(_MLA_MOE),
                                causal_lm=True, heads=False),
    # block 0 dense (Llama's MLP, width 64) by mlp_layer_types, block 1 4 experts of width 32; a sliding-window
    # layer (twice the KV heads, sinks) and a full one; value heads 4 wide (heads refused)
    "mimo_v2_flash": TinyFamily(("MiMoV2FlashConfig", "MiMoV2FlashModel", "MiMoV2FlashForCausalLM"),
                                dict(_GQA_MOE, num_key_value_heads=1, moe_intermediate_size=32, n_routed_experts=4,
                                     num_experts_per_tok=2, head_dim=8, v_head_dim=4, sliding_window=4,
                                     layer_types=["sliding_attention", "full_attention"],
                                     mlp_layer_types=["dense", "sparse"]),
                                kv_heads=1, causal_lm=True, heads=False),
    # block 0 dense (width 64), block 1 4 experts of width 32 and a shared expert (32, kept whole); per-query-channel
    # output gate (its rows cut with the heads), q/k norms, a sliding-window and a full-attention layer
    "afmoe": TinyFamily(("AfmoeConfig", "AfmoeModel", "AfmoeForCausalLM"),
                        dict(_GQA_MOE, moe_intermediate_size=32, num_dense_layers=1, head_dim=8, num_experts=4,
                             num_experts_per_tok=2, num_shared_experts=1, sliding_window=4,
                             layer_types=["sliding_attention", "full_attention"]),
                        kv_heads=2, causal_lm=True),
    # block 0 dense (width 64), block 1 4 experts of width 32 and a shared expert (48, kept whole); per-layer head
    # counts and the g_proj output gate: heads refused
    "laguna": TinyFamily(("LagunaConfig", "LagunaModel", "LagunaForCausalLM"),
                         dict(_GQA_MOE, moe_intermediate_size=32, shared_expert_intermediate_size=48, head_dim=8,
                              num_experts=4, num_experts_per_tok=2, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"], num_attention_heads_per_layer=[4, 2],
                              mlp_layer_types=["dense", "sparse"]),
                         kv_heads=2, causal_lm=True, heads=False),
    # 4 experts of width 32 (top-2) stored 2-D (w1, v1, w2: (4 * 32, 32)); fused Wqkv with 2 KV heads, clip_qkv
    "dbrx": TinyFamily(("DbrxConfig", "DbrxModel", "DbrxForCausalLM"),
                       dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=97, pad_token_id=0,
                            attn_config=dict(kv_n_heads=2, clip_qkv=2.0, rope_theta=10000.0),
                            ffn_config=dict(ffn_hidden_size=32, moe_num_experts=4, moe_top_k=2)),
                       kv_heads=2, causal_lm=True),
    # GraniteMoE with a shared_mlp of width shared_intermediate_size (48), kept whole
    "granitemoeshared": TinyFamily(("GraniteMoeSharedConfig", "GraniteMoeSharedModel",
                                    "GraniteMoeSharedForCausalLM"),
                                   dict(_GQA_MOE, num_local_experts=4, num_experts_per_tok=2,
                                        shared_intermediate_size=48),
                                   kv_heads=2, causal_lm=True),
    # DeepSeek-V4: block 0 hash-routed (a frozen token-id table), block 1 top-k routed; experts and shared experts
    # of width 32 (per-layer form); hyper-connections over 2 streams; swiglu_limit 0.05, so the clipping of gate and
    # up binds; heads refused. Sliding attention in both (the compressed layers' compressor and indexer, which
    # pruning leaves as they are, would double the test's time)
    "deepseek_v4": TinyFamily(("DeepseekV4Config", "DeepseekV4Model", "DeepseekV4ForCausalLM"),
                              dict(_GQA_MOE, num_key_value_heads=1, head_dim=16, q_lora_rank=16, n_routed_experts=4,
                                   num_experts_per_tok=2, moe_intermediate_size=32, hc_mult=2, hc_sinkhorn_iters=3,
                                   o_groups=2, o_lora_rank=8, index_n_heads=2, index_head_dim=8, index_topk=16,
                                   sliding_window=4, partial_rotary_factor=0.5, swiglu_limit=0.05,
                                   layer_types=["sliding_attention", "sliding_attention"],
                                   mlp_layer_types=["hash_moe", "moe"],
                                   compress_rates={"compressed_sparse_attention": 2,
                                                   "heavily_compressed_attention": 4}),
                              kv_heads=1, causal_lm=True, heads=False),
    # HY-V4: block 0 dense (width 64), block 1 of 4 clipped experts (swiglu_limit 0.05 binds) and a shared expert
    # (width 32 each, per-layer form); MLA with a per-head output gate and an indexer; heads refused
    "hy_v4": TinyFamily(("HYV4Config", "HYV4Model", "HYV4ForCausalLM"),
                        dict(_DENSE_THEN_MOE, n_routed_experts=4, n_shared_experts=1, q_lora_rank=16, kv_lora_rank=16,
                             qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=8, index_topk=16, index_head_dim=8,
                             index_n_heads=2, hc_mult=2, swiglu_limit=0.05, mlp_layer_types=["dense", "sparse"]),
                        kv_heads=4, causal_lm=True, heads=False),
    # A.X K1: DeepSeek-V3's blocks (block 0 dense by first_k_dense_replace, the name both 5.17 and 5.24 read) and
    # MLA (heads refused), the MoE's output through post_mlp_layernorm; A.X K2: the same blocks, MLA with a query
    # gate and an indexer, gated RMS norms (rank 4)
    "axk1": TinyFamily(("AXK1Config", "AXK1Model", "AXK1ForCausalLM"),
                       dict({k: v for k, v in _MLA_MOE.items() if k != "mlp_layer_types"}, first_k_dense_replace=1),
                       causal_lm=True, heads=False),
    "axk2": TinyFamily(("AXK2Config", "AXK2Model", "AXK2ForCausalLM"),
                       dict(_MLA_MOE, index_topk=4, index_head_dim=8, index_n_heads=2, gated_norm_rank=4),
                       causal_lm=True, heads=False),
    # Sarvam-30B: GLM-4.5's classes under its own config (per-head q/k norms, full-width rotary); Sarvam-105B:
    # DeepSeek-V3's classes, blocks and MLA (heads refused), block 0 dense by first_k_dense_replace
    "sarvam_moe": TinyFamily(("SarvamMoEConfig", "Glm4MoeModel", "Glm4MoeForCausalLM"),
                             dict(_DENSE_THEN_MOE, n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1,
                                  n_group=1, topk_group=1, use_qk_norm=True),
                             kv_heads=2, causal_lm=True),
    "sarvam_mla": TinyFamily(("SarvamMLAConfig", "DeepseekV3Model", "DeepseekV3ForCausalLM"),
                             dict({k: v for k, v in _MLA_MOE.items() if k not in ("mlp_layer_types", "head_dim")},
                                  first_k_dense_replace=1),
                             causal_lm=True, heads=False),
}
