"""TPU launchers: exact dry-run plans for v5e / v5p pods and xpk, and the whole flow against fake
`gcloud` and `xpk` executables that record calls and play resource states."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scaling.config import ConfigError
from sweeps.launchers import LauncherSettings, make_launcher, resource_name, settings_from

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "fakes"
ARGS = ["--config", "gs://b/s/trials/ab12cd34ef56/config.json", "--workdir", "gs://b/s/trials/ab12cd34ef56", "--json"]
V5E = LauncherSettings(accelerator_type="v5litepod-16", zone="us-west4-a", project="lab", runtime_version="v2-alpha-tpuv5-lite",
                       code_url="https://example.org/lab.git", sweep_name="ml20m", spot=True, poll_seconds=0.0,
                       timeout_seconds=5.0)
SETUP = ("set -e; rm -rf lab && git clone --quiet https://example.org/lab.git lab && cd lab && git checkout --quiet main && "
         "python3 -m pip install --quiet -r requirements.txt 'jax[tpu]==0.10.2' "
         "-f https://storage.googleapis.com/jax-releases/libtpu_releases.html")
TRAIN = ("cd lab && python3 -m scaling.train --config gs://b/s/trials/ab12cd34ef56/config.json "
         "--workdir gs://b/s/trials/ab12cd34ef56 --json --distributed")


def test_queued_resources_plan_v5e_and_v5p() -> None:
    name = "ml20m-ab12cd34ef56"
    where = ["--zone=us-west4-a", "--project=lab"]
    assert make_launcher("queued-resources", V5E).plan("ab12cd34ef56", ARGS, "gs://b/s") == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", name, f"--node-id={name}",
         "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite", *where, "--spot"],
        ["gcloud", "compute", "tpus", "queued-resources", "describe", name, *where, "--format=value(state.state)"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, *where, "--worker=all", f"--command={SETUP}"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, *where, "--worker=all", f"--command={TRAIN}"],
        ["gcloud", "compute", "tpus", "queued-resources", "delete", name, *where, "--force", "--quiet"],
    ]
    v5p = settings_from({"accelerator_type": "v5p-32", "runtime_version": "v2-alpha-tpuv5", "spot": False,
                         "reserved": True}, {**V5E.__dict__})
    create = make_launcher("queued-resources", v5p).plan("ab12cd34ef56", ARGS, "gs://b/s")[0]
    assert create[7:9] == ["--accelerator-type=v5p-32", "--runtime-version=v2-alpha-tpuv5"] and create[-1] == "--reserved"


def test_xpk_plan() -> None:
    settings = settings_from({"cluster": "big", "num_slices": 2}, V5E.__dict__)
    where = ["--cluster=big", "--project=lab", "--zone=us-west4-a"]
    assert make_launcher("xpk", settings).plan("ab12cd34ef56", ARGS, "gs://b/s") == [
        ["xpk", "workload", "create", *where, "--workload=ml20m-ab12cd34ef56", "--tpu-type=v5litepod-16", "--num-slices=2",
         f"--command={SETUP} && {TRAIN.removeprefix('cd lab && ')}"],
        ["xpk", "workload", "list", *where, "--filter-by-job=ml20m-ab12cd34ef56"],
        ["xpk", "workload", "delete", *where, "--workload=ml20m-ab12cd34ef56"],
    ]


def test_names_and_settings() -> None:
    for sweep in ("ML20M v5p!", "9lives", "x" * 80):
        name = resource_name(sweep, "ab12cd34ef56")
        assert len(name) <= 63 and name[0].isalpha() and name == name.lower() and name.endswith("-ab12cd34ef56")
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    merged = settings_from({"zone": "flag-zone"}, {"zone": "spec-zone", "project": "spec-project"})
    assert (merged.zone, merged.project, merged.cluster) == ("flag-zone", "spec-project", "<CLUSTER>")
    with pytest.raises(ConfigError, match="unknown launcher setting 'zones'"):
        settings_from({}, {"zones": "x"})
    with pytest.raises(ConfigError, match="launcher settings not given: --project"):
        make_launcher("queued-resources", settings_from({}, {**V5E.__dict__, "project": "<PROJECT>"})).run("t", ARGS, "w")


@pytest.fixture
def fake_cloud(tmp_path, monkeypatch):
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CLOUD_LOG", str(log))
    monkeypatch.setenv("FAKE_CLOUD_PYTHON", sys.executable)

    def play(scenario: str):
        monkeypatch.setenv("FAKE_CLOUD_SCENARIO", scenario)
        return lambda: [json.loads(line) for line in log.read_text().splitlines()]
    return play


def verbs(calls: list) -> list[str]:
    return [" ".join(call[3:5]) if call[0] == "gcloud" else " ".join(call[1:3]) for call in calls]


@pytest.mark.parametrize("scenario, status, steps", [
    ("ok", "ok", ["queued-resources create", "queued-resources describe", "queued-resources describe",
                  "queued-resources describe", "tpu-vm ssh", "tpu-vm ssh", "queued-resources delete"]),
    ("create_fails", "failed: create exited 1: ERROR: (gcloud) Quota exceeded for TPU cores",
     ["queued-resources create", "queued-resources delete"]),
    ("run_fails", "failed: train exited 1: RuntimeError: boom", None),
    ("preempted", "preempted", None),
])
def test_queued_resource_flow(fake_cloud, scenario, status, steps) -> None:
    calls = fake_cloud(scenario)
    outcome = make_launcher("queued-resources", V5E).run("ab12cd34ef56", ARGS, "gs://b/s")
    assert outcome.status == status
    assert verbs(calls())[-1] == "queued-resources delete"  # the resource never outlives the trial
    assert [c[1:] for c in calls()] == [list(argv)[1:] for argv in outcome.commands_run]
    if steps:
        assert verbs(calls()) == steps


def test_resource_that_never_becomes_active_is_deleted(fake_cloud) -> None:
    calls = fake_cloud("never_active")
    settings = settings_from({"timeout_seconds": 0.3, "poll_seconds": 0.05}, V5E.__dict__)
    outcome = make_launcher("queued-resources", settings).run("ab12cd34ef56", ARGS, "gs://b/s")
    assert outcome.status == "failed: not ACTIVE after 0.3s"
    assert "tpu-vm ssh" not in verbs(calls()) and verbs(calls())[-1] == "queued-resources delete"


@pytest.mark.parametrize("scenario, status", [("ok", "ok"), ("run_fails", "failed: workload failed"),
                                              ("preempted", "preempted")])
def test_xpk_flow(fake_cloud, scenario, status) -> None:
    calls = fake_cloud(scenario)
    settings = settings_from({"cluster": "big"}, V5E.__dict__)
    assert make_launcher("xpk", settings).run("ab12cd34ef56", ARGS, "gs://b/s").status == status
    assert verbs(calls())[0] == "workload create" and verbs(calls())[-1] == "workload delete"


def test_sweep_driver_through_fake_gcloud(fake_cloud, tmp_path) -> None:
    calls = fake_cloud("ok")
    spec = tmp_path / "pod.py"
    spec.write_text(textwrap.dedent("""
        from scaling.config import TrialConfig
        from sweeps.spec import Sweep, axis
        SWEEP = Sweep("pod", TrialConfig(), axis("size", "model.d_model", [64, 128]),
                      launcher={"accelerator_type": "v5p-32", "runtime_version": "v2-alpha-tpuv5",
                                "code_url": "https://example.org/lab.git", "poll_seconds": 0.0})
    """))
    command = [sys.executable, "-m", "sweeps", "run", str(spec), "--launcher", "queued-resources", "--project", "lab",
               "--zone", "us-east5-a", "--workdir", str(tmp_path / "wd"), "--no-report", "--json"]
    dry = subprocess.run(command + ["--dry-run"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("gcloud compute tpus queued-resources create pod-") == 2
    assert not (tmp_path / "calls.jsonl").exists()  # a dry run calls nothing
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["ok"], summary["failed"]) == (2, 0)
    records = [json.loads(line) for line in (tmp_path / "wd" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["size"] for r in records) == [64, 128] and all(r["status"] == "ok" for r in records)
    assert verbs(calls()).count("queued-resources delete") == 2
