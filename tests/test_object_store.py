"""gs:// workdirs end to end against a GCS emulator on this machine (tests/gcs_emulator.py): the
clients the lab writes through (epath/gcsfs, tensorstore for orbax and the lease, tensorboardX),
the lease and metrics parts on a bucket, and a sweep that runs, is killed, resumes, reports and
exports exactly as on a local disk."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from etils import epath

from scaling.services.lease import ObjectLease, WorkdirBusy, WorkdirLost
from scaling.services.metrics_log import MetricsLog, read_records
from tests.in_process import trials_in_process

pytestmark = pytest.mark.object_store
REPO_ROOT = Path(__file__).resolve().parent.parent


def test_the_emulator_keeps_generation_preconditions(gcs_bucket) -> None:
    """Without them the lease below would pass against a store that cannot keep it."""
    import tensorstore as ts

    store = ts.KvStore.open(gcs_bucket + "/kv/").result()
    missing = store.read("owner").result().stamp.generation
    assert store.write("owner", b"first", if_equal=missing).result().generation
    assert not store.write("owner", b"second", if_equal=missing).result().generation  # it exists now
    current = store.read("owner").result()
    assert current.value == b"first"
    assert store.write("owner", b"third", if_equal=current.stamp.generation).result().generation
    assert not store.write("owner", b"stale", if_equal=current.stamp.generation).result().generation
    path = epath.Path(gcs_bucket) / "a" / "b.txt"
    path.write_text("x")
    path.rename(path.parent / "c.txt")
    assert [p.name for p in (epath.Path(gcs_bucket) / "a").iterdir()] == ["c.txt"]


def test_one_owner_of_a_trial_on_the_bucket_and_a_stale_one_taken_over(gcs_bucket) -> None:
    now = [1000.0]
    folder = epath.Path(gcs_bucket) / "sweep" / "trials" / "abc"
    first = ObjectLease(folder, ".lock", lease_seconds=60, clock=lambda: now[0])
    first.acquire()
    first._stop.set()  # its host is gone: no more renewals
    second = ObjectLease(folder, ".lock", lease_seconds=60, clock=lambda: now[0])
    with pytest.raises(WorkdirBusy, match="is in use by pid"):
        second.acquire(patience_seconds=0.2)
    now[0] += 61
    second.acquire()
    assert not first.renew()
    with pytest.raises(WorkdirLost):
        first.check()
    second.release()
    assert not (folder / ".lock").exists()


def test_metrics_on_the_bucket_go_in_parts_and_read_back(gcs_bucket) -> None:
    workdir = epath.Path(gcs_bucket) / "trial"
    log = MetricsLog(workdir)
    assert not log.appendable
    for step in range(1, 6):
        log.write({"step": step, "learning/loss": 1.0})
        if step in (2, 4):
            log.flush()
    resumed = MetricsLog(workdir)
    resumed.keep_until(3)
    resumed.write({"step": 4, "learning/loss": 0.5})
    resumed.flush()
    assert [(r["step"], r["learning/loss"]) for r in read_records(workdir)] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 0.5)]
    assert not (workdir / "metrics.jsonl").exists()


SPEC = """
import dataclasses
from scaling.presets import preset
from sweeps.spec import Sweep, axis
BASE = preset("tiny")
BASE = dataclasses.replace(BASE, train=dataclasses.replace(BASE.train, steps=40, checkpoint_every=5, log_every=5,
                                                          eval_points=2))
