"""The demo sweep: HSTU on MovieLens-100K, on a laptop CPU: an HSTU size ladder x 2 history
lengths, and IsoFLOP slices that vary the training data too.

python -m sweeps run sweeps/configs/ml100k_hstu.py --parallel 2   (under 5 minutes on 2 cores, data cached)

- Size x history length (50, 100): every size trains 120 packed steps, the same data, so the
  loss-vs-size curve at each history length is a data-limited scaling curve, L(N).
- IsoFLOP: 2 compute budgets x 3 sizes at history 50 (d4 to d16), each size trained for the
  steps that spend the budget, so the tokens seen vary 6x across runs (the evaluation is the same
  943 users throughout); each budget is one ladder run's compute, so that run is one of its 3.
  With the ladder they give the joint law L(N, D) and its compute-optimal allocation, and the
  IsoFLOP profiles with their N_opt(C) (a third budget, the d32 run's with d8 and d16, would add
  80 s to the 5 minutes; the laws are checked against a known answer on synthetic data).

Measured: 4.5 minutes of trials + 30 s of report on a 2-core CPU with a 98 GFLOP/s fp32 matmul peak
(data cached, JAX's compilation cache empty).
"""

from models.core.config import ModelConfig
from scaling.config import DataConfig, TrainConfig, TrialConfig
from sweeps.spec import Point, Sweep, axis, grid, isoflop, ladder, planned_compute

BASE = TrialConfig(
    data=DataConfig(name="ml-100k", max_len=50, packed=True),
    model=ModelConfig(family="hstu", max_positions=111, dropout=0.2, input_dropout=0.2),
    train=TrainConfig(batch_size=64, steps=120, learning_rate=1e-3, negatives=64, log_every=20, eval_batch_size=128,
                      eval_points=6),  # training curves: 6 evaluations per run (not part of the trial ids)
)

SIZES = ladder("size", [
    {"model.blocks": 1, "model.d_model": 8, "model.heads": 1},
    {"model.blocks": 1, "model.d_model": 16, "model.heads": 1},
    {"model.blocks": 2, "model.d_model": 32, "model.heads": 2},
    {"model.blocks": 2, "model.d_model": 64, "model.heads": 2},
], labels=["d8x1", "d16x1", "d32x2", "d64x2"])

SMALLEST = ladder("size", [{"model.blocks": 1, "model.d_model": 4, "model.heads": 1}], labels=["d4x1"])
HISTORY_50 = axis("seq_len", "data.max_len", [50])
ML100K_ITEMS = 1682  # the catalogue the FLOPs per step are counted over


def _isoflop_slices() -> list[Point]:
    """Each budget is the compute of one size-ladder run at history 50 (120 steps, 3 significant
    digits); two more sizes, trained for the steps that spend it, put its optimum between the
    smallest and largest of its 3 (measured: smaller models win at these budgets, taking more
    steps)."""
    (d4,), (d8, d16, _, _) = SMALLEST, SIZES
    points = []
    for ladder_run, others in ((d8, (d4, d16)), (d16, (d4, d8))):
        budget = float(f"{planned_compute(BASE, ladder_run.merge(HISTORY_50[0]), ML100K_ITEMS):.3g}")
        points += isoflop([budget], grid(others, HISTORY_50), BASE, ML100K_ITEMS, "ml100k_hstu")
    return points


SWEEP = Sweep(
    name="ml100k_hstu",
    description=__doc__,
    base=BASE,
    points=grid(SIZES, axis("seq_len", "data.max_len", [50, 100])) + _isoflop_slices(),
)
