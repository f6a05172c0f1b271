"""Object-store workdir ownership through conditional writes (scaling/services/lease.py), run here on
tensorstore's file driver, whose generation preconditions are the same calls as on gs://
(tests/test_object_store.py runs it against a GCS emulator)."""

import json
import time

import pytest

from scaling.services.lease import ObjectLease, WorkdirBusy, WorkdirLost, workdir_lock
from scaling.services.workdir import WorkdirLock


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_one_owner_at_a_time_and_release_hands_over(tmp_path) -> None:
    first, second = ObjectLease(tmp_path, ".lock"), ObjectLease(tmp_path, ".lock")
    first.holder = "pid 1 on host-a"
    first.acquire()
    with pytest.raises(WorkdirBusy, match=r"is in use by pid 1 on host-a \(its lease runs to"):
        second.acquire(patience_seconds=0.1)
    assert second.held_elsewhere() and not first.held_elsewhere()
    first.release()
    assert not (tmp_path / ".lock").exists() and not second.held_elsewhere()
    second.acquire()
    first.check(), second.check()
    second.release()


def test_a_stale_owner_is_taken_over_once_and_then_knows_it_lost(tmp_path) -> None:
    clock = Clock()
    stale = ObjectLease(tmp_path, ".lock", lease_seconds=60, clock=clock)
    stale.acquire()
    stale._stop.set()  # its host died: no more renewals
    taker, rival = (ObjectLease(tmp_path, ".lock", lease_seconds=60, clock=clock) for _ in range(2))
    clock.now += 59
    with pytest.raises(WorkdirBusy):
        taker.acquire(patience_seconds=0)
    clock.now += 2  # past the stale owner's expiry
    _, generation = taker._read()  # both takers read the stale lease ...
    assert taker._write_if(generation) and not rival._write_if(generation)  # ... exactly one write lands
    taker.generation = None
    taker.acquire()  # its own token: re-taken
    assert not stale.renew()
    with pytest.raises(WorkdirLost, match="was taken over by pid"):
        stale.check()
    stale.release()  # deletes nothing that is not its own
    assert (tmp_path / ".lock").exists() and rival.held_elsewhere()
    taker.release()


def test_renewal_keeps_a_live_owner(tmp_path) -> None:
    owner = ObjectLease(tmp_path, ".lock", lease_seconds=0.4)
    owner.acquire()
    time.sleep(1.0)  # 2.5 leases: renewed every 0.1 s
    with pytest.raises(WorkdirBusy):
        ObjectLease(tmp_path, ".lock", lease_seconds=0.4).acquire(patience_seconds=0)
    owner.check()
    owner.release()


def test_local_folders_keep_flock_and_buckets_get_leases(tmp_path) -> None:
    assert isinstance(workdir_lock(tmp_path), WorkdirLock)
    assert isinstance(workdir_lock("gs://bucket/sweep/trials/abc"), ObjectLease)


def test_an_owner_of_this_host_that_is_gone_is_stale_at_once(tmp_path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ghost = ObjectLease(tmp_path, ".lock")
    ghost.acquire()
    ghost._stop.set()
    content, generation = ghost._read()
    content["pid"] = int(dead.stdout)  # as if a killed driver had written it
    ghost.store.write(".lock", json.dumps(content).encode(), if_equal=generation).result()
    ObjectLease(tmp_path, ".lock").acquire(patience_seconds=0)
