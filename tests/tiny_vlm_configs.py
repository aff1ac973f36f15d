"""The tiny VLMs' configs and image inputs (``tiny_vlms.FAMILIES`` puts them together, one row per family).

Each config: a language model of 2 blocks, hidden 32, 4 query / 2 KV heads of 8, MLP 64, vocabulary 128 (``TEXT``)
and a vision tower of 2 layers, hidden 32 (``VISION``), with sizes that turn one tiny image into few image
tokens. Each image builder ``pixels(n, generator)`` gives the keyword arguments besides ``input_ids`` in the
layout the vision tower reads, as the model's processor would.
"""

from __future__ import annotations

from typing import Callable

import torch

VOCAB, IMAGE_ID, IMAGE_TOKENS = 128, 100, 4
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
# BLIP-2's family (BLIP-2, InstructBLIP, InstructBLIP-Video): the vision weights drawn at 0.02 (the config's
# initializer_range of 1e-10 would let no image reach the logits) and a Q-Former reading them
BLIP_VISION = dict(VISION, image_size=28, patch_size=14, initializer_range=0.02)
QFORMER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, encoder_hidden_size=32, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)


def square_images(size: int) -> Callable:
    return lambda n, gen: {"pixel_values": torch.randn(n, 3, size, size, generator=gen)}


def qwen_patches(patch: int, grid=(1, 4, 4)) -> Callable:
    """Qwen-VL's flattened patches: per image t*h*w rows of 3 * temporal_patch (2) * patch * patch; 2x2 patches
    merge into one token, so a 1x4x4 grid gives 4 image tokens."""
    t, h, w = grid

    def pixels(n, gen):
        return {"pixel_values": torch.randn(n * t * h * w, 3 * 2 * patch * patch, generator=gen),
                "image_grid_thw": torch.tensor([list(grid)] * n)}
    return pixels


def llava(t, text_config=None):
    """LLaVA around a Llama (or ``text_config``: another language model's config, e.g. a Cohere)."""
    text_config = t.LlamaConfig(**TEXT, head_dim=8) if text_config is None else text_config
    return t.LlavaConfig(text_config=text_config.to_dict(),
                         vision_config=dict(VISION, model_type="clip_vision_model", image_size=28, patch_size=14,
                                            projection_dim=32),
                         image_token_id=IMAGE_ID, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")  # 2x2 patches, the CLS token dropped: 4 tokens


def gemma3(t):
    return t.Gemma3Config(text_config=dict(TEXT, head_dim=8, sliding_window=8, model_type="gemma3_text"),
                          vision_config=dict(VISION, image_size=32, patch_size=16),  # 2x2 patches
                          mm_tokens_per_image=IMAGE_TOKENS, image_token_index=IMAGE_ID, boi_token_index=101,
                          eoi_token_index=102)


def qwen2_vl(t):
    return t.Qwen2VLConfig(text_config=dict(TEXT, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                       mrope_section=[1, 1, 2])),
                           vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2,
                                              patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
                           image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102)


def qwen2_5_vl(t):
    return t.Qwen2_5_VLConfig(text_config=dict(TEXT, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                          mrope_section=[1, 1, 2])),
                              vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                                                 out_hidden_size=32, patch_size=14, window_size=56,
                                                 fullatt_block_indexes=[1]),
                              image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102)


def qwen3_vl(t):
    return t.Qwen3VLConfig(text_config=dict(TEXT, head_dim=8, rope_parameters=dict(rope_type="default",
                                                                                  rope_theta=10000.0,
                                                                                  mrope_section=[1, 1, 2])),
                           vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                                              out_hidden_size=32, patch_size=16, num_position_embeddings=16,
                                              deepstack_visual_indexes=[0]),
                           image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102)


def qwen3_vl_moe(t):
    """Qwen3-VL-MoE: Qwen3-VL with 4 experts of width 64 (2 per token) in block 0; block 1 dense (mlp_only_layers:
    Llama's MLP, width intermediate_size 64)."""
    return t.Qwen3VLMoeConfig(text_config=dict(TEXT, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                               moe_intermediate_size=64, mlp_only_layers=[1],
                                               rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                    mrope_section=[1, 1, 2])),
                              vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                                                 out_hidden_size=32, patch_size=16, num_position_embeddings=16,
                                                 deepstack_visual_indexes=[0]),
                              image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102)


