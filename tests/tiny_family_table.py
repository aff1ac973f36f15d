"""Tiny families added by a table entry: ``tests/tiny_families_*.py`` each define ``TINY = {family: TinyFamily}``.

:mod:`tiny_models` folds every entry whose config class the installed transformers has into its family lists
(so the family chain, the spec and the pruning tests run it); entries it lacks are listed in
:data:`UNAVAILABLE` and reported as skipped by ``tests/test_models_families.py``.
"""

from __future__ import annotations

import glob
import importlib
import os
from dataclasses import dataclass, field
from typing import Dict, Tuple

import transformers


INPUT_KINDS = ("input_ids", "pixel_values", "input_values", "input_features")


@dataclass(frozen=True)
class TinyFamily:
    """One tiny family: its classes, its config, and what it prunes."""

    classes: Tuple[str, str, str]  # transformers attribute names: config class, bare model class, LM class
    config: dict                   # the tiny config's arguments: 2 layers, hidden 32, 4 heads of 8, MLP 64, vocab 97
    kv_heads: int = 4              # KV heads of the tiny config (1: multi-query, heads prune as query heads only)
    causal_lm: bool = False        # a causal LM: generate() is compared after the reload
    heads: bool = True             # False: the spec refuses its heads, and the chain prunes the MLP only
    auto: str = ""                 # the Auto class a plain reload uses (default: causal LM or masked LM)
    prune: dict = field(default_factory=dict)  # MaskedDoRAConfig arguments its heads need (besides gqa)
    # the model's main input, which tiny_models.tiny_inputs builds from the config (INPUT_KINDS): token ids (with an
    # attention mask), images (pixel_values: batch x num_channels x image_size^2), raw audio (input_values: batch x
    # 400 samples) or log-mel features (input_features: batch x num_mel_bins x 2 * max_source_positions frames)
    inputs: str = "input_ids"
    # an encoder-decoder whose forward needs decoder_input_ids (tiny_inputs adds them); the family chain compares
    # generate() from the main input after the reload
    seq2seq: bool = False
    # input_features laid out (batch, frames, features) rather than Whisper's (batch, mel bins, frames): the config
    # attribute (dotted: a sub-config's) holding the per-frame feature width (Wav2Vec2-BERT's
    # feature_projection_input_dim, Parakeet's encoder_config.num_mel_bins; "<attribute>*<n>": n times it, Granite
    # Speech 5's 4 stacked frames of num_mel_bins); tiny_inputs builds 32 frames
    frame_features: str = ""
    # input_values laid out (batch, audio_channels, samples) (OmniASR's (batch, 1, samples)); 0: (batch, samples)
    audio_channels: int = 0

    def __post_init__(self):
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"TinyFamily.inputs: expected one of {INPUT_KINDS}, got {self.inputs!r}")
        if self.frame_features and self.inputs != "input_features":
            raise ValueError(f"TinyFamily.frame_features: describes input_features, got inputs={self.inputs!r}")

    def available(self) -> bool:
        return all(hasattr(transformers, name) for name in self.classes)


def _load() -> Dict[str, TinyFamily]:
    table: Dict[str, TinyFamily] = {}
    here = os.path.dirname(os.path.abspath(__file__))
    for path in sorted(glob.glob(os.path.join(here, "tiny_families_*.py"))):
        module = importlib.import_module(os.path.splitext(os.path.basename(path))[0])
        clash = set(table) & set(module.TINY)
        if clash:
            raise ValueError(f"{path}: families {sorted(clash)} are defined twice")
        table.update(module.TINY)
    return table


TABLE = _load()
AVAILABLE = {name: fam for name, fam in TABLE.items() if fam.available()}
UNAVAILABLE = sorted(set(TABLE) - set(AVAILABLE))
