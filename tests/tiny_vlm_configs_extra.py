"""Yet more tiny VLM configs and image inputs (``tiny_vlms.FAMILIES`` puts them together, one row per family), in
the sizes of :mod:`tiny_vlm_configs`: Qwen2.5-Omni's thinker, ERNIE-4.5-VL, Aria, Molmo2,
Idefics 1, Granite 4 Vision, Chameleon, Emu3, Fuyu, PerceptionLM. Each input builder
``pixels(n, generator)`` gives the keyword arguments besides ``input_ids`` in the layout the vision tower reads.
"""

from __future__ import annotations

import torch

from tiny_vlm_configs import IMAGE_ID, TEXT, VISION


def qwen2_5_omni_thinker(t):
    """Qwen2.5-Omni's thinker around its qwen2_5_omni_text (Qwen2.5-VL's language model; no head_dim key: the
    attention takes hidden_size // heads until the compacted config says head_dim): Qwen2.5-VL's vision tower
    over flattened 14 px patches (``tiny_vlm_configs.qwen_patches(14)``: 4 tokens) and a tiny audio tower, unused
    by image and text inputs and left as it is."""
    return t.Qwen2_5OmniThinkerConfig(
        text_config=dict(TEXT, rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2])),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                           patch_size=14, window_size=56, fullatt_block_indexes=[1]),
        audio_config=dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, output_dim=32, max_source_positions=20, n_window=10),
        image_token_index=IMAGE_ID, video_token_index=101, vision_start_token_id=102, audio_token_index=103,
        audio_start_token_id=104, audio_end_token_id=105)


def ernie4_5_vl_moe(t):
    """ERNIE-4.5-VL around its ernie4_5_vl_moe_text: block 0 dense (Llama's MLP, width 64), block 1 an MoE block
    of 4 text experts of width 64 and 4 vision experts of width 32 (2 per token each) beside a shared expert;
    a vision tower over flattened 14 px patches (``ernie_patches``), 2x2 merged by the resampler into 4 tokens."""
    text = dict(TEXT, head_dim=8, moe_intermediate_size=[64, 32], moe_num_experts=4, moe_k=2,
                moe_num_shared_experts=1, mlp_layer_types=["dense", "sparse"],
                rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2]))
    return t.Ernie4_5_VLMoeConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=14,
                           spatial_merge_size=2),
        image_token_id=IMAGE_ID, image_start_token_id=101, image_end_token_id=102, video_token_id=103,
        video_start_token_id=104, video_end_token_id=105)


def ernie_patches(n, gen):
    """ERNIE-4.5-VL: per image its 4x4 patches of 14 px, flattened (3 * 14 * 14 each), with the image's grid."""
    return {"pixel_values": torch.randn(n * 16, 3 * 14 * 14, generator=gen),
            "image_grid_thw": torch.tensor([[1, 4, 4]] * n)}


def aria(t):
    """Aria around its aria_text (4 packed experts of width 64, 2 per token, beside one shared expert in each
    block): Idefics3's vision tower over 2x2 patches of a 28 px image, whose 4 patch features the projector's
    cross-attention reads into 4 queries (projector_patch_to_query_dict {4: 4}): 4 image tokens."""
    return t.AriaConfig(text_config=dict(TEXT, head_dim=8, moe_num_experts=4, moe_topk=2, moe_num_shared_experts=1),
                        vision_config=dict(VISION, image_size=28, patch_size=14, model_type="idefics3_vision"),
                        projector_patch_to_query_dict={4: 4}, image_token_index=IMAGE_ID)


def molmo2(t, qk_norm_type: str = "qwen3"):
    """Molmo2 around its molmo2_text (q/k norms per head, ``qk_norm_type`` "qwen3", or over all heads' width,
    "olmo"): a ViT over one crop of 2x2 patches of 14 px per image, each patch pooled (``molmo2_crops``) by the
    adapter's cross-attention into one of 4 image tokens, whose features are added to those tokens' embeddings
    (the vision tower and adapter drawn at 0.1: at 0.02 their features are too small to move the logits)."""
    vision = dict(VISION, num_key_value_heads=4, head_dim=8, image_size=[28, 28], patch_size=14, initializer_range=0.1)
    adapter = dict(vision_feature_layer=[-1], hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                   head_dim=8, intermediate_size=64, text_hidden_size=32, initializer_range=0.1)
    return t.Molmo2Config(text_config=dict(TEXT, head_dim=8, additional_vocab_size=0, qk_norm_type=qk_norm_type),
                          vision_config=vision, adapter_config=adapter, image_patch_id=IMAGE_ID,
                          image_start_token_id=101, low_res_image_start_token_id=102, image_end_token_id=103,
                          frame_start_token_id=104, frame_end_token_id=105)


