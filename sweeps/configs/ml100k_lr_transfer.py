"""Does the best learning rate transfer across widths? HSTU on MovieLens-100K at 4 widths x 5
learning rates, in the standard parametrization and under µP (base width 32, heads fixed so the
head width grows with d_model): 40 short trials, about half an hour on 2 CPU cores.

python -m sweeps run sweeps/configs/ml100k_lr_transfer.py

The report's Tuning section gives, per parametrization, the validation loss (the validation
target held out of training: data.split=holdout) of every width x learning rate, each width's optimum, and how many grid steps the optimum moves across widths;
its laws use each width's best run.
"""

from models.core.config import ModelConfig
from scaling.config import DataConfig, TrainConfig, TrialConfig
from sweeps.spec import Sweep, axis, grid, ladder, tuned

BASE = TrialConfig(
    data=DataConfig(name="ml-100k", max_len=50, packed=True, split="holdout"),  # chosen by validation loss
    model=ModelConfig(family="hstu", d_model=32, blocks=2, heads=2, max_positions=61, dropout=0.2, input_dropout=0.2,
                      base_width=32),
    train=TrainConfig(batch_size=64, steps=200, learning_rate=3e-3, negatives=64, log_every=50, eval_batch_size=128),
)

WIDTHS = ladder("size", [{"model.d_model": width} for width in (32, 64, 128, 256)],
                labels=["d32", "d64", "d128", "d256"])

SWEEP = Sweep(
    name="ml100k_lr_transfer",
    description=__doc__,
    base=BASE,
    points=tuned(grid(WIDTHS, axis("parametrization", "model.parametrization", ["standard", "mup"])),
                 learning_rates=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2]),
)
