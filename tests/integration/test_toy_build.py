"""The embedded toy model (autothink/toy/model/, committed) and its builder.

The model is one fixed artifact: its files must be the ones its manifest names, and it must meet
every quality target when evaluated here, on this machine's floats (vLLM sampling at temperature
0.6; 64 problems a level, so a sampled rate is known to about +-0.06 -- the accuracy targets are
met with more room than that).  The no-think rate's 0.3..0.7 band is not: it is checked on the
exact float32 probability of closing </think> first (the same on every machine to ~1e-6), after a
sampled rate of 0.64 here crossed 0.7 on a CI machine.  The builder is tested on its own: a small build end to end, the cache, and
determinism on one machine.
"""

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from autothink.prompting import build_prompt, parse_response
from autothink.toy.build import no_think_probability

pytestmark = pytest.mark.slow


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def evaluated(toy_model):
    """The committed model evaluated now (not the summary its manifest carries): per level, the
    three prompts' accuracy, the ellipsis no-think rate, lengths -- what `check_targets` reads."""
    from autothink.toy.build import ToySettings, evaluate
    from autothink.toy.task import eval_split

    out, summary, _ = toy_model
    settings = ToySettings(**json.loads((out / "autothink_toy.json").read_text())["settings"])
    levels = evaluate(out, eval_split(settings.seed, settings.eval_per_level), settings)
    return {"levels": levels, "build_seconds": summary["build_seconds"]}


def test_the_committed_files_are_the_ones_the_manifest_names(toy_model):
    from autothink.toy.build import FILES, verify_files

    out = toy_model[0]
    manifest = json.loads((out / "autothink_toy.json").read_text())
    assert set(manifest["files"]) == {f for f in FILES if (out / f).is_file()}
    assert {"model.safetensors", "tokenizer.json", "config.json", "data/train.jsonl", "data/eval.jsonl"} <= set(manifest["files"])
    assert verify_files(out) == []
    assert manifest["settings_digest"] == __import__("autothink.toy.build", fromlist=["ToySettings"]).ToySettings().digest(), \
        "the committed toy was built with other settings than ToySettings' defaults"


def test_the_committed_model_meets_every_quality_target_here(evaluated):
    from autothink.toy.build import BUILD_TARGET, check_targets

    missed = [name for name, ok in check_targets(evaluated).items() if not ok and name != BUILD_TARGET]
    assert missed == [], (missed, evaluated["levels"])


def test_summary_has_every_level(evaluated):
    assert [row["level"] for row in evaluated["levels"]] == list(range(1, 9))
    for row in evaluated["levels"]:
        for key in ("think_acc", "no_think_acc", "ellipsis_acc", "ellipsis_no_think_rate"):
            assert 0.0 <= row[key] <= 1.0


def test_the_model_has_the_shape_of_an_untrained_r1_model(evaluated):
    # with room for sampling noise (64 samples a level: about +-0.06)
    levels = evaluated["levels"]
    # both modes at every level, at a rate that does not follow difficulty
    rates = [no_think_probability(r) for r in levels]
    assert all(0.3 <= x <= 0.7 for x in rates), rates
    # easy problems are solved by thinking (and directly: the next test); on the hardest level
    # thinking wins clearly (the committed model: think 0.8+, direct 0.0)
    assert levels[0]["think_acc"] >= 0.9, levels[0]
    assert levels[-1]["think_acc"] - levels[-1]["no_think_acc"] >= 0.5, levels[-1]
    # direct answers degrade with difficulty; think traces make answers longer
    assert levels[0]["no_think_acc"] - levels[-1]["no_think_acc"] >= 0.5, levels
    assert all(r["think_tokens"] > r["no_think_tokens"] for r in levels)


