"""Training problems: the toy task's split, or JSON / JSONL / parquet files with problem and answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_problems(source: str, model_dir: str | Path, problem_key: str = "problem", answer_key: str = "answer") -> list[dict[str, Any]]:
    """Rows with ``problem``, ``answer`` and ``level`` (None when the file has none)."""
    if source == "toy":
        path = Path(model_dir) / "data" / "train.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: build the toy model first (autothink toy build --out {model_dir})")
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"training data {source!r} not found")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".json":
        rows = json.loads(path.read_text())
    elif path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise RuntimeError("reading parquet needs pyarrow (pip install pyarrow)") from e
        rows = pq.read_table(path).to_pylist()
    else:
        raise ValueError(f"{path}: expected .json, .jsonl or .parquet")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty list of rows")
    out = []
    for i, r in enumerate(rows):
        if problem_key not in r or answer_key not in r:
            raise ValueError(f"{path}: row {i} lacks {problem_key!r} or {answer_key!r}")
        level = r.get("level")
        if level is None:  # a parquet table has every column in every row, possibly null
            level = r.get("difficulty")
        out.append({"problem": str(r[problem_key]), "answer": r[answer_key], "level": level})
    return out


def interleave_levels(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows reordered so that consecutive ones cycle through the levels (each level's rows
    keep their order; rows without a level form one more group), as many of each level as the
    rarest has -- so every batch draws the levels equally.

    Why (the toy): its training file weights levels for the warm start (levels 1-2 are 48 % of it:
    short, cheap examples that make direct answers near-perfect), while the evaluation weighs every
    level alike.  RL on the file as it is spends half of each batch on problems answered directly,
    and their no-think preference spills onto level 3 (think rate 0.81 there after stage 3, 11
    points lost against the standard prompt).

    >>> [r["level"] for r in interleave_levels([{"level": 1}, {"level": 1}, {"level": 2}, {"level": 1}, {"level": 2}])]
    [1, 2, 1, 2]
    """
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r.get("level"), []).append(r)
    keys = sorted(groups, key=lambda k: (k is None, str(k) if not isinstance(k, (int, float)) else f"{k:020.6f}"))
    n = min(len(g) for g in groups.values())
    return [groups[k][i] for i in range(n) for k in keys]
