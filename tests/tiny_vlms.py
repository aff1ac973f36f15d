"""Tiny random vision-language models (built from configs, no download, no processor) and their inputs.

Each family: a language model of 2 blocks, hidden 32, 4 query / 2 KV heads of 8, MLP 64, vocabulary 128; a
vision tower of 2 layers, hidden 32, and a tiny image (28-56 px) that the model turns into ``IMAGE_TOKENS`` (or
the family's ``image_tokens``) placeholder tokens (id ``IMAGE_ID``) of ``input_ids``. The inputs are built by
hand as the model's processor would: the image token repeated as many times as the image has features,
``pixel_values`` in the layout the vision tower reads (Qwen-VL: flattened patches with ``image_grid_thw``;
Mistral3: ``image_sizes``; LLaVA-NeXT: anyres views; LFM2-VL: SigLIP2's flattened patches). A family is a row of
``FAMILIES``; its VLM type a ``WrapperSpec`` in ``masked_dora/models/families_vlm.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict

import torch

VOCAB, IMAGE_ID, IMAGE_TOKENS = 128, 100, 4
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


@dataclass(frozen=True)
class TinyVLM:
    """A family: its transformers classes, its config (``config(t)``, ``t`` the transformers module) and its
    image inputs for a batch of ``n`` (``pixels(n, generator)``: the keyword arguments besides ``input_ids``)."""

    classes: tuple  # (config class, model class): the test skips where this transformers lacks one
    config: Callable
    pixels: Callable
    # whether the compacted model saves plainly: its text config says the pruned sizes (head_dim for the heads; an
    # MLP width key that sizes nothing outside the language model)
    plain: bool
    language_model: str = "model.language_model"  # the qualified name of the language model
    image_tokens: int = IMAGE_TOKENS  # the image features one image becomes (the image token's repeats)
    # the MaskedDoRALinear modules prepare_model puts in the 2 blocks: q, k, v, o and the MLP's gate, up, down each
    # (packed experts: one per expert and projection, gate/up fused)
    wrapped: int = 2 * 7
    groups: tuple = ("mlp", "heads")  # what prunes: ("mlp",) where the language model's heads are refused
    prefix_lm: bool = False  # PaliGemma: token_type_ids 0 over the prefix (the image and the prompt), 1 after it
    pixels_key: str = "pixel_values"  # the image input's keyword (Video-LLaVA: pixel_values_images)


def _square_images(size: int) -> Callable:
    return lambda n, gen: {"pixel_values": torch.randn(n, 3, size, size, generator=gen)}


def _qwen_patches(patch: int, grid=(1, 4, 4)) -> Callable:
    """Qwen-VL's flattened patches: per image t*h*w rows of 3 * temporal_patch (2) * patch * patch; 2x2 patches
    merge into one token, so a 1x4x4 grid gives 4 image tokens."""
    t, h, w = grid

    def pixels(n, gen):
        return {"pixel_values": torch.randn(n * t * h * w, 3 * 2 * patch * patch, generator=gen),
                "image_grid_thw": torch.tensor([list(grid)] * n)}
    return pixels


def _llava(t, text_config=None):
    """LLaVA around a Llama (or ``text_config``: another language model's config, e.g. a Cohere)."""
    text_config = t.LlamaConfig(**TEXT, head_dim=8) if text_config is None else text_config
    return t.LlavaConfig(text_config=text_config.to_dict(),
                         vision_config=dict(VISION, model_type="clip_vision_model", image_size=28, patch_size=14,
                                            projection_dim=32),
                         image_token_id=IMAGE_ID, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")  # 2x2 patches, the CLS token dropped: 4 tokens


def _gemma3(t):
    return t.Gemma3Config(text_config=dict(TEXT, head_dim=8, sliding_window=8, model_type="gemma3_text"),
                          vision_config=dict(VISION, image_size=32, patch_size=16),  # 2x2 patches
                          mm_tokens_per_image=IMAGE_TOKENS, image_token_index=IMAGE_ID, boi_token_index=101,
                          eoi_token_index=102)


def _qwen2_vl(t):
    return t.Qwen2VLConfig(text_config=dict(TEXT, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                       mrope_section=[1, 1, 2])),
                           vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2,
                                              patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
                           image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102)


def _qwen2_5_vl(t):
    return t.Qwen2_5_VLConfig(text_config=dict(TEXT, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                          mrope_section=[1, 1, 2])),
                              vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                                                 out_hidden_size=32, patch_size=14, window_size=56,
                                                 fullatt_block_indexes=[1]),
                              image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102)


