"""Writes that fail, for each writer of a sweep (a trial's checkpoint, metrics, progress and result,
and the sweep's results store) with a full disk (ENOSPC), an I/O error (EIO) and an overloaded
object store (HTTP 503). On a disk the failure is injected where every one of these writers opens
its file (etils' epath, under orbax's metadata too), each failing write leaving half its bytes, as
a filling disk does; on a bucket the emulator answers the writer's requests with 503 (gcs_server.py).

What must hold: a disk fault stops the trial (or the driver) with one line naming the file and the
reason, nothing records a result the trial did not finish, no partial file is trusted, and the
rerun completes with exactly the uninterrupted run's numbers; a 503 is retried with backoff by the
storage clients and the run completes as if nothing happened."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
from etils import epath
from etils.epath import backend

from scaling.services.metrics_log import read_records
from scaling.services.workdir import write_atomically
from sweeps import __main__ as sweeps_cli
from sweeps import runner
from tests.in_process import trials_in_process

SPEC = """
import dataclasses
from scaling.presets import preset
from sweeps.spec import Sweep, axis
BASE = preset("tiny")
BASE = dataclasses.replace(BASE, train=dataclasses.replace(BASE.train, steps=8, checkpoint_every=4, log_every=1))
SWEEP = Sweep("writes", BASE, axis("lr", "train.learning_rate", [0.003]))
"""
COMPARED = ("final_train_loss", "eval_loss", "test_loss", "hr@10", "ndcg@10", "hr@50", "mrr", "tokens",
            "train_flops", "steps", "plateau_hr@10", "selected_step")

# writer -> (the regex of what it writes, found in a file's path or a request's decoded URL; which
# of its writes fails first on a disk; the checkpoint a rerun resumes from then, None: from scratch)
WRITERS = {
    "checkpoint": (r"/checkpoints/8[./]", 1, 4),  # the last checkpoint: the rerun takes the one before
    "metrics": (r"/metrics\.(jsonl|parts/)", 6, 4),  # step 6's record, half of it on disk
    "progress": (r"progress\.json", 2, None),
    "result": (r"/\.?result\.json", 1, 8),  # trained and checkpointed, not finished
    "results-store": (r"/results(/|\.jsonl)", 1, None),  # the driver's: the trial's own result stands
}
DISK_FAULTS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}


def sweep(spec: Path, workdir: str) -> int:
    return sweeps_cli.main(["run", str(spec), "--workdir", workdir, "--json", "--no-report"])


def record_of(workdir: str) -> dict | None:
    """The sweep's one stored record, or None."""
    folder = epath.Path(workdir) / "results"
    records = list(folder.glob("*.json")) if folder.exists() else []
    return json.loads(records[0].read_text()) if records else None


def logged(workdir: str) -> list[tuple]:
    trial = next((epath.Path(workdir) / "trials").iterdir())
    return [(r["step"], r.get("learning/loss"), r.get("eval/test_hr@10")) for r in read_records(trial)]


def assert_same(workdir: str, reference: dict) -> dict:
    record = record_of(workdir)
    assert record is not None and record["status"] == "ok", record
    for key in COMPARED:
        assert record[key] == reference["record"][key], key
    assert logged(workdir) == reference["logged"]  # every step's loss once, each evaluation once
    return record


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "writes.py"
    path.write_text(SPEC)
    return path


@pytest.fixture
def in_process(monkeypatch, lab_cache, ml100k):
    monkeypatch.setenv("SCALING_LAB_CACHE", str(lab_cache))
    trials_in_process(monkeypatch)


@pytest.fixture(scope="module")
def reference(spec, tmp_path_factory, lab_cache, ml100k) -> dict:
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCALING_LAB_CACHE", str(lab_cache))
        trials_in_process(patch)
        assert sweep(spec, workdir) == 0
    return {"record": record_of(workdir), "logged": logged(workdir)}


class FillingDisk:
    """From the `first`-th write-mode open of a path `pattern` finds, every such write fails with
    `code` after writing half its data, until `active` is cleared."""

    def __init__(self, pattern: str, code: int, first: int):
        self.pattern, self.code, self.first = pattern, code, first
        self.active, self.seen, self.failed = True, 0, []

    def install(self, monkeypatch) -> None:
        original = backend._OsPathBackend.open
        disk = self

        def open_(self, path, mode):
            handle = original(self, path, mode)
            if disk.active and any(c in mode for c in "wax+") and re.search(disk.pattern, str(path)):
                disk.seen += 1
                if disk.seen >= disk.first:
                    disk.failed.append(str(path))
                    return _FailingFile(handle, disk.code, str(path))
            return handle

        monkeypatch.setattr(backend._OsPathBackend, "open", open_)