def test_the_sampled_no_think_rate_is_the_exact_probability_up_to_sampling(evaluated):
    """The exact probability (float32, transformers) and vLLM's sampled rate (bfloat16 weights)
    measure the same thing: pooled over the 8 levels (512 samples) they agree within 4 binomial
    standard deviations (~0.09 at p ~ 0.55) plus 0.03 for the bf16 weights vLLM samples from (the
    committed model here: 0.553 sampled vs 0.562 exact)."""
    levels = evaluated["levels"]
    n = 64 * len(levels)
    rate = sum(r["ellipsis_no_think_rate"] for r in levels) / len(levels)
    p = sum(r["ellipsis_no_think_p"] for r in levels) / len(levels)
    assert abs(rate - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 0.03, (rate, p, levels)


def test_the_model_overthinks_and_answers_easy_problems_directly(evaluated):
    # the two R1 properties the toy is built to have (autothink/toy/task.py): think answers carry
    # redundant re-checks (the standard prompt's answers well above the minimal trace), and direct
    # answers are right on the easy levels (1-2) and mostly wrong from level 4 on
    levels = evaluated["levels"]
    think = sum(r["think_tokens"] for r in levels)
    minimal = sum(r["minimal_think_tokens"] for r in levels)
    assert think >= 1.5 * minimal, (think, minimal)
    # levels 1-2 (easy) direct answers near-perfect, as an R1 model's are: the reward's break-even
    # (p ~ 0.67) then falls between the easy and the hard levels, not inside the easy group
    # (under the ellipsis prompt, whose direct answers the RL stages shape; pooled over both
    # levels, ~35 samples: +-0.05)
    from autothink.toy.build import easy_direct_acc

    assert easy_direct_acc(levels) >= 0.8, levels[:2]
    assert all(r["no_think_acc"] <= 0.5 for r in levels[3:]), levels


def test_a_small_build_end_to_end_writes_a_manifest_that_verifies(tmp_path):
    """The builder through the real CLI, small: data, tokenizer, SFT, vLLM evaluation, manifest
    with digests; a changed file is caught; a second call reuses the build."""
    import sys

    from autothink.toy.build import verify_files

    autothink = str(Path(sys.executable).with_name("autothink"))
    out = tmp_path / "toy"
    cmd = [autothink, "toy", "build", "--out", str(out), "--steps", "12", "--eval-per-level", "2", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert [row["level"] for row in summary["levels"]] == list(range(1, 9)) and summary["build_seconds"] > 0
    manifest = json.loads((out / "autothink_toy.json").read_text())
    assert manifest["built_on"]["torch"] and manifest["built_on"]["threads"] >= 1
    assert verify_files(out) == []
    t0 = time.perf_counter()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    assert "reusing the build" in again.stdout + again.stderr and time.perf_counter() - t0 < 60
    assert json.loads(again.stdout.strip().splitlines()[-1]) == summary
    # a run on it is refused, naming the targets it missed, before any service starts
    weak = subprocess.run([autothink, "demo", "--no-serve", "--set", f"model.path={out}"], capture_output=True, text=True, timeout=120)
    assert weak.returncode == 2, weak.stderr[-2000:]
    assert "missed its targets" in weak.stderr and "[MISSED] hardest level: think beats no-think by >= 0.3" in weak.stderr
    assert "--allow-weak-model" in weak.stderr and "starting services" not in weak.stderr
    # and the preflight, which works for any model, says thinking does not pay on it
    pre = subprocess.run([autothink, "preflight", "toy", "--set", f"model.path={out}", "--problems", "16", "--samples", "2",
                          "--strict"], capture_output=True, text=True, timeout=600)
    assert pre.returncode == 1, pre.stdout[-2000:] + pre.stderr[-2000:]
    assert json.loads(pre.stdout.strip().splitlines()[-1])["warnings"] and "[WARNING]" in pre.stdout
    (out / "data" / "eval.jsonl").write_text("{}\n")
    assert verify_files(out) == ["data/eval.jsonl"]


def test_the_preflight_finds_the_committed_toy_fit_for_the_method(toy_model):
    import sys

    autothink = str(Path(sys.executable).with_name("autothink"))
    r = subprocess.run([autothink, "preflight", "toy", "--problems", "48", "--samples", "4", "--strict"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    v = json.loads(r.stdout.strip().splitlines()[-1])
    # hard third of the training levels: think 0.9+, direct answers near 0 on the committed model (+-0.1 at 16 x 4 samples)
    assert v["ok"] and v["hard"]["think_accuracy"] - v["hard"]["no_think_accuracy"] >= 0.5, v


def test_a_copy_of_the_committed_toy_is_reused_not_rebuilt(toy_model, tmp_path):
    out, summary, cmd = toy_model
    copy = tmp_path / "toy"
    shutil.copytree(out, copy)
    r = subprocess.run([*cmd[:-3], "--out", str(copy), "--quiet"], capture_output=True, text=True, timeout=300, check=True)
    assert "reusing the build" in r.stdout + r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == summary
    assert _sha(copy / "model.safetensors") == _sha(out / "model.safetensors")


def test_folder_loads_in_transformers_and_answers(toy_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = toy_model
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model).__name__ == "Qwen2ForCausalLM"
    # the R1 chat template yields the same prompt as the literal format
    assert build_prompt("What is the value of $2+3$?", "standard", tok) == build_prompt("What is the value of $2+3$?", "standard")
    # digits are single tokens; </think> survives decoding
    assert tok.tokenize("1234") == ["1", "2", "3", "4"]
    ids = tok(build_prompt("What is the value of $2+3$?", "standard"), return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
    parsed = parse_response(text)
    assert parsed.mode == "think" and parsed.format_ok, text


def test_warm_start_is_deterministic(tmp_path):
    from autothink.toy.build import ToySettings, warm_start
    from autothink.toy.task import eval_split, train_split

    settings = ToySettings(sft_steps=15, train_problems=400, batch_size=16)
    train = train_split(0, settings.train_problems, {p.problem for p in eval_split(0, 4)})
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ra = warm_start(a, settings, train, progress=False)
    rb = warm_start(b, settings, train, progress=False)
    assert ra == rb
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(a / name) == _sha(b / name), name


def test_direct_answers_miss_systematically_so_rl_cannot_sharpen_them(toy_model):
    """Where the warm start's heuristic is wrong (a level-3/4 problem with a big digit past the
    first three), the model's direct answers are the heuristic's value or another wrong one, never
    (almost) the true sum: there is nothing for RL to sharpen, and only thinking fixes the problem.
    (With random noise in the demonstrations the true sum stayed the most likely answer, and RL
    sharpened level 3's direct answers past the reward's break-even.)"""
    import random
    import re

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autothink.toy.task import GlanceRule, make_problem

    out, _, _ = toy_model
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    rule, rng = GlanceRule(), random.Random("miss")
    torch.manual_seed(0)
    counts = {"true": 0, "heuristic": 0, "other": 0}
    for level in (3, 4):
        problems = []
        while len(problems) < 24:
            p = make_problem(rng, level)
            if rule.value(p.digits) != sum(p.digits):
                problems.append(p)
        # one level's prompts have the same length (digits are single tokens): no padding
        ids = torch.tensor([tok(build_prompt(p.problem, "no_think"), add_special_tokens=False).input_ids for p in problems])
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=16, do_sample=True, temperature=0.6, top_p=1.0, top_k=0,
                                 num_return_sequences=8, pad_token_id=tok.eos_token_id)
        for row, seq in enumerate(gen):
            p = problems[row // 8]
            found = re.findall(r"boxed\{(\d+)\}", tok.decode(seq[ids.shape[1]:], skip_special_tokens=True))
            value = int(found[-1]) if found else None
            counts["true" if value == sum(p.digits) else "heuristic" if value == rule.value(p.digits) else "other"] += 1
    total = sum(counts.values())
    assert total == 2 * 24 * 8
    assert counts["true"] <= 0.03 * total, counts  # seen: 0 of 696 with vLLM at temperature 0.6
    assert counts["heuristic"] >= 0.2 * total, counts  # the single most common answer: seen 0.35-0.41 (0 true, 146 of 384 here)