def mistral3(t):
    return t.Mistral3Config(text_config=dict(TEXT, head_dim=8, model_type="mistral"),
                            vision_config=dict(VISION, model_type="pixtral", image_size=56, patch_size=14),
                            image_token_index=IMAGE_ID, spatial_merge_size=2)  # 4x4 patches, merged 2x2: 4 tokens


def llava_next(config_class: str, text_model_type: str, vision_model_type: str) -> Callable:
    """LLaVA-NeXT (-Video) / LLaVA-OneVision: anyres with the one grid pinpoint of the image's size, so an image
    is its base view and one tile of 2x2 patches; the tile's features get a newline token per row: 4 + 2 * (2 + 1)
    = 10 image tokens. LLaVA-NeXT drops CLIP's CLS token ("default"); OneVision's SigLIP has none ("full")."""
    def config(t):
        return getattr(t, config_class)(text_config=dict(TEXT, head_dim=8, model_type=text_model_type),
                                        vision_config=dict(VISION, model_type=vision_model_type, image_size=28,
                                                           patch_size=14),
                                        image_token_index=IMAGE_ID, vision_feature_layer=-1,
                                        image_grid_pinpoints=[[28, 28]])
    return config


def anyres_images(size: int) -> Callable:
    """LLaVA-NeXT / OneVision: per image its views (the base image and one tile), (n, 2, 3, size, size), with
    the image sizes."""
    return lambda n, gen: {"pixel_values": torch.randn(n, 2, 3, size, size, generator=gen),
                           "image_sizes": torch.tensor([[size, size]] * n)}


def paligemma(text_model_type: str) -> Callable:
    """PaliGemma (a Gemma) and PaliGemma 2 (a Gemma 2): SigLIP's 2x2 patches are the 4 image tokens, projected
    to the text width."""
    def config(t):
        text = dict(TEXT, head_dim=8, model_type=text_model_type,
                    **(dict(sliding_window=8) if text_model_type == "gemma2" else {}))
        return t.PaliGemmaConfig(text_config=text, vision_config=dict(VISION, model_type="siglip_vision_model",
                                                                     image_size=28, patch_size=14, projection_dim=32),
                                 image_token_index=IMAGE_ID, projection_dim=32, hidden_size=32)
    return config


def lfm2_vl(t):
    """LFM2-VL around an LFM2 (block 0 a short convolution, block 1 attention; the feed_forward width says
    intermediate_size itself, no auto-adjustment): SigLIP2's 4x4 patches of 8 px, pixel-unshuffled by 2 into 4
    image tokens."""
    return t.Lfm2VlConfig(text_config=dict(TEXT, model_type="lfm2", layer_types=["conv", "full_attention"],
                                           block_auto_adjust_ff_dim=False),
                          vision_config=dict(VISION, model_type="siglip2_vision_model", patch_size=8, num_patches=16,
                                             vision_use_head=False),
                          image_token_id=IMAGE_ID, projector_hidden_size=32, downsample_factor=2)


def naflex_patches(n, gen):
    """SigLIP2 (NaFlex): per image its flattened 8 px patches (4 x 4 of them, none padding), their mask and grid."""
    return {"pixel_values": torch.randn(n, 16, 3 * 8 * 8, generator=gen),
            "pixel_attention_mask": torch.ones(n, 16, dtype=torch.long), "spatial_shapes": torch.tensor([[4, 4]] * n)}


def internvl(t):
    """InternVL around a Qwen2: InternViT's 4x4 patches (its CLS token dropped), pixel-shuffled by 0.5: 4 tokens."""
    return t.InternVLConfig(text_config=dict(TEXT, head_dim=8, model_type="qwen2"),
                            vision_config=dict(VISION, image_size=[56, 56], patch_size=[14, 14]),
                            image_token_id=IMAGE_ID, downsample_ratio=0.5)


