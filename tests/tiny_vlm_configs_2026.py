"""Tiny VLM configs of the 2026 types (``tiny_vlms.FAMILIES`` puts them together, one row per family), in the sizes
of :mod:`tiny_vlm_configs`: Mistral Large 4, GLM-5.3-Flash, Step-3.7-Flash, Apertus 1.5, North, Inkling 2, Inkling,
GLM-GA, PP-Chart2Table. Each input builder ``pixels(n, generator)`` gives the keyword
arguments besides ``input_ids`` in the layout the vision tower reads.
"""

from __future__ import annotations

import torch

from tiny_vlm_configs import IMAGE_ID, TEXT, VISION
from tiny_vlm_configs_more import GLM4V_ROPE, GLM4V_TOKENS, GLM4V_VISION

ROPE = dict(rope_type="default", rope_theta=10000.0)  # where the config's default rotary needs longer positions
# DeepSeek-V3's MoE language models: block 0 dense, block 1 of 4 experts of width 64, 2 per token, beside a shared
# expert kept whole; MLA (heads refused) over a latent of 16
DEEPSEEK_MOE = dict(TEXT, num_key_value_heads=4, moe_intermediate_size=64, n_routed_experts=4, num_experts_per_tok=2,
                    n_group=1, topk_group=1, n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=16,
                    qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)


def mistral_large4(t):
    """Mistral Large 4 around its mistral_large4_text (DeepSeek-V3.2's blocks: MLA with a sparse-attention indexer of
    2 heads of 8, top 4 tokens): Mistral3's Pixtral tower over 4x4 patches of a 56 px image, merged 2x2: 4 tokens."""
    text = dict(DEEPSEEK_MOE, index_topk=4, index_head_dim=8, index_n_heads=2, rope_parameters=ROPE)
    return t.MistralLarge4Config(text_config=text, vision_config=dict(VISION, model_type="pixtral", image_size=56,
                                                                      patch_size=14),
                                 image_token_index=IMAGE_ID, spatial_merge_size=2)


def glm5_next(t):
    """GLM-5.3-Flash (glm5_next) around its glm5_next_text: block 0 KDA linear attention and a dense MLP (width 64),
    block 1 MLA under a sparse-attention indexer and 4 experts (gate and up clipped at swiglu_limit) beside a shared
    expert, both between hyper-connections over 2 residual streams; GLM-4V's vision tower layout over flattened
    14 px patches (``tiny_vlm_configs.qwen_patches(14)``: 4 tokens)."""
    text = dict(DEEPSEEK_MOE, q_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=0, index_topk=4, index_kpool=2,
                index_head_dim=8, index_n_heads=2, linear_head_dim=8, linear_num_heads=4, hc_mult=2,
                hc_sinkhorn_iters=3, layer_types=["linear_attention", "full_attention"],
                mlp_layer_types=["dense", "sparse"])
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=14,
                  image_size=56, spatial_merge_size=2, temporal_patch_size=2, projection_intermediate_size=64)
    return t.Glm5NextConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_ID, video_token_id=101,
                            image_start_token_id=102, image_end_token_id=103, video_start_token_id=104,
                            video_end_token_id=105)


def step3p7(t):
    """Step-3.7-Flash around its step3p5: block 0 dense (Llama's MLP, width 64), block 1 of 4 experts of width 64,
    2 per token, beside a shared expert of 64, the experts' activated gate and up clipped at 0.05 (active at these
    sizes); its tower over 8x8 patches of 7 px of a 56 px image, downsampled twice by 2: 4 tokens."""
    text = dict(TEXT, head_dim=8, mlp_layer_types=["dense", "sparse"], n_routed_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=64, share_expert_dim=64, swiglu_limits=[0.0, 0.05], sliding_window=4)
    vision = dict(VISION, image_size=56, patch_size=7, mlp_ratio=2.0, max_position_embeddings=64)
    return t.Step3p7Config(text_config=text, vision_config=vision, image_token_id=IMAGE_ID)


def apertus1p5(t):
    """Apertus 1.5 around its apertus1p5_text (Apertus's layout): a VQ tokenizer of 16 codes (ids 104..119 of the
    vocabulary, image_token_offset) whose 3 levels turn a 16 px image (``emu3_images``' layout) into 4x4 codes, each
    embedded by the text embedding into one of 16 image tokens; a tiny WavTokenizer encoder (8 codes, ids 120..127),
    unused by image and text inputs and left as it is."""
    vision = dict(codebook_size=16, embed_dim=4, latent_channels=32, base_channels=32, channel_multiplier=[1, 1, 1],
                  num_res_blocks=1, attn_resolutions=[], resolution=16)
    audio = dict(model_type="wavtokenizer_encoder", num_filters=4, upsampling_ratios=[2, 2], hidden_size=8,
                 codebook_size=8, codebook_dim=8, num_lstm_layers=1, decoder_hidden_size=8,
                 decoder_intermediate_size=16, decoder_num_layers=1, decoder_attention_num_groups=1)
    return t.Apertus1p5Config(text_config=dict(TEXT, head_dim=8, rope_parameters=ROPE), vision_config=vision,
                              audio_config=audio, image_token_id=IMAGE_ID, audio_token_id=101,
                              image_token_offset=104, audio_token_offset=120)


