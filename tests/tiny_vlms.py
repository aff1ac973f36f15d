"""Tiny random vision-language models (built from configs, no download, no processor) and their inputs.

One row of ``FAMILIES`` per VLM type (its VLM type a ``WrapperSpec`` in ``masked_dora/models/families_vlm.py``):
its config and image inputs (``tiny_vlm_configs``, ``tiny_vlm_configs_more``: a language model of 2 blocks,
hidden 32, 4 query / 2 KV heads of 8, MLP 64, vocabulary 128; a vision tower of 2 layers, hidden 32; a tiny image
that the model turns into ``IMAGE_TOKENS``, or the family's ``image_tokens``, placeholder tokens, id ``IMAGE_ID``,
of ``input_ids``) and what the tests expect of it. The inputs are built by hand as the model's processor would:
the image token repeated as many times as the image has features, the pixels in the layout the vision tower reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict

import torch

from tiny_vlm_configs import (IMAGE_ID, IMAGE_TOKENS, anyres_images, blip_2, cohere_vision, cosmos3_omni, deepseek_vl,
                              deepseek_vl_hybrid, exaone4_5, gemma3, got_ocr2, hybrid_views, hyperclovax_vision_v2,
                              idefics2, idefics3, image_lists, instructblip, instructblip_inputs, internvl, lfm2_vl,
                              lfm3_vl, lighton_ocr, llava, llava_next, minicpm_v, mistral3, naflex_patches, ovis2,
                              packed_patches, paligemma, qianfan_ocr, qwen2_5_vl, qwen2_vl, qwen3_vl, qwen3_vl_moe,
                              qwen_patches, sized_images, square_images, video_llama_3, video_llama_3_patches,
                              video_llava, video_llava_images, vipllava)
from tiny_vlm_configs import blip_2_flan_t5, instructblip_flan_t5, mllama, mllama_tiles, with_decoder_ids

from tiny_vlm_configs_more import (fast_vlm, glm4v, glm4v_moe, glm46v, glm_ocr, instructblipvideo, janus, kimi_k25,
                                   hunyuan_patches, hunyuan_vl, moonvit_patches, paddle_patches, paddleocr_vl,
                                   video_frames)
from tiny_vlm_configs_extra import (aria, chameleon, emu3, emu3_images, ernie4_5_vl_moe, ernie_patches, fuyu,
                                    fuyu_patches, granite4_vision, idefics, idefics_images, molmo2, molmo2_crops,
                                    perception_lm, perception_tiles, qwen2_5_omni_thinker)
from tiny_vlm_configs_mm import gemma4_unified, gemma4_unified_patches, llama4, qwen3_omni_moe_thinker, qwen4_exp
from tiny_vlm_configs_new_text import (cosmos3_edge, cosmos3_edge_patches, deepseek_ocr2, granite_docling,
                                       granite_docling_tiles, hy_v4_vl, hy_v4_vl_patches, minimax_m3_vl)
from tiny_vlm_configs_2026 import (apertus1p5, cohere_compass, glm5_next, glmga, inkling2, inkling2_patches,
                                  inkling_mm_model, inkling_patches, mistral_large4, pp_chart2table, step3p7)
from wrapped_lm_chain import row_unavailable_reason

_qwen_patches = qwen_patches  # (tests/test_models_hybrid.py imports it from here)


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
    # its block lists, under language_model, stack after stack (an encoder-decoder's "encoder.block" and
    # "decoder.block"), each of 2 blocks
    stacks: tuple = ("layers",)
    image_tokens: int = IMAGE_TOKENS  # the image features one image becomes (the image token's repeats)
    # the MaskedDoRALinear modules prepare_model puts in the 2 blocks: q, k, v, o and the MLP's gate, up, down each
    # (packed experts: one per expert and projection, gate/up fused)
    wrapped: int = 2 * 7
    groups: tuple = ("mlp", "heads")  # what prunes: ("mlp",) where the language model's heads are refused
    prefix_lm: bool = False  # PaliGemma: token_type_ids 0 over the prefix (the image and the prompt), 1 after it
    pixels_key: str = "pixel_values"  # the image input's keyword (Video-LLaVA: pixel_values_images)
    text_alone: bool = True  # whether the model runs on text without an image (BLIP-2 needs pixel_values)
    # modules outside the language model kept in eval mode while training, as a user would: BatchNorms whose
    # running statistics train mode would move (Emu3's VQ-VAE)
    eval_while_training: tuple = ()
    # (major, minor): the first transformers whose model is laid out as the spec describes, and why an older one is
    # not (the family is reported skipped there)
    since: tuple = ()
    since_why: str = ""
    # (major, minor) versions of transformers whose model cannot run these inputs at all (an upstream bug), and why
    broken_in: tuple = ()
    broken_why: str = ""

    @property
    def block_lists(self) -> tuple:
        """The qualified names of the language model's block lists."""
        return tuple(f"{self.language_model}.{stack}" for stack in self.stacks)


