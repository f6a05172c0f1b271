"""Shared fixtures: an isolated data cache that still reuses an already-fetched recbole wheel."""

from __future__ import annotations

import os

# 8 simulated host devices for the sharding tests; must be set before jax is imported.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import shutil
from pathlib import Path

import pytest

from data import sources

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def lab_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh SCALING_LAB_CACHE for the session, seeded with the recbole wheel if one is cached."""
    cache = tmp_path_factory.mktemp("lab-cache")
    user_wheel = sources.cache_dir() / "wheels" / sources.RECBOLE_WHEEL
    if user_wheel.is_file():
        (cache / "wheels").mkdir()
        shutil.copy(user_wheel, cache / "wheels" / sources.RECBOLE_WHEEL)
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
