"""Peak FLOP/s per device: a datasheet table for accelerators, a measured matmul rate on a CPU."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from data.sources import cache_dir

# Dense bf16 peak per JAX device, FLOP/s (vendor datasheets: the TPU
# pages of cloud.google.com/tpu/docs; NVIDIA's A100 and H100 datasheets (bf16 Tensor Core, dense:
# the datasheets' figures "with sparsity" are twice these), H200 (the H100's compute, more HBM),
# and the HGX / DGX B200 datasheet).
PEAK_BF16 = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,  # SXM; 1979e12 assumes 2:4 sparsity
    "NVIDIA H200": 989e12,
    "NVIDIA B200": 2250e12,  # HGX B200 datasheet: 4.5 PFLOPS FP16/BF16 with sparsity, half of it dense
    "NVIDIA L4": 121e12,  # NVIDIA L4 datasheet: BF16 Tensor Core 242 TFLOPS with sparsity, half of it dense
}
# fp32 where it differs from bf16 (A100/H100 use TF32 tensor cores for fp32 matmuls by default).
PEAK_FP32 = {"NVIDIA A100": 156e12, "NVIDIA H100": 495e12, "NVIDIA H200": 495e12, "NVIDIA B200": 1100e12,
             "NVIDIA L4": 30.3e12}  # NVIDIA L4 datasheet: FP32 30.3 TFLOPS


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """A kind of accelerator a sweep can be planned for: one JAX device's peak and memory.
    per_device: what the number in a type name counts per JAX device (TPU v4 and v5p names count
    TensorCores, two per chip, and a chip is one JAX device)."""

    device_kind: str  # a PEAK_BF16 key
    hbm_bytes: float  # per JAX device
    per_device: int
    source: str

    @property
    def peak_bf16(self) -> float:
        return PEAK_BF16[self.device_kind]


# Type-name prefix -> kind. Sources: the vendors' pages named (values as stated there).
ACCELERATORS = {
    "v4": Accelerator("TPU v4", 32 * 2**30, 2, "cloud.google.com/tpu/docs/v4: 275 TFLOPS bf16, 32 GiB HBM per chip"),
    "v5litepod": Accelerator("TPU v5 lite", 16e9, 1, "cloud.google.com/tpu/docs/v5e: 197 TFLOPS bf16, 16 GB HBM per chip"),
    "v5e": Accelerator("TPU v5 lite", 16e9, 1, "cloud.google.com/tpu/docs/v5e: 197 TFLOPS bf16, 16 GB HBM per chip"),
    "v5p": Accelerator("TPU v5p", 95e9, 2, "cloud.google.com/tpu/docs/v5p: 459 TFLOPS bf16, 95 GB HBM2e per chip; "
                                           "v5p-N has N TensorCores, N/2 chips"),
    "v6e": Accelerator("TPU v6 lite", 32e9, 1, "cloud.google.com/tpu/docs/v6e: 918 TFLOPS bf16, 32 GB HBM per chip"),
    "a100": Accelerator("NVIDIA A100", 80e9, 1, "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense, 80 GB HBM2e (SXM)"),
    "h100": Accelerator("NVIDIA H100", 80e9, 1, "NVIDIA H100 datasheet: 989 TFLOPS bf16 dense, 80 GB HBM3 (SXM)"),
    "h200": Accelerator("NVIDIA H200", 141e9, 1, "NVIDIA H200 datasheet: 989 TFLOPS bf16 dense, 141 GB HBM3e"),
    "b200": Accelerator("NVIDIA B200", 180e9, 1, "NVIDIA DGX B200: 2.25 PFLOPS bf16 dense per GPU, 1,440 GB HBM3e "
                                                 "for 8 GPUs"),
    "l4": Accelerator("NVIDIA L4", 24e9, 1, "NVIDIA L4 datasheet: 121 TFLOPS bf16 dense (242 with sparsity), "
                                            "30.3 TFLOPS fp32, 24 GB GDDR6"),
}


def parse_accelerator(name: str) -> tuple[Accelerator, int]:
    """(kind, JAX devices) of a type name: TPU types as gcloud spells them (v5p-32: 16 chips;
    v5litepod-16, v6e-8: chips), GPUs as KIND-COUNT (h100-32: 32 GPUs)."""
    match = re.fullmatch(r"([a-z0-9]+?)-(\d+)", name.strip().lower())
    if not match or match.group(1) not in ACCELERATORS:
        raise ValueError(f"accelerator {name!r}: expected KIND-COUNT with KIND one of {', '.join(ACCELERATORS)} "
                         f"(e.g. v5p-32, v5litepod-16, h100-8)")
    kind, count = ACCELERATORS[match.group(1)], int(match.group(2))
    if count < kind.per_device or count % kind.per_device:
        raise ValueError(f"accelerator {name!r}: {match.group(1)} counts {kind.per_device} per chip; "
                         f"{count} is not a whole number of chips")
    return kind, count // kind.per_device


class UnknownDevice(ValueError):
    """A device kind with no peak in the table: MFU would be meaningless, so say so."""


def datasheet_peak(device_kind: str, dtype: str) -> float:
    """Peak FLOP/s of one device of this kind; the longest table key that prefixes it up to a
    word's end wins ("NVIDIA H100 80GB HBM3" is an H100; "NVIDIA L40S" is not an L4)."""
    matches = [k for k in PEAK_BF16 if device_kind.startswith(k) and not device_kind[len(k):][:1].isalnum()]
    if not matches:
        raise UnknownDevice(f"no peak FLOP/s known for device kind {device_kind!r}; add it to scaling/engine/hardware.py")
    key = max(matches, key=len)
    if dtype == "float32" and key in PEAK_FP32:
        return PEAK_FP32[key]
    return PEAK_BF16[key]


