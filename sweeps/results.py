"""The results store of a sweep: one JSON file per finished trial, and results.jsonl built from
them. Every write goes to a temporary name first and is then renamed, so a killed driver never
leaves a partial or duplicate line (on local disks and object stores alike)."""

from __future__ import annotations

import json
from typing import Any

from etils import epath

from scaling.services.workdir import write_atomically


class ResultsStore:
    def __init__(self, workdir: epath.Path):
        self.workdir = epath.Path(workdir)
        self.records_dir = self.workdir / "results"
        self.jsonl = self.workdir / "results.jsonl"

    def load(self) -> dict[str, dict[str, Any]]:
        """trial_id -> its record (the latest written)."""
        if not self.records_dir.exists():
            return {}
        records = {}
        for path in sorted(self.records_dir.glob("*.json")):
            record = json.loads(path.read_text())
            records[record["trial_id"]] = record
        return records

    def record(self, record: dict[str, Any]) -> None:
        """Store one trial's record (replacing an earlier one) and rebuild results.jsonl. A failed
        write is an OSError naming the file; what was stored before stays whole."""
        self.records_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.records_dir / f"{record['trial_id']}.json", json.dumps(record, sort_keys=True))
        write_atomically(self.jsonl, self._jsonl_text(self.load()))

    def sync(self) -> dict[str, dict[str, Any]]:
        """load(), and results.jsonl rebuilt when it does not hold exactly those records (a record
        whose results.jsonl write failed)."""
        records = self.load()
        if records:
            text = self._jsonl_text(records)
            if not self.jsonl.exists() or self.jsonl.read_text() != text:
                write_atomically(self.jsonl, text)
        return records

    @staticmethod
    def _jsonl_text(records: dict[str, dict[str, Any]]) -> str:
        return "".join(json.dumps(r, sort_keys=True) + "\n" for _, r in sorted(records.items()))
