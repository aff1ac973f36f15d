"""Tiny plain decoders and classic seq2seq models of masked_dora/models/families_classic.py (see
tests/tiny_family_table.py): 2 layers, hidden 32, 4 heads of 8, MLP 64 (experts 32, top-1 or 2), vocab 97."""

from tiny_family_table import TinyFamily

_BERT_LIKE = dict(vocab_size=97, num_hidden_layers=2, max_position_embeddings=64, hidden_size=32, intermediate_size=64,
                  num_attention_heads=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2)
_LLAMA_LIKE = dict(vocab_size=97, num_hidden_layers=2, max_position_embeddings=64, hidden_size=32, intermediate_size=64,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=0, bos_token_id=1,
                   eos_token_id=2)


def _lm(prefix: str, config: dict, kv_heads: int = 4, heads: bool = True, lm: str = "ForCausalLM") -> TinyFamily:
    """A causal LM whose classes are ``<prefix>Config``, ``<prefix>Model``, ``<prefix><lm>``."""
    return TinyFamily(classes=(f"{prefix}Config", f"{prefix}Model", f"{prefix}{lm}"), config=config,
                      kv_heads=kv_heads, causal_lm=True, heads=heads)


TINY = {
    # GPT-1: Conv1D layers, fused c_attn; MLP 4 * n_embd and head_dim n_embd // n_head: per-layer form
    "openai-gpt": _lm("OpenAIGPT", dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), lm="LMHeadModel"),
    "ctrl": _lm("CTRL", dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, dff=64, n_positions=64, resid_pdrop=0.0,
                             embd_pdrop=0.0), lm="LMHeadModel"),
    "xglm": _lm("XGLM", dict(vocab_size=97, d_model=32, num_layers=2, attention_heads=4, ffn_dim=64,
                             max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                             layerdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    # weightless per-head q/k RMSNorms after RoPE, ReLU^2 fc1/fc2 MLP, soft-capped logits
    "nanochat": _lm("NanoChat", dict(_LLAMA_LIKE), kv_heads=2),
    # MLA attention (heads refused) over Llama's MLP
    "youtu": _lm("Youtu", dict(_LLAMA_LIKE, num_key_value_heads=4, head_dim=4, q_lora_rank=16, kv_lora_rank=16,
                               qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8), heads=False),
    # block 0 dense (mlp_layer_types), block 1 MoE; per-head q/k norms (one weight), layer 1 sliding
    "mellum": _lm("Mellum", dict(_LLAMA_LIKE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                 mlp_layer_types=["dense", "sparse"], sliding_window=4,
                                 layer_types=["full_attention", "sliding_attention"]), kv_heads=2),
    # CCA attention (heads refused) over 4 experts of width 32, top-1, with a skip expert
    "zaya": _lm("Zaya", dict(_LLAMA_LIKE, num_experts=4, num_experts_per_tok=1, moe_intermediate_size=32,
                             router_hidden_size=16), kv_heads=2, heads=False),
    # BERT's layer as a causal decoder (is_decoder)
    "bert-generation": TinyFamily(("BertGenerationConfig", "BertGenerationEncoder", "BertGenerationDecoder"),
                                  dict(_BERT_LIKE, is_decoder=True), causal_lm=True),
    # the text decoder of a GIT (run on text alone) beside a tiny CLIP-like image encoder (kept whole)
    "git": _lm("Git", dict(_BERT_LIKE, vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                         num_attention_heads=2, image_size=8, patch_size=4))),
    # per-head fused query_key_value, MLP hidden * intermediate_multiple_size (per-layer form); full rotary: 5.17's
    # rotary embedding ignores partial_rotary_factor, so the model cannot run with rotary_pct < 1 there (fixed in 5.24)
    "gpt_neox_japanese": _lm("GPTNeoXJapanese", dict(vocab_size=97, num_hidden_layers=2, max_position_embeddings=64,
                                                     hidden_size=32, intermediate_multiple_size=2,
                                                     num_attention_heads=4, rotary_pct=1.0, hidden_dropout=0.0,
                                                     attention_dropout=0.0, bos_token_id=1, eos_token_id=2)),
    # BART's stacks (decoder inputs given; generate() from the input ids is compared)
    "mvp": TinyFamily(("MvpConfig", "MvpModel", "MvpForConditionalGeneration"),
                      dict(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=48, encoder_attention_heads=4, decoder_attention_heads=4,
                           max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2),
                      auto="AutoModelForSeq2SeqLM", seq2seq=True),
    # the text decoder alone (no cross-attention inputs); heads refused
    "trocr": TinyFamily(("TrOCRConfig", "TrOCRForCausalLM", "TrOCRForCausalLM"),
                        dict(vocab_size=97, d_model=32, decoder_layers=2, decoder_attention_heads=4,
                             decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                             activation_dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2),
                        causal_lm=True, heads=False),
    # a relative-position bias shared by every layer: heads refused; gated MLP of width dim_ff
    "cpmant": TinyFamily(("CpmAntConfig", "CpmAntModel", "CpmAntForCausalLM"),
                         dict(vocab_size=97, hidden_size=32, num_attention_heads=4, dim_head=8, dim_ff=64,
                              num_hidden_layers=2, position_bias_num_buckets=16, position_bias_max_distance=64,
                              prompt_types=3, prompt_length=2, segment_types=3),
                         causal_lm=True, heads=False),
    # the MLP of both stacks (heads refused); the decoder predicts ngram=2 streams, logits of the main one
    "prophetnet": TinyFamily(("ProphetNetConfig", "ProphetNetModel", "ProphetNetForConditionalGeneration"),
                             dict(vocab_size=97, hidden_size=32, encoder_ffn_dim=64, decoder_ffn_dim=48,
                                  num_encoder_layers=2, num_decoder_layers=2, num_encoder_attention_heads=4,
                                  num_decoder_attention_heads=4, ngram=2, num_buckets=8, relative_max_distance=8,
                                  max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                                  activation_dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                  decoder_start_token_id=2),
                             auto="AutoModelForSeq2SeqLM", seq2seq=True, heads=False),
    # (transformers 5.24) every block MoE: 4 experts of width 32, top-2, a shared expert of width 48 (kept whole);
    # post-attention / post-MLP norms, layer 1 sliding
    "kolibri1": _lm("Kolibri1", dict(_LLAMA_LIKE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                     shared_expert_intermediate_size=48, sliding_window=4,
                                     layer_types=["full_attention", "sliding_attention"]), kv_heads=2),
    # block 0 dense (mlp_only_layers), block 1 MoE with an ungated shared expert; an attention sink per query head
    "flint": _lm("Flint", dict(_LLAMA_LIKE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                               shared_expert_intermediate_size=48, mlp_only_layers=[0], sliding_window=4,
                               layer_types=["full_attention", "sliding_attention"]), kv_heads=2),
    # xIELU: the MLP's pruned channels are gated at down_proj's input too
    "apertus1p5_text": TinyFamily(("Apertus1p5TextConfig", "Apertus1p5TextModel", "Apertus1p5TextForCausalLM"),
                                  dict(_LLAMA_LIKE), kv_heads=2, causal_lm=True),
    # a gated DeltaNet block, then a gated attention block, each with 4 experts and a shared expert: heads refused
    "lara_mini": _lm("LaraMini", dict(_LLAMA_LIKE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                      shared_expert_intermediate_size=48, linear_key_head_dim=8,
                                      linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
                                      layer_types=["linear_attention", "full_attention"]), kv_heads=2, heads=False),
    # block 0 dense, block 1 MoE (mlp_layer_types); attention output gated per query channel and head (gate_proj,
    # gate_bias: made distinct in tiny_models); layer 0 sliding with RoPE, layer 1 NoPE
    "beam": _lm("Beam", dict(_LLAMA_LIKE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_group=1,
                             topk_group=1, mlp_layer_types=["dense", "sparse"], sliding_window=4,
                             layer_types=["sliding_attention", "full_attention"]), kv_heads=2),
    # MLA with an indexer (heads refused); block 0 dense, block 1 MoE with a shared expert
    "dots3_note_text": TinyFamily(("Dots3NoteTextConfig", "Dots3NoteTextModel", "Dots3NoteForCausalLM"),
                                  dict(_LLAMA_LIKE, num_key_value_heads=4, head_dim=4, moe_intermediate_size=32,
                                       n_routed_experts=4, num_experts_per_tok=2, shared_experts_intermediate_size=16,
                                       mlp_layer_types=["dense", "sparse"], q_lora_rank=16, kv_lora_rank=16,
                                       qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, index_topk=4,
                                       index_head_dim=8, index_n_heads=2),
                                  causal_lm=True, heads=False),
    # every block MoE (4 experts of width 32, top-2) with a softcapped SwiGLU act_fn(gate, up); heads refused
    "inkling2_text": TinyFamily(("Inkling2TextConfig", "Inkling2TextModel", "Inkling2ForCausalLM"),
                                dict(_LLAMA_LIKE, unpadded_vocab_size=97, swa_num_attention_heads=4,
                                     swa_num_key_value_heads=2, swa_head_dim=8, sliding_window_size=4, d_rel=4,
                                     rel_extent=16, moe_intermediate_size=32, n_routed_experts=4,
                                     num_experts_per_tok=2, n_layers_per_attn_res_block=1),
                                kv_heads=2, causal_lm=True, heads=False),
    # (transformers 5.24) the same with block 1 looped twice, gated messages of rank 4 from the first pass
    "inkling2_loop_text": TinyFamily(("Inkling2LoopTextConfig", "Inkling2LoopTextModel", "Inkling2LoopForCausalLM"),
                                     dict(_LLAMA_LIKE, unpadded_vocab_size=97, swa_num_attention_heads=4,
                                          swa_num_key_value_heads=2, swa_head_dim=8, sliding_window_size=4, d_rel=4,
                                          rel_extent=16, moe_intermediate_size=32, n_routed_experts=4,
                                          num_experts_per_tok=2, n_layers_per_attn_res_block=1,
                                          loop_layer_index_start=1, loop_layer_index_end=2, loop_num_passes=2,
                                          loop_gate_rank=4),
                                     kv_heads=2, causal_lm=True, heads=False),
    # (transformers 5.24) block 0 dense (Llama's MLP, width 64, a scalar global_scale), block 1 4 experts of width
    # 32 (top-2) and a shared expert (kept whole) weighed by the router; a sliding and a full attention layer with
    # their own head counts (heads refused)
    "inkling_text": TinyFamily(("InklingTextConfig", "InklingTextModel", "InklingForCausalLM"),
                               dict(_LLAMA_LIKE, swa_num_attention_heads=2, swa_num_key_value_heads=1, swa_head_dim=8,
                                    sliding_window_size=4, d_rel=4, rel_extent=16, moe_intermediate_size=32,
                                    n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                                    layer_types=["hybrid_sliding", "hybrid"], mlp_layer_types=["dense", "sparse"]),
                               kv_heads=2, causal_lm=True, heads=False),
    # one block (two attention sublayers: num_hidden_layers 2) with two MLA attentions (heads refused), two dense
    # MLPs of width 64 (the two stacks) and an MoE of 2 routed experts (width 32) and 2 identity experts, kept whole
    "longcat_flash": _lm("LongcatFlash", dict(vocab_size=97, num_layers=1, max_position_embeddings=64, hidden_size=32,
                                              ffn_hidden_size=64, num_attention_heads=4, q_lora_rank=16,
                                              kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, head_dim=4,
                                              v_head_dim=8, moe_topk=2, n_routed_experts=2, zero_expert_num=2,
                                              expert_ffn_hidden_size=32, pad_token_id=0, bos_token_id=1,
                                              eos_token_id=2), heads=False),
}
