"""A trial's working directory: one training process at a time, files replaced whole.

A lock file held with flock(2) for the life of the process marks a local workdir as in use; the
kernel releases it when the process ends however it ends (SIGKILL included), so a stale lock
never blocks a rerun. Object-store workdirs (gs://) are leased instead (scaling/services/lease.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from typing import Iterator

from etils import epath

LOCK_NAME = ".lock"


def fresh_object_store_listings() -> None:
    """Tell gcsfs (epath's gs:// client) not to cache directory listings. Its cache lasts the life
    of a process, and the files of a workdir are written by other processes (a sweep driver reads
    what its trials write, an exporter what a finished sweep wrote): a cached listing would hide
    them. Set before the first gs:// filesystem is made."""
    import fsspec.config

    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {})["use_listings_cache"] = False


fresh_object_store_listings()


class WorkdirBusy(Exception):
    pass


def is_local(path: epath.Path | str) -> bool:
    return "://" not in str(path)


class WorkdirLock:
    """Exclusive, non-blocking: acquire() raises WorkdirBusy (naming the holder) when another
    process has it; release() (or the process's end) gives it up."""

    def __init__(self, workdir: epath.Path, name: str = LOCK_NAME):
        self.path = epath.Path(workdir) / name
        self._handle = None

    def acquire(self, patience_seconds: float = 1.0) -> None:
        """Take the lock, retrying for patience_seconds (a status probe holds it for an instant)."""
        if not is_local(self.path) or self._handle is not None:
            return
        handle = open(self.path, "a+")
        deadline = time.monotonic() + patience_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise WorkdirBusy(f"{self.path.parent} is in use by {holder}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle

    def check(self) -> None:
        """Nothing to do: the kernel keeps a held lock for the life of the process."""

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now (False for an object-store workdir). Probes
        with a shared lock and writes nothing."""
        if not is_local(self.path) or not self.path.exists() or self._handle is not None:
            return False
        with open(self.path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False  # closing the descriptor drops the probe's shared lock

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the lock
            self._handle = None


# the packages whose exceptions mean an object store refused or lost a request (gcsfs raises its
# HttpError once its own retries, with backoff, are spent)
STORAGE_CLIENTS = ("gcsfs", "fsspec", "google", "aiohttp", "requests", "urllib3")


@contextlib.contextmanager
def storage_errors(path: epath.Path | str) -> Iterator[None]:
    """Raise a storage client's failure inside the block as OSError(EIO) naming `path`, so that a
    write that fails on an object store reads like one that fails on a disk."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:
        if type(error).__module__.split(".")[0] not in STORAGE_CLIENTS:
            raise
        reason = f"object store: {type(error).__name__}: {error}".splitlines()[0][:300]
        raise OSError(errno.EIO, reason, str(path)) from error


def write_atomically(path: epath.Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling and a rename: readers see the old file
    or the new one, never a part (an interrupted or failed write leaves the old one). A failure is
    an OSError naming `path`."""
    partial = path.parent / f".{path.name}.{os.getpid()}.partial"
    with storage_errors(path):
        try:
            partial.write_text(text)
            partial.replace(path)
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(path)) from error
        finally:
            with contextlib.suppress(Exception):  # best effort: the write's own error is the one to see
                if partial.exists():
                    partial.unlink()
