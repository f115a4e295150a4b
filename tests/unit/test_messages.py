"""Bus message codec: round trips, binary packing, and clear errors for malformed entries."""

import json

import pytest

from autothink.bus.messages import MessageError, PromptMsg, RolloutGroup, Sample, Score, ScoredGroup, decode, encode


def _group() -> RolloutGroup:
    prompt = PromptMsg(group_id="g-1", problem="What is $1+2$?", answer=["3"], n=2, level=1, step=4)
    samples = [Sample("</think>\n\n\\boxed{3}", [5, 6, 7], [-0.5, -0.25, -0.125]), Sample("1+2=3", list(range(8000)), [-1.0] * 8000, "length")]
    return RolloutGroup(prompt, policy_version=7, samples=samples, prompt_token_ids=[1, 2], worker="w0")


def test_rollout_round_trip_and_binary_packing():
    g = _group()
    fields = encode(g)
    assert len(fields["ids"]) == 4 * 8003 and len(fields["lp"]) == 4 * 8003  # int32 / float32, not JSON
    assert "8000" not in fields["meta"] or len(fields["meta"]) < 2000  # the arrays are not in the JSON
    back = decode({k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in fields.items()}, "rollout")
    assert back == g


def test_scored_round_trip():
    g = _group()
    scores = [Score("no_think", True, True, "ok", 2.0, 3, "3"), Score("think", False, False, "no_answer", 0.0, 8000)]
    s = ScoredGroup(g.prompt, g.policy_version, g.samples, scores, g.prompt_token_ids, g.worker, "r0")
    assert decode(encode(s), "scored") == s


def test_prompt_round_trip():
    p = PromptMsg(group_id="p", problem="x", answer=None, metadata={"source": "toy"})
    assert decode(encode(p), "prompt") == p


def _broken(**changes):
    fields = dict(encode(_group()))
    fields.update(changes)
    return fields


@pytest.mark.parametrize(
    "fields,reason",
    [
        (_broken(type="prompt"), "expected a rollout message"),
        (_broken(v="9"), "wire version '9'"),
        (_broken(meta="{not json"), "meta is not JSON"),
        (_broken(ids=b"\x00\x01\x02"), "not whole 4-byte values"),
        (_broken(ids=b"\x00" * 8), "lengths sum to"),
        (_broken(meta=json.dumps({"lengths": [1]})), "meta lacks"),
        ({"type": "rollout", "v": "1"}, "missing field 'meta'"),
        (_broken(meta=json.dumps({**json.loads(encode(_group())["meta"]), "prompt": {"group_id": "", "problem": "x"}})), "group_id"),
        (_broken(meta=json.dumps({**json.loads(encode(_group())["meta"]), "prompt": {"group_id": "a", "problem": "x", "evil": 1}})), "unknown fields"),
    ],
)
def test_malformed_entries_say_why(fields, reason):
    with pytest.raises(MessageError, match=reason):
        decode(fields, "rollout")


def test_log_probs_must_match_tokens():
    g = _group()
    g.samples[0].logprobs = [-1.0]
    with pytest.raises(MessageError, match="3 tokens but 1 log-probs"):
        encode(g)
