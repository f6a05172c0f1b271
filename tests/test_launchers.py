"""TPU launchers: exact dry-run plans for v5e / v5p pods and xpk, settings precedence, names, and the
whole flow through the real subprocess path against fake `gcloud` and `xpk` executables (tests/fakes)
that record their calls and play resource states."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scaling.config import ConfigError
from sweeps.launchers import make_launcher
from sweeps.launchers.base import LauncherSettings, resource_name, settings_from

# the workers install jax[tpu] of the jax that requirements.txt pins
PINNED_JAX = re.search(r"^jax==(\S+)", (Path(__file__).parents[1] / "requirements.txt").read_text(), re.M).group(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "fakes"
TRIAL = "ab12cd34ef56"
ARGS = ["--config", f"gs://b/s/trials/{TRIAL}/config.json", "--workdir", f"gs://b/s/trials/{TRIAL}", "--json"]
SPEC_V5E = {"accelerator_type": "v5litepod-16", "zone": "us-west4-a", "project": "lab", "spot": True,
            "code_url": "https://example.org/lab.git", "sweep_name": "ml20m", "poll_seconds": 0.01,
            "timeout_seconds": 5.0}
V5E = settings_from({}, SPEC_V5E)
V5P = settings_from({"accelerator_type": "v5p-32", "zone": "us-east5-a", "spot": False, "reserved": True,
                     "code_ref": "3f2a9c1"}, SPEC_V5E)
INSTALL = ("python3 -m pip install --quiet --user --upgrade uv"
           " && rm -rf lab && git clone --quiet https://example.org/lab.git lab"
           " && git -C lab checkout --quiet main"
           " && rm -rf $HOME/lab-venv && python3 -m uv venv --quiet --python 3.12 $HOME/lab-venv"
           " && python3 -m uv pip install --quiet --python $HOME/lab-venv/bin/python -r lab/requirements.txt"
           f' "jax[tpu]=={PINNED_JAX}" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html')
TRAIN = (f"cd lab && $HOME/lab-venv/bin/python -m scaling.train --config gs://b/s/trials/{TRIAL}/config.json"
         f" --workdir gs://b/s/trials/{TRIAL} --json --distributed")


def test_queued_resources_plan_v5e() -> None:
    name, where = f"ml20m-{TRIAL}", ["--zone=us-west4-a", "--project=lab"]
    assert make_launcher("queued-resources", V5E).plan(TRIAL, ARGS, "gs://b/s") == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", name, f"--node-id={name}",
         "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite", *where, "--spot"],
        ["gcloud", "compute", "tpus", "queued-resources", "describe", name, *where, "--format=value(state.state)"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, *where, "--worker=all", "--quiet", f"--command={INSTALL}"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, *where, "--worker=all", "--quiet", f"--command={TRAIN}"],
        ["gcloud", "compute", "tpus", "queued-resources", "delete", name, *where, "--force", "--quiet"],
    ]


def test_queued_resources_dry_run_text_v5p() -> None:
    """What `--dry-run` prints (shlex.join of each argv) for a reserved v5p-32 at a pinned commit."""
    printed = "\n".join(shlex.join(argv) for argv in make_launcher("queued-resources", V5P).plan(TRIAL, ARGS, "gs://b/s"))
    install = INSTALL.replace("checkout --quiet main", "checkout --quiet 3f2a9c1")
    assert printed == textwrap.dedent(f"""\
        gcloud compute tpus queued-resources create ml20m-{TRIAL} --node-id=ml20m-{TRIAL} --accelerator-type=v5p-32 --runtime-version=v2-alpha-tpuv5 --zone=us-east5-a --project=lab --reserved
        gcloud compute tpus queued-resources describe ml20m-{TRIAL} --zone=us-east5-a --project=lab '--format=value(state.state)'
        gcloud compute tpus tpu-vm ssh ml20m-{TRIAL} --zone=us-east5-a --project=lab --worker=all --quiet {shlex.quote('--command=' + install)}
        gcloud compute tpus tpu-vm ssh ml20m-{TRIAL} --zone=us-east5-a --project=lab --worker=all --quiet {shlex.quote('--command=' + TRAIN)}
        gcloud compute tpus queued-resources delete ml20m-{TRIAL} --zone=us-east5-a --project=lab --force --quiet""")


def test_xpk_plan() -> None:
    settings = settings_from({"cluster": "big", "num_slices": 2}, SPEC_V5E)
    where, name = ["--cluster=big", "--project=lab", "--zone=us-west4-a"], f"ml20m-{TRIAL}"
    command = ("git clone --quiet https://example.org/lab.git lab && cd lab && git checkout --quiet main"
               f' && python3 -m pip install --quiet -r requirements.txt "jax[tpu]=={PINNED_JAX}"'
               " -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
               f" && python3 -m scaling.train {shlex.join(ARGS)} --distributed")
    assert make_launcher("xpk", settings).plan(TRIAL, ARGS, "gs://b/s") == [
        ["xpk", "workload", "create", *where, f"--workload={name}", "--tpu-type=v5litepod-16", "--num-slices=2",
         "--docker-image=python:3.12", f"--command={command}"],
        ["xpk", "workload", "list", *where, f"--wait-for-job-completion={name}", "--timeout=0"],
        ["xpk", "workload", "delete", *where, f"--workload={name}"],
    ]


def test_tpu_vm_plan_uses_the_named_vm() -> None:
    settings = settings_from({"tpu_name": "my-v5e"}, SPEC_V5E)
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v5e", "--zone=us-west4-a", "--project=lab", "--worker=all",
           "--quiet"]
    assert make_launcher("tpu-vm", settings).plan(TRIAL, ARGS, "gs://b/s") == [
        [*ssh, f"--command={INSTALL}"], [*ssh, f"--command={TRAIN}"]]


@pytest.mark.parametrize("sweep, trial, limit", [
    ("ML20M v5p!", TRIAL, 63), ("9lives", TRIAL, 63), ("x" * 80, TRIAL, 63), ("x" * 80, TRIAL, 40),
    ("__", "Trial_ID_With_Caps-", 40), ("a", "9" * 70, 40), ("ok-sweep-", "-", 63),
])
def test_names_are_valid_gcp_and_xpk_names(sweep, trial, limit) -> None:
    name = resource_name(sweep, trial, limit)
    assert len(name) <= limit and name[0].isalpha() and name[-1] != "-", name
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-"), name


def test_names_keep_the_trial_apart() -> None:
    assert resource_name("ml20m", TRIAL) == f"ml20m-{TRIAL}"
    assert resource_name("x" * 80, "aaaa1", 40) != resource_name("x" * 80, "aaaa2", 40)


def test_settings_precedence_and_placeholders() -> None:
    merged = settings_from({"zone": "flag-zone", "project": None}, {"zone": "spec-zone", "project": "spec-project"})
    assert (merged.zone, merged.project, merged.cluster, merged.code_url) == \
        ("flag-zone", "spec-project", "<CLUSTER>", "<CODE_URL>")
    assert settings_from({}, {}) == LauncherSettings()
    assert settings_from({"accelerator_type": "v5p-32"}, {}).runtime_version == "v2-alpha-tpuv5"
    assert settings_from({"accelerator_type": "v5p-32"}, {"runtime_version": "v2-custom"}).runtime_version == "v2-custom"
    assert settings_from({"accelerator_type": "v4-8"}, {}).runtime_version == "<RUNTIME_VERSION>"
    dry = shlex.join(make_launcher("queued-resources", LauncherSettings()).plan(TRIAL, ARGS, "gs://b/s")[0])
    assert "'--accelerator-type=<ACCELERATOR_TYPE>'" in dry and "'--zone=<ZONE>'" in dry


@pytest.mark.parametrize("flags, spec, message", [
    ({}, {"zones": "x"}, "unknown launcher setting 'zones' in the spec's launcher block"),
    ({"num_slices": "2"}, {}, "'num_slices' in the flags should be a int"),
    ({}, {"spot": "yes"}, "'spot' in the spec's launcher block should be a bool"),
    ({"reserved": True}, {"spot": True}, "spot and reserved exclude each other"),
])
def test_bad_settings_name_the_field(flags, spec, message) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from(flags, spec)


def test_run_refuses_placeholders_and_a_local_workdir() -> None:
    unset_project = settings_from({"project": "<PROJECT>"}, SPEC_V5E)
    with pytest.raises(ConfigError, match="launcher settings not given: --project"):
        make_launcher("queued-resources", unset_project).run(TRIAL, ARGS, "gs://b/s")
    with pytest.raises(ConfigError, match="workdir /tmp/w is on this machine"):
        make_launcher("queued-resources", V5E, runner=lambda argv: pytest.fail("ran")).run(TRIAL, ARGS, "/tmp/w")
    with pytest.raises(ConfigError, match="unknown launcher 'pbs'; known: local, "):
        make_launcher("pbs", V5E)


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    """Fake gcloud/xpk first on PATH; call it with a scenario; read back calls and leftover resources."""
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CLOUD_LOG", str(log))
    monkeypatch.setenv("FAKE_CLOUD_PYTHON", sys.executable)

    class Cloud:
        def __call__(self, scenario: str) -> Cloud:
            monkeypatch.setenv("FAKE_CLOUD_SCENARIO", scenario)
            return self

        def calls(self) -> list[list[str]]:
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

        def verbs(self) -> list[str]:
            return [" ".join(c[3:5]) if c[0] == "gcloud" else " ".join(c[1:3]) for c in self.calls()]

        def resources_left(self) -> dict:
            return json.loads(log.with_suffix(".state").read_text())["resources"]
    return Cloud()


QR_OK = ["queued-resources create", "queued-resources describe", "queued-resources describe",
         "queued-resources describe", "tpu-vm ssh", "tpu-vm ssh", "queued-resources delete"]


@pytest.mark.parametrize("scenario, status, verbs", [
    ("ok", "ok", QR_OK),
    ("ssh_flaky", "ok", QR_OK[:4] + ["tpu-vm ssh", "queued-resources describe"] + QR_OK[4:]),
    ("create_fails", "failed: create exited 1: ERROR: (gcloud.compute.tpus.queued-resources.create) "
                     "Quota exceeded for TPU cores", ["queued-resources create", "queued-resources delete"]),
    ("provisioning_fails", "failed: queued resource FAILED before the trial started", QR_OK[:3] + QR_OK[-1:]),
    ("run_fails", "failed: train exited 1: RuntimeError: boom", QR_OK[:-1] + ["queued-resources describe", QR_OK[-1]]),
    ("preempted_while_running", "preempted", QR_OK[:-1] + ["queued-resources describe", QR_OK[-1]]),
])
@pytest.mark.slow
def test_queued_resource_flow(cloud, scenario, status, verbs) -> None:
    cloud(scenario)
    outcome = make_launcher("queued-resources", V5E).run(TRIAL, ARGS, "gs://b/s")
    assert outcome.status == status
    assert cloud.verbs() == verbs
    assert cloud.calls() == outcome.commands_run  # every command went through the real subprocess path
    assert cloud.resources_left() == {}  # the resource never outlives the trial


def test_resource_that_never_becomes_active_fails_and_is_deleted(cloud) -> None:
    cloud("never_active")
    settings = settings_from({"timeout_seconds": 0.3}, SPEC_V5E)
    outcome = make_launcher("queued-resources", settings).run(TRIAL, ARGS, "gs://b/s")
    assert outcome.status == "failed: not ACTIVE after 0.3s (last state WAITING_FOR_RESOURCES)"
    assert "tpu-vm ssh" not in cloud.verbs() and cloud.verbs()[-1] == "queued-resources delete"
    assert cloud.resources_left() == {} and 0.3 <= outcome.seconds < 3


def test_a_failed_delete_is_reported_with_the_command_to_finish_it(cloud, capsys) -> None:
    cloud("delete_fails")
    assert make_launcher("queued-resources", V5E).run(TRIAL, ARGS, "gs://b/s").status == "ok"
    assert list(cloud.resources_left()) == [f"ml20m-{TRIAL}"]
    assert f"delete it by hand: gcloud compute tpus queued-resources delete ml20m-{TRIAL}" in capsys.readouterr().err


@pytest.mark.parametrize("scenario, status", [
    ("ok", "ok"), ("preempted", "preempted"), ("run_fails", "failed: train exited 1: RuntimeError: boom")])
def test_tpu_vm_flow(cloud, monkeypatch, scenario, status) -> None:
    cloud(scenario)
    monkeypatch.setenv("FAKE_CLOUD_TPU_VMS", "my-v5e")
    launcher = make_launcher("tpu-vm", settings_from({"tpu_name": "my-v5e"}, SPEC_V5E))
    assert launcher.run(TRIAL, ARGS, "gs://b/s").status == status
    assert cloud.verbs()[:2] == ["tpu-vm ssh", "tpu-vm ssh"]
    assert list(cloud.resources_left()) == ["my-v5e"]  # an existing VM is not ours to delete


@pytest.mark.parametrize("scenario, status, polls", [
    ("ok", "ok", 2),
    ("run_fails", "failed: workload finished unsuccessfully: JobSet failed", 2),
    ("preempted", "preempted", 2),
    ("create_fails", "failed: xpk create exited 1: [XPK] Workload create request returned ERROR 1", 0),
])
def test_xpk_flow(cloud, scenario, status, polls) -> None:
    cloud(scenario)
    outcome = make_launcher("xpk", settings_from({"cluster": "big"}, SPEC_V5E)).run(TRIAL, ARGS, "gs://b/s")
    assert outcome.status == status
    assert cloud.verbs()[0] == "workload create" and cloud.verbs()[-1] == "workload delete"
    assert sum("--wait-for-job-completion" in " ".join(c) for c in cloud.calls()) == polls
    assert cloud.calls() == outcome.commands_run and cloud.resources_left() == {}


def test_xpk_workload_that_never_finishes_times_out_and_is_deleted(cloud) -> None:
    cloud("never_active")
    settings = settings_from({"cluster": "big", "timeout_seconds": 0.2}, SPEC_V5E)
    assert make_launcher("xpk", settings).run(TRIAL, ARGS, "gs://b/s").status == \
        "failed: workload not finished after 0.2s"
    assert cloud.resources_left() == {}


@pytest.mark.slow
def test_sweep_driver_through_fake_gcloud(cloud, tmp_path) -> None:
    cloud("ok")
    spec = tmp_path / "pod.py"
    spec.write_text(textwrap.dedent("""
        from scaling.config import TrialConfig
        from sweeps.spec import Sweep, axis
        SWEEP = Sweep("pod", TrialConfig(), axis("size", "model.d_model", [64, 128]),
                      launcher={"accelerator_type": "v5p-32", "code_url": "https://example.org/lab.git",
                                "poll_seconds": 0.01, "allow_local_workdir": True})
    """))
    command = [sys.executable, "-m", "sweeps", "run", str(spec), "--launcher", "queued-resources", "--project", "lab",
               "--zone", "us-east5-a", "--workdir", str(tmp_path / "wd"), "--no-report", "--json"]
    dry = subprocess.run(command + ["--dry-run"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("gcloud compute tpus queued-resources create pod-") == 2
    assert "--runtime-version=v2-alpha-tpuv5 " in dry.stdout
    assert cloud.calls() == []  # a dry run calls nothing
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["ok"], summary["failed"]) == (2, 0)
    records = [json.loads(line) for line in (tmp_path / "wd" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["size"] for r in records) == [64, 128] and all(r["status"] == "ok" for r in records)
    assert cloud.verbs().count("queued-resources delete") == 2 and cloud.resources_left() == {}


@pytest.mark.slow(17)
def test_a_preempted_queued_resource_is_requeued_and_the_trial_resumes(cloud, tmp_path, lab_cache) -> None:
    """Real training behind the fake gcloud: SIGTERM at step 5 (the preemption notice) makes the
    trial checkpoint and exit 143, its resource turns SUSPENDED, the driver queues a new one and
    the trial resumes there from step 5 to the end."""
    cloud("preempted_once")
    spec = tmp_path / "pod.py"
    spec.write_text(textwrap.dedent("""
        from scaling.presets import preset
        from sweeps.spec import Sweep, axis
        BASE = preset("tiny")
        SWEEP = Sweep("pod", BASE, axis("steps", "train.steps", [12]),
                      launcher={"accelerator_type": "v5p-32", "code_url": "https://example.org/lab.git",
                                "poll_seconds": 0.01, "allow_local_workdir": True})
    """))
    env = dict(os.environ, FAKE_CLOUD_RUN_TRAIN="1", FAKE_CLOUD_PREEMPT_AT_STEP="5", SCALING_LAB_CACHE=str(lab_cache))
    command = [sys.executable, "-m", "sweeps", "run", str(spec), "--launcher", "queued-resources", "--project", "lab",
               "--zone", "us-east5-a", "--workdir", str(tmp_path / "wd"), "--no-report", "--json"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "preempted; re-queued (1/5), it resumes from its last checkpoint" in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["ok"], summary["failed"]) == (1, 0)
    (record,) = [json.loads(line) for line in (tmp_path / "wd" / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["steps"] == 12 and 5 <= record["resumed_from_step"] < 12
    assert cloud.verbs().count("queued-resources create") == 2 and cloud.resources_left() == {}
