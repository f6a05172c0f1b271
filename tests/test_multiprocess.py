"""The same trial as 2 processes x 2 CPU devices (gloo collectives) and as 1 process x 4 devices,
the job started by explicit flags (HSTU, with a host lost midway) and by SLURM's variables alone
(the encoder-decoder)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from tests.conftest import xla_flags

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("final_train_loss", "eval_loss", "test_loss", "hr@10", "ndcg@10", "hr@50", "mrr", "tokens", "train_flops")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


FAMILY_FLAGS = {
    "hstu": (),
    # the encoder-decoder: semantic IDs built in each process (the same cached artefact), exact scorer
    # only, on a synthetic catalogue of 300 items (the exact scorer decodes every item for every user)
    "encdec": ("--data", "synthetic:users=256,items=300,seed=1,mean_events=20", "--model", "encdec",
               "--set", "model.beam_width=0", "--set", "model.heads=2", "--set", "model.d_ff=32", "--set", "model.encoder_blocks=1",
               "--set", "model.decoder_blocks=1", "--set", "model.ids_codebook=32", "--set", "model.history_items=5",
               "--set", "model.targets_per_row=4", "--set", "model.ids_source=cooccurrence"),
}


def command(workdir: Path, *extra: str, family: str = "hstu") -> list[str]:
    return [sys.executable, "-m", "scaling.train", "--preset", "tiny", "--steps", "6", "--workdir", str(workdir),
            "--set", "train.log_every=3", *FAMILY_FLAGS[family], *extra]


def environment(devices: int, cache: Path) -> dict:
    env = dict(os.environ, SCALING_LAB_CACHE=str(cache))
    env["XLA_FLAGS"] = xla_flags(devices)
    return env


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, lab_cache: Path, ml100k) -> dict:
    """family -> result.json of the trial as 1 process x 4 devices (run once per family)."""
    results = {}

    def run(family: str) -> dict:
        if family not in results:
            workdir = tmp_path_factory.mktemp(f"one-{family}")
            done = subprocess.run(command(workdir, family=family), cwd=REPO_ROOT, env=environment(4, lab_cache),
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
            results[family] = json.loads((workdir / "result.json").read_text())
        return results[family]
    return run


def run_two(workdir: Path, lab_cache: Path, family: str, flags: callable, env: callable = lambda index: {}) -> dict:
    """result.json of the trial as 2 local processes x 2 devices; flags(i) / env(i): process i's."""
    workers = [subprocess.Popen(command(workdir, *flags(index), family=family), cwd=REPO_ROOT,
                                env={**environment(2, lab_cache), **env(index)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for index in range(2)]
    try:
        outputs = [worker.communicate(timeout=300) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-2000:]
    return json.loads((workdir / "result.json").read_text())


def assert_same(one: dict, two: dict) -> None:
    assert (one["devices"], one["processes"], two["devices"], two["processes"]) == (4, 1, 4, 2)
    for key in COMPARED:
        assert two[key] == pytest.approx(one[key], rel=1e-5), key


def explicit_coordinator(job: str, index: int) -> tuple[tuple[str, ...], dict]:
    """Flags naming coordinator, process count and index."""
    return ("--coordinator", f"localhost:{job}", "--num-processes", "2", "--process-id", str(index)), {}


def slurm_variables(job: str, index: int) -> tuple[tuple[str, ...], dict]:
    """--distributed with only SLURM's variables (as srun sets them for 2 tasks on one node):
    jax.distributed finds coordinator, count and index there."""
    return ("--distributed",), {"SLURM_JOB_ID": job, "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
                                "SLURM_PROCID": str(index), "SLURM_LOCALID": str(index), "SLURM_STEP_NUM_NODES": "1",
                                "JAX_PLATFORMS": "cpu"}


def slurm_job_id() -> int:
    """A job id whose coordinator port (JAX's SlurmCluster: 61440 + id mod 4096) is free here."""
    for port in range(61440 + os.getpid() % 4000, 65536):
        with socket.socket() as sock:
            try:
                sock.bind(("localhost", port))
                return port - 61440
            except OSError:
                continue
    raise RuntimeError("no free port in 61440..65535")


# each family once, each way of starting a job once: the start-up is the same for every family. HSTU
# started by explicit flags is test_dead_host_fails_fast's job, from scratch to its checkpoint and
# resumed from it to the one-process result.
@pytest.mark.slow(36)
@pytest.mark.parametrize("family, start", [("encdec", slurm_variables)])
def test_two_processes_match_one(tmp_path: Path, lab_cache: Path, single_process, family: str, start) -> None:
    job = str(free_port() if start is explicit_coordinator else slurm_job_id())
    two = run_two(tmp_path / "two", lab_cache, family, lambda index: start(job, index)[0],
                  lambda index: start(job, index)[1])
    assert_same(single_process(family), two)


def test_missing_or_impossible_start_up_arguments_are_refused() -> None:
    from scaling.services import distributed
    from scaling.config import ConfigError

    with pytest.raises(ConfigError, match="--coordinator needs --num-processes and --process-id"):
        distributed.initialize("localhost:1", None, 0)
    with pytest.raises(ConfigError, match=r"--process-id 2 is outside 0\.\.1"):
        distributed.initialize("localhost:1", 2, 2)
    distributed.initialize("localhost:1", 1, 0)  # a job of one process: nothing to join
    assert jax.process_count() == 1


@pytest.mark.slow(42)
def test_dead_host_fails_fast(tmp_path: Path, lab_cache: Path, ml100k) -> None:
    """Process 1 of 2 SIGKILLed mid-training (its host lost): process 0 exits within 60 s (here
    5 s of silence, SCALING_LAB_PEER_TIMEOUT_SECONDS) with one line and the preemption status;
    the job run again resumes from the last checkpoint to the uninterrupted run's numbers."""
    import time

    steps = ("--steps", "120", "--set", "train.checkpoint_every=20", "--set", "train.log_every=10")
    one = tmp_path / "one"
    done = subprocess.run(command(one, *steps), cwd=REPO_ROOT, env=environment(4, lab_cache), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    job = str(free_port())
    env = {**environment(2, lab_cache), "SCALING_LAB_PEER_TIMEOUT_SECONDS": "5"}
    logs = [tmp_path / f"process{i}.err" for i in range(2)]
    workers = [subprocess.Popen(command(tmp_path / "two", *steps, *explicit_coordinator(job, i)[0]), cwd=REPO_ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=logs[i].open("w")) for i in range(2)]
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "two" / "checkpoints" / "40").is_dir():
            assert time.monotonic() < deadline and workers[0].poll() is None, logs[0].read_text()[-2000:]
            time.sleep(0.1)
        workers[1].kill()
        killed = time.monotonic()
        code = workers[0].wait(timeout=60)
        detected = time.monotonic() - killed
    finally:
        for worker in workers:
            worker.kill()
    errors = [line for line in logs[0].read_text().splitlines() if line.startswith("error:")]
    assert code == 143 and detected < 60, (code, detected)
    assert len(errors) == 1 and errors[0].startswith("error: process 1 of 2 has not been heard from for 5 s")
    resumed = run_two(tmp_path / "two", lab_cache, "hstu", lambda index: steps + explicit_coordinator(job, index)[0])
    assert resumed["resumed_from_step"] >= 40
    assert_same(json.loads((one / "result.json").read_text()), resumed)
