"""The test run's environment and shared fixtures: simulated devices, compile flags, one
compilation cache and one default data cache per run (the user's own cache is only read, for an
already-fetched recbole wheel), and the costliest files started first.

SCALING_LAB_ACCELERATOR_PATHS=1 python -m pytest ... runs the model tests on the CPU as a GPU or
TPU runs them: plain autodiff instead of the XLA:CPU kernels and one micro-batch per step (the
library reads the variable: models.core.family.accelerator_paths), bf16 compute in the model configs
the tests build, and fp32 tolerances widened to bf16's (tests/model_paths.py). Tests of the CPU's
own paths (its kernels, its micro-batching) still run those. The header names the paths run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from data import sources  # numpy only: jax is imported after the variables below are set

# The tests' shapes are tiny, so compiling dominates: LLVM's optimisation level 0 halves a compile
# (XLA's own HLO passes, and so what is computed, are unchanged).
COMPILE_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a process of the tests with `devices` simulated host devices."""
    return f"--xla_force_host_platform_device_count={devices} {COMPILE_FLAGS}"


# 8 simulated host devices for the sharding tests; must be set before jax is imported; the
# processes the tests start inherit them unless they set their own.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()

# One folder per test run, made by the process that starts first (pytest-xdist's controller, or
# the only one) and removed when it ends; its workers and every process the tests start inherit
# the variables. It holds JAX's persistent compilation cache (a trial that several tests run as a
# subprocess compiles once) and the default SCALING_LAB_CACHE, so that no test writes to the user's.
if "SCALING_LAB_TEST_RUN" not in os.environ:
    run = tempfile.mkdtemp(prefix="scaling-lab-test-run-")
    os.environ.update(SCALING_LAB_TEST_RUN=run, SCALING_LAB_TEST_RUN_OWNER=str(os.getpid()),
                      SCALING_LAB_USER_CACHE=str(sources.cache_dir()), SCALING_LAB_CACHE=os.path.join(run, "lab-cache"))
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(run, "xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
PEAK_FLOPS = "peak_flops.json"  # the processor's measured matmul rate, as scaling.engine.hardware caches it
if os.environ.get("SCALING_LAB_TEST_RUN_OWNER") == str(os.getpid()):
    from scaling.engine import hardware

    hardware.peak_flops_per_device("float32")  # measured once, before the workers start, for every trial

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def lab_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh SCALING_LAB_CACHE for the session, seeded with the recbole wheel if one is cached
    and with the run's measured matmul rate."""
    cache = tmp_path_factory.mktemp("lab-cache")
    user_wheel = Path(os.environ["SCALING_LAB_USER_CACHE"]) / "wheels" / sources.RECBOLE_WHEEL
    if user_wheel.is_file():
        (cache / "wheels").mkdir()
        shutil.copy(user_wheel, cache / "wheels" / sources.RECBOLE_WHEEL)
    if (Path(os.environ["SCALING_LAB_CACHE"]) / PEAK_FLOPS).is_file():
        shutil.copy(Path(os.environ["SCALING_LAB_CACHE"]) / PEAK_FLOPS, cache / PEAK_FLOPS)
    return cache


@pytest.fixture
def use_lab_cache(lab_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SCALING_LAB_CACHE", str(lab_cache))
    return lab_cache


@pytest.fixture(scope="session")
def ml100k(lab_cache: Path):
    """MovieLens-100K prepared once per session (fetches the recbole wheel if it must)."""
    from data.dataset import prepare

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCALING_LAB_CACHE", str(lab_cache))
        return prepare("ml-100k")


@pytest.fixture
def gcs_bucket() -> str:
    """gs://BUCKET of a fresh in-memory GCS emulator (tests/gcs_emulator.py), every client of this
    process and its subprocesses pointed at it; stopped after the test."""
    from tests.gcs_emulator import gcs_emulator

    with gcs_emulator() as bucket:
        yield bucket


def pytest_report_header() -> str:
    from models.core.family import accelerator_paths

    if accelerator_paths():
        return "model paths: an accelerator's (SCALING_LAB_ACCELERATOR_PATHS=1: plain autodiff, bf16, one micro-batch)"
    return "model paths: the backend's own"


def _cost(item: pytest.Item) -> float:
    """Seconds a test takes on 2 busy cores: `slow(SECONDS)`'s estimate, else 3 for `slow`, 0.5."""
    slow = item.get_closest_marker("slow")
    return 0.5 if slow is None else float(slow.args[0]) if slow.args else 3.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The costliest files first, in a run of one process. pytest-xdist (pytest.ini) hands out
    files by their number of tests, and this order only breaks its ties."""
    cost: dict[str, float] = {}
    for item in items:
        cost[item.nodeid.split("::")[0]] = cost.get(item.nodeid.split("::")[0], 0.0) + _cost(item)
    items.sort(key=lambda item: -cost[item.nodeid.split("::")[0]])


def pytest_unconfigure(config: pytest.Config) -> None:
    if os.environ.get("SCALING_LAB_TEST_RUN_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["SCALING_LAB_TEST_RUN"], ignore_errors=True)
