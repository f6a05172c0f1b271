"""The same trial as 2 processes x 2 CPU devices (gloo collectives) and as 1 process x 4 devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("final_train_loss", "eval_loss", "test_loss", "hr@10", "ndcg@10", "hr@50", "mrr", "tokens", "train_flops")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


FAMILY_FLAGS = {
    "hstu": (),
    # the encoder-decoder: semantic IDs built in each process (the same cached artefact), exact scorer
    "encdec": ("--model", "encdec", "--set", "model.heads=2", "--set", "model.d_ff=32", "--set", "model.encoder_blocks=1",
               "--set", "model.decoder_blocks=1", "--set", "model.ids_codebook=32", "--set", "model.history_items=5",
               "--set", "model.targets_per_row=4", "--set", "model.ids_source=cooccurrence"),
}


def command(workdir: Path, *extra: str, family: str = "hstu") -> list[str]:
    return [sys.executable, "-m", "scaling.train", "--preset", "tiny", "--steps", "6", "--workdir", str(workdir),
            "--set", "train.log_every=3", *FAMILY_FLAGS[family], *extra]


def environment(devices: int, cache: Path) -> dict:
    env = dict(os.environ, SCALING_LAB_CACHE=str(cache))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


@pytest.mark.slow
@pytest.mark.parametrize("family", ["hstu", "encdec"])
def test_two_processes_match_one(tmp_path: Path, lab_cache: Path, ml100k, family: str) -> None:
    single = subprocess.run(command(tmp_path / "one", family=family), cwd=REPO_ROOT, env=environment(4, lab_cache),
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    port = free_port()
    workers = [
        subprocess.Popen(command(tmp_path / "two", "--coordinator", f"localhost:{port}", "--num-processes", "2",
                                 "--process-id", str(index), family=family),
                         cwd=REPO_ROOT, env=environment(2, lab_cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for index in range(2)
    ]
    try:
        outputs = [worker.communicate(timeout=300) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-2000:]
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert (one["devices"], one["processes"], two["devices"], two["processes"]) == (4, 1, 4, 2)
    for key in COMPARED:
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