def cohere_vision(config_class: str, **extra) -> Callable:
    """Aya Vision / Command A Vision around a Cohere 2: SigLIP's 4x4 patches, pixel-shuffled by 2: 4 tokens."""
    return lambda t: getattr(t, config_class)(
        text_config=dict(TEXT, head_dim=8, model_type="cohere2", sliding_window=8),
        vision_config=dict(VISION, model_type="siglip_vision_model", image_size=56, patch_size=14),
        downsample_factor=2, **extra)


def vipllava(t):
    """VipLLaVA: CLIP's last two layers' features (its CLS token dropped) of 2x2 patches: 4 tokens. The layers'
    key is vision_feature_layer in transformers 5.24, vision_feature_layers before."""
    import inspect

    plural = "vision_feature_layers" in inspect.signature(t.VipLlavaConfig.__init__).parameters
    return t.VipLlavaConfig(text_config=dict(TEXT, head_dim=8, model_type="llama"),
                            vision_config=dict(VISION, model_type="clip_vision_model", image_size=28, patch_size=14,
                                               projection_dim=32),
                            image_token_index=IMAGE_ID,
                            **{"vision_feature_layers" if plural else "vision_feature_layer": [-2, -1]})


def lighton_ocr(t):
    """LightOnOCR around a Qwen3: Pixtral's 4x4 patches, merged 2x2: 4 tokens."""
    return t.LightOnOcrConfig(text_config=dict(TEXT, head_dim=8, model_type="qwen3"),
                              vision_config=dict(VISION, model_type="pixtral", image_size=56, patch_size=14,
                                                 head_dim=8),
                              image_token_id=IMAGE_ID, spatial_merge_size=2)


def idefics2(t):
    """Idefics2 around a Mistral: the perceiver resampler's 4 latents are the image tokens."""
    return t.Idefics2Config(text_config=dict(TEXT, head_dim=8, model_type="mistral"),
                            vision_config=dict(VISION, image_size=28, patch_size=14),
                            perceiver_config=dict(hidden_size=32, resampler_n_latents=4, resampler_depth=1,
                                                  resampler_n_heads=2, resampler_head_dim=8, num_key_value_heads=1),
                            image_token_id=IMAGE_ID)


def video_llava(t):
    """Video-LLaVA around a Llama: CLIP's 2x2 patches of a 28 px image (its CLS token dropped): 4 tokens."""
    return t.VideoLlavaConfig(text_config=dict(TEXT, head_dim=8, model_type="llama"),
                              vision_config=dict(VISION, model_type="clip_vision_model", image_size=28, patch_size=14,
                                                 projection_dim=32),
                              image_token_index=IMAGE_ID, video_token_index=101, vision_feature_layer=-1)


def video_llava_images(n, gen):
    """Video-LLaVA: its images' keyword is pixel_values_images (pixel_values_videos for videos)."""
    return {"pixel_values_images": torch.randn(n, 3, 28, 28, generator=gen)}


def deepseek_vl(t):
    """DeepSeek-VL around a Llama: SigLIP's 2x2 patches of a 28 px image: 4 tokens."""
    return t.DeepseekVLConfig(text_config=dict(TEXT, head_dim=8, model_type="llama"),
                              vision_config=dict(VISION, model_type="siglip_vision_model", image_size=28,
                                                 patch_size=14), image_token_id=IMAGE_ID)


def ovis2(t):
    """Ovis2 around a Qwen2: its visual tokenizer turns 2x2 patches into 4 soft tokens over a visual vocabulary of
    16 (plus 5 indicator tokens, ids 110-114), embedded by the visual embedding table."""
    return t.Ovis2Config(text_config=dict(TEXT, head_dim=8, model_type="qwen2"),
                         vision_config=dict(VISION, image_size=28, patch_size=14, vocab_size=16, hidden_stride=1),
                         image_token_id=IMAGE_ID, visual_indicator_token_ids=[110, 111, 112, 113, 114],
                         vocab_size=VOCAB, hidden_size=32)


