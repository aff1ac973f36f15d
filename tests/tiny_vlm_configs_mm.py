"""Tiny configs and inputs of the VLMs helper "mm" added (``tiny_vlms.FAMILIES`` puts them together, one row per
family, or tests/test_models_vlm_mm.py uses them), in the sizes of :mod:`tiny_vlm_configs`: Llama 4's multimodal
model, Gemma 3n (its text model alone too), ShieldGemma 2, Qwen3-Omni-MoE's thinker; and Qwen4-Exp and Gemma 4
Unified."""

from __future__ import annotations

import contextlib

import torch

from tiny_vlm_configs import IMAGE_ID, IMAGE_TOKENS, TEXT, VISION, VOCAB

# Llama 4's text model as tests/tiny_families_moe.py's llama4_text row, its widths the VLM rows' 64: block 0 dense
# (width intermediate_size_mlp), block 1 of 4 experts (width intermediate_size, top-1, stored (E, in, out)) beside a
# shared expert (as wide, kept whole); block 0 with rotary and the q/k L2 norm, block 1 NoPE with temperature tuning
# and chunked attention
LLAMA4_TEXT = dict(TEXT, intermediate_size_mlp=64, head_dim=8, num_local_experts=4,
                   num_experts_per_tok=1, interleave_moe_layer_step=2, no_rope_layers=[1, 0], attention_chunk_size=4,
                   use_qk_norm=True, attn_temperature_tuning=True, floor_scale=2, attn_scale=0.5)


def llama4(t):
    """Llama 4 (Llama4ForConditionalGeneration): a 56 px image in 4x4 patches of 14, pixel-shuffled (ratio 0.5) into
    2x2 features of 4 * 32 (the vision adapter's MLP reads intermediate_size = 4 * hidden), projected: 4 tokens."""
    return t.Llama4Config(text_config=LLAMA4_TEXT,
                          vision_config=dict(VISION, intermediate_size=128, image_size=56, patch_size=14,
                                             vision_output_dim=32, projector_input_dim=32, projector_output_dim=32),
                          image_token_index=IMAGE_ID)


# Gemma 3n's language model: per-layer MLP widths (intermediate_size a list), no activation sparsity and no KV
# sharing (each refuses a group: tests/test_models_vlm_mm.py), AltUp over 2 streams, a Laurel branch of rank 4 and
# per-layer embeddings of 8 per block; a sliding-window and a full-attention block
GEMMA3N_TEXT = dict(TEXT, head_dim=8, intermediate_size=[64, 48], activation_sparsity_pattern=[0.0, 0.0],
                    num_kv_shared_layers=0, hidden_size_per_layer_input=8, vocab_size_per_layer_input=VOCAB,
                    laurel_rank=4, altup_num_inputs=2, sliding_window=4,
                    layer_types=["sliding_attention", "full_attention"])


def gemma3n_text(t, **keys):
    """Gemma 3n's text model alone (Gemma3nForCausalLM), ``keys`` over ``GEMMA3N_TEXT``."""
    return t.Gemma3nTextConfig(**dict(GEMMA3N_TEXT, **keys))


def gemma3n(t):
    """Gemma 3n (Gemma3nForConditionalGeneration) around ``GEMMA3N_TEXT``: an 8 px image becomes 4 soft tokens (the
    vision tower's (b, 32, 2, 2) feature map, embedded); a tiny audio tower (1 conformer layer), unused by these
    inputs. Its vision tower is timm's (no test dependency): build the model inside ``gemma3n_stand_in_tower()``."""
    return t.Gemma3nConfig(text_config=GEMMA3N_TEXT,
                           vision_config=dict(hidden_size=32, vocab_size=8, vocab_offset=VOCAB),
                           audio_config=dict(hidden_size=16, input_feat_size=8, conf_num_hidden_layers=1,
                                             conf_num_attention_heads=2, sscp_conv_channel_size=[4, 4], vocab_size=8,
                                             vocab_offset=VOCAB + 8),
                           vision_soft_tokens_per_image=4, image_token_id=IMAGE_ID, boi_token_id=101,
                           eoi_token_id=102, audio_token_id=103, boa_token_id=104, eoa_token_id=105)


@contextlib.contextmanager
def gemma3n_stand_in_tower():
    """While active, Gemma 3n builds a stand-in vision tower of transformers' own, a ConvNeXt whose last feature map
    of an 8 px image is (b, 32, 2, 2), where its Gemma3nVisionConfig would build timm's MobileNetV5 (timm is no test
    dependency); everything else as Gemma 3n builds it. The language model, what prunes, is the same either way;
    compaction and load_compact, which build the model again from its config, must run inside it too."""
    from unittest import mock

    import transformers
    from transformers.models.gemma3n import modeling_gemma3n

    class StandInAutoModel:
        @staticmethod
        def from_config(config=None, **kwargs):
            if isinstance(config, transformers.Gemma3nVisionConfig):
                return transformers.ConvNextModel(transformers.ConvNextConfig(
                    num_stages=1, hidden_sizes=[config.hidden_size], depths=[1], patch_size=4))
            return transformers.AutoModel.from_config(config, **kwargs)

    with mock.patch.object(modeling_gemma3n, "AutoModel", StandInAutoModel):
        yield