class _FailingFile:
    def __init__(self, handle, code: int, path: str):
        self.handle, self.code, self.path = handle, code, path

    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(self.code, os.strerror(self.code), self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def __getattr__(self, name):
        return getattr(self.handle, name)


@pytest.mark.slow(3)
@pytest.mark.parametrize("fault", DISK_FAULTS)
@pytest.mark.parametrize("writer", WRITERS)
def test_failed_writes(writer, fault, spec, tmp_path, reference, in_process, monkeypatch, capsys) -> None:
    pattern, first, resumes_from = WRITERS[writer]
    disk = FillingDisk(pattern, DISK_FAULTS[fault], first)
    disk.install(monkeypatch)
    workdir = str(tmp_path / "sweep")
    status = sweep(spec, workdir)
    assert disk.failed, f"no write of the {writer} was made"
    reason = os.strerror(DISK_FAULTS[fault])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    record = record_of(workdir)
    trial = runner.trial_dir(epath.Path(workdir), runner.select(sweeps_cli.load_spec(spec).trials(), None)[0])
    if writer == "results-store":  # the driver stops; the trial finished and says so in its folder
        assert status == 2 and len(errors) == 1 and errors[0].endswith(reason) and "/results" in errors[0], errors
        assert record is None or record["status"] == "ok"  # the record went in; results.jsonl did not
        assert json.loads((trial / "result.json").read_text())["status"] == "ok"
    else:  # the trial stops with one line naming the file; the sweep records it failed, not finished
        assert status == 1, errors
        assert len(errors) == 1 and re.search(pattern, errors[0]) and errors[0].endswith(reason), errors
        assert record["status"].startswith("failed: cannot write") and reason in record["status"], record
        on_disk = json.loads((trial / "result.json").read_text()) if (trial / "result.json").exists() else {}
        assert on_disk.get("status") != "ok"
    assert not list(Path(workdir).rglob("*.partial"))

    disk.active = False  # space freed: the same command again
    assert sweep(spec, workdir) == 0
    rerun = assert_same(workdir, reference)
    if writer == "results-store":
        assert "recorded without rerunning" in capsys.readouterr().err
        assert rerun["resumed_from_step"] is None  # nothing trained twice
    elif resumes_from is not None:
        assert rerun["resumed_from_step"] == resumes_from
    jsonl = (Path(workdir) / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in jsonl] == ["ok"]


@pytest.mark.slow(6)
@pytest.mark.object_store
def test_failed_writes_503_are_retried(spec, gcs_bucket, reference, in_process, capsys) -> None:
    """One run in which the first request of every writer is refused with a 503: each is retried
    after a backoff, and the run ends as the uninterrupted one did (one run for the five writers:
    a retried request changes nothing, so the faults cannot hide one another)."""
    from tests.gcs_emulator import inject_faults, served_faults

    patterns = {writer: pattern for writer, (pattern, _, _) in WRITERS.items()}
    for pattern in patterns.values():
        inject_faults(pattern, status=503, times=1)
    workdir = gcs_bucket + "/sweep"
    assert sweep(spec, workdir) == 0, capsys.readouterr().err[-2000:]
    served = served_faults()
    for writer, pattern in patterns.items():
        assert served[pattern] == 1, f"the {writer}'s write was never refused"  # refused, then retried
    record = assert_same(workdir, reference)
    assert record["resumed_from_step"] is None


def test_an_object_store_that_gives_up_is_an_os_error_naming_the_file(monkeypatch) -> None:
    """gcsfs raises its own HttpError once its retries are spent; the writers report it as a disk's."""
    from gcsfs.retry import HttpError

    def overloaded(self, path, mode):
        raise HttpError({"code": 503, "message": "Service Unavailable"})

    monkeypatch.setattr(backend._FileSystemSpecBackend, "open", overloaded)
    monkeypatch.setattr(backend._FileSystemSpecBackend, "exists", lambda self, path: False)
    target = epath.Path("gs://bucket/sweep/results.jsonl")
    with pytest.raises(OSError) as raised:
        write_atomically(target, "{}\n")
    assert raised.value.errno == errno.EIO and raised.value.filename == str(target)
    assert "object store: HttpError: Service Unavailable" in raised.value.strerror
