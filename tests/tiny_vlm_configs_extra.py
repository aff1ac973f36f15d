"""Yet more tiny VLM configs and image inputs (``tiny_vlms.FAMILIES`` puts them together, one row per family), in the
sizes of :mod:`tiny_vlm_configs`: Qwen2.5-Omni's thinker. Each input builder ``pixels(n, generator)`` gives the
keyword arguments besides ``input_ids`` in the layout the vision tower reads.
"""

from __future__ import annotations

from tiny_vlm_configs import IMAGE_ID, TEXT


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
