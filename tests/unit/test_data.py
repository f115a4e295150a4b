"""Training problems from the toy split and from JSON, JSONL and parquet files, with clear errors."""

from __future__ import annotations

import json

import pytest

from autothink.data import load_problems

ROWS = [{"problem": "What is $1+1$?", "answer": "2", "level": 1}, {"problem": "Solve $x^2=4$.", "answer": ["2", "-2"], "difficulty": 3.0}]


def _expected() -> list[dict]:
    return [{"problem": "What is $1+1$?", "answer": "2", "level": 1}, {"problem": "Solve $x^2=4$.", "answer": ["2", "-2"], "level": 3.0}]


def test_json_jsonl_and_parquet_give_the_same_rows(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    table = pa.table({"problem": [r["problem"] for r in ROWS], "answer": [json.dumps(r["answer"]) for r in ROWS],
                      "level": [1, None], "difficulty": [None, 3.0]})
    pq.write_table(table, tmp_path / "d.parquet")
    assert load_problems(str(tmp_path / "d.json"), "unused") == _expected()
    assert load_problems(str(tmp_path / "d.jsonl"), "unused") == _expected()
    rows = load_problems(str(tmp_path / "d.parquet"), "unused")
    assert [r["problem"] for r in rows] == [r["problem"] for r in ROWS] and rows[0]["level"] == 1 and rows[1]["level"] == 3.0


def test_custom_keys_and_errors(tmp_path) -> None:
    (tmp_path / "q.json").write_text(json.dumps([{"question": "q", "solution": "1"}]))
    assert load_problems(str(tmp_path / "q.json"), "x", problem_key="question", answer_key="solution") == [
        {"problem": "q", "answer": "1", "level": None}]
    with pytest.raises(ValueError, match="row 0 lacks"):
        load_problems(str(tmp_path / "q.json"), "x")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_problems(str(tmp_path / "missing.json"), "x")
    (tmp_path / "d.csv").write_text("problem,answer\n")
    with pytest.raises(ValueError, match="expected .json, .jsonl or .parquet"):
        load_problems(str(tmp_path / "d.csv"), "x")
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(ValueError, match="non-empty"):
        load_problems(str(tmp_path / "e.json"), "x")
    with pytest.raises(FileNotFoundError, match="build the toy model"):
        load_problems("toy", tmp_path)


def test_the_shared_math_training_file_loads() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "train" / "math.json"
    if not path.is_file():
        pytest.skip("../shared/data/train is not here")
    rows = load_problems(str(path), "unused")
    assert len(rows) > 1000 and all(r["problem"] and r["answer"] is not None for r in rows[:100])
