"""Tiny image and speech encoders (masked_dora/models/families_vision_speech.py) and Whisper (the ``bart`` spec): 2
layers, hidden 32, 4 heads of 8, MLP 64, dropout 0. Their inputs are not token ids (``TinyFamily.inputs``):
images of 16 x 16 pixels in patches of 4, 400 audio samples (two feature convolutions: 39 frames), or 8 log-mel
bins of 32 frames (Whisper, ``max_source_positions`` 16)."""

from tiny_family_table import TinyFamily

_BLOCKS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
_IMAGES = dict(_BLOCKS, image_size=16, patch_size=4, num_channels=3)
_VIT = dict(_IMAGES, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# Wav2Vec2 / HuBERT with CTC heads (vocab 32): no SpecAugment masking (mask_time_prob), no layer drop
_AUDIO = dict(_BLOCKS, vocab_size=32, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
              num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, mask_time_prob=0.0, layerdrop=0.0,
              hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
              pad_token_id=0)
# Whisper: BART's stacks (decoder MLP 48) behind the mel convolutions
_WHISPER = dict(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64,
                decoder_ffn_dim=48, encoder_attention_heads=4, decoder_attention_heads=4, num_mel_bins=8,
                max_source_positions=16, max_target_positions=32, dropout=0.0, attention_dropout=0.0,
                activation_dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
# CLIP / SigLIP text towers: token ids, as a text encoder
_TEXT = dict(_BLOCKS, vocab_size=97, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)

TINY = {
    # ViT, DeiT: pruned heads save plain (the attention reads head_dim from the config)
    "vit": TinyFamily(("ViTConfig", "ViTModel", "ViTModel"), _VIT, auto="AutoModel", inputs="pixel_values"),
    "deit": TinyFamily(("DeiTConfig", "DeiTModel", "DeiTModel"), _VIT, auto="AutoModel", inputs="pixel_values"),
    # DINOv2: GELU MLP (mlp_ratio 2) or SwiGLU (mlp_ratio 3: 2/3 of 96, rounded up to 8 = 64); layer scales
    "dinov2": TinyFamily(("Dinov2Config", "Dinov2Model", "Dinov2Model"), dict(_VIT, mlp_ratio=2), auto="AutoModel",
                         inputs="pixel_values"),
    "dinov2-swiglu": TinyFamily(("Dinov2Config", "Dinov2Model", "Dinov2Model"),
                                dict(_VIT, mlp_ratio=3, use_swiglu_ffn=True), auto="AutoModel",
                                inputs="pixel_values"),
    "dinov2-registers": TinyFamily(("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel",
                                    "Dinov2WithRegistersModel"), dict(_VIT, mlp_ratio=2, num_register_tokens=2),
                                   auto="AutoModel", inputs="pixel_values"),
    "clip-vision": TinyFamily(("CLIPVisionConfig", "CLIPVisionModel", "CLIPVisionModel"), _IMAGES,
                              auto="CLIPVisionModel", inputs="pixel_values"),
    # its attention-pooling head (vision_use_head) keeps its own MLP of intermediate_size
    "siglip-vision": TinyFamily(("SiglipVisionConfig", "SiglipVisionModel", "SiglipVisionModel"), _IMAGES,
                                auto="SiglipVisionModel", inputs="pixel_values"),
    "clip-text": TinyFamily(("CLIPTextConfig", "CLIPTextModel", "CLIPTextModel"), _TEXT, auto="CLIPTextModel"),
    "siglip-text": TinyFamily(("SiglipTextConfig", "SiglipTextModel", "SiglipTextModel"), _TEXT,
                              auto="SiglipTextModel"),
    "siglip2-text": TinyFamily(("Siglip2TextConfig", "Siglip2TextModel", "Siglip2TextModel"), _TEXT,
                               auto="Siglip2TextModel"),
    "wav2vec2": TinyFamily(("Wav2Vec2Config", "Wav2Vec2Model", "Wav2Vec2ForCTC"), _AUDIO, auto="AutoModelForCTC",
                           inputs="input_values"),
    # the stable-layer-norm (pre-LN) encoder of wav2vec2-large-lv60 and the like
    "wav2vec2-stable": TinyFamily(("Wav2Vec2Config", "Wav2Vec2Model", "Wav2Vec2ForCTC"),
                                  dict(_AUDIO, do_stable_layer_norm=True, feat_extract_norm="layer"),
                                  auto="AutoModelForCTC", inputs="input_values"),
    "hubert": TinyFamily(("HubertConfig", "HubertModel", "HubertForCTC"), _AUDIO, auto="AutoModelForCTC",
                         inputs="input_values"),
    "data2vec-audio": TinyFamily(("Data2VecAudioConfig", "Data2VecAudioModel", "Data2VecAudioForCTC"), _AUDIO,
                                 auto="AutoModelForCTC", inputs="input_values"),
    # UniSpeech, UniSpeech-SAT: Wav2Vec2's encoder (post-LN, and the stable-layer-norm one) under unispeech(_sat)
    "unispeech": TinyFamily(("UniSpeechConfig", "UniSpeechModel", "UniSpeechForCTC"), _AUDIO,
                            auto="AutoModelForCTC", inputs="input_values"),
    "unispeech-stable": TinyFamily(("UniSpeechConfig", "UniSpeechModel", "UniSpeechForCTC"),
                                   dict(_AUDIO, do_stable_layer_norm=True, feat_extract_norm="layer"),
                                   auto="AutoModelForCTC", inputs="input_values"),
    "unispeech-sat": TinyFamily(("UniSpeechSatConfig", "UniSpeechSatModel", "UniSpeechSatForCTC"), _AUDIO,
                                auto="AutoModelForCTC", inputs="input_values"),
    "unispeech-sat-stable": TinyFamily(("UniSpeechSatConfig", "UniSpeechSatModel", "UniSpeechSatForCTC"),
                                       dict(_AUDIO, do_stable_layer_norm=True, feat_extract_norm="layer"),
                                       auto="AutoModelForCTC", inputs="input_values"),
    # SEW: squeezes the frames by 2 before the blocks (pooling) and upsamples after
    "sew": TinyFamily(("SEWConfig", "SEWModel", "SEWForCTC"), _AUDIO, auto="AutoModelForCTC", inputs="input_values"),
    # SEW-D: DeBERTa-v2's disentangled attention (relative positions in 16 buckets)
    "sew-d": TinyFamily(("SEWDConfig", "SEWDModel", "SEWDForCTC"), dict(_AUDIO, position_buckets=16,
                                                                       max_position_embeddings=64),
                        auto="AutoModelForCTC", inputs="input_values"),
    # WavLM: heads refused (F.multi_head_attention_forward on its projections' weights; a gated relative-position bias
    # that splits the block's input per head): MLP only
    "wavlm": TinyFamily(("WavLMConfig", "WavLMModel", "WavLMForCTC"),
                        dict(_AUDIO, num_buckets=16, max_bucket_distance=32), auto="AutoModelForCTC",
                        inputs="input_values", heads=False),
    # Wav2Vec2-Conformer: both feed-forward modules prune, and the heads (relative position embeddings: linear_pos
    # rows and pos_bias_u/v cut per head; rotary: applied to the attention's input, kept whole)
    "wav2vec2-conformer": TinyFamily(("Wav2Vec2ConformerConfig", "Wav2Vec2ConformerModel",
                                      "Wav2Vec2ConformerForCTC"), dict(_AUDIO, conv_depthwise_kernel_size=7),
                                     auto="AutoModelForCTC", inputs="input_values"),
    "wav2vec2-conformer-rotary": TinyFamily(("Wav2Vec2ConformerConfig", "Wav2Vec2ConformerModel",
                                             "Wav2Vec2ConformerForCTC"),
                                            dict(_AUDIO, conv_depthwise_kernel_size=7,
                                                 position_embeddings_type="rotary"),
                                            auto="AutoModelForCTC", inputs="input_values"),
    # Wav2Vec2-BERT: the conformer's blocks over frames of 8 features, its default relative_key positions
    # (a distance embedding shared by the heads)
    "wav2vec2-bert": TinyFamily(("Wav2Vec2BertConfig", "Wav2Vec2BertModel", "Wav2Vec2BertForCTC"),
                                dict(_AUDIO, feature_projection_input_dim=8, conv_depthwise_kernel_size=7,
                                     left_max_position_embeddings=8, right_max_position_embeddings=4),
                                auto="AutoModelForCTC", inputs="input_features",
                                frame_features="feature_projection_input_dim"),
    # Parakeet CTC: a conformer (two feed-forward modules, Transformer-XL relative attention) behind a 2x
    # subsampling of 32 frames of 8 mel bins (16 frames reach the blocks); the sizes in its encoder_config
    "parakeet_ctc": TinyFamily(("ParakeetCTCConfig", "ParakeetForCTC", "ParakeetForCTC"),
                               dict(vocab_size=32, pad_token_id=0, encoder_config=dict(
                                   _BLOCKS, subsampling_factor=2, subsampling_conv_channels=4, num_mel_bins=8,
                                   conv_kernel_size=5, dropout=0.0, layerdrop=0.0, activation_dropout=0.0,
                                   attention_dropout=0.0, max_position_embeddings=64)),
                               auto="AutoModelForCTC", inputs="input_features",
                               frame_features="encoder_config.num_mel_bins"),
    # LASR CTC: Parakeet's block layout with rotary attention, behind a linear + 2-convolution subsampling
    "lasr_ctc": TinyFamily(("LasrCTCConfig", "LasrForCTC", "LasrForCTC"),
                           dict(vocab_size=32, pad_token_id=0, encoder_config=dict(
                               _BLOCKS, subsampling_conv_channels=4, num_mel_bins=8, subsampling_conv_kernel_size=3,
                               conv_kernel_size=5, dropout=0.0, layerdrop=0.0, activation_dropout=0.0,
                               attention_dropout=0.0, max_position_embeddings=64)),
                           auto="AutoModelForCTC", inputs="input_features",
                           frame_features="encoder_config.num_mel_bins"),
    # OmniASR CTC (transformers >= 5.24): Wav2Vec2's blocks in its audio tower (audio_config), over raw audio
    # (batch, 1, samples)
    "omniasr_ctc": TinyFamily(("OmniASRCTCConfig", "OmniASRForCTC", "OmniASRForCTC"),
                              dict(vocab_size=32, pad_token_id=0, audio_config=dict(
                                  _BLOCKS, model_type="omniasr_audio", conv_dim=(16, 16), conv_stride=(5, 2),
                                  conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                                  layerdrop=0.0, hidden_dropout=0.0, activation_dropout=0.0)),
                              auto="AutoModelForCTC", inputs="input_values", audio_channels=1),
    # Granite Speech 5 CTC (transformers >= 5.24): Parakeet's layout, block attention over 8 frames, the second
    # block subsampling by 2; frames of 4 x 2 mel bins
    "granite_speech5_ctc": TinyFamily(("GraniteSpeech5CTCConfig", "GraniteSpeech5ForCTC", "GraniteSpeech5ForCTC"),
                                      dict(vocab_size=32, pad_token_id=0, encoder_config=dict(
                                          _BLOCKS, vocab_size=32, num_mel_bins=2, head_dim=8, context_size=8,
                                          max_position_embeddings=16, conv_kernel_size=3, subsample_layers=[1])),
                                      auto="AutoModelForCTC", inputs="input_features",
                                      frame_features="encoder_config.num_mel_bins*4"),
    "whisper": TinyFamily(("WhisperConfig", "WhisperModel", "WhisperForConditionalGeneration"), _WHISPER,
                          auto="AutoModelForSpeechSeq2Seq", inputs="input_features", seq2seq=True),
}
