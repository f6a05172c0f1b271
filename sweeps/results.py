"""The results store of a sweep: one JSON file per finished trial, and results.jsonl built from
them. Every write goes to a temporary name first and is then renamed, so a killed driver never
leaves a partial or duplicate line (on local disks and object stores alike)."""

from __future__ import annotations

import json
from typing import Any

from etils import epath

from scaling.workdir import write_atomically


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
        """Store one trial's record (replacing an earlier one) and rebuild results.jsonl."""
        self.records_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.records_dir / f"{record['trial_id']}.json", json.dumps(record, sort_keys=True))
        lines = [json.dumps(r, sort_keys=True) for _, r in sorted(self.load().items())]
        write_atomically(self.jsonl, "".join(line + "\n" for line in lines))