def molmo2_crops(n, gen):
    """Molmo2: per image one crop of 4 flattened 14 px patches, (n, 1, 4, 3 * 14 * 14); each image token pools one
    patch (its index among all images' patches), and each image's grid says 2x2 tokens and no high-res ones."""
    return {"pixel_values": torch.randn(n, 1, 4, 3 * 14 * 14, generator=gen),
            "image_token_pooling": torch.arange(4 * n)[:, None], "image_grids": torch.tensor([[2, 2, 0, 0]] * n)}


# Idefics 1's inputs: 3 text tokens, one image token (an ordinary token: the image enters through cross-attention)
# and 3 text tokens
IDEFICS_LENGTH = 3 + 1 + 3


def idefics(t):
    """Idefics 1 (its config the language model's: no text_config, no GQA): 2 self-attention blocks, each after a
    gated cross-attention block (cross_layer_interval 1; the tanh gates opened, alpha_initializer "ones") reading
    the vision tower's features of a 28 px image (2x2 patches of 14 and the class token; no perceiver resampler)
    with q/k RMSNorms over head_dim (qk_layer_norms)."""
    text = {k: v for k, v in TEXT.items() if k != "num_key_value_heads"}
    return t.IdeficsConfig(**text, cross_layer_interval=1, alpha_initializer="ones", qk_layer_norms=True,
                           freeze_text_layers=False, freeze_vision_layers=False,
                           vision_config=dict(embed_dim=32, image_size=28, patch_size=14, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=4))


def idefics_images(n, gen):
    """Idefics 1, as its processor gives them: one image per row, (n, images 1, 3, 28, 28), and the image attention
    mask (n, IDEFICS_LENGTH, images): the tokens from the image token on attend to the image, those before it to
    none (their cross-attention output is zeroed)."""
    mask = torch.zeros(n, IDEFICS_LENGTH, 1, dtype=torch.long)
    mask[:, 3:] = 1
    return {"pixel_values": torch.randn(n, 1, 3, 28, 28, generator=gen), "image_attention_mask": mask}


def granite4_vision(t):
    """Granite 4 Vision around its granite4_vision_text (Granite's layout): LLaVA-NeXT's anyres views of a 56 px
    image (``tiny_vlm_configs.anyres_images(56)``: the base view and one tile, 4x4 CLIP patches of 14 each; CLIP
    64 wide so that the window Q-Former, hidden_size // 64 heads, has one), each view's patches downsampled 1/2 by
    window Q-Formers into 2x2 features: 4 for the base view, 2 * (2 + 1) with the tile's newlines: 10 image tokens.
    The features are added to the residual stream of block 0 (deepstack) and blocks 0, 1, 0, 1 (the 4 spatial
    groups)."""
    return t.Granite4VisionConfig(
        text_config=dict(TEXT, head_dim=8),
        vision_config=dict(VISION, hidden_size=64, intermediate_size=128, model_type="clip_vision_model",
                           image_size=56, patch_size=14),
        qformer_config=dict(num_hidden_layers=1, intermediate_size=64), image_token_index=IMAGE_ID,
        vision_feature_layer=-1, image_grid_pinpoints=[[56, 56]], downsample_rate="1/2", deepstack_layer_map=[(-1, 0)],
        spatial_vision_layer=-1, spatial_target_layers=[0, 1, 0, 1], projector_dropout=0.0)


