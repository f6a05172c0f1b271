"""`python -m benchmarks.beam_search`: beam search against the exact scorer, and decoding speed.

  --workdir TRIAL [--workdir TRIAL ...] --beams 5,10,20,50 [--batch 128 --beam 20] [--json]

For every trained encoder-decoder trial (its config.json and newest checkpoint): test-split HR@10,
NDCG@10 and MRR by the exact scorer and by constrained beam search at each width, the fraction of
users whose beam top 10 equals the exact top 10, and the fraction of returned IDs that are no
item's with and without constraints. Then the decoding throughput: users per second of the
jitted, constrained beam search (encoder, cross keys/values once, cached decoder) on --batch users
at --beam, median of --repeats after warm-up, with its FLOPs per user and MFU against a 2048^3
float32 matmul rated beside it. Without --workdir, only the throughput, of the tiger-ml100k
preset's shape with random weights and synthetic IDs for 1682 items.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise ValueError(text)
    return values


def trained(workdir: Path):
    """(config, prepared data, leave-one-out split, host params, step) of a finished trial."""
    from data.dataset import prepare_section
    from data.split import leave_one_out
    from scaling.engine import checkpoint
    from scaling.config import from_json

    config = from_json((workdir / "config.json").read_text())
    prepared = prepare_section(config.data)
    params, step = checkpoint.restore_params(workdir / "checkpoints")
    return config, prepared, leave_one_out(prepared.sequences, config.data.split), params, step


def evaluate_beams(workdir: Path, beams: Sequence[int]) -> dict:
    """Exact and beam metrics of one trial's test split at every beam width."""
    import jax

    from scaling.config import with_overrides
    from scaling.engine.mesh import make_mesh
    from scaling.engine.evaluation import evaluate
    from scaling.engine.compiled import build_trainer

    config, prepared, split, host_params, step = trained(workdir)
    mesh = make_mesh(config.mesh.spec)
    row = {"workdir": str(workdir), "trial_id": config.trial_id, "step": step, "beams": {}}
    for width in beams:
        wide = with_overrides(config, [f"model.beam_width={width}", "model.beam_items=10"])
        trainer = build_trainer(wide, prepared.sequences.num_items, mesh, 1, prepared=prepared, log=_log)
        with trainer.context():
            params = jax.device_put(host_params, trainer.shardings["params"])
            started = time.perf_counter()
            metrics = evaluate(trainer, params, split.test)
        _log(f"{config.trial_id} beam {width}: beam HR@10 {metrics.get('beam_hr@10', float('nan')):.4f}, "
             f"exact HR@10 {metrics['hr@10']:.4f} ({time.perf_counter() - started:.0f} s)")
        row["exact"] = {k: metrics[k] for k in ("hr@10", "ndcg@10", "mrr")}
        row["beams"][width] = {k: metrics[k] for k in metrics if k.startswith("beam_") or k.endswith("invalid_rate")}
    return row


def throughput(model, params, batch: int, width: int, repeats: int, num_items: int) -> dict:
    """Users per second of encode + constrained beam search on `batch` random users."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from models.core import family as families
    from models.encdec.network import EncDecNetwork, user_tokens
    from scaling.engine import hardware

    cfg = model.config
    rng = np.random.default_rng(0)
    history = jnp.asarray(rng.integers(1, num_items + 1, (batch, cfg.history_items)), jnp.int32)
    users = jnp.asarray(user_tokens(np.arange(batch), cfg))

    @jax.jit
    def decode(params, history, users):
        tokens = model.encoder_tokens(history, users)
        memory = model.network.apply({"params": params}, tokens, True, method=EncDecNetwork.encode)
        found = model.beam_search(params, memory, tokens != 0, width, returned=cfg.beam_items)
        return found["items"][:, : cfg.beam_items], found["scores"][:, : cfg.beam_items]

    jax.block_until_ready(decode(params, history, users))
    probe = hardware.MatmulProbe("float32")
    times, peaks = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(decode(params, history, users))
        times.append(time.perf_counter() - started)
        peaks.append(max(probe.rate() for _ in range(3)))
    seconds, peak = statistics.median(times), statistics.median(peaks)
    per_user = families.of(cfg).beam_decode_flops(cfg, width)
    return {"batch": batch, "beam": width, "seconds": seconds, "users_per_second": batch / seconds,
            "decode_flops_per_user": per_user, "peak_flops": peak, "mfu": batch * per_user / seconds / peak}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.beam_search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, action="append", default=[], help="a finished encdec trial")
    parser.add_argument("--beams", default="5,10,20,50", help="comma-separated beam widths to evaluate")
    parser.add_argument("--batch", type=int, default=128, help="users per decoding batch (throughput)")
    parser.add_argument("--beam", type=int, default=20, help="beam width of the throughput measurement")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        beams = _ints(args.beams)
    except ValueError:
        print(f"error: --beams {args.beams!r} is not a comma-separated list of positive integers", file=sys.stderr)
        return 2
    if args.batch < 1 or args.beam < 1 or args.repeats < 1:
        print("error: --batch, --beam and --repeats must be positive", file=sys.stderr)
        return 2
    for workdir in args.workdir:
        if not (workdir / "config.json").is_file() or not (workdir / "checkpoints").is_dir():
            print(f"error: --workdir {workdir}: no config.json and checkpoints/ (not a trial directory)", file=sys.stderr)
            return 2

    import flax.linen as nn
    import jax

    from models.core import family as families
    from scaling.presets import preset
    from scaling.engine.compiled import trial_model

    rows = [evaluate_beams(workdir, beams) for workdir in args.workdir]
    if args.workdir:
        config, prepared, _, host_params, _ = trained(args.workdir[0])
        num_items = prepared.sequences.num_items
        model = trial_model(config, num_items, prepared, _log)
        params = jax.device_put(host_params)
    else:
        config = preset("tiger-ml100k")
        num_items = 1682
        model = families.of(config.model).build(config.model, config.train, num_items)
        params = nn.meta.unbox(model.init(jax.random.key(0), {}))
    speed = throughput(model, params, args.batch, args.beam, args.repeats, num_items)
    _log(f"decoding: {speed['users_per_second']:.0f} users/s at beam {args.beam}, batch {args.batch} "
         f"(MFU {speed['mfu']:.1%})")
    result = {"trials": rows, "throughput": speed, "device_kind": jax.devices()[0].device_kind}
    print(json.dumps(result, sort_keys=True) if args.json else json.dumps(result, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
