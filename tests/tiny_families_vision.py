"""Tiny image encoders whose blocks are ViT's, BEiT's or CLIP's (masked_dora/models/families_vision_speech.py): 2
layers, hidden 32, 4 heads of 8, MLP 64, dropout 0, images of 16 x 16 pixels in patches of 4 (``inputs=
"pixel_values"``), run through the family chain with their image-classification heads (3 labels); and MetaCLIP 2's
text tower (token ids)."""

from tiny_family_table import TinyFamily

_IMAGES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16,
               patch_size=4, num_channels=3, num_labels=3)
_VIT = dict(_IMAGES, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# BEiT / data2vec-vision as fine-tuned: a relative-position bias table per block (one column per head, cut with its
# head), layer scales, mean pooling
_BEIT = dict(_VIT, use_relative_position_bias=True, layer_scale_init_value=0.1)
_CLASSIFY = "AutoModelForImageClassification"

TINY = {
    "vit_msn": TinyFamily(("ViTMSNConfig", "ViTMSNModel", "ViTMSNForImageClassification"), _VIT, auto=_CLASSIFY,
                          inputs="pixel_values"),
    "ijepa": TinyFamily(("IJepaConfig", "IJepaModel", "IJepaForImageClassification"), _VIT, auto=_CLASSIFY,
                        inputs="pixel_values"),
    "beit": TinyFamily(("BeitConfig", "BeitModel", "BeitForImageClassification"), _BEIT, auto=_CLASSIFY,
                       inputs="pixel_values"),
    "data2vec-vision": TinyFamily(("Data2VecVisionConfig", "Data2VecVisionModel",
                                   "Data2VecVisionForImageClassification"), _BEIT, auto=_CLASSIFY,
                                  inputs="pixel_values"),
    "metaclip_2-vision": TinyFamily(("MetaClip2VisionConfig", "MetaClip2VisionModel", "MetaClip2VisionModel"),
                                    _IMAGES, auto="MetaClip2VisionModel", inputs="pixel_values"),
    # MetaCLIP 2's text tower alone: token ids, as CLIP's
    "metaclip_2-text": TinyFamily(("MetaClip2TextConfig", "MetaClip2TextModel", "MetaClip2TextModel"),
                                  dict(_IMAGES, vocab_size=97, max_position_embeddings=64, pad_token_id=0,
                                       bos_token_id=1, eos_token_id=2), auto="MetaClip2TextModel"),
}
