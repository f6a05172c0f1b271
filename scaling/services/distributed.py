"""Multi-process start-up: one JAX process per host (TPU VM worker, GPU node, or local CPU process).

TPU VMs: `jax.distributed.initialize()` with no arguments finds its peers. Elsewhere the
coordinator address, process count and index come from flags or from the environment variables
SCALING_LAB_COORDINATOR, SCALING_LAB_NUM_PROCESSES, SCALING_LAB_PROCESS_ID.
"""

from __future__ import annotations

import os

import jax
from jax._src import distributed as jax_distributed  # the client of the coordination service

from scaling.config import ConfigError
from scaling.services.watchdog import PeerWatchdog


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               auto: bool = False, timeout_seconds: int = 120) -> None:
    """Join the multi-process job, if this process is one of several; a no-op otherwise."""
    coordinator = coordinator or os.environ.get("SCALING_LAB_COORDINATOR")
    if num_processes is None and "SCALING_LAB_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["SCALING_LAB_NUM_PROCESSES"])
    if process_id is None and "SCALING_LAB_PROCESS_ID" in os.environ:
        process_id = int(os.environ["SCALING_LAB_PROCESS_ID"])
    if coordinator:
        if num_processes is None or process_id is None:
            raise ConfigError("--coordinator needs --num-processes and --process-id (or SCALING_LAB_* variables)")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"--process-id {process_id} is outside 0..{num_processes - 1}")
        if num_processes > 1:
            jax.distributed.initialize(coordinator, num_processes, process_id,
                                       initialization_timeout=timeout_seconds)
    elif auto:
        jax.distributed.initialize()
    _no_persistent_cache_for_cpu_collectives()
    _watch_peers()


_watchdog: PeerWatchdog | None = None


def _watch_peers() -> None:
    """In a job of several processes, end this one when a peer is lost (scaling/services/watchdog.py)."""
    global _watchdog
    client = jax_distributed.global_state.client
    if jax.process_count() > 1 and client is not None and _watchdog is None:
        _watchdog = PeerWatchdog(client, jax.process_index(), jax.process_count())
        _watchdog.start()


def finished() -> None:
    """This process's trial ended normally: its peers need not wait for it."""
    if _watchdog is not None:
        _watchdog.finished()


def _no_persistent_cache_for_cpu_collectives() -> None:
    """A CPU executable that a multi-process job (gloo collectives) loads from JAX's persistent
    compilation cache hangs in its first collective (jax 0.12.1; seen with 2 processes x 2 devices
    when a second run of a trial found the first one's entries), so such jobs compile afresh.
    Accelerators keep the cache."""
    if jax.process_count() > 1 and jax.devices()[0].platform == "cpu":
        jax.config.update("jax_enable_compilation_cache", False)