class MatmulProbe:
    """A jitted size^3 matmul in one dtype, compiled once and timed on demand, so that a
    benchmark can rate the processor between its own steps, under the same load."""

    def __init__(self, dtype: str = "float32", size: int = 2048):
        self.flops = 2.0 * size**3
        self.operands = (jnp.ones((size, size), jnp.dtype(dtype)), jnp.ones((size, size), jnp.dtype(dtype)))
        self.matmul = jax.jit(lambda x, y: x @ y)
        self.matmul(*self.operands).block_until_ready()

    def rate(self) -> float:
        """FLOP/s of one call."""
        start = time.perf_counter()
        self.matmul(*self.operands).block_until_ready()
        return self.flops / (time.perf_counter() - start)


def measure_matmul_rate(dtype: str = "float32", size: int = 2048, repeats: int = 7) -> float:
    """Median FLOP/s of a jitted size^3 matmul on the default device, after warm-up."""
    probe = MatmulProbe(dtype, size)
    return statistics.median(probe.rate() for _ in range(repeats))


def _cache_file() -> Path:
    return cache_dir() / "peak_flops.json"


def peak_flops_per_device(dtype: str = "float32", remeasure: bool = False,
                          measured_rate: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number came from).

    CPU: the measured rate of the whole processor (one matmul uses every core), cached, divided
    by the number of (simulated) host devices, so peak x devices is the processor's rate.
    measured_rate: a rate the caller measured itself (recorded in the cache as the new value).
    """
    device = jax.devices()[0]
    if device.platform != "cpu":
        return datasheet_peak(device.device_kind, dtype), f"datasheet:{device.device_kind}:{dtype}"
    cache = _cache_file()
    key = f"cpu:{dtype}:{os.cpu_count()}"
    known = {}
    if cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    if measured_rate is not None or remeasure or key not in known:
        known[key] = measured_rate if measured_rate is not None else measure_matmul_rate(dtype)
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f"{cache.name}.{os.getpid()}")
        partial.write_text(json.dumps(known, indent=1, sort_keys=True))
        partial.replace(cache)  # atomic: concurrent processes never read half a file
    return float(known[key]) / jax.local_device_count(), f"measured:2048^3 matmul:{dtype}"
