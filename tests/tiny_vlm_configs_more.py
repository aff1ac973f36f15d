"""More tiny VLM configs and image inputs (``tiny_vlms.FAMILIES`` puts them together, one row per family), in the
sizes of :mod:`tiny_vlm_configs`: GLM-4.1V / 4.5V / 4.6V, GLM-OCR, Janus, InstructBLIP-Video, FastVLM, Kimi-K2.5,
PaddleOCR-VL and HunYuan-VL. Each
input builder ``pixels(n, generator)`` gives the keyword arguments besides ``input_ids`` in the layout the
vision tower reads (GLM-4V's: ``tiny_vlm_configs.qwen_patches(14)``).
"""

from __future__ import annotations

import torch

from tiny_vlm_configs import BLIP_VISION, IMAGE_ID, QFORMER, TEXT, VISION, VOCAB

# GLM-4V's vision tower: Qwen2-VL-like flattened 14 px patches (tiny_vlm_configs.qwen_patches(14): a 1x4x4 grid),
# its learned position embeddings interpolated from a 4x4 grid (image_size 56), 2x2 patches merged: 4 tokens
GLM4V_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=14,
                    image_size=56, spatial_merge_size=2, temporal_patch_size=2)
# GLM-4V's rotary: over half of each head's dims (partial_rotary_factor 0.5: 4 of 8, 2 frequencies), split by
# mrope_section among the temporal, height and width positions
GLM4V_ROPE = dict(rope_type="default", rope_theta=10000.0, mrope_section=[0, 1, 1], partial_rotary_factor=0.5)
GLM4V_TOKENS = dict(image_token_id=IMAGE_ID, video_token_id=101, image_start_token_id=102, image_end_token_id=103,
                    video_start_token_id=104, video_end_token_id=105)


def glm4v(t):
    """GLM-4.1V: its glm4v_text language model (GLM-4's post-norms and fused gate_up_proj, head_dim from the hidden
    size)."""
    return t.Glm4vConfig(text_config=dict(TEXT, rope_parameters=GLM4V_ROPE), vision_config=GLM4V_VISION,
                         **GLM4V_TOKENS)


def glm46v(t):
    """GLM-4.6V: GLM-4.1V's language model (glm4v_text) and vision tower under a config of its own."""
    return t.Glm46VConfig(text_config=dict(TEXT, rope_parameters=GLM4V_ROPE, model_type="glm4v_text"),
                          vision_config=dict(GLM4V_VISION, model_type="glm4v_vision"), **GLM4V_TOKENS)


def glm_ocr(t):
    """GLM-OCR: its glm_ocr_text language model (GLM-4V's block, no q/k/v biases; no head_dim key: the attention
    takes hidden_size // heads until the compacted config says head_dim) and GLM-4V's vision tower layout."""
    return t.GlmOcrConfig(text_config=dict(TEXT, rope_parameters=GLM4V_ROPE), vision_config=GLM4V_VISION,
                          **GLM4V_TOKENS)


def glm4v_moe(t):
    """GLM-4.5V: its glm4v_moe_text language model (GLM-4.5's blocks) with block 0 dense (first_k_dense_replace 1,
    Llama's MLP of width intermediate_size 64) and block 1 of 4 experts of width 64 (2 per token) beside one shared
    expert (kept whole)."""
    text = dict(TEXT, head_dim=8, rope_parameters=GLM4V_ROPE, n_routed_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=64, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1)
    return t.Glm4vMoeConfig(text_config=text, vision_config=GLM4V_VISION, **GLM4V_TOKENS)


def janus(t):
    """Janus around a Llama: SigLIP-like 2x2 patches of a 28 px image, each aligned (an MLP) into one of the 4 image
    tokens; its image-generation parts (a tiny VQ-VAE, its embeddings, aligner and head) are unused by the text
    forward and left as they are."""
    return t.JanusConfig(text_config=dict(TEXT, head_dim=8, model_type="llama"),
                         vision_config=dict(VISION, image_size=28, patch_size=14, projection_dim=32,
                                            num_image_tokens=4),
                         vq_config=dict(embed_dim=8, num_embeddings=16, latent_channels=32, base_channels=32,
                                        channel_multiplier=[1, 1], num_res_blocks=1, projection_dim=32,
                                        image_token_embed_dim=32),
                         image_token_id=IMAGE_ID)


def instructblipvideo(t):
    """InstructBLIP-Video around a Llama (Vicuna): each of a video's 2 frames goes through the vision tower and the
    Q-Former (which reads the instruction too) into 2 query tokens: 4 video tokens (its vision weights drawn at
    0.02, as BLIP-2's)."""
    return t.InstructBlipVideoConfig(text_config=dict(TEXT, head_dim=8, model_type="llama"),
                                     vision_config=BLIP_VISION, qformer_config=QFORMER, num_query_tokens=2,
                                     video_token_index=IMAGE_ID)


