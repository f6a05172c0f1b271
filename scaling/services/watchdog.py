"""A multi-process job whose host is lost fails fast, for the launcher to requeue.

When one process of a job dies (its host lost, the process killed), the others block in their
next collective. JAX's coordination service notices only after its heartbeat timeout (100 s) and
then aborts the process (SIGABRT and a C++ stack trace); an asynchronous checkpoint's barrier
times out after a minute of its own. Neither tells a launcher to requeue.

Each process of the job writes a counter under scaling_lab/alive/ in the coordination service's
key-value store every BEAT_SECONDS, and reads the others'. A peer whose counter has not moved for
PEER_TIMEOUT_SECONDS (counted on this host's clock, so no clocks are compared), or a coordinator
that cannot be reached for as long, ends this process at once with one line naming it and the
preemption exit status (143): the launcher requeues the trial and it resumes from its last
checkpoint. A process that has finished its trial says so (scaling_lab/done/) and is not waited for.

When the lost host is process 0's, which serves the coordination service, JAX's own client ends
the others first, within a second: "Terminating process because the JAX distributed service
detected fatal errors" and SIGABRT (exit status 134). Its callback cannot be replaced from Python
(jax 0.12.1: a Python callback receives no status, the client aborts with std::bad_cast), so a
launcher must requeue on 134 from a multi-process job as on 143.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable

from scaling.services.preemption import EXIT_PREEMPTED

BEAT_SECONDS = 1.0
PEER_TIMEOUT_SECONDS = float(os.environ.get("SCALING_LAB_PEER_TIMEOUT_SECONDS", 20.0))
ALIVE, DONE = "scaling_lab/alive/", "scaling_lab/done/"


def exit_for_requeue(reason: str) -> None:
    print(f"error: {reason}; exiting with status {EXIT_PREEMPTED} so that the job is requeued and resumes "
          f"from its last checkpoint", file=sys.stderr, flush=True)
    os._exit(EXIT_PREEMPTED)  # the main thread is blocked in a collective that will never complete


class PeerWatchdog:
    def __init__(self, client: Any, process_id: int, num_processes: int,
                 timeout_seconds: float = PEER_TIMEOUT_SECONDS, on_lost: Callable[[str], None] = exit_for_requeue,
                 clock: Callable[[], float] = time.monotonic):
        self.client, self.process_id, self.num_processes = client, process_id, num_processes
        self.timeout_seconds, self.on_lost, self.clock = timeout_seconds, on_lost, clock
        self.beats = 0
        self.heard: dict[int, tuple[str, float]] = {}  # peer -> (its last counter, when it last moved)
        self.unreachable_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="peer watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            reason = self.check()
            if reason:
                self.on_lost(reason)
                return

    def check(self) -> str | None:
        """One beat: publish this process's counter, read the peers'; the reason to stop, if any."""
        now = self.clock()
        try:
            self.beats += 1
            self.client.key_value_set(f"{ALIVE}{self.process_id}", str(self.beats), allow_overwrite=True)
            alive = {key.rsplit("/", 1)[-1]: value for key, value in self.client.key_value_dir_get(ALIVE)}
            done = {key.rsplit("/", 1)[-1] for key, _ in self.client.key_value_dir_get(DONE)}
        except Exception as error:  # the coordination service is gone with process 0's host
            self.unreachable_since = self.unreachable_since or now
            if now - self.unreachable_since >= self.timeout_seconds:
                return (f"the job's coordinator (process 0) has been unreachable for {now - self.unreachable_since:.0f} s "
                        f"({str(error).splitlines()[0][:200]})")
            return None
        self.unreachable_since = None
        for peer in range(self.num_processes):
            if peer == self.process_id or str(peer) in done:
                continue
            counter = alive.get(str(peer))
            last = self.heard.get(peer)
            if last is None or counter != last[0]:
                self.heard[peer] = (counter, now)
            elif now - last[1] >= self.timeout_seconds:
                return f"process {peer} of {self.num_processes} has not been heard from for {now - last[1]:.0f} s (its host lost?)"
        return None

    def finished(self) -> None:
        """This process's trial is done: peers stop waiting for it, and it stops watching."""
        self._stop.set()
        try:
            self.client.key_value_set(f"{DONE}{self.process_id}", "1", allow_overwrite=True)
        except Exception:
            pass
