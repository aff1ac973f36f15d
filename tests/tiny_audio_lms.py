"""Tiny random audio language models (built from configs, no download, no processor) and their inputs.

One row of ``FAMILIES`` per audio LM type (its type a ``WrapperSpec`` in ``masked_dora/models/families_audio_lm.py``):
its config (the VLMs' language model, ``tiny_vlm_configs.TEXT``: 2 blocks, hidden 32, 4 query / 2 KV heads of 8, MLP
64, vocabulary 128; an audio tower of 1 or 2 layers, hidden 16, over 16 mel bins) and audio inputs: random log-mel
features of the length the tower takes, turned into ``AUDIO_TOKENS`` audio embeddings, and as many audio placeholder
tokens (id ``AUDIO_ID``) in ``input_ids``, laid out as the model's processor would (the placeholder repeated once per
audio embedding). Each ``audio(n, generator)`` gives the keyword arguments besides ``input_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

import torch

from tiny_vlm_configs import IMAGE_ID, TEXT
from wrapped_lm_chain import row_unavailable_reason

AUDIO_ID, AUDIO_TOKENS, MEL = IMAGE_ID, 4, 16
# a Whisper-like audio tower (two convolutions, the second of stride 2, then transformer layers): 16 channels
WHISPER_LIKE = dict(num_mel_bins=MEL, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, hidden_size=16)


def mel_frames(frames: int, mask_key: str = "") -> Callable:
    """``frames`` frames of ``MEL`` log-mel bins per row (``input_features``, (n, MEL, frames)) and, under
    ``mask_key``, the mask of the valid frames (all of them)."""
    def audio(n, gen):
        features = {"input_features": torch.randn(n, MEL, frames, generator=gen)}
        return dict(features, **{mask_key: torch.ones(n, frames, dtype=torch.long)}) if mask_key else features
    return audio


def qwen2_audio(t):
    """Qwen2-Audio around a Qwen2: its Whisper-like tower takes 2 * max_source_positions (16) frames, halved by the
    second convolution and again by a pooling: 4 audio tokens."""
    return t.Qwen2AudioConfig(
        audio_config=dict(num_mel_bins=MEL, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, max_source_positions=8),
        text_config=dict(TEXT, model_type="qwen2"), audio_token_index=AUDIO_ID)


def voxtral(t):
    """Voxtral around a Llama (head_dim said: the config's default is 128): its tower takes 2 * max_source_positions
    (32) frames into 16 positions, every 4 of them (intermediate_size / hidden_size) one audio token: 4."""
    return t.VoxtralConfig(audio_config=dict(WHISPER_LIKE, intermediate_size=64, max_source_positions=16),
                           text_config=dict(TEXT, head_dim=8), audio_token_id=AUDIO_ID)


def audioflamingo3(t, config: str = "AudioFlamingo3Config", **extra):
    """Audio Flamingo 3 (and Music Flamingo, ``config``) around a Qwen2: Qwen2-Audio's tower layout, 16 frames into
    4 audio tokens."""
    tower = dict(WHISPER_LIKE, max_source_positions=8, model_type="audioflamingo3_encoder")
    return getattr(t, config)(audio_config=tower,
                              text_config=dict(TEXT, model_type="qwen2"), audio_token_id=AUDIO_ID, **extra)


def glmasr(t):
    """GLM-ASR around a Llama (head_dim said: the config's default is 128): its rotary tower takes 32 frames into 16
    positions, every 4 (intermediate_size / hidden_size) one audio token: 4."""
    return t.GlmAsrConfig(audio_config=dict(WHISPER_LIKE, intermediate_size=64, max_position_embeddings=32,
                                            num_key_value_heads=2),
                          text_config=dict(TEXT, head_dim=8), audio_token_id=AUDIO_ID)


def qwen3_asr(t):
    """Qwen3-ASR around a Qwen3 (head_dim said: the config's default is 128): its tower cuts the frames into windows
    of 2 * n_window frames, each through three stride-2 convolutions; its token count takes a window of 100 frames
    to 13 positions (n_window 50, as released): one window of 100 frames, one audio token per position: 13."""
    return t.Qwen3ASRConfig(
        audio_config=dict(num_mel_bins=MEL, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, output_dim=32, n_window=50, n_window_infer=100, downsample_hidden_size=8,
                          max_position_embeddings=13),
        text_config=dict(TEXT, head_dim=8), audio_token_id=AUDIO_ID, pad_token_id=0, eos_token_id=2)


def granite_speech(t):
    """Granite Speech around a Granite: a conformer over 8 frames of 16 features ((n, frames, features)), a Q-Former
    reading them in windows of window_size (8), downsample_rate (2) frames each one audio token: 4."""
    return t.GraniteSpeechConfig(
        text_config=dict(TEXT, model_type="granite"),
        encoder_config=dict(input_dim=MEL, num_layers=2, hidden_dim=16, feedforward_mult=2, num_heads=2,
                            dim_head=8, output_dim=8, context_size=8, max_pos_emb=16, dropout=0.0),
        projector_config=dict(vocab_size=TEXT["vocab_size"], hidden_size=16, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=32, encoder_hidden_size=16,
                              cross_attention_frequency=1),
        audio_token_index=AUDIO_ID, window_size=8, downsample_rate=2, has_lora_adapter=False)


def granite_frames(n, gen):
    return {"input_features": torch.randn(n, 8, MEL, generator=gen)}


def moss_transcribe_diarize(t):
    """MOSS-Transcribe-Diarize around a Qwen3 (head_dim said: the config's default is 128): its Whisper-like tower
    takes 2 * max_source_positions (16) frames into 8 positions, every audio_merge_size (2) of them one audio
    token: 4."""
    return t.MossTranscribeDiarizeConfig(audio_config=dict(WHISPER_LIKE, max_source_positions=8),
                                         text_config=dict(TEXT, head_dim=8), audio_token_id=AUDIO_ID,
                                         audio_merge_size=2)

@dataclass(frozen=True)
class TinyAudioLM:
    """A family: its transformers classes, its config (``config(t)``, ``t`` the transformers module) and its audio
    inputs for a batch of ``n`` (``audio(n, generator)``)."""

    classes: tuple  # (config class, model class): the test skips where this transformers lacks one
    config: Callable
    audio: Callable
    plain: bool = True  # whether the compacted model saves plainly (its text config says the pruned sizes)
    language_model: str = "model.language_model"
    wrapped: int = 2 * 7  # q, k, v, o, gate, up, down in each of the 2 blocks
    groups: tuple = ("mlp", "heads")
    audio_tokens: int = AUDIO_TOKENS
    # modules outside the language model kept in eval mode while training, as a user would: BatchNorms whose
    # running statistics train mode would move (Granite Speech's conformer)
    eval_while_training: tuple = ()
    tower: str = "model.audio_tower"  # the audio tower's qualified name
    # the std its audio tower's weights are drawn at where the default (0.02) lets too little of the audio through
    # to reach the logits (Qwen3-ASR's three stride-2 convolutions); 0: as built
    tower_std: float = 0.0
    since: tuple = ()  # (major, minor): the first transformers whose layout the spec describes
    since_why: str = ""

    @property
    def block_lists(self) -> tuple:
        return (f"{self.language_model}.layers",)


FAMILIES: Dict[str, TinyAudioLM] = {
    "qwen2_audio": TinyAudioLM(("Qwen2AudioConfig", "Qwen2AudioForConditionalGeneration"), qwen2_audio,
                               mel_frames(16, "feature_attention_mask")),
    "voxtral": TinyAudioLM(("VoxtralConfig", "VoxtralForConditionalGeneration"), voxtral, mel_frames(32)),
    "granite_speech": TinyAudioLM(("GraniteSpeechConfig", "GraniteSpeechForConditionalGeneration"), granite_speech,
                                  granite_frames, tower="model.encoder", eval_while_training=("model.encoder",)),
    "qwen3_asr": TinyAudioLM(("Qwen3ASRConfig", "Qwen3ASRForConditionalGeneration"), qwen3_asr,
                             mel_frames(100, "input_features_mask"), audio_tokens=13, tower_std=0.3),
    "audioflamingo3": TinyAudioLM(("AudioFlamingo3Config", "AudioFlamingo3ForConditionalGeneration"),
                                  audioflamingo3, mel_frames(16, "input_features_mask")),
    "glmasr": TinyAudioLM(("GlmAsrConfig", "GlmAsrForConditionalGeneration"), glmasr,
                          mel_frames(32, "input_features_mask")),
    "musicflamingo": TinyAudioLM(("MusicFlamingoConfig", "MusicFlamingoForConditionalGeneration"),
                                 lambda t: audioflamingo3(t, "MusicFlamingoConfig", audio_bos_token_id=101,
                                                          audio_eos_token_id=102),
                                 mel_frames(16, "input_features_mask")),
    "moss_transcribe_diarize": TinyAudioLM(("MossTranscribeDiarizeConfig",
                                            "MossTranscribeDiarizeForConditionalGeneration"),
                                           moss_transcribe_diarize, mel_frames(16, "input_features_mask")),
}


def unavailable_reason(family: str) -> str:
    """Why this transformers cannot run the family's test ("" where it can)."""
    return row_unavailable_reason(FAMILIES[family])


def available(family: str) -> bool:
    return not unavailable_reason(family)


def tiny_audio_lm(family: str, seed: int = 0):
    """The tiny ``family`` audio LM (random weights, eval mode)."""
    import transformers

    torch.manual_seed(seed)
    tiny = FAMILIES[family]
    model = getattr(transformers, tiny.classes[1])(tiny.config(transformers)).eval()
    with torch.no_grad():  # weights initialised to 0 would drop the audio
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.05)
            elif tiny.tower_std and name.startswith(tiny.tower + ".") and p.dim() >= 2:
                p.normal_(0.0, tiny.tower_std)
    return model


def audio_inputs(family: str, n: int = 2, seed: int = 2) -> dict:
    """``n`` rows of 3 text tokens, one audio clip (``audio_tokens`` placeholder tokens) and 3 text tokens, with
    the clip's features."""
    gen = torch.Generator().manual_seed(seed)
    tokens = FAMILIES[family].audio_tokens
    ids = torch.randint(3, AUDIO_ID, (n, 6 + tokens), generator=gen)
    ids[:, 3:3 + tokens] = AUDIO_ID
    return {"input_ids": ids, **FAMILIES[family].audio(n, gen)}
