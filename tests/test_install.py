"""install.sh's argument handling, offline parts: each misuse is one line naming the input, exit 2,
before anything is created or downloaded. (The download and the offline install themselves need the
package index and a minute: benchmarks/results/offline-install-2026-12-07.md records them.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "install.sh"


def _install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_help_names_the_offline_steps() -> None:
    done = _install("--help")
    assert done.returncode == 0
    assert "--download DIR" in done.stdout and "--offline DIR" in done.stdout and "set -euo" not in done.stdout


@pytest.mark.parametrize("args, says", [
    (("--offline", "{tmp}/empty"), "no wheels there"),
    (("--download", "{tmp}/w", "--for-python", "312"), "--for-python '312'"),
    (("--download", "{tmp}/w", "--offline", "{tmp}/w"), "two steps"),
    (("--offline",), "--offline needs"),
    (("--offline", "--keep-jax"), "--offline needs"),
    (("--bogus",), "unknown argument '--bogus'"),
])
def test_misuse_is_one_line_and_exit_2_and_creates_nothing(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    (tmp_path / "empty").mkdir()
    done = _install("--venv", str(tmp_path / "venv"), *(arg.format(tmp=tmp_path) for arg in args))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    assert not (tmp_path / "venv").exists() and not (tmp_path / "w").exists()
