"""`python -m benchmarks.semantic_ids`: time the quantisers on synthetic item vectors.

  --items 100000,1000000 --dim 64 --levels 3 --codebook 256 --methods rqkmeans-balanced,rqvae

Item vectors: a seeded mixture of 1024 Gaussian clusters in --dim dimensions. For every size and
method: wall seconds of the whole quantisation (all levels, every restart; RQ-VAE: --rqvae-steps
training steps and the final encoding), and the assignment step timed alone (nearest of K
centres for every item: 2 n K d FLOPs, median of --repeats after warm-up) with its MFU against a
2048^3 float32 matmul rated beside it. Items are spread over every device (--devices N simulates
N host devices; set before jax starts).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Sequence


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def synthetic_vectors(items: int, dim: int, seed: int = 0, clusters: int = 1024):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3.0
    which = rng.integers(0, clusters, items)
    return centres[which] + rng.standard_normal((items, dim)).astype(np.float32)


def assignment_rate(x, weights, k: int, repeats: int, probe) -> dict:
    """Median seconds of one jitted nearest-centre pass over every item, its FLOPs and MFU."""
    import jax

    from semantic_ids import kmeans

    centres = x[:k]
    step = jax.jit(kmeans.nearest)
    jax.block_until_ready(step(x, centres))
    times, peaks = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(x, centres))
        times.append(time.perf_counter() - start)
        peaks.append(max(probe.rate() for _ in range(3)))
    seconds, peak = statistics.median(times), statistics.median(peaks)
    flop_count = 2.0 * x.shape[0] * k * x.shape[1]
    return {"assign_seconds": seconds, "assign_flops": flop_count, "assign_flops_per_second": flop_count / seconds,
            "peak_flops": peak, "assign_mfu": flop_count / seconds / peak}


def run_point(items: int, method: str, args: argparse.Namespace, probe) -> dict:
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from semantic_ids import kmeans
    from semantic_ids.residual_kmeans import place_rows, relative_error, residual_kmeans

    x = synthetic_vectors(items, args.dim, args.seed)
    mesh = Mesh(np.asarray(jax.devices()), ("rows",)) if jax.device_count() > 1 else None
    started = time.perf_counter()
    if method == "rqvae":
        from semantic_ids.rqvae import RQVAEOptions, train_rqvae

        quantised, _ = train_rqvae(x, args.levels, args.codebook, args.seed,
                                   RQVAEOptions(steps=args.rqvae_steps, log_every=max(args.rqvae_steps // 4, 1)),
                                   mesh=mesh, log=_log)
    else:
        options = kmeans.KMeansOptions(balanced=method == "rqkmeans-balanced", lloyd=args.lloyd)
        quantised = residual_kmeans(x, args.levels, args.codebook, args.seed, options, mesh=mesh, log=_log)
    seconds = time.perf_counter() - started
    codes = quantised.codes
    sizes = np.bincount(codes[:, 0], minlength=args.codebook)
    placed, weights = place_rows(x, mesh)
    result = {"items": items, "method": method, "dim": args.dim, "levels": args.levels, "codebook": args.codebook,
              "devices": jax.device_count(), "seconds": seconds,
              "recon_error": relative_error(x, quantised.reconstruction),
              "largest_first_level_cluster": int(sizes.max()), "balanced_cap": -(-items // args.codebook),
              "rqvae_steps": args.rqvae_steps if method == "rqvae" else None,
              **assignment_rate(placed, weights, args.codebook, args.repeats, probe)}
    _log(f"{items} items, {method}: {seconds:.1f}s, assignment step {result['assign_seconds'] * 1e3:.0f} ms "
         f"({result['assign_flops_per_second'] / 1e9:.1f} GFLOP/s, MFU {result['assign_mfu']:.1%})")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.semantic_ids", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default="100000,1000000", help="comma-separated catalogue sizes")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook", type=int, default=256)
    parser.add_argument("--methods", default="rqkmeans-balanced,rqvae")
    parser.add_argument("--lloyd", choices=("full", "minibatch"), default="full")
    parser.add_argument("--rqvae-steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", type=int, default=0, help="simulate this many host devices (CPU)")
    parser.add_argument("--out", help="append one JSON line per point to this file")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.items.split(",")]
    except ValueError:
        print(f"error: --items {args.items!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    methods = args.methods.split(",")
    known = ("rqkmeans", "rqkmeans-balanced", "rqvae")
    if any(m not in known for m in methods) or any(s < args.codebook for s in sizes) or min(args.dim, args.levels) < 1:
        print(f"error: --methods from {', '.join(known)}; every --items at least --codebook; --dim, --levels >= 1",
              file=sys.stderr)
        return 2
    if args.devices:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"
    from scaling.engine import hardware
    from scaling.services import cpu_settings

    cpu_settings.keep_freed_memory_mapped()
    probe = hardware.MatmulProbe("float32")
    points = []
    for items in sizes:
        for method in methods:
            point = run_point(items, method, args, probe)
            points.append(point)
            if args.out:
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(point, sort_keys=True) + "\n")
    if args.json:
        print(json.dumps({"points": points}, sort_keys=True))
    else:
        for p in points:
            print(f"{p['items']:>9} {p['method']:<18} {p['seconds']:8.1f}s  assign {p['assign_seconds'] * 1e3:7.1f} ms "
                  f"MFU {p['assign_mfu']:.1%}  recon {p['recon_error']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