def qianfan_ocr(t):
    """Qianfan-OCR around a Qwen3: InternVL's layout (4x4 patches, pixel-shuffled by 0.5: 4 tokens)."""
    return t.QianfanOCRConfig(text_config=dict(TEXT, head_dim=8, model_type="qwen3"),
                              vision_config=dict(VISION, image_size=[56, 56], patch_size=[14, 14]),
                              image_token_id=IMAGE_ID, downsample_ratio=0.5)


def exaone4_5(t):
    """EXAONE 4.5 around an EXAONE 4 (block 0 sliding with RoPE, block 1 global): a Qwen2.5-VL-like vision tower."""
    return t.Exaone4_5_Config(text_config=dict(TEXT, head_dim=8, model_type="exaone4", sliding_window=4,
                                               sliding_window_pattern=2),
                              vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                                                 num_key_value_heads=2, out_hidden_size=32, patch_size=14,
                                                 window_size=56, fullatt_block_indexes=[1]),
                              image_token_id=IMAGE_ID, video_token_id=101)


def got_ocr2(t):
    """GOT-OCR2 around a Qwen2: a SAM-like encoder of 4x4 patches of 16 px, convolved down to one image token (its
    weights drawn at 0.02: the config's initializer_range of 1e-10 would let no image reach the logits)."""
    return t.GotOcr2Config(text_config=dict(TEXT, head_dim=8, model_type="qwen2"),
                           vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2,
                                              num_attention_heads=4, image_size=64, patch_size=16, window_size=2,
                                              global_attn_indexes=[1], mlp_dim=64, initializer_range=0.02),
                           image_token_index=IMAGE_ID)


def lfm3_vl(t):
    """LFM3-VL around an LFM3 (block 0 short convolution, block 1 gated attention): Qwen-VL-like patches of 16 px,
    merged 2x2 into 4 tokens."""
    return t.Lfm3VlConfig(text_config=dict(TEXT, head_dim=8, model_type="lfm3",
                                           layer_types=["conv", "full_attention"], use_sandwich_norm=True,
                                           use_attention_gate=True),
                          vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, patch_size=16),
                          image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102,
                          vision_end_token_id=103, projector_hidden_size=32)


def sized_images(size: int) -> Callable:
    """Mistral3 (Pixtral): square images with their sizes."""
    return lambda n, gen: {"pixel_values": torch.randn(n, 3, size, size, generator=gen),
                           "image_sizes": torch.tensor([[size, size]] * n)}


def idefics3(config_class: str) -> Callable:
    """Idefics3 / SmolVLM: 4x4 patches, pixel-shuffled by 2: 4 tokens."""
    return lambda t: getattr(t, config_class)(text_config=dict(TEXT, head_dim=8, model_type="llama"),
                                              vision_config=dict(VISION, image_size=56, patch_size=14),
                                              scale_factor=2, image_token_id=IMAGE_ID)


def image_lists(size: int) -> Callable:
    """Idefics3 / SmolVLM: one image per row, (rows, images, 3, size, size)."""
    return lambda n, gen: {"pixel_values": torch.randn(n, 1, 3, size, size, generator=gen)}


def hyperclovax_vision_v2(t):
    """HyperCLOVA X SEED Vision around a HyperCLOVA X (post-norms, MuP multipliers): Qwen2.5-VL's vision tower."""
    return t.HyperCLOVAXVisionV2Config(
        text_config=dict(TEXT, head_dim=8, model_type="hyperclovax", use_post_norm=True, embedding_multiplier=2.0,
                         residual_multiplier=0.5, logits_scaling=0.5, attention_multiplier=0.3),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                           patch_size=14, window_size=56, fullatt_block_indexes=[1]),
        image_token_id=IMAGE_ID, video_token_id=101)


def cosmos3_omni(t):
    """Cosmos 3 Omni: Qwen3-VL's language model (qwen3_vl_text) and vision tower."""
    return t.Cosmos3OmniConfig(text_config=dict(TEXT, head_dim=8, rope_parameters=dict(
        rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2])),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                           patch_size=16, num_position_embeddings=16, deepstack_visual_indexes=[0]),
        image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102, vision_end_token_id=103)