def cohere_compass(t):
    """Cohere's North vision model (cohere_compass) around its cohere_compass_text (Cohere 2's parallel blocks, its
    config taking head_dim = hidden_size // heads): Qwen3-VL's vision tower layout over flattened 16 px patches
    (``tiny_vlm_configs.qwen_patches(16)``: 4 tokens), its deepstack features added into block 0."""
    rope = {"full_attention": dict(ROPE, mrope_section=[1, 1, 2])}  # per layer type (mrope_section: a list)
    return t.CohereCompassConfig(text_config=dict(TEXT, rope_parameters=rope),
                                 vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                                                    out_hidden_size=32, patch_size=16, num_position_embeddings=16,
                                                    deepstack_visual_indexes=[0]),
                                 image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102,
                                 vision_end_token_id=103)


def inkling2(t):
    """Inkling 2 around its inkling2_text (every block 4 experts of width 64, top-2, with a softcapped SwiGLU; its
    sliding and full attention with their own head counts): a ViT over 4 px patches, merged 2x2 into 4 tokens
    (``inkling2_patches``)."""
    text = dict(TEXT, head_dim=8, unpadded_vocab_size=TEXT["vocab_size"], swa_num_attention_heads=4,
                swa_num_key_value_heads=2, swa_head_dim=8,
                sliding_window_size=4, d_rel=4, rel_extent=16, moe_intermediate_size=64, n_routed_experts=4,
                num_experts_per_tok=2, n_layers_per_attn_res_block=1)
    vision = dict(VISION, patch_size=4, spatial_merge_size=2, posemb_grid_size=4, projection_hidden_dim=32,
                  text_hidden_size=32)
    return t.Inkling2Config(text_config=text, vision_config=vision, image_token_id=IMAGE_ID)


def inkling2_patches(n, gen):
    """Inkling 2: per image token its 2x2 merged 4 px patches, (8, 8, 3) in [-1, 1], with the image's token grid."""
    return {"pixel_values": torch.rand(n * 4, 8, 8, 3, generator=gen) * 2 - 1,
            "image_grid_thw": torch.tensor([[1, 2, 2]] * n)}


def inkling_mm_model(t):
    """Inkling (inkling_mm_model) around its inkling_text (block 0 dense, width 64; block 1 4 experts of width 64,
    top-2, beside a shared expert; a sliding and a full attention layer with their own head counts): a vision tower
    folding each 2-frame 8 px patch (``inkling_patches``) into one image token; a tiny dMel audio embedder, unused by
    image and text inputs and left as it is."""
    text = dict(TEXT, head_dim=8, swa_num_attention_heads=2, swa_num_key_value_heads=1, swa_head_dim=8,
                sliding_window_size=4, d_rel=4, rel_extent=16, moe_intermediate_size=64, n_routed_experts=4,
                num_experts_per_tok=2, n_shared_experts=1, layer_types=["hybrid_sliding", "hybrid"],
                mlp_layer_types=["dense", "sparse"])
    # 2 px patches: 3 scales (the input, 2x2 px, 2 frames), as many layers as scales (fewer would need scipy's
    # linear_sum_assignment to place them)
    vision = dict(patch_size=2, temporal_patch_size=2, hidden_size=32, num_hidden_layers=3, num_attention_heads=4)
    return t.InklingConfig(text_config=text, vision_config=vision, audio_config=dict(n_mel_bins=4, mel_vocab_size=8),
                           image_token_id=IMAGE_ID, audio_token_id=101, image_bos_token_id=102,
                           audio_bos_token_id=103)


def inkling_patches(n, gen):
    """Inkling: 4 patches per image, each 2 frames of 2x2 px, (frames, height, width, channels) in [-1, 1]."""
    return {"pixel_values": torch.rand(n * 4, 2, 2, 2, 3, generator=gen) * 2 - 1}


def glmga(t):
    """GLM-GA (glmga, a Glm46VForConditionalGeneration): GLM-4.1V's language model (glm4v_text) and vision tower under
    a config of its own."""
    return t.GlmgaConfig(text_config=dict(TEXT, rope_parameters=GLM4V_ROPE, model_type="glm4v_text"),
                         vision_config=dict(GLM4V_VISION, model_type="glm4v_vision"), **GLM4V_TOKENS)


def pp_chart2table(t):
    """PP-Chart2Table (pp_chart2table, a GotOcr2ForConditionalGeneration) around a Qwen2: GOT-OCR2's SAM-like encoder
    of 4x4 patches of 16 px, convolved down to one image token (``tiny_vlm_configs.got_ocr2``'s sizes)."""
    return t.PPChart2TableConfig(text_config=dict(TEXT, head_dim=8, model_type="qwen2"),
                                 vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2,
                                                    num_attention_heads=4, image_size=64, patch_size=16, window_size=2,
                                                    global_attn_indexes=[1], mlp_dim=64, initializer_range=0.02),
                                 image_token_index=IMAGE_ID)