FAMILIES: Dict[str, TinyVLM] = {
    "llava": TinyVLM(("LlavaConfig", "LlavaForConditionalGeneration"), llava, square_images(28), True),
    "gemma3": TinyVLM(("Gemma3Config", "Gemma3ForConditionalGeneration"), gemma3, square_images(32), True),
    # Qwen2-VL's attention sets head_dim = hidden_size // heads: pruned heads save in the per-layer form
    "qwen2_vl": TinyVLM(("Qwen2VLConfig", "Qwen2VLForConditionalGeneration"), qwen2_vl, qwen_patches(14), False),
    "qwen2_5_vl": TinyVLM(("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"), qwen2_5_vl,
                          qwen_patches(14), False),
    "qwen3_vl": TinyVLM(("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"), qwen3_vl, qwen_patches(16), True),
    "qwen3_vl_moe": TinyVLM(("Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration"), qwen3_vl_moe,
                            qwen_patches(16), True, wrapped=(4 + 4 * 2) + 7),
    "mistral3": TinyVLM(("Mistral3Config", "Mistral3ForConditionalGeneration"), mistral3, sized_images(56), True),
    "smolvlm": TinyVLM(("SmolVLMConfig", "SmolVLMForConditionalGeneration"), idefics3("SmolVLMConfig"),
                       image_lists(56), True, language_model="model.text_model"),
    "idefics3": TinyVLM(("Idefics3Config", "Idefics3ForConditionalGeneration"), idefics3("Idefics3Config"),
                        image_lists(56), True, language_model="model.text_model"),
    "llava_next": TinyVLM(("LlavaNextConfig", "LlavaNextForConditionalGeneration"),
                          llava_next("LlavaNextConfig", "llama", "clip_vision_model"), anyres_images(28), True,
                          image_tokens=10),
    "llava_onevision": TinyVLM(("LlavaOnevisionConfig", "LlavaOnevisionForConditionalGeneration"),
                               llava_next("LlavaOnevisionConfig", "qwen2", "siglip_vision_model"),
                               anyres_images(28), True, image_tokens=10),
    "paligemma": TinyVLM(("PaliGemmaConfig", "PaliGemmaForConditionalGeneration"), paligemma("gemma"),
                         square_images(28), True, prefix_lm=True),
    # LFM2's heads are refused (a hybrid of convolution and attention blocks): its feed_forward w1/w3/w2 prune
    "lfm2_vl": TinyVLM(("Lfm2VlConfig", "Lfm2VlForConditionalGeneration"), lfm2_vl, naflex_patches, True,
                       wrapped=2 * 3, groups=("mlp",)),
    "llava_next_video": TinyVLM(("LlavaNextVideoConfig", "LlavaNextVideoForConditionalGeneration"),
                                llava_next("LlavaNextVideoConfig", "llama", "clip_vision_model"),
                                anyres_images(28), True, image_tokens=10),
    "internvl": TinyVLM(("InternVLConfig", "InternVLForConditionalGeneration"), internvl, square_images(56), True),
    "aya_vision": TinyVLM(("AyaVisionConfig", "AyaVisionForConditionalGeneration"),
                          cohere_vision("AyaVisionConfig", image_token_index=IMAGE_ID, vision_feature_layer=-1),
                          square_images(56), True),
    "cohere2_vision": TinyVLM(("Cohere2VisionConfig", "Cohere2VisionForConditionalGeneration"),
                              cohere_vision("Cohere2VisionConfig", image_token_id=IMAGE_ID,
                                            alignment_intermediate_size=64), square_images(56), True),
    "vipllava": TinyVLM(("VipLlavaConfig", "VipLlavaForConditionalGeneration"), vipllava, square_images(28), True),
    "lighton_ocr": TinyVLM(("LightOnOcrConfig", "LightOnOcrForConditionalGeneration"), lighton_ocr,
                           sized_images(56), True),
    # Idefics2's connector MLP is text_config.intermediate_size wide: a pruned MLP saves in the per-layer form
    "idefics2": TinyVLM(("Idefics2Config", "Idefics2ForConditionalGeneration"), idefics2, image_lists(28), False,
                        language_model="model.text_model"),
    "video_llava": TinyVLM(("VideoLlavaConfig", "VideoLlavaForConditionalGeneration"), video_llava,
                           video_llava_images, True, pixels_key="pixel_values_images"),
    "deepseek_vl": TinyVLM(("DeepseekVLConfig", "DeepseekVLForConditionalGeneration"), deepseek_vl,
                           square_images(28), True),
    "ovis2": TinyVLM(("Ovis2Config", "Ovis2ForConditionalGeneration"), ovis2, square_images(28), True),
    "qianfan_ocr": TinyVLM(("QianfanOCRConfig", "QianfanOCRForConditionalGeneration"), qianfan_ocr,
                           square_images(56), True),
    "exaone4_5": TinyVLM(("Exaone4_5_Config", "Exaone4_5_ForConditionalGeneration"), exaone4_5, qwen_patches(14),
                         True),
    "got_ocr2": TinyVLM(("GotOcr2Config", "GotOcr2ForConditionalGeneration"), got_ocr2, square_images(64), True,
                        image_tokens=1),
    # LFM3's heads are refused (a hybrid of convolution and attention blocks): its feed_forward w1/w3/w2 prune
    "lfm3_vl": TinyVLM(("Lfm3VlConfig", "Lfm3VlForConditionalGeneration"), lfm3_vl, qwen_patches(16), True,
                       wrapped=2 * 3, groups=("mlp",)),
    "hyperclovax_vision_v2": TinyVLM(("HyperCLOVAXVisionV2Config", "HyperCLOVAXVisionV2ForConditionalGeneration"),
                                     hyperclovax_vision_v2, qwen_patches(14), True),
    "cosmos3_omni": TinyVLM(("Cosmos3OmniConfig", "Cosmos3OmniForConditionalGeneration"), cosmos3_omni,
                            qwen_patches(16), True),
    "video_llama_3": TinyVLM(("VideoLlama3Config", "VideoLlama3ForConditionalGeneration"), video_llama_3,
                             video_llama_3_patches, True),
    # BLIP-2's language model is a causal LM (OPTForCausalLM) whose base model holds the blocks; OPT's attention
    # derives head_dim from hidden_size: pruned heads save in the per-layer form
    "blip-2": TinyVLM(("Blip2Config", "Blip2ForConditionalGeneration"), blip_2, square_images(28), False,
                      language_model="language_model.model.decoder", wrapped=2 * 6, text_alone=False),
    "instructblip": TinyVLM(("InstructBlipConfig", "InstructBlipForConditionalGeneration"), instructblip,
                            instructblip_inputs, True, language_model="language_model.model", text_alone=False),
    "deepseek_vl_hybrid": TinyVLM(("DeepseekVLHybridConfig", "DeepseekVLHybridForConditionalGeneration"),
                                  deepseek_vl_hybrid, hybrid_views, True),
    # MiniCPM-V's language model, a Qwen3.5 text model, is a hybrid: its heads are refused
    **{family: TinyVLM((f"{prefix}Config", f"{prefix}ForConditionalGeneration"), minicpm_v(f"{prefix}Config"),
                       packed_patches, True, wrapped=2 * 3, groups=("mlp",))
       for family, prefix in (("minicpmv4_6", "MiniCPMV4_6"), ("minicpmv4_7", "MiniCPMV4_7"),
                              ("minicpm_ocr", "MiniCPMOcr"))},
    "paligemma2": TinyVLM(("PaliGemmaConfig", "PaliGemmaForConditionalGeneration"), paligemma("gemma2"),
                          square_images(28), True, prefix_lm=True),
    # BLIP-2 / InstructBLIP around a Flan-T5: a T5ForConditionalGeneration whose encoder and decoder MLPs prune
    # (wi_0, wi_1, wo in 4 blocks; T5's heads are refused), their width d_ff shared by both stacks; the forward
    # needs the decoder's tokens
    "blip-2-flan-t5": TinyVLM(("Blip2Config", "Blip2ForConditionalGeneration"), blip_2_flan_t5,
                              with_decoder_ids(square_images(28)), True, language_model="language_model",
                              stacks=("encoder.block", "decoder.block"), wrapped=4 * 3, groups=("mlp",),
                              text_alone=False),
    "instructblip-flan-t5": TinyVLM(("InstructBlipConfig", "InstructBlipForConditionalGeneration"),
                                    instructblip_flan_t5, with_decoder_ids(instructblip_inputs), True,
                                    language_model="language_model", stacks=("encoder.block", "decoder.block"),
                                    wrapped=4 * 3, groups=("mlp",), text_alone=False),
    # Llama 3.2 Vision: block 0 self-attention, block 1 cross-attention (its heads at cross_attn); the attention
    # derives head_dim = hidden_size // heads: pruned heads save in the per-layer form. One image token per image
    "mllama": TinyVLM(("MllamaConfig", "MllamaForConditionalGeneration"), mllama, mllama_tiles, False,
                      image_tokens=1),
    # GLM-4.1V: its attention sets head_dim = hidden_size // heads: pruned heads save in the per-layer form; its
    # MLP a fused gate_up_proj (one wrapped module)
    "glm4v": TinyVLM(("Glm4vConfig", "Glm4vForConditionalGeneration"), glm4v, qwen_patches(14), False,
                     wrapped=2 * 6),
    # GLM-4.5V: block 0 dense, block 1 of 4 packed experts (the shared expert, moe_intermediate_size wide as the
    # routed ones, kept whole: a pruned expert width saves in the per-layer form)
    "glm4v_moe": TinyVLM(("Glm4vMoeConfig", "Glm4vMoeForConditionalGeneration"), glm4v_moe, qwen_patches(14), False,
                         wrapped=(4 + 4 * 2) + 7),
    "janus": TinyVLM(("JanusConfig", "JanusForConditionalGeneration"), janus, square_images(28), True),
    # InstructBLIP-Video: InstructBLIP's layout, a video's frames each its query tokens
    "instructblipvideo": TinyVLM(("InstructBlipVideoConfig", "InstructBlipVideoForConditionalGeneration"),
                                 instructblipvideo, video_frames, True, language_model="language_model.model",
                                 text_alone=False),
    # FastVLM: a stand-in ConvNeXt vision tower (its own, FastViTHD, is timm's), 8 px images: 4 tokens
    "fast_vlm": TinyVLM(("FastVlmConfig", "FastVlmForConditionalGeneration"), fast_vlm, square_images(8), True),
    # Kimi-K2.5's language model, a DeepSeek-V3, has MLA attention (heads refused): its dense MLP and routed
    # experts prune (3 + 4 * 2 wrapped), the shared expert (moe_intermediate_size wide too) is kept whole
    "kimi_k25": TinyVLM(("Kimi_K25Config", "Kimi_K25ForConditionalGeneration"), kimi_k25, moonvit_patches, False,
                        wrapped=3 + 4 * 2, groups=("mlp",)),
    # GLM-4.6V: GLM-4.1V's language model (pruned heads: the per-layer form)
    "glm46v": TinyVLM(("Glm46VConfig", "Glm46VForConditionalGeneration"), glm46v, qwen_patches(14), False,
                      wrapped=2 * 6),
    # GLM-OCR: its attention reads head_dim from the config: pruned heads save plainly
    "glm_ocr": TinyVLM(("GlmOcrConfig", "GlmOcrForConditionalGeneration"), glm_ocr, qwen_patches(14), True,
                       wrapped=2 * 6),
    "paddleocr_vl": TinyVLM(("PaddleOCRVLConfig", "PaddleOCRVLForConditionalGeneration"), paddleocr_vl,
                            paddle_patches, True),
    # HunYuan-VL: an image's 2x2 merged features, a newline after each row, a begin and an end token: 8 tokens
    "hunyuan_vl": TinyVLM(("HunYuanVLConfig", "HunYuanVLForConditionalGeneration"), hunyuan_vl, hunyuan_patches,
                          True, image_tokens=8),
    # Qwen2.5-Omni's thinker: its language model reads head_dim from the config (pruned heads save plainly); its
    # audio tower, as the vision tower, left as it is
    "qwen2_5_omni_thinker": TinyVLM(("Qwen2_5OmniThinkerConfig", "Qwen2_5OmniThinkerForConditionalGeneration"),
                                    qwen2_5_omni_thinker, qwen_patches(14), True, since=(5, 24),
                                    since_why="its thinker names its language model `model` before 5.24, where the "
                                              "spec looks under `language_model`"),
    # ERNIE-4.5-VL: block 0 dense, block 1 of 4 text experts (pruned) and 4 vision experts (kept whole) beside a
    # shared expert (kept whole): a pruned expert width saves in the per-layer form
    "ernie4_5_vl_moe": TinyVLM(("Ernie4_5_VLMoeConfig", "Ernie4_5_VLMoeForConditionalGeneration"), ernie4_5_vl_moe,
                               ernie_patches, False, wrapped=(4 + 4 * 2) + 7),
    # Aria: 4 packed experts in each block beside a shared expert (kept whole; intermediate_size sizes both: a
    # pruned expert width saves in the per-layer form)
    "aria": TinyVLM(("AriaConfig", "AriaForConditionalGeneration"), aria, square_images(28), False,
                    wrapped=2 * (4 + 4 * 2), since=(5, 24),
                    since_why="its experts are AriaGroupedExpertsGemm modules (fc1, fc2) before 5.24, not the packed "
                              "gate_up_proj / down_proj the aria_text spec describes"),
    "molmo2": TinyVLM(("Molmo2Config", "Molmo2ForConditionalGeneration"), molmo2, molmo2_crops, True),
    # Idefics 1: its config is the language model's; a self-attention stack (model.layers) and a gated
    # cross-attention one (model.gated_cross_attn_layers), 2 blocks each; head_dim = hidden_size // heads: pruned
    # heads save in the per-layer form. One image token per image; its forward needs the image
    "idefics": TinyVLM(("IdeficsConfig", "IdeficsForVisionText2Text"), idefics, idefics_images, False,
                       language_model="model", stacks=("layers", "gated_cross_attn_layers"), wrapped=4 * 7,
                       image_tokens=1, text_alone=False),
    # Granite 4 Vision: LLaVA-NeXT's anyres views, Q-Former-downsampled into 10 image tokens, added into blocks 0
    # and 1 (deepstack)
    "granite4_vision": TinyVLM(("Granite4VisionConfig", "Granite4VisionForConditionalGeneration"), granite4_vision,
                               anyres_images(56), True, image_tokens=10, since=(5, 24),
                               since_why="the tiny config is 5.24's: 5.17's Granite4VisionConfig builds a layer of "
                                         "the default 768 width from it, which the tiny 64-wide features fail"),
    # Chameleon: its config is the language model's, its blocks model.layers; an 8 px image, VQ-encoded into 4 image
    # tokens; head_dim = hidden_size // heads: pruned heads save in the per-layer form
    "chameleon": TinyVLM(("ChameleonConfig", "ChameleonForConditionalGeneration"), chameleon, square_images(8), False,
                         language_model="model"),
    # Emu3: a 16 px image, VQ-encoded into 4x4 tokens and an end-of-line token per row
    # (its VQ-VAE's temporal blocks hold BatchNorms: kept in eval mode while training)
    "emu3": TinyVLM(("Emu3Config", "Emu3ForConditionalGeneration"), emu3, emu3_images, True,
                    language_model="model.text_model", image_tokens=20, eval_while_training=("model.vqmodel",)),
    # Fuyu: a Persimmon (a fused query_key_value and a plain MLP: 4 wrapped per block; its attention derives
    # head_dim from the hidden size: pruned heads save in the per-layer form) reading linearly projected patches
    "fuyu": TinyVLM(("FuyuConfig", "FuyuForCausalLM"), fuyu, fuyu_patches, False, wrapped=2 * 4, since=(5, 24),
                    since_why="5.17's Fuyu does not place the tiny image's patches from these inputs (the image "
                              "never reaches the logits, so the image-input comparison would say nothing)"),
    # PerceptionLM: a stand-in CLIP vision tower (its own, the Perception Encoder, is timm's)
    "perception_lm": TinyVLM(("PerceptionLMConfig", "PerceptionLMForConditionalGeneration"), perception_lm,
                             perception_tiles, True, since=(5, 24),
                             since_why="its vision tower is a TimmWrapperModel before 5.24, which needs timm (not a "
                                       "test dependency) even for the stand-in tower"),
    # Llama 4: its language model a Llama4ForCausalLM (blocks under language_model.model); block 0 dense, block 1
    # of 4 packed experts beside a shared expert (kept whole; intermediate_size sizes both: a pruned expert width
    # saves in the per-layer form)
    "llama4": TinyVLM(("Llama4Config", "Llama4ForConditionalGeneration"), llama4, square_images(56), False,
                      language_model="language_model.model", wrapped=(4 + 4 * 2) + 7, broken_in=((5, 24),),
                      broken_why="its Llama4ForConditionalGeneration.forward reads `image_outputs` from the language "
                                 "model's output, which has none (AttributeError on every call)"),
    # Qwen3-Omni-MoE's thinker: block 0 of 4 packed experts, block 1 dense; its audio tower left as it is
    "qwen3_omni_moe_thinker": TinyVLM(("Qwen3OmniMoeThinkerConfig", "Qwen3OmniMoeThinkerForConditionalGeneration"),
                                      qwen3_omni_moe_thinker, qwen_patches(16), True, wrapped=(4 + 4 * 2) + 7,
                                      since=(5, 24), since_why="its thinker names its language model `model` before "
                                                               "5.24, where the spec looks under `language_model`"),
    # Qwen4-Exp: a hybrid language model (heads refused) with 4 packed experts in each block between
    # hyper-connections: the experts prune, the shared experts are kept whole
    "qwen4_exp": TinyVLM(("Qwen4ExpConfig", "Qwen4ExpForConditionalGeneration"), qwen4_exp, qwen_patches(16), True,
                         wrapped=2 * 4 * 2, groups=("mlp",)),
    # Gemma 4 Unified: encoder-free (raw patches embedded straight into image tokens); its language model's heads
    # are refused as Gemma 4's
    "gemma4_unified": TinyVLM(("Gemma4UnifiedConfig", "Gemma4UnifiedForConditionalGeneration"), gemma4_unified,
                              gemma4_unified_patches, True, wrapped=2 * 3, groups=("mlp",)),
    # HY-V4-VL: HY-V4's blocks (MLA: heads refused), block 0 dense, block 1 of 4 clipped experts beside a shared
    # expert (kept whole; moe_intermediate_size sizes both: a pruned expert width saves in the per-layer form)
    "hy_v4_vl": TinyVLM(("HYV4VLConfig", "HYV4VLForConditionalGeneration"), hy_v4_vl, hy_v4_vl_patches, False,
                        image_tokens=6, wrapped=3 + 4 * 2, groups=("mlp",)),
    # Granite-Docling: a Granite (head_dim from the config: pruned heads save plainly), its vision features also
    # added (DeepStack) into its first blocks
    "granite_docling": TinyVLM(("GraniteDoclingConfig", "GraniteDoclingForConditionalGeneration"), granite_docling,
                               granite_docling_tiles, True, language_model="model.text_model"),
    # Cosmos3-Edge: Llama's attention (head_dim in the config: pruned heads save plainly), a plain fc1/fc2 MLP
    # (3 wrapped per block with q, k, v, o: 6)
    "cosmos3_edge": TinyVLM(("Cosmos3EdgeConfig", "Cosmos3EdgeForConditionalGeneration"), cosmos3_edge,
                            cosmos3_edge_patches, True, wrapped=2 * 6),
    # DeepSeek-OCR-2: block 0 dense, block 1 of 4 packed experts beside a shared expert (kept whole); head_dim =
    # hidden_size // heads on every load: the per-layer form. A 64 px image becomes 145 image tokens
    "deepseek_ocr2": TinyVLM(("DeepseekOcr2Config", "DeepseekOcr2ForConditionalGeneration"), deepseek_ocr2,
                             square_images(64), False, image_tokens=145, wrapped=(4 + 4 * 2) + 7),
    # MiniMax-M3-VL: block 0 a fused dense MLP (6 wrapped with q, k, v, o), block 1 4 packed experts (4 + 4 * 2)
    # beside a shared expert (kept whole)
    "minimax_m3_vl": TinyVLM(("MiniMaxM3VLConfig", "MiniMaxM3SparseForConditionalGeneration"), minimax_m3_vl,
                             qwen_patches(14), True, wrapped=6 + (4 + 4 * 2)),
    # Mistral Large 4: DeepSeek-V3.2's language model (MLA: heads refused) behind Mistral3's Pixtral tower; block 0
    # dense, block 1 of 4 packed experts beside a shared expert (kept whole, moe_intermediate_size wide as the routed
    # ones: a pruned expert width saves in the per-layer form)
    "mistral_large4": TinyVLM(("MistralLarge4Config", "MistralLarge4ForConditionalGeneration"), mistral_large4,
                              sized_images(56), False, wrapped=3 + 4 * 2, groups=("mlp",)),
    # GLM-5.3-Flash: block 0 linear attention and dense, block 1 MLA and 4 packed experts beside a shared expert
    # (kept whole, moe_intermediate_size wide: the per-layer form), both between hyper-connections; heads refused
    "glm5_next": TinyVLM(("Glm5NextConfig", "Glm5NextForConditionalGeneration"), glm5_next, qwen_patches(14), False,
                         wrapped=3 + 4 * 2, groups=("mlp",)),
    # Step-3.7-Flash: block 0 dense, block 1 of 4 packed experts (their activated gate and up clipped) beside a shared
    # expert sized by a key of its own (the routed width saves plainly); heads refused
    "step3p7": TinyVLM(("Step3p7Config", "Step3p7ForConditionalGeneration"), step3p7, square_images(56), True,
                       wrapped=3 + 4 * 2, groups=("mlp",)),
    # Apertus 1.5: a VQ tokenizer's 4x4 codes of a 16 px image, embedded as 16 image tokens; Apertus's MLP (up and
    # down projections, xIELU: 6 wrapped per block)
    "apertus1p5": TinyVLM(("Apertus1p5Config", "Apertus1p5ForConditionalGeneration"), apertus1p5, emu3_images, True,
                          wrapped=2 * 6, image_tokens=16),
    # North (cohere_compass): Qwen3-VL's vision tower, its deepstack features added into block 0
    "cohere_compass": TinyVLM(("CohereCompassConfig", "CohereCompassForConditionalGeneration"), cohere_compass,
                              qwen_patches(16), True),
    # Inkling 2: 4 packed experts in each block (heads refused)
    "inkling2": TinyVLM(("Inkling2Config", "Inkling2ForConditionalGeneration"), inkling2, inkling2_patches, True,
                        wrapped=2 * 4 * 2, groups=("mlp",)),
    # Inkling: block 0 dense, block 1 of 4 packed experts beside a shared expert (kept whole; moe_intermediate_size
    # sizes both: a pruned expert width saves in the per-layer form); heads refused
    "inkling_mm_model": TinyVLM(("InklingConfig", "InklingForConditionalGeneration"), inkling_mm_model,
                                inkling_patches, False, wrapped=3 + 4 * 2, groups=("mlp",)),
    # GLM-GA: GLM-4.6V's model class and GLM-4.1V's language model (pruned heads: the per-layer form)
    "glmga": TinyVLM(("GlmgaConfig", "Glm46VForConditionalGeneration"), glmga, qwen_patches(14), False,
                     wrapped=2 * 6),
    # PP-Chart2Table: GOT-OCR2's model class around a Qwen2
    "pp_chart2table": TinyVLM(("PPChart2TableConfig", "GotOcr2ForConditionalGeneration"), pp_chart2table,
                              square_images(64), True, image_tokens=1),
}


