"""Tiny hybrid decoders (masked_dora/models/families_hybrid.py): 2 layers, one of each mixer (attention and the
linear-attention / state-space one), hidden 32, 4 heads of head_dim 8 with 2 KV heads, MLP 64, vocab 97. Their
heads are refused: the chain prunes the MLP of every block."""

from tiny_family_table import TinyFamily

_COMMON = dict(vocab_size=97, num_hidden_layers=2, max_position_embeddings=64, hidden_size=32, intermediate_size=64,
               num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# a small Mamba-2 mixer: 4 heads of 16 (expand 2 x hidden 32), state 8, chunks of 4 tokens
_MAMBA = dict(mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2,
              mamba_chunk_size=4)


def _lm(prefix: str, model: str = "", lm: str = "", **config) -> TinyFamily:
    """A causal LM whose classes are ``<prefix>Config``, ``<prefix>Model``, ``<prefix>ForCausalLM``."""
    return TinyFamily(classes=(f"{prefix}Config", model or f"{prefix}Model", lm or f"{prefix}ForCausalLM"),
                      config={**_COMMON, **config}, kv_heads=2, causal_lm=True, heads=False)


TINY = {
    # layer 0 gated DeltaNet, layer 1 gated full attention
    "qwen3_5_text": _lm("Qwen3_5Text", lm="Qwen3_5ForCausalLM", head_dim=8, layer_types=[
        "linear_attention", "full_attention"], linear_conv_kernel_dim=4, linear_key_head_dim=8,
        linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4),
    "olmo_hybrid": _lm("OlmoHybrid", layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                       linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8),
    # attention and Mamba-2 in parallel in both blocks, MuP multipliers
    "falcon_h1": _lm("FalconH1", head_dim=8, mamba_d_ssm=64, mlp_multipliers=[0.5, 2.0], embedding_multiplier=2.0,
                     lm_head_multiplier=0.5, **_MAMBA),
    # layer 0 Mamba-2, layer 1 attention
    "bamba": _lm("Bamba", attn_layer_indices=[1], **_MAMBA),
    # layer 0 short convolution, layer 1 attention; the MLP width as given
    "lfm2": _lm("Lfm2", layer_types=["conv", "full_attention"], block_auto_adjust_ff_dim=False),
    # the MLP width derived from intermediate_size (2/3 of 96, a multiple of 16): the per-layer form
    "lfm2-auto-ff": _lm("Lfm2", layer_types=["conv", "full_attention"], intermediate_size=96,
                        block_auto_adjust_ff_dim=True, block_ffn_dim_multiplier=1.0, block_multiple_of=16),
    # layer 0 Mamba-2, layer 1 attention; a dense shared_mlp (width 64) beside an MoE of 4 experts (kept whole)
    "granitemoehybrid": _lm("GraniteMoeHybrid", layer_types=["mamba", "attention"], shared_intermediate_size=64,
                            num_local_experts=4, num_experts_per_tok=2, **_MAMBA),
}
TINY.update({
    # blocks: Mamba-2, MLP, attention, MoE (4 experts, kept whole): the MLP prunes in block 1 only
    "nemotron_h": _lm("NemotronH", num_hidden_layers=4, head_dim=8, layers_block_type=[
        "linear_attention", "mlp", "full_attention", "moe"], mamba_num_heads=4, mamba_head_dim=16, n_groups=1,
        ssm_state_size=8, chunk_size=4, expand=2, conv_kernel=4, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=16, moe_shared_expert_intermediate_size=16),
    # blocks 0, 2 Mamba with the MLP, 1, 3 attention with an MoE of 4 experts (kept whole): the per-layer form
    "jamba": _lm("Jamba", num_hidden_layers=4, num_experts=4, num_experts_per_tok=2, expert_layer_period=2,
                 expert_layer_offset=1, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=8, mamba_d_conv=4,
                 mamba_expand=2),
    # no experts: the MLP in every block, plain
    "jamba-dense": _lm("Jamba", num_experts=1, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=8,
                       mamba_d_conv=4, mamba_expand=2),
})
TINY.update({
    # layer 0 short convolution, layer 1 gated attention; sandwich norms
    "lfm3": _lm("Lfm3", head_dim=8, layer_types=["conv", "full_attention"], use_sandwich_norm=True,
                use_attention_gate=True),
    # layer 0 RG-LRU recurrent, layer 1 local attention; mlp_block width intermediate_size // 2 (per-layer form)
    "recurrent_gemma": _lm("RecurrentGemma", lm="RecurrentGemmaForCausalLM", intermediate_size=128, lru_width=32,
                           attention_window_size=8, block_types=["recurrent", "attention"], num_key_value_heads=2),
})
# Gated DeltaNet (Qwen3.5's) and attention blocks with Qwen2-MoE's sparse block: 4 experts of width 32, top-2, and a
# shared expert of width 48 (kept whole)
_QWEN_MOE_HYBRID = dict(head_dim=8, layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=4,
                        linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                        linear_num_value_heads=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                        shared_expert_intermediate_size=48)
TINY.update({
    # block 0 dense by mlp_only_layers (the Llama MLP, width 64: a group of its own), block 1 the MoE
    "qwen3_next": _lm("Qwen3Next", mlp_only_layers=[0], **_QWEN_MOE_HYBRID),
    # Qwen3_5MoeForCausalLM: the MoE in both blocks
    "qwen3_5_moe_text": _lm("Qwen3_5MoeText", lm="Qwen3_5MoeForCausalLM", **_QWEN_MOE_HYBRID),
})
TINY.update({
    # block 0 Kimi delta attention with the dense MLP (width 64), block 1 MLA with DeepSeek-V3's MoE block (4 experts
    # of width 32, top-2, a shared expert kept whole)
    "kimi_linear": _lm("KimiLinear", num_key_value_heads=4, layer_types=["linear_attention", "full_attention"],
                       mlp_layer_types=["dense", "sparse"], moe_intermediate_size=32, num_local_experts=4,
                       num_experts_per_tok=2, n_shared_experts=1, kv_lora_rank=16, qk_rope_head_dim=4,
                       qk_nope_head_dim=4, v_head_dim=8, linear_head_dim=8, linear_num_heads=4,
                       linear_conv_kernel_dim=4),
    # Ling 2.5: layer 0 delta attention with the dense MLP (width 64), layer 1 MLA with 4 experts (width 32) and a
    # shared expert (kept whole); linear heads 4 of head_dim 8
    "bailing_hybrid": _lm("BailingHybrid", num_key_value_heads=4, layer_types=["linear_attention", "full_attention"],
                          mlp_layer_types=["dense", "sparse"], moe_intermediate_size=32, num_local_experts=4,
                          num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1, kv_lora_rank=16,
                          qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, head_dim=8, short_conv_kernel_size=4),
    # block 0 short convolution with LFM2's dense feed_forward (width 64), block 1 attention with 4 experts (width 32)
    "lfm2_moe": _lm("Lfm2Moe", layer_types=["conv", "full_attention"], num_dense_layers=1, moe_intermediate_size=32,
                    num_experts=4, num_experts_per_tok=2),
    # layer 0 lightning attention, layer 1 softmax attention, each with 4 experts of width 64
    "minimax": _lm("MiniMax", head_dim=8, layer_types=["linear_attention", "full_attention"], num_local_experts=4,
                   num_experts_per_tok=2, block_size=4, full_attn_alpha_factor=0.5, mlp_alpha_factor=2.0),
    # Qwen4-Exp (text): the MoE in both blocks (block 1 indexed attention: "full_attention", the released
    # checkpoints' name, which each version maps to its own sparse attention), between hyper-connections of 2
    # residual streams; the QSA indexer's budget (8 blocks of 2 tokens) covers every position the chain runs
    "qwen4_exp_text": _lm("Qwen4ExpText", lm="Qwen4ExpForCausalLM", **dict(
        _QWEN_MOE_HYBRID, layer_types=["linear_attention", "full_attention"]), hc_count=2, hc_lowrank=8,
        indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=8, indexer_budget=16, indexer_compress_ratio=2),
})