def video_llama_3(t):
    """VideoLLaMA3 around a Qwen2: 4x4 patches of 14 px, merged 2x2 (image_merge_sizes) into 4 tokens."""
    return t.VideoLlama3Config(text_config=dict(TEXT, head_dim=8, model_type="qwen2"),
                               vision_config=dict(VISION, patch_size=14), image_token_id=IMAGE_ID, video_token_id=101)


def video_llama_3_patches(n, gen):
    """VideoLLaMA3: per image 4x4 flattened patches (3 * 14 * 14), its grid and its merge size."""
    return {"pixel_values": torch.randn(n * 16, 3 * 14 * 14, generator=gen),
            "image_grid_thw": torch.tensor([[1, 4, 4]] * n), "image_merge_sizes": torch.tensor([2] * n)}


def blip_2(t):
    """BLIP-2 around an OPT: the Q-Former's 4 query tokens are the image tokens (its vision weights drawn at 0.02:
    the config's initializer_range of 1e-10 would let no image reach the logits)."""
    opt = dict(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
               word_embed_proj_dim=32, dropout=0.0, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
               eos_token_id=2, model_type="opt")
    return t.Blip2Config(text_config=opt, vision_config=BLIP_VISION, qformer_config=QFORMER,
                         num_query_tokens=IMAGE_TOKENS, image_token_index=IMAGE_ID)


def deepseek_vl_hybrid(t):
    """DeepSeek-VL hybrid around a Llama: SigLIP's 2x2 patches (4 tokens), fused with a SAM-like high-resolution
    encoder's features of a 64 px view."""
    return t.DeepseekVLHybridConfig(text_config=dict(TEXT, head_dim=8, model_type="llama"),
                                    vision_config=dict(VISION, model_type="siglip_vision_model", image_size=28,
                                                       patch_size=14),
                                    high_res_vision_config=dict(hidden_size=32, output_channels=32,
                                                                num_hidden_layers=2, num_attention_heads=4,
                                                                image_size=64, patch_size=16, window_size=2,
                                                                global_attn_indexes=[1], mlp_dim=64),
                                    image_token_id=IMAGE_ID)


def hybrid_views(n, gen):
    """DeepSeek-VL hybrid: the image at 28 px and at 64 px (the high-resolution view)."""
    return {"pixel_values": torch.randn(n, 3, 28, 28, generator=gen),
            "high_res_pixel_values": torch.randn(n, 3, 64, 64, generator=gen)}


def instructblip(t):
    """InstructBLIP around a Llama (Vicuna): the Q-Former, which reads the instruction too, gives 4 query tokens
    (its vision weights drawn at 0.02, as BLIP-2's)."""
    return t.InstructBlipConfig(text_config=dict(TEXT, head_dim=8, model_type="llama"), vision_config=BLIP_VISION,
                                qformer_config=QFORMER, num_query_tokens=IMAGE_TOKENS, image_token_index=IMAGE_ID)


def instructblip_inputs(n, gen):
    """InstructBLIP: the image and the instruction's tokens for the Q-Former (its own vocabulary)."""
    return {"pixel_values": torch.randn(n, 3, 28, 28, generator=gen),
            "qformer_input_ids": torch.randint(3, VOCAB, (n, 5), generator=gen)}


def minicpm_v(config_class: str) -> Callable:
    """MiniCPM-V 4.6 / 4.7 / MiniCPM-OCR around a Qwen3.5 text model (block 0 gated DeltaNet, block 1 attention:
    heads refused, MLP only): an 8x8 grid of 16 px patches, merged 2x2 inside the vision tower (after layer 0) and
    2x2 again by the merger ("16x", MiniCPM-OCR's default is "4x"): 4 tokens."""
    def config(t):
        import inspect

        text = dict(TEXT, head_dim=8, model_type="qwen3_5_text", layer_types=["linear_attention", "full_attention"],
                    linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                    linear_num_value_heads=4)
        config_type = getattr(t, config_class)
        sized = {"image_size": 128} if "image_size" in inspect.signature(config_type.__init__).parameters else {}
        return config_type(text_config=text, vision_config=dict(VISION, image_size=128, patch_size=16,
                                                                insert_layer_id=0),
                           insert_layer_id=0, downsample_mode="16x", image_token_id=IMAGE_ID, video_token_id=101,
                           **sized)
    return config