def _qwen3_vl(t):
    return t.Qwen3VLConfig(text_config=dict(TEXT, head_dim=8, rope_parameters=dict(rope_type="default",
                                                                                  rope_theta=10000.0,
                                                                                  mrope_section=[1, 1, 2])),
                           vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                                              out_hidden_size=32, patch_size=16, num_position_embeddings=16,
                                              deepstack_visual_indexes=[0]),
                           image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102)


def _qwen3_vl_moe(t):
    """Qwen3-VL-MoE: Qwen3-VL with 4 experts of width 64 (2 per token) in every block."""
    return t.Qwen3VLMoeConfig(text_config=dict(TEXT, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                               moe_intermediate_size=64,
                                               rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                    mrope_section=[1, 1, 2])),
                              vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                                                 out_hidden_size=32, patch_size=16, num_position_embeddings=16,
                                                 deepstack_visual_indexes=[0]),
                              image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102)


def _mistral3(t):
    return t.Mistral3Config(text_config=dict(TEXT, head_dim=8, model_type="mistral"),
                            vision_config=dict(VISION, model_type="pixtral", image_size=56, patch_size=14),
                            image_token_index=IMAGE_ID, spatial_merge_size=2)  # 4x4 patches, merged 2x2: 4 tokens


def _llava_next(config_class: str, text_model_type: str, vision_model_type: str) -> Callable:
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


def _anyres_images(size: int) -> Callable:
    """LLaVA-NeXT / OneVision: per image its views (the base image and one tile), (n, 2, 3, size, size), with
    the image sizes."""
    return lambda n, gen: {"pixel_values": torch.randn(n, 2, 3, size, size, generator=gen),
                           "image_sizes": torch.tensor([[size, size]] * n)}


def _paligemma(text_model_type: str) -> Callable:
    """PaliGemma (a Gemma) and PaliGemma 2 (a Gemma 2): SigLIP's 2x2 patches are the 4 image tokens, projected
    to the text width."""
    def config(t):
        text = dict(TEXT, head_dim=8, model_type=text_model_type,
                    **(dict(sliding_window=8) if text_model_type == "gemma2" else {}))
        return t.PaliGemmaConfig(text_config=text, vision_config=dict(VISION, model_type="siglip_vision_model",
                                                                     image_size=28, patch_size=14, projection_dim=32),
                                 image_token_index=IMAGE_ID, projection_dim=32, hidden_size=32)
    return config


def _lfm2_vl(t):
    """LFM2-VL around an LFM2 (block 0 a short convolution, block 1 attention; the feed_forward width says
    intermediate_size itself, no auto-adjustment): SigLIP2's 4x4 patches of 8 px, pixel-unshuffled by 2 into 4
    image tokens."""
    return t.Lfm2VlConfig(text_config=dict(TEXT, model_type="lfm2", layer_types=["conv", "full_attention"],
                                           block_auto_adjust_ff_dim=False),
                          vision_config=dict(VISION, model_type="siglip2_vision_model", patch_size=8, num_patches=16,
                                             vision_use_head=False),
                          image_token_id=IMAGE_ID, projector_hidden_size=32, downsample_factor=2)


def _naflex_patches(n, gen):
    """SigLIP2 (NaFlex): per image its flattened 8 px patches (4 x 4 of them, none padding), their mask and grid."""
    return {"pixel_values": torch.randn(n, 16, 3 * 8 * 8, generator=gen),
            "pixel_attention_mask": torch.ones(n, 16, dtype=torch.long), "spatial_shapes": torch.tensor([[4, 4]] * n)}


def _internvl(t):
    """InternVL around a Qwen2: InternViT's 4x4 patches (its CLS token dropped), pixel-shuffled by 0.5: 4 tokens."""
    return t.InternVLConfig(text_config=dict(TEXT, head_dim=8, model_type="qwen2"),
                            vision_config=dict(VISION, image_size=[56, 56], patch_size=[14, 14]),
                            image_token_id=IMAGE_ID, downsample_ratio=0.5)