def shieldgemma2(t):
    """ShieldGemma 2 around tests/tiny_vlm_configs.py's tiny Gemma 3 (a 32 px image in 2x2 patches: 4 tokens), its
    Yes/No tokens ids 5 and 6 (the real ones lie past the tiny vocabulary)."""
    return t.ShieldGemma2Config(text_config=dict(TEXT, head_dim=8, sliding_window=8, model_type="gemma3_text"),
                                vision_config=dict(VISION, image_size=32, patch_size=16),
                                mm_tokens_per_image=IMAGE_TOKENS, image_token_index=IMAGE_ID, boi_token_index=101,
                                eoi_token_index=102, yes_token_index=5, no_token_index=6)


def qwen3_omni_moe_thinker(t):
    """Qwen3-Omni-MoE's thinker around its qwen3_omni_moe_text (Qwen3-VL-MoE's layout: block 0 of 4 experts of
    width 64, 2 per token; block 1 dense, mlp_only_layers: Llama's MLP of width 64), Qwen3-VL's vision tower over
    flattened 16 px patches (``tiny_vlm_configs.qwen_patches(16)``: 4 tokens) and a tiny audio tower, unused by
    image and text inputs and left as it is."""
    return t.Qwen3OmniMoeThinkerConfig(
        text_config=dict(TEXT, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                         mlp_only_layers=[1], rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                   mrope_section=[1, 1, 2])),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                           patch_size=16, num_position_embeddings=16, deepstack_visual_indexes=[0]),
        audio_config=dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, output_dim=32, max_source_positions=20, n_window=10, downsample_hidden_size=8),
        image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102, audio_token_id=103,
        audio_start_token_id=104)


def qwen4_exp(t):
    """Qwen4-Exp (Qwen4ExpForConditionalGeneration) around its qwen4_exp_text (tests/tiny_families_hybrid.py's row,
    its expert width the VLM rows' 64: block 0 gated DeltaNet, block 1 indexed attention, an MoE of 4 experts, 2 per
    token, and a shared expert of width 48 in each, between hyper-connections of 2 residual streams), Qwen3.5's
    vision tower over flattened 16 px patches (``tiny_vlm_configs.qwen_patches(16)``: 4 tokens)."""
    text = dict(TEXT, head_dim=8, layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=4,
                linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
                num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=48,
                hc_count=2, hc_lowrank=8, indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=8,
                indexer_budget=16, indexer_compress_ratio=2, rope_parameters=dict(
                    rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2], mrope_interleaved=True))
    return t.Qwen4ExpConfig(text_config=text, vision_config=dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=16,
        num_position_embeddings=16), image_token_id=IMAGE_ID, video_token_id=101, vision_start_token_id=102,
        vision_end_token_id=103)


def gemma4_unified(t):
    """Gemma 4 Unified (Gemma4UnifiedForConditionalGeneration), encoder-free: no vision tower, each merged 4 px
    patch (2 x 2 patches of 2 px) embedded into one image token, around its gemma4_unified_text (Gemma 4's dense
    blocks: a sliding-window block, then a full-attention one with its own head_dim and one KV head, keys as
    values; the KV sharing of tests/tiny_families_decoders.py's row needs more blocks); no audio embedder."""
    text = dict(TEXT, head_dim=8, global_head_dim=16, num_global_key_value_heads=1, sliding_window=4,
                layer_types=["sliding_attention", "full_attention"], attention_k_eq_v=True)
    return t.Gemma4UnifiedConfig(text_config=text, vision_config=dict(
        patch_size=2, pooling_kernel_size=2, mm_embed_dim=32, mm_posemb_size=8, output_proj_dims=32),
        audio_config=None, image_token_id=IMAGE_ID, boi_token_id=101, eoi_token_id=102, video_token_id=103,
        audio_token_id=104, boa_token_id=105, eoa_token_index=106)


def gemma4_unified_patches(n, gen):
    """Gemma 4 Unified's raw merged patches, 4 per image (4 x 4 px x 3 channels each) with their (x, y) positions
    on a 2 x 2 grid."""
    ys, xs = torch.meshgrid(torch.arange(2), torch.arange(2), indexing="ij")
    return {"pixel_values": torch.randn(n, IMAGE_TOKENS, 4 * 4 * 3, generator=gen),
            "image_position_ids": torch.stack([xs.flatten(), ys.flatten()], -1).expand(n, IMAGE_TOKENS, 2).clone()}