def packed_patches(n, gen):
    """MiniCPM-V: the images' 16 px patches side by side in one row of patches, (1, 3, 16, n * 64 * 16), with each
    image's grid (in patches)."""
    return {"pixel_values": torch.randn(1, 3, 16, n * 64 * 16, generator=gen),
            "target_sizes": torch.tensor([[8, 8]] * n)}


# Flan-T5 (T5 v1.1): gated-GELU MLP (wi_0, wi_1, wo), relative-position attention, untied LM head; 2 encoder and 2
# decoder blocks of d_model 32, 4 heads of 8, d_ff 64
FLAN_T5 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
               feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=0,
               eos_token_id=2, decoder_start_token_id=0, model_type="t5")


def _blip_around_flan_t5(t, config_class: str):
    """A BLIP-2 or InstructBLIP config around a Flan-T5: the vision tower and Q-Former of ``blip_2``'s, the Q-Former's
    4 query tokens going into the T5 encoder."""
    return getattr(t, config_class)(
        text_config=FLAN_T5, vision_config=BLIP_VISION, qformer_config=QFORMER, num_query_tokens=IMAGE_TOKENS,
        image_token_index=IMAGE_ID)


def blip_2_flan_t5(t):
    """BLIP-2 around a Flan-T5 (blip2-flan-t5-xl's layout)."""
    return _blip_around_flan_t5(t, "Blip2Config")


def instructblip_flan_t5(t):
    """InstructBLIP around a Flan-T5 (instructblip-flan-t5-xl's layout)."""
    return _blip_around_flan_t5(t, "InstructBlipConfig")


def with_decoder_ids(pixels: Callable, length: int = 5) -> Callable:
    """An encoder-decoder language model's image inputs: ``pixels``'s and the decoder's tokens (its start token,
    then ordinary ones), which its forward needs besides (or instead of) labels."""
    def inputs(n, gen):
        ids = torch.randint(3, IMAGE_ID, (n, length), generator=gen)
        ids[:, 0] = FLAN_T5["decoder_start_token_id"]
        return dict(pixels(n, gen), decoder_input_ids=ids)
    return inputs


# Llama 3.2 Vision: one <|image|> token per image, text of 3 tokens before it and 3 after (tiny_vlms.image_inputs)
MLLAMA_LENGTH = 3 + 1 + 3


def mllama(t):
    """Llama 3.2 Vision: a text model of a self-attention block and a cross-attention block (cross_attention_layers
    [1]); a vision tower of 28 px tiles (2x2 patches of 14), up to 2 tiles, 2 local layers and 1 global one, whose
    features (the last layer's and layer 0's: vision_output_dim 2 x 32) the projector maps to the text width."""
    text = dict(TEXT, cross_attention_layers=[1], rope_parameters=dict(rope_type="default", rope_theta=10000.0))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=4,
                  image_size=28, patch_size=14, max_num_tiles=2, vision_output_dim=2 * 32,
                  intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1], [1, 2]])
    return t.MllamaConfig(text_config=text, vision_config=vision, image_token_index=IMAGE_ID)


def mllama_tiles(n, gen):
    """Llama 3.2 Vision, as its processor gives them: per row one image of 2 tiles (pixel_values (n, images 1,
    tiles 2, 3, 28, 28)), its aspect ratio [1, 2] (id 2) with both tiles present, and the cross-attention mask
    (n, MLLAMA_LENGTH, images, tiles): the tokens from the image token on attend to the image's tiles, those before
    it to none."""
    mask = torch.zeros(n, MLLAMA_LENGTH, 1, 2, dtype=torch.long)
    mask[:, 3:] = 1
    return {"pixel_values": torch.randn(n, 1, 2, 3, 28, 28, generator=gen),
            "aspect_ratio_ids": torch.full((n, 1), 2), "aspect_ratio_mask": torch.ones(n, 1, 2, dtype=torch.long),
            "cross_attention_mask": mask}
