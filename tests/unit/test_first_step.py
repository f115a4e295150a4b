"""The first-step measurement and routing that run inside vLLM's sampling step (issue #21):
hand-computed probabilities, parity with vLLM's own top-p, and the logits processor's bookkeeping
as vLLM's persistent batch adds, moves and removes requests."""

from __future__ import annotations

import math

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

from autothink.first_step import STORE, FirstStepProcessor, close_probability, first_step_args

CLOSE, EOS = 3, 4


def test_close_probability_by_hand() -> None:
    row = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert close_probability(row, 3, 1.0) == pytest.approx(0.4)
    # top-p 0.8: ascending cumulative 0.1, 0.3, ... -> 0.1 (<= 0.2) dropped, 0.2 kept (0.3 > 0.2)
    assert close_probability(row, 3, 1.0, top_p=0.8) == pytest.approx(0.4 / 0.9)
    assert close_probability(row, 0, 1.0, top_p=0.8) == 0.0
    # temperature 0.5 squares the probabilities: 0.16 / (0.01 + 0.04 + 0.09 + 0.16)
    assert close_probability(row, 3, 0.5) == pytest.approx(0.16 / 0.30)
    # greedy: the argmax is certain
    assert close_probability(row, 3, 0.0) == 1.0 and close_probability(row, 2, 0.0) == 0.0
    # a banned token (logit_bias -100 before the processor sees the row) is never drawn
    banned = row.clone()
    banned[3] -= 100
    assert close_probability(banned, 3, 1.0) < 1e-30


def test_close_probability_matches_vllms_top_p_on_random_rows() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        logits = torch.randn(1, 5000, generator=g) * 3
        t = float(torch.empty(1).uniform_(0.2, 1.5, generator=g))
        p = float(torch.empty(1).uniform_(0.5, 1.0, generator=g))
        tok = int(torch.topk(logits[0], 5).indices[int(torch.randint(0, 5, (1,), generator=g))])
        want = torch.softmax(apply_top_k_top_p((logits / t).clone(), None, torch.tensor([p])), dim=-1)[0, tok]
        assert close_probability(logits[0], tok, t, p) == pytest.approx(float(want), rel=1e-5, abs=1e-7)


def _params(**fs) -> SamplingParams:
    extra = first_step_args(fs.pop("key"), CLOSE, [CLOSE, EOS], fs.pop("probe", True), fs.pop("threshold", None),
                            fs.pop("forced", "sample"))
    return SamplingParams(temperature=fs.pop("temperature", 1.0), top_p=fs.pop("top_p", 1.0), extra_args=extra, **fs)


def _row(p_close: float, n: int = 6) -> torch.Tensor:
    probs = torch.full((n,), (1 - p_close) / (n - 1))
    probs[CLOSE] = p_close
    return torch.log(probs)


def test_processor_measures_routes_and_forgets() -> None:
    proc = FirstStepProcessor(None, torch.device("cpu"), False)
    outs = [[], [], [], []]
    proc.update_state(BatchUpdate(batch_size=4, removed=[], moved=[], added=[
        (0, _params(key="a"), [1], outs[0]),                      # measured, sampled freely
        (1, _params(key="b", threshold=0.5), [1], outs[1]),       # P(think) 0.3 < 0.5: no-think
        (2, _params(key="c", threshold=0.5), [1], outs[2]),       # P(think) 0.9 >= 0.5: think
        (3, SamplingParams(), [1], outs[3]),                      # not ours
    ]))
    logits = torch.stack([_row(0.4), _row(0.7), _row(0.1), _row(0.5)])
    before = logits.clone()
    proc.apply(logits)
    assert STORE.pop(["a", "b", "c"]) == pytest.approx({"a": 0.4, "b": 0.7, "c": 0.1})
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[3], before[3])
    assert int(torch.argmax(logits[1])) == CLOSE and torch.isinf(logits[1]).sum() == 5  # only </think> left
    assert math.isinf(logits[2, CLOSE]) and math.isinf(logits[2, EOS]) and torch.isfinite(logits[2]).sum() == 4
    # the first tokens are drawn: later steps are left alone and the rows are dropped
    for o in outs:
        o.append(9)
    again = torch.stack([_row(0.4), _row(0.7), _row(0.1), _row(0.5)])
    proc.apply(again)
    assert torch.isfinite(again).all() and not proc.rows and STORE.pop(["a", "b", "c"]) == {}


