"""Tiny decoder-only causal LMs with the Llama module layout (masked_dora/models/families_decoders.py): 2 layers,
hidden 32, 4 heads of head_dim 8 with 2 KV heads, MLP 64, vocab 97, dropout 0; token ids of the special tokens
inside the vocabulary. Each config turns on what its family adds to Llama (biases, NoPE layers, sliding windows,
q/k norms, clamped q/k/v)."""

from tiny_family_table import TinyFamily

_COMMON = dict(vocab_size=97, num_hidden_layers=2, max_position_embeddings=64, hidden_size=32, intermediate_size=64,
               num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)


_GEMMA4 = ("Gemma4TextConfig", "Gemma4TextModel", "Gemma4ForCausalLM")
_GEMMA4_COMMON = dict(_COMMON, num_hidden_layers=4, head_dim=8, global_head_dim=16, num_global_key_value_heads=1,
                      sliding_window=4, layer_types=["sliding_attention", "full_attention"] * 2)


def _lm(prefix: str, heads: bool = True, **config) -> TinyFamily:
    """A causal LM of 2 KV heads whose classes are ``<prefix>Config``, ``<prefix>Model``, ``<prefix>ForCausalLM``."""
    return TinyFamily(classes=(f"{prefix}Config", f"{prefix}Model", f"{prefix}ForCausalLM"),
                      config={**_COMMON, **config}, kv_heads=2, causal_lm=True, heads=heads)