def _cohere_vision(config_class: str, **extra) -> Callable:
    """Aya Vision / Command A Vision around a Cohere 2: SigLIP's 4x4 patches, pixel-shuffled by 2: 4 tokens."""
    return lambda t: getattr(t, config_class)(
        text_config=dict(TEXT, head_dim=8, model_type="cohere2", sliding_window=8),
        vision_config=dict(VISION, model_type="siglip_vision_model", image_size=56, patch_size=14),
        downsample_factor=2, **extra)


def _vipllava(t):
    """VipLLaVA: CLIP's last two layers' features (its CLS token dropped) of 2x2 patches: 4 tokens."""
    return t.VipLlavaConfig(text_config=dict(TEXT, head_dim=8, model_type="llama"),
                            vision_config=dict(VISION, model_type="clip_vision_model", image_size=28, patch_size=14,
                                               projection_dim=32),
                            image_token_index=IMAGE_ID, vision_feature_layer=[-2, -1])


def _lighton_ocr(t):
    """LightOnOCR around a Qwen3: Pixtral's 4x4 patches, merged 2x2: 4 tokens."""
    return t.LightOnOcrConfig(text_config=dict(TEXT, head_dim=8, model_type="qwen3"),
                              vision_config=dict(VISION, model_type="pixtral", image_size=56, patch_size=14,
                                                 head_dim=8),
                              image_token_id=IMAGE_ID, spatial_merge_size=2)


def _idefics2(t):
    """Idefics2 around a Mistral: the perceiver resampler's 4 latents are the image tokens."""
    return t.Idefics2Config(text_config=dict(TEXT, head_dim=8, model_type="mistral"),
                            vision_config=dict(VISION, image_size=28, patch_size=14),
                            perceiver_config=dict(hidden_size=32, resampler_n_latents=4, resampler_depth=1,
                                                  resampler_n_heads=2, resampler_head_dim=8, num_key_value_heads=1),
                            image_token_id=IMAGE_ID)


def _clip_llava(config_class: str, **extra) -> Callable:
    """Video-LLaVA / DeepSeek-VL: CLIP's (SigLIP's) 2x2 patches of a 28 px image (CLS dropped): 4 tokens."""
    return lambda t: getattr(t, config_class)(text_config=dict(TEXT, head_dim=8, model_type="llama"), **extra)


def _ovis2(t):
    """Ovis2 around a Qwen2: its visual tokenizer turns 2x2 patches into 4 soft tokens over a visual vocabulary of
    16 (plus 5 indicator tokens, ids 110-114), embedded by the visual embedding table."""
    return t.Ovis2Config(text_config=dict(TEXT, head_dim=8, model_type="qwen2"),
                         vision_config=dict(VISION, image_size=28, patch_size=14, vocab_size=16, hidden_stride=1),
                         image_token_id=IMAGE_ID, visual_indicator_token_ids=[110, 111, 112, 113, 114],
                         vocab_size=VOCAB, hidden_size=32)


def _qianfan_ocr(t):
    """Qianfan-OCR around a Qwen3: InternVL's layout (4x4 patches, pixel-shuffled by 0.5: 4 tokens)."""
    return t.QianfanOCRConfig(text_config=dict(TEXT, head_dim=8, model_type="qwen3"),
                              vision_config=dict(VISION, image_size=[56, 56], patch_size=[14, 14]),
                              image_token_id=IMAGE_ID, downsample_ratio=0.5)


def _exaone4_5(t):
    """EXAONE 4.5 around an EXAONE 4 (block 0 sliding with RoPE, block 1 global): a Qwen2.5-VL-like vision tower."""
    return t.Exaone4_5_Config(text_config=dict(TEXT, head_dim=8, model_type="exaone4", sliding_window=4,
                                               sliding_window_pattern=2),
                              vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                                                 num_key_value_heads=2, out_hidden_size=32, patch_size=14,
                                                 window_size=56, fullatt_block_indexes=[1]),
                              image_token_id=IMAGE_ID, video_token_id=101)


