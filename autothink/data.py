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
