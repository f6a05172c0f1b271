"""The metrics log: appended on a local disk, written in bounded parts on an object store, and read
back the same either way; a resumed run's records past its checkpoint are dropped."""

import json

import pytest
from etils import epath

from scaling.services import metrics_log
from scaling.services.metrics_log import MetricsLog, read_lines, read_records


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def records(steps):
    return [{"step": s, "learning/loss": 1.0 / s} for s in steps]


@pytest.mark.parametrize("in_parts", [False, True])
def test_records_read_back_in_order_and_resume_drops_later_steps(tmp_path, in_parts) -> None:
    log = MetricsLog(epath.Path(tmp_path), in_parts=in_parts)
    for record in records(range(1, 8)):
        log.write(record)
        if record["step"] in (3, 5):
            log.flush()  # a checkpoint at steps 3 and 5
    # killed here: steps 6 and 7 are in the buffer (parts) or on disk (appended)
    assert [r["step"] for r in read_records(tmp_path)] == ([1, 2, 3, 4, 5] if in_parts else list(range(1, 8)))
    resumed = MetricsLog(epath.Path(tmp_path), in_parts=in_parts)
    resumed.keep_until(4)  # resumed from the checkpoint of step 4
    for record in records(range(5, 10)):
        resumed.write(record)
    resumed.flush()
    assert [r["step"] for r in read_records(tmp_path)] == list(range(1, 10))
    assert (tmp_path / "metrics.jsonl").exists() != in_parts
    assert (tmp_path / "metrics.parts").exists() == in_parts


def test_parts_are_bounded_and_written_on_time_not_rewritten(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(metrics_log, "PART_RECORDS", 4)
    clock = FakeClock()
    log = MetricsLog(epath.Path(tmp_path), in_parts=True, clock=clock)
    for record in records(range(1, 11)):
        log.write(record)
    parts = sorted((tmp_path / "metrics.parts").iterdir())
    assert [len(p.read_text().splitlines()) for p in parts] == [4, 4]  # steps 9-10 still buffered
    before = [p.stat().st_mtime_ns for p in parts]
    clock.now = metrics_log.PART_SECONDS  # a minute after step 9's record: step 11 goes out with it
    log.write(records([11])[0])
    parts = sorted((tmp_path / "metrics.parts").iterdir())
    assert [p.name for p in parts] == ["0000000001-00000.jsonl", "0000000005-00001.jsonl", "0000000009-00002.jsonl"]
    assert [p.stat().st_mtime_ns for p in parts[:2]] == before
    assert [json.loads(line)["step"] for line in read_lines(tmp_path)] == list(range(1, 12))


def test_a_damaged_line_is_skipped_and_dropped_on_resume(tmp_path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert [r["step"] for r in read_records(tmp_path)] == [1, 2]
    MetricsLog(epath.Path(tmp_path)).keep_until(2)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