def _got_ocr2(t):
    """GOT-OCR2 around a Qwen2: a SAM-like encoder of 4x4 patches of 16 px, convolved down to one image token (its
    weights drawn at 0.02: the config's initializer_range of 1e-10 would let no image reach the logits)."""
    return t.GotOcr2Config(text_config=dict(TEXT, head_dim=8, model_type="qwen2"),
                           vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2,
                                              num_attention_heads=4, image_size=64, patch_size=16, window_size=2,
                                              global_attn_indexes=[1], mlp_dim=64, initializer_range=0.02),
                           image_token_index=IMAGE_ID)


def _lfm3_vl(t):
    """LFM3-VL around an LFM3 (block 0 short convolution, block 1 gated attention): Qwen-VL-like patches of 16 px,
    merged 2x2 into 4 tokens."""
    return t.Lfm3VlConfig(text_config=dict(TEXT, head_dim=8, model_type="lfm3",
                                           layer_types=["conv", "full_attention"], use_sandwich_norm=True,
                                           use_attention_gate=True),
                          vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, patch_size=16),
                          image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102,
                          vision_end_token_id=103, projector_hidden_size=32)


def _sized_images(size: int) -> Callable:
    """Mistral3 (Pixtral): square images with their sizes."""
    return lambda n, gen: {"pixel_values": torch.randn(n, 3, size, size, generator=gen),
                           "image_sizes": torch.tensor([[size, size]] * n)}


def _idefics3(config_class: str) -> Callable:
    """Idefics3 / SmolVLM: 4x4 patches, pixel-shuffled by 2: 4 tokens."""
    return lambda t: getattr(t, config_class)(text_config=dict(TEXT, head_dim=8, model_type="llama"),
                                              vision_config=dict(VISION, image_size=56, patch_size=14),
                                              scale_factor=2, image_token_id=IMAGE_ID)


def _image_lists(size: int) -> Callable:
    """Idefics3 / SmolVLM: one image per row, (rows, images, 3, size, size)."""
    return lambda n, gen: {"pixel_values": torch.randn(n, 1, 3, size, size, generator=gen)}


