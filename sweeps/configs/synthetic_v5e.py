"""Data scaling on the synthetic behaviour generator, up to billions of tokens, on TPU v5e pods.

python -m sweeps run sweeps/configs/synthetic_v5e.py --launcher xpk --dry-run --cluster my-cluster

The generator reports its true per-event entropy, so the fitted loss floor E of L(D) can be
checked against the irreducible loss.
"""

from models.core.config import ModelConfig
from scaling.config import DataConfig, MeshConfig, TrainConfig, TrialConfig
from sweeps.spec import Sweep, axis, grid, ladder

USERS = [100_000, 1_000_000, 10_000_000]

BASE = TrialConfig(
    data=DataConfig(name="synthetic:users=100000,items=100000,seed=0", max_len=512, packed=True),
    model=ModelConfig(family="hstu", max_positions=523, dropout=0.0, input_dropout=0.0, compute_dtype="bfloat16"),
    train=TrainConfig(batch_size=512, epochs=1.0, learning_rate=1e-3, schedule="cosine", warmup_steps=500,
                      negatives=1024, log_every=100, eval_batch_size=1024, checkpoint_every=2000),
    mesh=MeshConfig("auto"),
)

SWEEP = Sweep(
    name="synthetic_v5e",
    description=__doc__,
    base=BASE,
    points=grid(
        ladder("size", [{"model.blocks": 4, "model.d_model": 256, "model.heads": 4},
                        {"model.blocks": 8, "model.d_model": 512, "model.heads": 8},
                        {"model.blocks": 16, "model.d_model": 1024, "model.heads": 16}], ["d256", "d512", "d1024"]),
        axis("users", "data.name", [f"synthetic:users={u},items=100000,seed=0" for u in USERS], USERS),
    ),
    launcher={"accelerator_type": "v5litepod-256", "num_slices": 1, "runtime_version": "v2-alpha-tpuv5-lite"},
)
