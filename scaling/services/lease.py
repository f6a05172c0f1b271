"""Ownership of an object-store workdir (gs://) by one process at a time, through the store's own
preconditions: an object cannot be flock(2)ed, but it can be written only if its generation is
still the one the writer read (GCS's ifGenerationMatch; tensorstore's conditional writes).

WORKDIR/NAME holds {"holder", "host", "pid", "token", "expires"}. A process takes it by writing
it where it is missing (generation "none"), renews it every quarter of LEASE_SECONDS (120 s,
SCALING_LAB_LEASE_SECONDS) with the generation of its own last write, and deletes it on release.
An owner that stops renewing (killed, its host lost) is taken over once `expires` (wall clock,
LEASE_SECONDS after its last renewal; hosts' clocks agree to far less than that) has passed: the
taker writes with the stale owner's generation, so of two takers exactly one wins. An owner on
this host whose process is gone is stale at once (a killed sweep driver's rerun need not wait out
the lease). An owner whose renewal fails because another took over has lost it: `check()`
raises, and the training loop stops without writing anything more. A process paused for longer
than the lease can still write until its next renewal finds out; the lease bounds that to one
renewal interval past the pause, it does not fence single writes.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable

import tensorstore as ts
from etils import epath

from scaling.services.workdir import LOCK_NAME, WorkdirBusy, WorkdirLock, is_local

LEASE_SECONDS = float(os.environ.get("SCALING_LAB_LEASE_SECONDS", 120.0))


class WorkdirLost(WorkdirBusy):
    """This process owned the workdir and another took it over (its renewals stopped too long)."""


def kvstore_url(folder: epath.Path | str) -> str:
    """tensorstore's kvstore URL of a folder: gs://BUCKET/PATH/ as is, a local path as file://."""
    if not is_local(folder):
        return str(folder).rstrip("/") + "/"
    return "file://" + os.path.abspath(str(folder)).rstrip("/") + "/"


class ObjectLease:
    """Exclusive, non-blocking ownership of `folder` under the object `name` (any kvstore URL
    tensorstore opens; local folders through its file driver, for tests)."""

    def __init__(self, folder: epath.Path | str, name: str, lease_seconds: float | None = None,
                 clock: Callable[[], float] = time.time):
        self.folder, self.name = folder, name
        self.lease_seconds = LEASE_SECONDS if lease_seconds is None else lease_seconds
        self.renew_seconds = self.lease_seconds / 4
        self.clock = clock
        self.holder = f"pid {os.getpid()} on {socket.gethostname()}"
        self.token = uuid.uuid4().hex
        self.generation: bytes | None = None
        self.lost: str | None = None
        self._store = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def store(self) -> Any:
        if self._store is None:
            self._store = ts.KvStore.open(kvstore_url(self.folder)).result()
        return self._store

    def _read(self) -> tuple[dict[str, Any] | None, bytes]:
        """The lease's content (None when missing or unreadable) and its generation."""
        result = self.store.read(self.name).result()
        if result.state != "value":
            return None, result.stamp.generation
        try:
            content = json.loads(result.value)
            return (content if isinstance(content, dict) else {}), result.stamp.generation
        except ValueError:
            return {}, result.stamp.generation  # a damaged lease: expired, taken over below

    def _write_if(self, generation: bytes) -> bytes:
        """Write this process's lease where the stored generation is `generation`; b'' if it was not."""
        content = {"holder": self.holder, "host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                   "expires": self.clock() + self.lease_seconds}
        return self.store.write(self.name, json.dumps(content).encode(), if_equal=generation).result().generation

    def _expired(self, content: dict[str, Any]) -> bool:
        """Past its expiry, or held by a process of this host that no longer exists."""
        if float(content.get("expires", 0.0)) <= self.clock():
            return True
        if content.get("host") == socket.gethostname() and isinstance(content.get("pid"), int):
            try:
                os.kill(content["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        return False

    def acquire(self, patience_seconds: float = 1.0) -> None:
        """Take the lease, retrying for patience_seconds; WorkdirBusy names a live holder."""
        if self.generation is not None:
            return
        deadline = time.monotonic() + patience_seconds
        while True:
            content, generation = self._read()
            if content is None or self._expired(content) or content.get("token") == self.token:
                written = self._write_if(generation)
                if written:
                    self.generation = written
                    break
                continue  # another process wrote it between our read and write: read again
            if time.monotonic() >= deadline:
                until = time.strftime("%H:%M:%S", time.gmtime(float(content.get("expires", 0.0))))
                raise WorkdirBusy(f"{self.folder} is in use by {content.get('holder', 'another process')} "
                                  f"(its lease runs to {until} UTC unless renewed)")
            time.sleep(0.05)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_until_stopped, name=f"lease {self.name}", daemon=True)
        self._renewer.start()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.renew_seconds):
            if not self.renew():
                return

    def renew(self) -> bool:
        """Extend the lease; False (and `lost` set) when another process has taken it over."""
        if self.generation is None:
            return False
        try:
            written = self._write_if(self.generation)
        except Exception as error:  # a transient store error: the next renewal tries again
            print(f"lease {self.folder}/{self.name}: renewal failed ({error}); retrying", file=sys.stderr, flush=True)
            return True
        if not written:
            content, _ = self._read()
            holder = (content or {}).get("holder", "another process")
            self.lost = f"{self.folder} was taken over by {holder} (this process's lease had lapsed)"
            self.generation = None
            return False
        self.generation = written
        return True

    def check(self) -> None:
        """Raise WorkdirLost once another process has taken the lease over."""
        if self.lost:
            raise WorkdirLost(self.lost)

    def held_elsewhere(self) -> bool:
        """Whether another process holds an unexpired lease now (reads only)."""
        if self.generation is not None:
            return False
        content, _ = self._read()
        return content is not None and not self._expired(content) and content.get("token") != self.token

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if self.generation is not None:
            self.store.write(self.name, None, if_equal=self.generation).result()  # only if still ours
            self.generation = None


def workdir_lock(folder: epath.Path | str, name: str = LOCK_NAME) -> WorkdirLock | ObjectLease:
    """A local folder's flock(2) lock, or an object-store folder's lease: acquire(), check(),
    held_elsewhere(), release()."""
    return WorkdirLock(epath.Path(folder), name) if is_local(folder) else ObjectLease(folder, name)
