"""Hierarchical encoders (Swin, Swin V2, Donut's Swin, SegFormer, PVT v2): one stack of blocks per stage, each with its
own sizes.

A spec reads one width and one head count per stack from scalar config keys. A hierarchical encoder's config gives
them per stage instead (Swin: ``num_heads=[3, 6, 12, 24]``, ``depths=[2, 2, 6, 2]``, and a width ``embed_dim``
that doubles at each stage; SegFormer: one width per stage, ``hidden_sizes``), and each stage keeps its blocks in a
list of its own (``encoder.layers.<stage>.blocks``). :class:`StagesSpec` says so declaratively;
:func:`expand_stages` turns the family's spec into one stack per stage of a given config (``stage0``, ``stage1``,
...: per-stage groups), each reading its sizes through :class:`StageConfig`, the config as that stage sees it
(``num_heads`` its own count, ``embed_dim`` its own width). Everything downstream (blocks, groups, compaction,
per-layer sizes) then treats the stages as it treats an encoder-decoder's stacks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from dataclasses import replace as replace_dataclass
from typing import Tuple


@dataclass(frozen=True)
class StagesSpec:
    """The stages of a hierarchical encoder: where each stage's blocks are and how its config says its sizes."""

    # the block list of stage ``{stage}`` (a suffix of its qualified name, as ModelSpec.layers)
    layers: str
    # config key listing one entry per stage (Swin's ``depths``): how many stages the model has
    count_key: str
    # config keys listing one value per stage (Swin's ``num_heads``): a stage reads its own entry
    per_stage_keys: Tuple[str, ...] = ()
    # config key of the first stage's width (Swin's ``embed_dim``), which each further stage multiplies by
    # ``width_growth`` (the patch merging between stages doubles it): a stage reads its own width there
    width_key: str = ""
    width_growth: int = 2
    # config key listing each stage's width (SegFormer's and PVT v2's ``hidden_sizes``), for an encoder whose widths
    # do not follow from the first one: a stage reads its own entry there, and, as with ``width_key``, cannot set it
    widths_key: str = ""
    # the stage a stack spec stands for (set by :func:`expand_stages`); -1 in the family's spec
    index: int = -1

    def __post_init__(self):
        if "{stage}" not in self.layers:
            raise ValueError(f"StagesSpec.layers: expected a block list path with '{{stage}}' for the stage's "
                             f"number, got {self.layers!r}")
        if self.width_key and self.widths_key:
            raise ValueError(f"StagesSpec: a stage's width is read from width_key (the first stage's, grown) or from "
                             f"widths_key (one per stage), not both; got width_key={self.width_key!r}, "
                             f"widths_key={self.widths_key!r}")
        if self.widths_key in self.per_stage_keys:
            raise ValueError(f"StagesSpec: widths_key {self.widths_key!r} cannot also be a per_stage_keys entry "
                             f"(a stage's width is read, never written)")
        if self.width_growth < 1:
            raise ValueError(f"StagesSpec.width_growth: expected an integer >= 1, got {self.width_growth}")


class StageConfig:
    """A model config as one stage of a hierarchical encoder sees it (``ModelSpec.sized_config``): the keys of
    ``StagesSpec.per_stage_keys`` give this stage's entry, ``width_key`` (grown) or ``widths_key`` (its entry) this
    stage's width, every other attribute the config's own. Setting a per-stage key writes this stage's entry of a
    copy of the list (a plain checkpoint's config keeps the other stages' values); the width cannot be set (no
    pruning here changes a stage's width)."""

    def __init__(self, config, stages: StagesSpec):
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_stages", stages)

    def __getattr__(self, name: str):
        if name in ("_config", "_stages"):  # (not set yet: copy and pickle look attributes up on a bare instance)
            raise AttributeError(name)
        config, stages = self._config, self._stages
        value = getattr(config, name)
        if name in stages.per_stage_keys:
            return _entry(value, stages.index, name)
        if name == stages.width_key:
            return value * stages.width_growth ** stages.index
        if name == stages.widths_key:
            return _entry(value, stages.index, name)
        return value

    def __setattr__(self, name: str, value) -> None:
        config, stages = self._config, self._stages
        if name in stages.per_stage_keys:
            values = list(getattr(config, name))
            _entry(values, stages.index, name)
            values[stages.index] = value
            setattr(config, name, values)
        elif name == stages.width_key:
            raise ValueError(f"config.{name}: the width of stage {stages.index} follows from the first stage's "
                             f"(times {stages.width_growth} per stage); it cannot be set for one stage")
        elif name == stages.widths_key:
            raise ValueError(f"config.{name}: the width of stage {stages.index} sizes its patch embedding, norms and "
                             f"the next stage's input; no pruning here changes it")
        else:
            setattr(config, name, value)

    @property
    def described(self) -> str:
        """The config's class and the stage, for messages: ``SwinConfig (stage 1)``."""
        return f"{type(self._config).__name__} (stage {self._stages.index})"

    def __repr__(self) -> str:
        return f"StageConfig({self.described})"


def _entry(values, index: int, name: str):
    if not isinstance(values, (list, tuple)) or index >= len(values):
        raise ValueError(f"config.{name}: expected one value per stage (a list with an entry for stage {index}), "
                         f"got {values!r}")
    return values[index]


def stage_count(spec, config) -> int:
    """How many stages a config of ``spec``'s family has (the length of its ``StagesSpec.count_key`` list)."""
    counts = getattr(spec.sized_config(config), spec.stages.count_key, None)
    if not isinstance(counts, (list, tuple)) or not counts:
        raise ValueError(f"spec {spec.name!r}: config.{spec.stages.count_key} should list the blocks of each stage, "
                         f"got {counts!r}")
    return len(counts)


@functools.lru_cache(maxsize=None)
def expand_stages(spec, count: int):
    """``spec`` (a family with ``stages``) as ``count`` stacks, one per stage: the first is the spec itself for stage
    0 (stack ``stage0``), ``stacks`` the others; each with its stage's block list and ``stages.index``. One object
    per (spec, count): code comparing specs by identity sees one family."""
    def stage(i: int, **more):
        return replace_dataclass(spec, layers=(spec.stages.layers.format(stage=i),), stack=f"stage{i}",
                                 stages=replace_dataclass(spec.stages, index=i), **more)

    rest = tuple(stage(i, name=f"{spec.name}-stage{i}", model_types=(), stacks=()) for i in range(1, count))
    return stage(0, stacks=rest)