FAMILIES: Dict[str, TinyVLM] = {
    "llava": TinyVLM(("LlavaConfig", "LlavaForConditionalGeneration"), _llava, _square_images(28), True),
    "gemma3": TinyVLM(("Gemma3Config", "Gemma3ForConditionalGeneration"), _gemma3, _square_images(32), True),
    # Qwen2-VL's attention sets head_dim = hidden_size // heads: pruned heads save in the per-layer form
    "qwen2_vl": TinyVLM(("Qwen2VLConfig", "Qwen2VLForConditionalGeneration"), _qwen2_vl, _qwen_patches(14), False),
    "qwen2_5_vl": TinyVLM(("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"), _qwen2_5_vl,
                          _qwen_patches(14), False),
    "qwen3_vl": TinyVLM(("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"), _qwen3_vl, _qwen_patches(16), True),
    "qwen3_vl_moe": TinyVLM(("Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration"), _qwen3_vl_moe,
                            _qwen_patches(16), True, wrapped=2 * (4 + 4 * 2)),
    "mistral3": TinyVLM(("Mistral3Config", "Mistral3ForConditionalGeneration"), _mistral3, _sized_images(56), True),
    "smolvlm": TinyVLM(("SmolVLMConfig", "SmolVLMForConditionalGeneration"), _idefics3("SmolVLMConfig"),
                       _image_lists(56), True, language_model="model.text_model"),
    "idefics3": TinyVLM(("Idefics3Config", "Idefics3ForConditionalGeneration"), _idefics3("Idefics3Config"),
                        _image_lists(56), True, language_model="model.text_model"),
    "llava_next": TinyVLM(("LlavaNextConfig", "LlavaNextForConditionalGeneration"),
                          _llava_next("LlavaNextConfig", "llama", "clip_vision_model"), _anyres_images(28), True,
                          image_tokens=10),
    "llava_onevision": TinyVLM(("LlavaOnevisionConfig", "LlavaOnevisionForConditionalGeneration"),
                               _llava_next("LlavaOnevisionConfig", "qwen2", "siglip_vision_model"),
                               _anyres_images(28), True, image_tokens=10),
    "paligemma": TinyVLM(("PaliGemmaConfig", "PaliGemmaForConditionalGeneration"), _paligemma("gemma"),
                         _square_images(28), True, prefix_lm=True),
    # LFM2's heads are refused (a hybrid of convolution and attention blocks): its feed_forward w1/w3/w2 prune
    "lfm2_vl": TinyVLM(("Lfm2VlConfig", "Lfm2VlForConditionalGeneration"), _lfm2_vl, _naflex_patches, True,
                       wrapped=2 * 3, groups=("mlp",)),
    "llava_next_video": TinyVLM(("LlavaNextVideoConfig", "LlavaNextVideoForConditionalGeneration"),
                                _llava_next("LlavaNextVideoConfig", "llama", "clip_vision_model"),
                                _anyres_images(28), True, image_tokens=10),
    "internvl": TinyVLM(("InternVLConfig", "InternVLForConditionalGeneration"), _internvl, _square_images(56), True),
    "aya_vision": TinyVLM(("AyaVisionConfig", "AyaVisionForConditionalGeneration"),
                          _cohere_vision("AyaVisionConfig", image_token_index=IMAGE_ID, vision_feature_layer=-1),
                          _square_images(56), True),
    "cohere2_vision": TinyVLM(("Cohere2VisionConfig", "Cohere2VisionForConditionalGeneration"),
                              _cohere_vision("Cohere2VisionConfig", image_token_id=IMAGE_ID,
                                             alignment_intermediate_size=64), _square_images(56), True),
    "vipllava": TinyVLM(("VipLlavaConfig", "VipLlavaForConditionalGeneration"), _vipllava, _square_images(28), True),
    "lighton_ocr": TinyVLM(("LightOnOcrConfig", "LightOnOcrForConditionalGeneration"), _lighton_ocr,
                           _sized_images(56), True),
    # Idefics2's connector MLP is text_config.intermediate_size wide: a pruned MLP saves in the per-layer form
    "idefics2": TinyVLM(("Idefics2Config", "Idefics2ForConditionalGeneration"), _idefics2, _image_lists(28), False,
                        language_model="model.text_model"),
    "video_llava": TinyVLM(("VideoLlavaConfig", "VideoLlavaForConditionalGeneration"), _clip_llava(
        "VideoLlavaConfig", vision_config=dict(VISION, model_type="clip_vision_model", image_size=28, patch_size=14,
                                               projection_dim=32),
        image_token_index=IMAGE_ID, video_token_index=101, vision_feature_layer=-1),
        lambda n, gen: {"pixel_values_images": torch.randn(n, 3, 28, 28, generator=gen)}, True,
        pixels_key="pixel_values_images"),
    "deepseek_vl": TinyVLM(("DeepseekVLConfig", "DeepseekVLForConditionalGeneration"), _clip_llava(
        "DeepseekVLConfig", vision_config=dict(VISION, model_type="siglip_vision_model", image_size=28,
                                               patch_size=14), image_token_id=IMAGE_ID), _square_images(28), True),
    "ovis2": TinyVLM(("Ovis2Config", "Ovis2ForConditionalGeneration"), _ovis2, _square_images(28), True),
    "qianfan_ocr": TinyVLM(("QianfanOCRConfig", "QianfanOCRForConditionalGeneration"), _qianfan_ocr,
                           _square_images(56), True),
    "exaone4_5": TinyVLM(("Exaone4_5_Config", "Exaone4_5_ForConditionalGeneration"), _exaone4_5, _qwen_patches(14),
                         True),
    "got_ocr2": TinyVLM(("GotOcr2Config", "GotOcr2ForConditionalGeneration"), _got_ocr2, _square_images(64), True,
                        image_tokens=1),
    # LFM3's heads are refused (a hybrid of convolution and attention blocks): its feed_forward w1/w3/w2 prune
    "lfm3_vl": TinyVLM(("Lfm3VlConfig", "Lfm3VlForConditionalGeneration"), _lfm3_vl, _qwen_patches(16), True,
                       wrapped=2 * 3, groups=("mlp",)),
    "paligemma2": TinyVLM(("PaliGemmaConfig", "PaliGemmaForConditionalGeneration"), _paligemma("gemma2"),
                          _square_images(28), True, prefix_lm=True),
}