TINY = {
    # NoPE every 2nd layer (no_rope_layer_interval), attention biases
    "smollm3": _lm("SmolLM3", no_rope_layer_interval=2, attention_bias=True),
    # sliding window in every layer
    "ministral": _lm("Ministral", head_dim=8, sliding_window=4),
    # clip_qkv clamps the q/k/v outputs
    "olmo": _lm("Olmo", clip_qkv=0.05),
    # q/k RMSNorm over all heads' width: heads refused
    "olmo3": _lm("Olmo3", heads=False, sliding_window=4),
    "starcoder2": _lm("Starcoder2", use_bias=True, residual_dropout=0.0, embedding_dropout=0.0,
                      attention_dropout=0.0),
    "glm": _lm("Glm", head_dim=8, attention_bias=True),
    "glm4": _lm("Glm4", head_dim=8, attention_bias=True),
    # per-head q/k norms over head_dim; layer 0 sliding with RoPE, layer 1 global without (sliding_window_pattern)
    "exaone4": _lm("Exaone4", head_dim=8, sliding_window=4, sliding_window_pattern=2),
    "helium": _lm("Helium", head_dim=8, attention_bias=True),
    "ernie4_5": _lm("Ernie4_5", head_dim=8, use_bias=True),
    "seed_oss": _lm("SeedOss", head_dim=8, attention_bias=True, attention_out_bias=True, attention_dropout=0.0,
                    residual_dropout=0.0),
    # q/k norms over head_dim after RoPE
    "hunyuan_v1_dense": _lm("HunYuanDenseV1", head_dim=8),
    "arcee": _lm("Arcee", head_dim=8, mlp_bias=True),
    "nemotron": _lm("Nemotron", head_dim=8, mlp_bias=True),
    # xIELU (0 -> about -8e-7): the MLP's pruned channels are gated at down_proj's input too
    "apertus": _lm("Apertus", head_dim=8),
    # soft-capped attention logits, sliding window
    "vaultgemma": _lm("VaultGemma", head_dim=8, query_pre_attn_scalar=8, sliding_window=4),
    # a query scale growing with the position (llama_4_scaling_beta, from position original_max_position_embeddings)
    "ministral3": _lm("Ministral3", head_dim=8, rope_parameters=dict(
        rope_type="yarn", rope_theta=1e6, factor=4.0, original_max_position_embeddings=4, beta_fast=32.0,
        beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0, llama_4_scaling_beta=0.1)),
    # layer 1 sliding (layer_types), Llama-3 RoPE scaling
    "cwm": _lm("Cwm", head_dim=8, sliding_window=4, rope_parameters=dict(
        rope_type="llama3", rope_theta=1e6, factor=4.0, high_freq_factor=4.0, low_freq_factor=1.0,
        original_max_position_embeddings=16)),
    # norms after the attention and the MLP (use_post_norm), MuP multipliers on embeddings, residuals and logits
    "hyperclovax": _lm("HyperCLOVAX", head_dim=8, use_post_norm=True, embedding_multiplier=2.0,
                       residual_multiplier=0.5, logits_scaling=0.5, attention_multiplier=0.3),
    # Llama's classes under their own config (model types exaone, internlm3, iquestcoder); internlm3: biases
    "internlm3": TinyFamily(classes=("InternLM3Config", "LlamaModel", "LlamaForCausalLM"), config=dict(
        _COMMON, head_dim=8, attention_bias=True, mlp_bias=True), kv_heads=2, causal_lm=True),
    "exaone": TinyFamily(classes=("ExaoneConfig", "LlamaModel", "LlamaForCausalLM"), config=dict(_COMMON, head_dim=8),
                         kv_heads=2, causal_lm=True),
    "iquestcoder": TinyFamily(classes=("IQuestCoderConfig", "LlamaModel", "LlamaForCausalLM"),
                              config=dict(_COMMON, head_dim=8), kv_heads=2, causal_lm=True),
    # parallel attention and MLP with one LayerNorm; layer 0 sliding with RoPE, layer 1 global without
    "cohere2": _lm("Cohere2", sliding_window=4, layer_types=["sliding_attention", "full_attention"]),
    # an attention sink per query head (sinks, made distinct in tiny_models), sliding layer 1, multipliers
    "granite_swa": _lm("GraniteSWA", sliding_window=4, embedding_multiplier=2.0, residual_multiplier=0.5,
                       logits_scaling=2.0, attention_multiplier=0.3),
    # non-gated ReLU^2 MLP, LayerNorms, biases
    "jais2": _lm("Jais2", head_dim=8, attention_bias=True, mlp_bias=True),
    # differential attention: heads refused
    "diffllama": _lm("DiffLlama", heads=False, head_dim=8),
    # dynamic attention masks (keep_window_size below the sequence length: the top-k mask is on); heads refused
    "doge": _lm("Doge", heads=False, keep_window_size=4),
    # Gemma 4 as E2B/E4B: heterogeneous layers (the full-attention ones with their own head_dim and KV heads, keys
    # as values), the last 2 blocks reuse earlier keys/values with a double-wide MLP (per-layer form), per-layer
    # inputs (PLE); heads refused
    "gemma4_text": TinyFamily(classes=_GEMMA4, config=dict(
        _GEMMA4_COMMON, num_kv_shared_layers=2, use_double_wide_mlp=True, attention_k_eq_v=True,
        hidden_size_per_layer_input=8, vocab_size_per_layer_input=97), kv_heads=2, causal_lm=True, heads=False),
    # Gemma 4 as 26B-A4B: an MoE block (experts kept whole) beside every dense MLP; uniform widths: plain
    "gemma4_text-moe": TinyFamily(classes=_GEMMA4, config=dict(
        _GEMMA4_COMMON, enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=16,
        hidden_size_per_layer_input=0), kv_heads=2, causal_lm=True, heads=False),
    # Gemma 4 Unified (text): Gemma 4's dense blocks alone (no MoE, no PLE), as gemma4_text's row: heterogeneous
    # layers, keys as values, the last 2 blocks reuse earlier keys/values with a double-wide MLP (per-layer form)
    "gemma4_unified_text": TinyFamily(classes=("Gemma4UnifiedTextConfig", "Gemma4UnifiedTextModel",
                                               "Gemma4UnifiedForCausalLM"), config=dict(
        _GEMMA4_COMMON, num_kv_shared_layers=2, use_double_wide_mlp=True, attention_k_eq_v=True), kv_heads=2,
        causal_lm=True, heads=False),
    # Cohere's North text model: Cohere-2's parallel attention and MLP after one LayerNorm (with its mean), a
    # sliding-window layer with multimodal RoPE and a full-attention one without (NoPE); the config recomputes
    # head_dim but takes a saved one
    "cohere_compass_text": TinyFamily(("CohereCompassTextConfig", "CohereCompassTextModel", "CohereCompassForCausalLM"),
                                      dict(_COMMON, sliding_window=4,
                                           layer_types=["sliding_attention", "full_attention"],
                                           rope_parameters={"sliding_attention": dict(rope_type="default",
                                                                                      rope_theta=10000.0,
                                                                                      mrope_section=[2, 1, 1]),
                                                            "full_attention": None}),
                                      kv_heads=2, causal_lm=True),
    # HRM-Text: an L and an H stack of two blocks each (4 MHA heads with a per-channel output gate), called once each
    # (one H cycle of one L cycle: the H stack reads the L stack's output); weight-less RMS norms
    "hrm_text": TinyFamily(("HrmTextConfig", "HrmTextModel", "HrmTextForCausalLM"),
                           dict({k: v for k, v in _COMMON.items() if k != "num_key_value_heads"}, head_dim=8,
                                H_cycles=1, L_cycles=1, L_bp_cycles=[1], embedding_scale=2.0),
                           causal_lm=True),
}
