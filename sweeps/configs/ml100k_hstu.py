"""The demo sweep: an HSTU size ladder x 2 history lengths on MovieLens-100K, on a laptop CPU.

python -m sweeps run sweeps/configs/ml100k_hstu.py      (about 10 minutes on 2 cores)

Every size trains for the same number of packed steps (the same data), so the loss-vs-size curve
at each history length is a data-limited scaling curve.
"""

from models.config import ModelConfig
from scaling.config import DataConfig, TrainConfig, TrialConfig
from sweeps.spec import Sweep, axis, grid, ladder

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

SWEEP = Sweep(
    name="ml100k_hstu",
    description=__doc__,
    base=BASE,
    points=grid(SIZES, axis("seq_len", "data.max_len", [50, 100])),
)
