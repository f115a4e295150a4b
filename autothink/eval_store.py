"""Graded samples on disk, so that a long evaluation survives a crash and a rerun does not redo work.

One JSONL file per benchmark × prompt.  Its first line holds the settings that produced every
sample in it (model, prompt, sampling); each further line is one graded sample, appended and
flushed as soon as it is graded.  A rerun with the same settings reads what is there and
samples only what is missing; a rerun with different settings is refused rather than mixing
two distributions in one number.  A line cut short by a kill is dropped (and cut off the file)
on the next open.

``--limit`` and ``--samples`` are not settings: a rerun with a larger limit or more samples adds
problems or samples to the same file (sample ``j`` of problem ``i`` always has the same seed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT = 1


class SettingsMismatch(ValueError):
    """The file holds samples made with other settings."""


def diff_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ, as ``key: old -> new``.

    >>> diff_settings({"temperature": 0.6, "top_p": 0.95}, {"temperature": 1.0, "top_p": 0.95})
    ['temperature: 0.6 -> 1.0']
    """
    keys = list(dict.fromkeys([*old, *new]))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


class SampleStore:
    """The JSONL file of one benchmark × prompt; samples are keyed by (problem, sample)."""

    def __init__(self, path: str | Path, settings: dict[str, Any]):
        self.path = Path(path)
        self.settings = {"format": FORMAT, **settings}
        self.records: dict[tuple[int, int], dict[str, Any]] = {}
        self._file: Any = None
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size:
            raw = self.path.read_bytes()
            good = raw.rfind(b"\n") + 1  # a trailing line without its newline was cut by a kill
            lines = raw[:good].decode().splitlines()
            if not lines:
                raise SettingsMismatch(f"{self.path}: no settings line; move the file away to start afresh")
            head = json.loads(lines[0]).get("settings")
            if head != self.settings:
                changed = "; ".join(diff_settings(head or {}, self.settings))
                raise SettingsMismatch(
                    f"{self.path} holds samples made with other settings ({changed}); rerun with the same settings to "
                    f"resume, or choose another --out (or delete the file) to start afresh")
            for line in lines[1:]:
                if line.strip():
                    rec = json.loads(line)
                    self.records[(rec["problem"], rec["sample"])] = rec
            if good < len(raw):
                with open(self.path, "r+b") as f:
                    f.truncate(good)
            self._file = open(self.path, "a", encoding="utf-8")
        else:
            self._file = open(self.path, "w", encoding="utf-8")
            self._write({"settings": self.settings})

    def _write(self, obj: dict[str, Any]) -> None:
        self._file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def has(self, problem: int, sample: int) -> bool:
        return (problem, sample) in self.records

    def add(self, record: dict[str, Any]) -> None:
        """Append one graded sample (must carry ``problem`` and ``sample``) and flush it to disk."""
        key = (record["problem"], record["sample"])
        if key in self.records:
            return
        self.records[key] = record
        self._write(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def store_path(out: str | Path, benchmark: str, prompt: str) -> Path:
    """``OUT/samples/BENCHMARK.PROMPT.jsonl``."""
    return Path(out) / "samples" / f"{benchmark}.{prompt}.jsonl"
