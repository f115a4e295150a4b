"""``autothink selfcheck``: is the stack installed, and do the reward rules do what the paper says?"""

from __future__ import annotations

import importlib
import shutil
import time
from dataclasses import dataclass

STACK = ("torch", "transformers", "vllm", "deepspeed", "redis", "grpc", "fastapi", "uvicorn", "sympy")


@dataclass
class _Sample:
    group_id: str
    think: bool
    correct: bool
    length: int
    reward: float
    text: str


def _example_batch() -> list[_Sample]:
    """Two prompts, four samples each: an easy one mostly answered directly, a hard one."""
    from autothink.prompting import parse_response
    from autothink.rewards import base_reward, repetition_guard

    raw = [
        ("easy", "</think>\n\n\\boxed{7}", True),
        ("easy", "</think>\n\n\\boxed{7}", True),
        ("easy", "3+4 is 7.\n</think>\n\n\\boxed{7}", True),
        ("easy", "</think>\n\n\\boxed{8}", False),
        ("hard", "</think>\n\n\\boxed{41}", False),
        ("hard", "12, 19, 27, 33, 40, 42.\n</think>\n\n\\boxed{42}", True),
        ("hard", "12, 19, 27, 33, 41, 43, 44, 45, 47, 48.\n</think>\n\n\\boxed{48}", False),
        ("hard", "</think>\n\n" + "so " * 12 + "\\boxed{41}", False),
    ]
    out = []
    for gid, text, correct in raw:
        p = parse_response(text)
        mode = p.mode if p.format_ok else "format_error"
        r = repetition_guard(base_reward(mode, correct if p.format_ok else False), text)
        out.append(_Sample(gid, p.mode == "think", correct and p.format_ok, len(text.split()), r, text))
    return out


def run() -> int:
    from autothink.config import load_config, preset_names

    ok = True
    print("AutoThink self-check\n")
    print("1. presets")
    for name in preset_names():
        cfg = load_config(name, environ={})
        print(f"   ok  {name}: {' -> '.join(s.name for s in cfg.stages)}")

    print("2. the service stack")
    for mod in STACK:
        t0 = time.perf_counter()
        try:
            m = importlib.import_module(mod)
            version = getattr(m, "__version__", "")
            print(f"   ok  {mod} {version}  ({time.perf_counter() - t0:.1f}s to import)")
        except Exception as e:  # an import failure is exactly what this check reports
            ok = False
            print(f"   FAIL {mod}: {type(e).__name__}: {e}")
    server = shutil.which("redis-server")
    print(f"   {'ok ' if server else 'FAIL'} redis-server {server or 'not on PATH'}")
    ok = ok and bool(server)

    print("3. AutoThink rewards on a worked example (toy preset's stages)")
    from autothink.grpo import group_advantages
    from autothink.rewards import shape_rewards

    samples = _example_batch()
    cfg = load_config("toy", environ={})
    shaped = {s.name: shape_rewards(samples, s) for s in cfg.stages}
    header = f"   {'group':5s} {'mode':8s} {'ok':3s} {'len':>4s} {'base':>5s}" + "".join(
        f" {n:>7s}" for n in shaped
    ) + "   adv(stage2)"
    print(header)
    adv = group_advantages(shaped[cfg.stages[1].name], [s.group_id for s in samples])
    for i, s in enumerate(samples):
        row = f"   {s.group_id:5s} {'think' if s.think else 'no_think':8s} {'y' if s.correct else 'n':3s} {s.length:4d} {s.reward:5.1f}"
        row += "".join(f" {shaped[n][i]:7.3f}" for n in shaped) + f"   {adv[i]:+.3f}"
        print(row)
    print("   stage1 pulls the over-represented mode toward its targets; stage3 favours short correct answers.")
    print("\nself-check " + ("passed" if ok else "FAILED: run `make install` (scripts/bootstrap.sh)"))
    return 0 if ok else 1
