"""The SLURM launcher against a one-machine stand-in for sbatch / squeue / sacct / scancel /
srun (tests/fakes/fake_slurm.py): the batch script, submission, following the job, success,
failure, a timed-out job resubmitted, a job left by an earlier driver followed, a preempted job
requeued by SLURM whose real trainer resumes from its checkpoint, and --dry-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sweeps.launchers import make_launcher
from sweeps.launchers.base import LauncherSettings
from tests.conftest import xla_flags

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKES = REPO_ROOT / "tests" / "fakes"


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """The fake cluster on PATH; returns its folder (calls.jsonl, jobs/)."""
    folder = tmp_path / "slurm"
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(folder))
    monkeypatch.setenv("FAKE_SLURM_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_SLURM_RUN_TRAIN", "0")
    return folder


def calls(folder: Path) -> list[list[str]]:
    path = folder / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def launcher(**settings):
    return make_launcher("slurm", LauncherSettings(partition="gpu", poll_seconds=0.2, sweep_name="demo", **settings))


def trial_args(tmp_path: Path, trial: str = "abc123") -> list[str]:
    folder = tmp_path / "wd" / "trials" / trial
    folder.mkdir(parents=True, exist_ok=True)
    return ["--config", str(folder / "config.json"), "--workdir", str(folder), "--json"]


def test_the_batch_script_has_the_shape_the_settings_say(tmp_path) -> None:
    script = launcher(nodes=4, gpus_per_node=8, account="lab", time_limit="02:00:00", setup="module load cuda",
                      xla_flags="--xla_gpu_enable_latency_hiding_scheduler=true").script("abc123", trial_args(tmp_path))
    lines = script.splitlines()
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                 "#SBATCH --account=lab", "#SBATCH --time=02:00:00", "#SBATCH --requeue", "#SBATCH --signal=TERM@120",
                 "#SBATCH --job-name=demo-abc123", "module load cuda",
                 "export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true", f"cd {REPO_ROOT}"):
        assert line in lines, line
    assert lines[-1].startswith("srun --kill-on-bad-exit=1 python -m scaling.train --config ")
    assert lines[-1].endswith(" --json --distributed")
    contained = launcher(container_image="nvcr.io/nvidia/jax:25.04", code_dir="/lab").script("abc123", trial_args(tmp_path))
    assert contained.splitlines()[-1].startswith(
        f"srun --kill-on-bad-exit=1 --container-image=nvcr.io/nvidia/jax:25.04 --container-mounts={tmp_path / 'wd'},/lab "
        "--container-workdir=/lab python -m scaling.train ")


@pytest.mark.parametrize("scenario, status", [("ok", "ok"), ("fail", "failed: job 1000 FAILED (exit 1:0)"),
                                              ("timeout", "preempted")])
@pytest.mark.slow
def test_a_job_is_submitted_followed_and_its_end_read(tmp_path, cluster, monkeypatch, scenario, status) -> None:
    monkeypatch.setenv("FAKE_SLURM_SCENARIO", scenario)
    args = trial_args(tmp_path)
    outcome = launcher().run("abc123", args, str(tmp_path / "wd"))
    assert outcome.status == status
    tools = [call[0] for call in calls(cluster)]
    assert tools[:2] == ["squeue", "sbatch"] and tools[-1] == "sacct" and "scancel" not in tools
    assert (Path(args[3]) / "slurm.sbatch").is_file()
    if scenario == "timeout":  # the driver runs it again (preemption_retries): a second job, which completes
        assert launcher().run("abc123", args, str(tmp_path / "wd")).status == "ok"
        assert [call[0] for call in calls(cluster)].count("sbatch") == 2


@pytest.mark.slow
def test_a_controller_that_times_out_and_an_accounting_that_lags_are_waited_for(tmp_path, cluster, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SLURM_FLAKY", "1")
    assert launcher().run("abc123", trial_args(tmp_path), str(tmp_path / "wd")).status == "ok"
    tools = [call[0] for call in calls(cluster)]
    assert tools.count("sacct") == 2 and "scancel" not in tools


@pytest.mark.slow
def test_a_job_an_earlier_driver_left_is_followed_not_submitted_again(tmp_path, cluster, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SLURM_JOB_SECONDS", "2")  # still running when the new driver looks
    args = trial_args(tmp_path)
    script = tmp_path / "left.sbatch"
    script.write_text(launcher().script("abc123", args))
    subprocess.run([str(FAKES / "sbatch"), "--parsable", str(script)], check=True, capture_output=True)
    assert launcher().run("abc123", args, str(tmp_path / "wd")).status == "ok"
    assert [call[0] for call in calls(cluster)].count("sbatch") == 1


def test_bad_settings_are_one_line(tmp_path, cluster) -> None:
    with pytest.raises(Exception, match="launcher settings not given: --partition"):
        make_launcher("slurm", LauncherSettings()).check_ready(str(tmp_path))
    with pytest.raises(Exception, match="SLURM nodes need a shared filesystem path"):
        launcher().check_ready("gs://bucket/wd")


@pytest.mark.slow(13)
def test_a_preempted_job_is_requeued_and_its_trainer_resumes(tmp_path, cluster, lab_cache, ml100k, monkeypatch) -> None:
    """A real trainer under the fake srun (1 node, --distributed from SLURM's variables): SIGTERM
    once it logs step 3, the job REQUEUED, its script run again; the trial resumes from the
    checkpoint it saved then and the sweep records it once, ok."""
    spec = tmp_path / "spec.py"
    spec.write_text(textwrap.dedent("""
        import dataclasses
        from scaling.presets import preset
        from sweeps.spec import Sweep
        base = preset("tiny")
        base = dataclasses.replace(base, train=dataclasses.replace(base.train, steps=12, log_every=1, checkpoint_every=4))
        SWEEP = Sweep("slurm_demo", base, [], launcher={"poll_seconds": 0.2})  # not SLURM's 30 s between squeues
    """))
    env = dict(os.environ, FAKE_SLURM_RUN_TRAIN="1", FAKE_SLURM_SCENARIO="requeue", SCALING_LAB_CACHE=str(lab_cache),
               XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu")  # one device, as a node's task
    workdir = tmp_path / "wd"
    command = [sys.executable, "-m", "sweeps", "run", str(spec), "--launcher", "slurm", "--partition", "cpu",
               "--nodes", "1", "--workdir", str(workdir), "--no-report", "--json"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["status"] == "ok" and records[0]["steps"] == 12
    assert 3 <= records[0]["resumed_from_step"] < 12  # the checkpoint saved when SIGTERM came
    jobs = [json.loads(path.read_text()) for path in (cluster / "jobs").glob("*.json")]
    assert len(jobs) == 1 and jobs[0]["state"] == "COMPLETED"  # one job, requeued by SLURM, not resubmitted
    log = next((workdir / "trials" / records[0]["trial_id"]).glob("slurm-*.out")).read_text()
    assert "SIGTERM: saving step" in log and "resumed from step" in log
