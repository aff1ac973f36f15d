"""Video inputs (``pixel_values_videos``) through the covered VLMs that take them: the masked model, pruned in its
language model's MLP and heads (a training step on video inputs, harden), and the compacted one give equal logits
on a tiny video, which reaches the logits. Each family's video: 2 frames in the layout its vision tower reads, as
its processor would build them, the video token (id 101) repeated as many times as the video has features."""

from __future__ import annotations

import inspect

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, compact_model, harden, prepare_model

from helpers import rel_err
from tiny_models import randomize_adapters
from tiny_vlms import FAMILIES, available, unavailable_reason

VIDEO_ID = 101
CONFIG = dict(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)
TOL = 1e-5  # float32: the compacted model computes the kept channels' sums in another order


def qwen_video(patch: int):
    """Qwen-VL's flattened patches of 2 frames (a 2x4x4 grid: temporal patches of 2 frames each hold 3 * 2 * patch
    * patch values, so 4 frames), 2x2 patches merged: 4 tokens per temporal patch."""
    def pixels(n, gen):
        return {"pixel_values_videos": torch.randn(n * 2 * 4 * 4, 3 * 2 * patch * patch, generator=gen),
                "video_grid_thw": torch.tensor([[2, 4, 4]] * n)}
    return pixels


def frames(count: int):
    """A video of ``count`` 28 px frames per row, (n, count, 3, 28, 28)."""
    return lambda n, gen: {"pixel_values_videos": torch.randn(n, count, 3, 28, 28, generator=gen)}


# family: (video pixels, the runs of video tokens in a row (a text token between two runs: Qwen3-VL gives each
# temporal patch its own, after its timestamp), config keys to set (a video token id the tiny row leaves at the
# real model's, past the tiny vocabulary))
VIDEOS = {
    "qwen2_vl": (qwen_video(14), (8,), {}),
    "qwen2_5_vl": (qwen_video(14), (8,), {}),
    "qwen3_vl": (qwen_video(16), (4, 4), {}),
    # 2 frames of 2x2 patches, each pooled (spatial_pool_stride 2) into 1 token
    "llava_next_video": (frames(2), (2,), {"video_token_id": VIDEO_ID}),
    # 2 frames of 2x2 patches, pooled into 1 token each, and a newline token after the video
    "llava_onevision": (frames(2), (3,), {"video_token_id": VIDEO_ID}),
    # 8 frames (its vision tower's num_frames) of 2x2 patches and the CLS token each: 40 tokens
    "video_llava": (frames(8), (40,), {}),
}
FAMILIES_WITH_VIDEO = [f for f in VIDEOS if available(f)]


def _model(family: str):
    import transformers

    tiny = FAMILIES[family]
    config = tiny.config(transformers)
    for key, value in VIDEOS[family][2].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return getattr(transformers, tiny.classes[1])(config).eval()


def video_inputs(family: str, model, n: int = 2, seed: int = 3) -> dict:
    """``n`` rows of 3 text tokens, the video's token runs (a text token between two) and 3 text tokens, with the
    video's pixels (and the token types where the model's forward reads them: 2 for a video token)."""
    gen = torch.Generator().manual_seed(seed)
    pixels, runs, _ = VIDEOS[family]
    ids = torch.randint(3, 100, (n, 6 + sum(runs) + len(runs) - 1), generator=gen)
    start = 3
    for run in runs:
        ids[:, start:start + run] = VIDEO_ID
        start += run + 1
    inputs = {"input_ids": ids, **pixels(n, gen)}
    if "mm_token_type_ids" in inspect.signature(type(model).forward).parameters:
        inputs["mm_token_type_ids"] = (ids == VIDEO_ID).long() * 2
    return inputs


@pytest.mark.parametrize("family", [f for f in VIDEOS if not available(f)] or ["-"])
def test_video_families_this_transformers_lacks_are_reported(family):
    if family == "-":
        return
    pytest.skip(f"{unavailable_reason(family)}: {family!r}'s video input is not tested")


@pytest.mark.parametrize("family", FAMILIES_WITH_VIDEO)
def test_vlm_compacts_to_equal_logits_on_video_inputs(family):
    model = _model(family)
    prepare_model(model, MaskedDoRAConfig(**CONFIG))
    randomize_adapters(model)
    video = video_inputs(family, model)
    model.train()
    model(**video, labels=video["input_ids"].masked_fill(video["input_ids"] == VIDEO_ID, -100)).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    model.eval()
    harden(model)
    with torch.no_grad():
        ref = model(**video).logits
        other = dict(video, pixel_values_videos=video["pixel_values_videos"] + 1.0)
        assert rel_err(model(**other).logits, ref) > 1e-3  # the video reaches the logits
        small = compact_model(model)
        assert rel_err(small(**video).logits, ref) < TOL
