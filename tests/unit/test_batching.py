"""Batch assembly: de-duplication by group id, shaping over the batch, whole-group mini-batches."""

import pytest

from autothink.batching import GroupDeduper, batch_stats, build_batch
from autothink.bus.messages import PromptMsg, Sample, Score, ScoredGroup
from tests.fakes import Stage


def group(gid, rewards, modes, level=1, version=0):
    samples = [Sample("x", [1] * (3 + i), [-0.1] * (3 + i)) for i in range(len(rewards))]
    scores = [Score(m, True, r > 0, "ok", r, 3 + i) for i, (r, m) in enumerate(zip(rewards, modes))]
    return ScoredGroup(PromptMsg(group_id=gid, problem="p", level=level), version, samples, scores, [7, 8])


def test_dedupe_keeps_first_copy():
    d = GroupDeduper()
    a, b = group("a", [1, 0], ["think"] * 2), group("b", [1, 0], ["think"] * 2)
    assert [g.group_id for g in d.fresh([a, b, a])] == ["a", "b"]
    assert d.fresh([b]) == [] and d.duplicates == 2


def test_build_batch_advantages_per_group():
    batch = build_batch([group("a", [2.0, -1.0], ["no_think"] * 2), group("b", [1.0, 1.0, 0.0], ["think"] * 3)], Stage())
    # group a: mean 0.5, std 2.1213 -> +-0.7071; group b: mean 2/3, std 0.5774 -> 0.5774, 0.5774, -1.1547
    assert batch.advantages == pytest.approx([0.7071065, -0.7071065, 0.5773498, 0.5773498, -1.1546997], abs=1e-5)
    assert batch.samples[0].prompt_ids == [7, 8] and batch.samples[2].length == 3


def test_batch_balance_is_applied_over_the_whole_batch():
    stage = Stage()
    stage.batch_balance_rate = 0.5
    # 3 of 4 samples think -> f = 0.5; think targets 0 (correct) / -1 (wrong)
    batch = build_batch([group("a", [1.0, 0.0], ["think", "think"]), group("b", [1.0, 2.0], ["think", "no_think"])], stage)
    assert batch.rewards == pytest.approx([0.5, -0.5, 0.5, 2.0])


def test_mini_batches_keep_groups_whole():
    batch = build_batch([group(g, [1.0, 0.0, 1.0], ["think"] * 3) for g in "abcde"], Stage())
    mbs = batch.mini_batches(2)
    assert [len(m) for m in mbs] == [6, 6, 3]
    for m in mbs:
        ids = {batch.samples[i].group_id for i in m}
        assert all(sum(batch.samples[i].group_id == g for i in m) == 3 for g in ids)


def test_batch_stats():
    batch = build_batch([group("a", [2.0, -1.0], ["no_think", "think"], level=3)], Stage())
    st = batch_stats(batch)
    assert st["think_rate"] == 0.5 and st["accuracy"] == 0.5 and st["no_think_rate_by_level"] == {"3": 0.5}
    assert st["mean_length_think"] == 4 and st["mean_length_no_think"] == 3