def test_processor_follows_moves_swaps_and_removals() -> None:
    proc = FirstStepProcessor(None, torch.device("cpu"), False)
    proc.update_state(BatchUpdate(batch_size=2, removed=[], moved=[], added=[
        (0, _params(key="x", forced="no_think"), [1], []), (1, _params(key="y", forced="think"), [1], [])]))
    proc.update_state(BatchUpdate(batch_size=2, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert proc.rows[0].key == "y" and proc.rows[1].key == "x"
    proc.update_state(BatchUpdate(batch_size=2, removed=[0], added=[], moved=[(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert list(proc.rows) == [0] and proc.rows[0].key == "x"
    logits = _row(0.2).unsqueeze(0)
    proc.apply(logits)
    assert int(torch.argmax(logits[0])) == CLOSE and torch.isinf(logits[0]).sum() == 5
    # a slot reused by a request that did not ask forgets the old one
    proc.update_state(BatchUpdate(batch_size=1, removed=[], moved=[], added=[(0, SamplingParams(), [1], [])]))
    assert not proc.rows
    STORE.pop(["x", "y"])


def test_chunked_prefill_keeps_the_last_chunks_value() -> None:
    """A prompt prefilled in chunks is sampled (and the token discarded) at every chunk: the value
    kept is the one of the step whose token is kept."""
    proc = FirstStepProcessor(None, torch.device("cpu"), False)
    out: list[int] = []
    proc.update_state(BatchUpdate(batch_size=1, removed=[], moved=[], added=[(0, _params(key="k"), [1], out)]))
    proc.apply(_row(0.9).unsqueeze(0))  # a discarded chunk
    proc.apply(_row(0.25).unsqueeze(0))  # the last chunk: its token is kept
    out.append(5)
    proc.apply(_row(0.5).unsqueeze(0))
    assert STORE.pop(["k"]) == pytest.approx({"k": 0.25})


def test_threshold_and_forced_route_are_exclusive() -> None:
    with pytest.raises(ValueError):
        first_step_args("k", CLOSE, [CLOSE], probe=True, threshold=0.5, forced="think")


def test_model_runner_v2_processor_acts_at_the_first_step_only() -> None:
    """Model Runner V2 (vLLM's default on CUDA) keys requests by slot and tells the step by the
    visible length: < prompt is a discarded prefill chunk, = prompt draws the first token."""
    from types import SimpleNamespace

    import numpy as np

    from autothink.first_step import FirstStepProcessorV2, processor_for

    states = SimpleNamespace(prompt_len=SimpleNamespace(np=np.array([0, 10, 20, 5])))
    proc = FirstStepProcessorV2(None, states)
    assert proc.add_request(1, _params(key="v1", threshold=0.5)) and proc.add_request(2, _params(key="v2"))
    assert not proc.add_request(3, SamplingParams())

    def step(slots, visible, rows):
        logits = torch.stack(rows)
        proc.apply(logits, SimpleNamespace(idx_mapping_np=np.array(slots), seq_lens_upper_bound_np=np.array(visible)))
        return logits

    out = step([2, 1, 3], [12, 10, 5], [_row(0.3), _row(0.8), _row(0.5)])  # slot 2 mid-prefill; slot 1 samples
    assert STORE.pop(["v1", "v2"]) == pytest.approx({"v1": 0.8})
    assert int(torch.argmax(out[1])) == CLOSE and torch.isinf(out[1]).sum() == 5  # P(think) 0.2 < 0.5
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all() and list(proc.slots) == [2]
    step([2, 1], [20, 11], [_row(0.3), _row(0.8)])
    assert STORE.pop(["v1", "v2"]) == pytest.approx({"v2": 0.3}) and not proc.slots
    assert processor_for(SimpleNamespace(use_v2_model_runner=True)) is FirstStepProcessorV2
