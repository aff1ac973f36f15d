"""Tiny configs and image inputs of the VLMs whose language model is laid out as a text model with a spec
(``masked_dora/models/families_vlm_2026.py``), in the sizes of :mod:`tiny_vlm_configs`; ``tiny_vlms.FAMILIES``
puts them together, one row per family. Each input builder ``pixels(n, generator)`` gives the keyword arguments
besides ``input_ids`` in the layout the vision tower reads.
"""

from __future__ import annotations

import torch

from tiny_vlm_configs import IMAGE_ID, TEXT, VISION


def hy_v4_vl(t):
    """HY-V4-VL around its hy_v4_vl_text (HY-V4's blocks: block 0 dense, width 64; block 1 of 4 clipped experts,
    swiglu_limit 0.05 binding, and a shared expert, width 64 each; MLA, its heads refused, its rotary slice of 8
    the config's head_dim; 2 hyper-connection streams): HunYuan-VL's vision tower over 4x4 patches of 16 px,
    merged 2x2 with a newline token after each row: 2 * (2 + 1) = 6 image tokens (hy_v4_vl_patches)."""
    text = dict(TEXT, num_key_value_heads=4, head_dim=8, moe_intermediate_size=64, num_experts_per_tok=2,
                n_routed_experts=4, n_shared_experts=1, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=4,
                qk_rope_head_dim=8, v_head_dim=8, index_topk=16, index_head_dim=8, index_n_heads=2, hc_mult=2,
                swiglu_limit=0.05, mlp_layer_types=["dense", "sparse"],
                rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1]))
    return t.HYV4VLConfig(text_config=text, vision_config=dict(VISION, patch_size=16, max_image_size=64,
                                                                out_hidden_size=32, spatial_merge_size=2),
                          image_token_id=IMAGE_ID, video_token_id=101)


def hy_v4_vl_patches(n, gen):
    """HY-V4-VL: per image its 4x4 flattened patches of 16 px (3 * 16 * 16 each), with the image's grid."""
    return {"pixel_values": torch.randn(n * 16, 3 * 16 * 16, generator=gen),
            "image_grid_thw": torch.tensor([[1, 4, 4]] * n)}


def granite_docling(t):
    """Granite-Docling around its granite_docling_text (Granite's Llama layout and multipliers, head_dim from the
    config where it has one): an Idefics3-like vision tower over a 32 px tile of 8 px patches, its 4x4 features
    pixel-shuffled 2x2 into 4 image tokens by the coarse connector path (no fine path), the 2 vision layers' outputs
    added (DeepStack) into the first language-model blocks (granite_docling_tiles)."""
    return t.GraniteDoclingConfig(text_config=TEXT, vision_config=dict(
        VISION, image_size=32, patch_size=8, out_hidden_size=32, scale_factor=2, deepstack_visual_indexes=[0, 1],
        use_fine_route=False), image_token_id=IMAGE_ID)


def granite_docling_tiles(n, gen):
    """Granite-Docling: one 32 px tile per row, (n, tiles, 3, 32, 32), and which tiles are real."""
    return {"pixel_values": torch.randn(n, 1, 3, 32, 32, generator=gen),
            "pixel_attention_mask": torch.ones(n, 1, dtype=torch.bool)}


def cosmos3_edge(t):
    """Cosmos3-Edge around its cosmos3_edge_text (Llama's attention, head_dim from the config, multimodal rotary
    positions; a plain fc1/fc2 MLP with ReLU²): a SigLIP2-like vision tower over 4x4 flattened patches of 16 px
    (learned positions interpolated from a 4x4 grid), merged 2x2 by the projector into 4 image tokens
    (tiny_vlm_configs.qwen_patches-like, one frame: cosmos3_edge_patches)."""
    return t.Cosmos3EdgeConfig(text_config=dict(TEXT, head_dim=8, rope_parameters=dict(
        rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1])),
        vision_config=dict(VISION, patch_size=16, num_patches=16, spatial_merge_size=2), projector_hidden_size=64,
        image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102, vision_end_token_id=103)


def cosmos3_edge_patches(n, gen):
    """Cosmos3-Edge: per image its 4x4 flattened patches of 16 px (3 * 16 * 16 each), with the image's grid."""
    return {"pixel_values": torch.randn(n * 16, 3 * 16 * 16, generator=gen),
            "image_grid_thw": torch.tensor([[1, 4, 4]] * n)}


def deepseek_ocr2(t):
    """DeepSeek-OCR-2 around its deepseek_ocr2_text (Llama's attention, head_dim = hidden_size // heads; block 0
    dense, width 64; block 1 of 4 experts, 2 per token, beside a shared expert, width 64 each): a SAM encoder over
    4x4 patches of 16 px of a 64 px image, convolved down to one feature, then a Qwen2-like encoder reading it and
    144 learned queries, whose outputs and a view separator are the 145 image tokens (weights drawn at 0.02: the
    SAM config's initializer_range of 1e-10 would let no image reach the logits)."""
    text = dict(TEXT, moe_intermediate_size=64, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                mlp_layer_types=["dense", "sparse"], n_group=1, topk_group=1)
    sam = dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=4, image_size=64,
               patch_size=16, window_size=2, global_attn_indexes=[1], mlp_dim=64, downsample_channels=[16, 32],
               initializer_range=0.02)
    encoder = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=8)
    return t.DeepseekOcr2Config(text_config=text, vision_config=dict(sam_config=sam, encoder_config=encoder),
                                image_token_id=IMAGE_ID)


def minimax_m3_vl(t):
    """MiniMax-M3-VL around its minimax_m3_vl_text (Llama's attention with q/k norms over head_dim, partial rotary;
    full attention in both blocks: a "minimax_m3_sparse" layer keeps its heads whole, which
    tests/test_models_vlm_text_models.py checks on the language model alone; block 0 a fused dense MLP of width
    64; block 1 4 experts of width 64, 2 per token, beside a shared
    expert of width 32, all with gpt-oss's clamped SwiGLU, limit 0.5 binding): Qwen2-VL-like 4x4 patches of 14 px
    merged 2x2 into 4 image tokens (tiny_vlm_configs.qwen_patches(14))."""
    text = dict(TEXT, head_dim=8, intermediate_size=64, dense_intermediate_size=64, shared_intermediate_size=32,
                num_local_experts=4, num_experts_per_tok=2, rotary_dim=4, swiglu_limit=0.5,
                mlp_layer_types=["dense", "sparse"], layer_types=["full_attention", "full_attention"],
                index_n_heads=2, index_head_dim=8, index_block_size=4, index_topk_blocks=1, index_local_blocks=1)
    return t.MiniMaxM3VLConfig(text_config=text, vision_config=dict(VISION, patch_size=14, spatial_merge_size=2),
                               projector_hidden_size=64, image_token_index=IMAGE_ID, video_token_index=101)
