"""HSTU vs SASRec on MovieLens-20M, a compute-optimal (IsoFLOP) study for a TPU v5p slice.

python -m sweeps show sweeps/configs/ml20m_v5p.py
python -m sweeps show sweeps/configs/ml20m_v5p.py --accelerator v5p-32   # HBM per chip, chip-hours
python -m sweeps run sweeps/configs/ml20m_v5p.py --launcher queued-resources --dry-run \
    --project my-project --zone us-east5-a --workdir gs://my-bucket/ml20m_v5p

Each budget gives every size the steps that spend it (analytic FLOPs of packed rows), so the
minimum loss per budget traces the compute-optimal model size (Chinchilla approach 2).
"""

from models.core.config import ModelConfig
from scaling.config import DataConfig, MeshConfig, TrainConfig, TrialConfig
from sweeps.spec import Sweep, axis, grid, isoflop, ladder

ML20M_ITEMS = 26_744  # movies with at least one rating in ml-20m/ratings.csv

BASE = TrialConfig(
    data=DataConfig(name="ml-20m", max_len=200, packed=True),
    model=ModelConfig(family="hstu", max_positions=211, dropout=0.2, input_dropout=0.2, compute_dtype="bfloat16"),
    train=TrainConfig(batch_size=1024, learning_rate=1e-3, schedule="cosine", warmup_steps=200, negatives=512,
                      log_every=100, eval_every=2000, eval_batch_size=1024, checkpoint_every=1000),
    mesh=MeshConfig("auto"),
)

SIZES = ladder("size", [
    {"model.blocks": 4, "model.d_model": 256, "model.heads": 4},
    {"model.blocks": 8, "model.d_model": 384, "model.heads": 6},
    {"model.blocks": 12, "model.d_model": 512, "model.heads": 8},
    {"model.blocks": 16, "model.d_model": 768, "model.heads": 12},
    {"model.blocks": 24, "model.d_model": 1024, "model.heads": 16},
], labels=["d256x4", "d384x8", "d512x12", "d768x16", "d1024x24"])

SWEEP = Sweep(
    name="ml20m_v5p",
    description=__doc__,
    base=BASE,
    points=isoflop([1e17, 3e17, 1e18], grid(SIZES, axis("model", "model.family", ["hstu", "sasrec"])), BASE,
                   ML20M_ITEMS),
    launcher={"accelerator_type": "v5p-32", "runtime_version": "v2-alpha-tpuv5", "spot": True},
    num_items=ML20M_ITEMS,
)