SWEEP = Sweep("bucket", BASE, axis("lr", "train.learning_rate", [1e-3, 2e-3]))
"""


def _sweeps(*args: str, lab_cache: Path, timeout: float = 300) -> dict:
    done = subprocess.run([sys.executable, "-m", "sweeps", *args, "--json"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, SCALING_LAB_CACHE=str(lab_cache)))
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _checkpoints(folder: epath.Path) -> list[int]:
    folder = folder / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


@pytest.mark.slow(60)
def test_a_sweep_on_the_bucket_is_killed_resumes_reports_and_exports_as_on_disk(gcs_bucket, tmp_path, lab_cache,
                                                                                 ml100k, capsys) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sweeps import __main__ as sweeps_main

    spec = tmp_path / "bucket.py"
    spec.write_text(SPEC)
    with pytest.MonkeyPatch.context() as patch:  # the local reference, in this process
        patch.setenv("SCALING_LAB_CACHE", str(lab_cache))
        trials_in_process(patch)
        assert sweeps_main.main(["run", str(spec), "--workdir", str(tmp_path / "local"), "--no-report"]) == 0

    bucket = epath.Path(gcs_bucket) / "sweep"
    driver = subprocess.Popen([sys.executable, "-m", "sweeps", "run", str(spec), "--workdir", str(bucket), "--json",
                               "--parallel", "2"],
                              cwd=REPO_ROOT, env=dict(os.environ, SCALING_LAB_CACHE=str(lab_cache)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trials = [json.loads(line)["trial_id"] for line in (tmp_path / "local" / "results.jsonl").read_text().splitlines()]
    deadline = time.monotonic() + 240
    while not any(_checkpoints(bucket / "trials" / t) for t in trials):  # a checkpoint on the bucket: kill it
        assert time.monotonic() < deadline and driver.poll() is None, driver.communicate()[1][-2000:]
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    deadline = time.monotonic() + 60
    while any(ObjectLease(bucket / "trials" / t, ".lock").held_elsewhere() for t in trials):  # the orphan stops
        assert time.monotonic() < deadline, "the killed driver's trial did not stop"
        time.sleep(0.5)

    resumed = _sweeps("run", str(spec), "--workdir", str(bucket), "--parallel", "2", lab_cache=lab_cache)
    assert (resumed["ok"], resumed["failed"]) == (2, 0)
    on_disk = {r["trial_id"]: r for r in map(json.loads, (tmp_path / "local" / "results.jsonl").read_text().splitlines())}
    on_bucket = {r["trial_id"]: r for r in map(json.loads, (bucket / "results.jsonl").read_text().splitlines())}
    assert any(r["resumed_from_step"] for r in on_bucket.values())  # the kill landed mid-trial
    for trial_id, record in on_disk.items():
        for key in ("final_train_loss", "eval_loss", "hr@10", "ndcg@10", "tokens", "train_flops", "steps"):
            assert on_bucket[trial_id][key] == record[key], (trial_id, key)
        assert [r for r in read_records(bucket / "trials" / trial_id) if "eval/valid_hr@10" in r] == \
            [r for r in read_records(tmp_path / "local" / "trials" / trial_id) if "eval/valid_hr@10" in r]
        assert not (bucket / "trials" / trial_id / "metrics.jsonl").exists()  # parts, never one rewritten object

    assert resumed["report"] == str(bucket / "report")
    assert "Scaling report" in (bucket / "report" / "report.html").read_text()
    events = [p for p in (bucket / "trials" / trials[0]).glob("*/events.out.*")]
    assert events, "no TensorBoard events on the bucket"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    steps = [event.step for event in accumulator.Scalars("learning/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # each step once, the killed run's purged

    exported = {}
    capsys.readouterr()
    for name, workdir in (("disk", tmp_path / "local"), ("bucket", bucket)):  # in this process: no training
        assert sweeps_main.main(["export", str(spec), "--workdir", str(workdir), "--best", "hr@10",
                                 "--out", str(tmp_path / f"export-{name}"), "--json"]) == 0
        exported[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert exported["disk"]["trial_id"] == exported["bucket"]["trial_id"]
    manifests = [(tmp_path / f"export-{name}" / "MANIFEST.sha256").read_text() for name in ("disk", "bucket")]
    params = [line for line in manifests[0].splitlines() if "params" in line]
    assert params and all(line in manifests[1] for line in params)