def available(family: str) -> bool:
    import transformers

    return all(hasattr(transformers, name) for name in FAMILIES[family].classes)


def tiny_vlm(family: str, seed: int = 0):
    """The tiny ``family`` VLM (random weights, eval mode)."""
    import transformers

    torch.manual_seed(seed)
    tiny = FAMILIES[family]
    model = getattr(transformers, tiny.classes[1])(tiny.config(transformers)).eval()
    with torch.no_grad():  # weights initialised to 0 (Gemma 3's mm_input_projection_weight) would drop the image
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.05)
    return model


def tiny_llava_around(text_config, seed: int = 0):
    """A tiny LLaVA whose language model is built from ``text_config`` (its image inputs: ``"llava"``'s)."""
    import transformers

    torch.manual_seed(seed)
    return transformers.LlavaForConditionalGeneration(_llava(transformers, text_config)).eval()


def text_inputs(n: int = 2, length: int = 10, seed: int = 1) -> dict:
    """Text only: ids among the ordinary tokens (3..99, below the image and special tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, IMAGE_ID, (n, length), generator=gen)}


def image_inputs(family: str, n: int = 2, seed: int = 2) -> dict:
    """``n`` rows of 3 text tokens, one image (the family's ``image_tokens`` image tokens) and 3 text tokens, with
    the image's pixels."""
    import inspect

    import transformers

    gen = torch.Generator().manual_seed(seed)
    tokens = FAMILIES[family].image_tokens
    ids = torch.randint(3, IMAGE_ID, (n, 6 + tokens), generator=gen)
    ids[:, 3:3 + tokens] = IMAGE_ID
    inputs = {"input_ids": ids, **FAMILIES[family].pixels(n, gen)}
    forward = getattr(transformers, FAMILIES[family].classes[1]).forward
    if FAMILIES[family].prefix_lm:  # the prefix (image and prompt) attends both ways, the suffix causally
        inputs["token_type_ids"] = (torch.arange(ids.shape[1]) >= 3 + tokens).long().expand(n, -1)
    if "mm_token_type_ids" in inspect.signature(forward).parameters:  # newer Qwen-VL: which tokens are image ones
        inputs["mm_token_type_ids"] = (ids == IMAGE_ID).long()
    return inputs


def check_mlp_only_vlm_chain(model, image: dict, first_row: dict, path):
    """The chain of a VLM whose language model prunes its MLP only (its heads refused), after ``prepare_model``:
    a training step on ``image`` inputs, harden, compact (equal logits on text-only and image inputs, the image
    reaching them), save, a plain ``AutoModelForImageTextToText`` reload in a process without masked_dora (equal
    logits) and ``load_compact`` (equal ``generate()`` tokens from ``first_row``, one row of ``image``). Returns
    the compacted model."""
    from masked_dora.models import compact_model, harden, load_compact

    from tiny_models import randomize_adapters, reload_plain_in_clean_process

    randomize_adapters(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    model(**image, labels=image["input_ids"].masked_fill(image["input_ids"] == IMAGE_ID, -100)).loss.backward()
    torch.optim.SGD(params, lr=1e-2).step()
    model.eval()
    harden(model)
    inputs = {"text": text_inputs(), "image": image}
    with torch.no_grad():
        ref = {k: model(**v).logits for k, v in inputs.items()}
        other = dict(image, pixel_values=image["pixel_values"] + 1.0)
        assert (model(**other).logits - ref["image"]).abs().max() > 1e-3  # the image reaches the logits
        small = compact_model(model)
        for kind, v in inputs.items():
            torch.testing.assert_close(small(**v).logits, ref[kind], rtol=1e-4, atol=1e-5)
    small.save_pretrained(path)
    torch.save(image, os.path.join(path, "inputs.pt"))
    reloaded, = reload_plain_in_clean_process([(str(path), "AutoModelForImageTextToText")])
    torch.testing.assert_close(reloaded, ref["image"], rtol=1e-4, atol=1e-5)
    gen = dict(max_new_tokens=5, do_sample=False)
    assert torch.equal(load_compact(str(path)).generate(**first_row, **gen), model.generate(**first_row, **gen))
    return small