def unavailable_reason(family: str) -> str:
    """Why this transformers cannot run the family's test ("" where it can): a class it lacks, a version before
    the layout the spec describes (``TinyVLM.since``), or one whose own forward fails (``TinyVLM.broken_in``)."""
    return row_unavailable_reason(FAMILIES[family])


def available(family: str) -> bool:
    return not unavailable_reason(family)


def tiny_vlm(family: str, seed: int = 0):
    """The tiny ``family`` VLM (random weights, eval mode)."""
    import transformers

    torch.manual_seed(seed)
    tiny = FAMILIES[family]
    model = getattr(transformers, tiny.classes[1])(tiny.config(transformers)).eval()
    with torch.no_grad():  # weights initialised to 0 (Gemma 3's mm_input_projection_weight) would drop the image
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.05)
            elif name.endswith("_gate") and not p.any():  # tanh gates that start closed (Mllama's cross-attention)
                p.fill_(0.5)
    return model


def tiny_llava_around(text_config, seed: int = 0):
    """A tiny LLaVA whose language model is built from ``text_config`` (its image inputs: ``"llava"``'s)."""
    import transformers

    torch.manual_seed(seed)
    return transformers.LlavaForConditionalGeneration(llava(transformers, text_config)).eval()


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
    if "moe_mm_token_type_ids" in inspect.signature(forward).parameters:  # ERNIE-4.5-VL: the vision experts' tokens
        inputs["moe_mm_token_type_ids"] = (ids == IMAGE_ID).long()
    return inputs


def harden_and_compact_vlm(model, family: str):
    """Harden, then the masked model's logits, the compact model and its logits on the same image inputs
    (:func:`image_inputs` of ``family``): the image-input twin of ``tiny_models.harden_and_compact``."""
    from masked_dora.models import compact_model, harden

    harden(model)
    inputs = image_inputs(family)
    with torch.no_grad():
        ref = model(**inputs).logits
        small = compact_model(model)
        return ref, small, small(**inputs).logits


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