def video_frames(n, gen):
    """InstructBLIP-Video: a video of 2 frames per row, (n, frames, 3, 28, 28), and the instruction's tokens for the
    Q-Former (its own vocabulary)."""
    return {"pixel_values": torch.randn(n, 2, 3, 28, 28, generator=gen),
            "qformer_input_ids": torch.randint(3, VOCAB, (n, 5), generator=gen)}


def fast_vlm(t):
    """FastVLM around a Qwen2. Its real vision tower is timm's FastViTHD (a timm_wrapper config; timm is no test
    dependency): a stand-in convolutional tower of transformers' own, a ConvNeXt (LayerNorms: a BatchNorm's running
    statistics would move in the training step) whose last feature map (b, 32, 2, 2) of an 8 px image FastVLM
    flattens into 4 image tokens, as it does FastViTHD's (the language model, what prunes, is the same either
    way)."""
    return t.FastVlmConfig(text_config=dict(TEXT, head_dim=8, model_type="qwen2"),
                           vision_config=dict(model_type="convnext", num_stages=1, hidden_sizes=[32], depths=[1],
                                              patch_size=4, hidden_size=32),
                           image_token_id=IMAGE_ID, image_seq_length=4)


def kimi_k25(t):
    """Kimi-K2.5 around a DeepSeek-V3 (MLA attention: heads refused; block 0 dense, block 1 of 4 experts of width
    64, 2 per token, beside a shared expert kept whole): MoonViT's 4x4 patches of 14 px (position embeddings
    interpolated from a 4x4 grid), merged 2x2 into 4 tokens."""
    text = dict(TEXT, num_key_value_heads=4, moe_intermediate_size=64, n_routed_experts=4, num_experts_per_tok=2,
                n_group=1, topk_group=1, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16,
                qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, model_type="deepseek_v3")
    return t.Kimi_K25Config(text_config=text,
                            vision_config=dict(VISION, patch_size=14, pos_emb_height=4, pos_emb_width=4,
                                               pos_emb_time=1, merge_kernel_size=[2, 2]),
                            projection_hidden_size=32, image_token_id=IMAGE_ID, video_token_id=101,
                            vision_start_token_id=102, vision_end_token_id=103)


def moonvit_patches(n, gen):
    """Kimi-K2.5: per image its 4x4 patches of 14 px, one (3, 14, 14) row each, with the image's grid."""
    return {"pixel_values": torch.randn(n * 16, 3, 14, 14, generator=gen),
            "image_grid_thw": torch.tensor([[1, 4, 4]] * n)}


def paddleocr_vl(t):
    """PaddleOCR-VL around its paddleocr_vl_text (ERNIE-4.5's layout with use_bias: biases on every projection;
    multimodal rotary over each head's 8 dims): a NaViT-like SigLIP over 4x4 patches of 14 px, merged 2x2 by the
    projector into 4 tokens."""
    return t.PaddleOCRVLConfig(text_config=dict(TEXT, head_dim=8, use_bias=True, rope_parameters=dict(
        rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2])),
        vision_config=dict(VISION, patch_size=14, image_size=56, spatial_merge_size=2),
        image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102, vision_end_token_id=103)


def paddle_patches(n, gen):
    """PaddleOCR-VL: per image its 4x4 patches of 14 px, one (3, 14, 14) row each, with the image's grid."""
    return {"pixel_values": torch.randn(n * 16, 3, 14, 14, generator=gen),
            "image_grid_thw": torch.tensor([[1, 4, 4]] * n)}


def hunyuan_vl(t):
    """HunYuan-VL around its hunyuan_vl_text (HunYuan-Dense's layout: per-head query/key norms over head_dim;
    multimodal rotary over 4 axes): 4x4 patches of 16 px (position embeddings interpolated from a 4x4 grid),
    merged 2x2 with a newline token after each row and a begin and an end token: 2 * (2 + 1) + 2 = 8 tokens."""
    return t.HunYuanVLConfig(text_config=dict(TEXT, head_dim=8, rope_parameters=dict(
        rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 1, 1])),
        vision_config=dict(VISION, patch_size=16, max_image_size=64, out_hidden_size=32, text_hidden_size=32,
                           spatial_merge_size=2),
        image_token_id=IMAGE_ID, im_start_id=101, im_end_id=102, im_newline_id=103)


def hunyuan_patches(n, gen):
    """HunYuan-VL: per image its 4x4 flattened patches of 16 px (3 * 16 * 16 each), with the image's grid."""
    return {"pixel_values": torch.randn(n * 16, 3 * 16 * 16, generator=gen),
            "image_grid_thw": torch.tensor([[1, 4, 4]] * n)}
