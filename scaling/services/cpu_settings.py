"""Host-process settings for XLA:CPU: glibc malloc that keeps freed memory mapped, and simulated devices.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and
unmaps it on free, so each step's large temporaries page-fault and get zeroed by the kernel
again: on this 2-core machine that cost a third of an HSTU step, in alternating fast and slow
steps. Serving them from the heap, and never trimming it, keeps the pages mapped between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_TOP_PAD = -2
_M_MMAP_MAX = -4


def keep_freed_memory_mapped() -> bool:
    """Tell glibc malloc to reuse freed pages instead of returning them; False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in
               ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 256 << 20)))


def simulate_cpu_devices(mesh_spec: str) -> None:
    """Let the CPU backend present as many devices as an explicit mesh spec ("data=8") asks for
    (XLA's --xla_force_host_platform_device_count), unless XLA_FLAGS already sets a count. Only
    the CPU backend reads it, and only when it starts: call before anything asks jax for devices."""
    flags = os.environ.get("XLA_FLAGS", "")
    if mesh_spec.strip() == "auto" or "xla_force_host_platform_device_count" in flags:
        return
    try:
        count = math.prod(int(part.split("=")[1]) for part in mesh_spec.split(","))
    except (IndexError, ValueError):
        return  # parse_mesh_spec names the problem
    if count > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
