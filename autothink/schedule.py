"""The stage schedule: which global step belongs to which stage, and where its prompts start.

Pure: no torch, no transport.  The learner walks this plan; ``autothink up`` sizes its progress bar
with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from autothink.config import StageConfig


@dataclass(frozen=True)
class PlannedStep:
    index: int  # global step
    stage_index: int
    stage: StageConfig
    cursor: int  # where this step's prompts start in the (shuffled, cycled) dataset


def plan(stages: list[StageConfig]) -> list[PlannedStep]:
    """The whole schedule, step by step, with each step's data position.

    >>> from autothink.config import load_config
    >>> [(p.index, p.stage.name, p.cursor) for p in plan(load_config("toy", environ={}).stages)][29:32]
    [(29, 'stage1', 464), (30, 'stage2', 480), (31, 'stage2', 496)]
    """
    out, cursor = [], 0
    for si, stage in enumerate(stages):
        for _ in range(stage.steps):
            out.append(PlannedStep(len(out), si, stage, cursor))
            cursor += stage.prompts_per_batch
    return out
