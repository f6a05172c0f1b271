"""The shapes `python -m benchmarks.accelerator` times (issue 33): named benchmark configurations,
data rather than logic, as scaling/presets.py's trials are. Each is `python -m benchmarks.throughput`
flags; a --preset reads that preset's data."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Shape:
    """One timed training step: `python -m benchmarks.throughput` flags."""

    name: str
    flags: tuple[str, ...]
    profiled: bool = False  # the step whose trace the page breaks down


def _decoder(model: str, d: int, blocks: int, heads: int, length: int, batch: int, *extra: str,
             items: int = 100_000, negatives: int = 128) -> tuple[str, ...]:
    """A decoder-only family's step on random ids, bf16 compute."""
    return ("--model", model, "--d-model", str(d), "--blocks", str(blocks), "--heads", str(heads), "--seq-len",
            str(length), "--batch", str(batch), "--dtype", "bfloat16", "--num-items", str(items), "--negatives",
            str(negatives), *extra)


TIGER = ("--preset", "tiger-beauty", "--set", "model.compute_dtype=bfloat16")
SHAPES = (
    Shape("HSTU large", _decoder("hstu", 512, 8, 4, 1024, 32, "--packed"), profiled=True),
    Shape("HSTU long", _decoder("hstu", 256, 4, 4, 8192, 4, "--attention", "blockwise")),
    Shape("HSTU mid", _decoder("hstu", 256, 4, 4, 200, 64)),
    Shape("HSTU mid, big batch", _decoder("hstu", 256, 4, 4, 200, 1024)),
    Shape("SASRec mid", _decoder("sasrec", 256, 4, 4, 200, 64)),
    Shape("tiger-beauty", (*TIGER, "--batch", "256")),
)
_TOY = {"items": 1000, "negatives": 16}
SMALL_SHAPES = (  # --small: the same rows at toy sizes, for a CPU
    Shape("HSTU large", _decoder("hstu", 32, 2, 2, 64, 4, "--packed", **_TOY), profiled=True),
    Shape("HSTU long", _decoder("hstu", 16, 1, 2, 256, 2, "--attention", "blockwise", "--attention-block", "64",
                                **_TOY)),
    Shape("HSTU mid", _decoder("hstu", 16, 1, 2, 32, 4, **_TOY)),
    Shape("HSTU mid, big batch", _decoder("hstu", 16, 1, 2, 32, 16, **_TOY)),
    Shape("SASRec mid", _decoder("sasrec", 16, 1, 2, 32, 4, **_TOY)),
    Shape("tiger-beauty", (*TIGER, "--batch", "8", *(f"--set=model.{key}" for key in (
        "d_model=16", "heads=2", "head_dim=8", "d_ff=32", "encoder_blocks=1", "decoder_blocks=1")))),
)