def _vq_vocabulary(codes: int, first: int) -> dict:
    """Chameleon's vocabulary map: the image token, and the VQ-VAE's codes 0..codes-1 as the tokens "IMGIMG<the
    code's digits as letters, 0 -> A>Z", ids first, first + 1, ..."""
    letters = "ABCDEFGHIJ"
    return {"<image>": IMAGE_ID, **{"IMGIMG" + "".join(letters[int(d)] for d in str(code)) + "Z": first + code
                                    for code in range(codes)}}


def chameleon(t):
    """Chameleon (its config the language model's; q/k LayerNorms per head): a VQ-VAE of 16 codes whose 3 levels
    (channel_multiplier [1, 1, 1]: 2 downsamplings) turn an 8 px image into 2x2 codes, the 4 image tokens, which
    the vocabulary map sends to ids 104..119."""
    return t.ChameleonConfig(**TEXT, vocabulary_map=_vq_vocabulary(16, 104),
                             vq_config=dict(embed_dim=8, num_embeddings=16, latent_channels=32, resolution=8,
                                            base_channels=32, channel_multiplier=[1, 1, 1], num_res_blocks=1,
                                            attn_resolutions=[]))


def emu3(t):
    """Emu3 around its emu3_text_model (Llama's layout): a VQ-VAE of 16 codes (ids 104..119 in the vocabulary map)
    whose 3 levels turn a 16 px image (repeated over 2 frames, temporal_downsample_factor 2) into 4x4 codes, each
    row followed by an end-of-line token (id 103): 4 * (4 + 1) = 20 image tokens (an 8 px image's 2x2 codes are
    too few for the tests' shifted image to change one)."""
    vocabulary = {"<image>": IMAGE_ID, "<|extra_200|>": 103,
                  **{f"<|visual token{code:06d}|>": 104 + code for code in range(16)}}
    return t.Emu3Config(text_config=dict(TEXT, head_dim=8, attention_dropout=0.0), vocabulary_map=vocabulary,
                        vq_config=dict(codebook_size=16, embed_dim=4, latent_channels=4, base_channels=32,
                                       channel_multiplier=[1, 1, 1], num_res_blocks=1, attn_resolutions=[],
                                       temporal_downsample_factor=2, hidden_size=32, num_attention_heads=1))


def emu3_images(n, gen):
    """Emu3: the images (n, 3, 16, 16) and their sizes."""
    return {"pixel_values": torch.randn(n, 3, 16, 16, generator=gen), "image_sizes": torch.tensor([[16, 16]] * n)}


def fuyu(t):
    """Fuyu around a Persimmon (no GQA; q/k LayerNorms over one head_dim): no vision tower, each 4 px patch of the
    image (3 * 4 * 4 values, ``fuyu_patches``) linearly projected into one of 4 image tokens."""
    text = {k: v for k, v in TEXT.items() if k != "num_key_value_heads"}
    return t.FuyuConfig(text_config=dict(text, model_type="persimmon", qk_layernorm=True, hidden_dropout=0.0,
                                         attention_dropout=0.0), patch_size=4,
                        image_size=8, image_token_id=IMAGE_ID)


def fuyu_patches(n, gen):
    """Fuyu: per image its 2x2 patches of 4 px, flattened, (n, 4, 3 * 4 * 4)."""
    return {"pixel_values": torch.randn(n, 4, 3 * 4 * 4, generator=gen)}


def perception_lm(t):
    """PerceptionLM around a Llama. Its real vision tower is timm's Perception Encoder (a timm_wrapper config; timm
    is no test dependency): a stand-in CLIP vision tower, whose config says the width the projector reads from a
    timm config (model_args embed_dim), over 2x2 patches of a 28 px tile (its CLS token dropped, vision_use_cls_token):
    4 image tokens (the language model, what prunes, is the same either way)."""
    return t.PerceptionLMConfig(text_config=dict(TEXT, head_dim=8, model_type="llama"),
                                vision_config=dict(VISION, model_type="clip_vision_model", image_size=28,
                                                   patch_size=14, model_args={"embed_dim": 32}),
                                image_token_id=IMAGE_ID, video_token_id=101)


def perception_tiles(n, gen):
    """PerceptionLM: per image its tiles, one here, (n, 1, 3, 28, 28)."""
    return {"pixel_values": torch.randn(n, 1, 3, 28, 28, generator=gen)}
