"""Audio language models: which language model an audio LM wraps (``AUDIO_LM_WRAPPERS``);
:mod:`masked_dora.models.families` adds them to the table of wrappers beside the VLMs'.

An audio LM (Qwen2-Audio, Voxtral, Granite Speech, ...) is laid out as a VLM: an audio tower (a Whisper-like
encoder, or Granite Speech's conformer), a projector (an MLP, or Granite Speech's windowed Q-Former) writing one
embedding per audio placeholder token into the input of a language model (``model.language_model``, a base model
whose block list is ``layers``, its config ``config.text_config``), and the LM head. Spec lookup wraps the spec of
the text config's ``model_type`` (:func:`masked_dora.models.wrapper_spec.wrap_spec`): the language model's MLP
channels and heads prune as its own spec says, the audio tower and the projector are left as they are, and hidden
pruning is refused (the projector writes into the residual stream). Their forward runs on text without audio
through every block of the language model (``text_alone``).
"""

from __future__ import annotations

from typing import Dict

from .wrapper_spec import WrapperSpec

# the projector writes the audio embeddings into the language model's residual stream: pruning its channels would
# need the projector's output rows cut too (a writer hidden pruning does not cover)
AUDIO_LM_HIDDEN = ("the audio projector writes audio embeddings into the language model's residual stream, which "
                   "hidden pruning does not cut (only the language model's own writers)")

# outer model_type -> where its language model is: Qwen2-Audio, Audio Flamingo 3 and Music Flamingo around a Qwen2;
# Voxtral and GLM-ASR around a Llama; Qwen3-ASR and MOSS-Transcribe-Diarize (transformers 5.24) around a Qwen3;
# Granite Speech around a Granite (its conformer encoder under model.encoder, its Q-Former projector under
# model.projector, both left as they are)
AUDIO_LM_WRAPPERS: Dict[str, WrapperSpec] = {
    t: WrapperSpec(language_model="language_model", hidden_refusal=AUDIO_LM_HIDDEN) for t in (
        "qwen2_audio", "voxtral", "granite_speech", "qwen3_asr", "audioflamingo3", "glmasr", "musicflamingo",
        "moss_transcribe_diarize")}
