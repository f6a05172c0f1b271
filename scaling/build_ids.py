"""`python -m scaling.build_ids` (also `python -m data semantic-ids`): semantic IDs for every item
of a dataset (L residual codes + a collision code) and their quality, written as an artefact.

It is a command of the engine's layer because one source of item vectors, checkpoint:WORKDIR,
reads a trained trial (scaling/engine/trained_table.py); the IDs themselves are the
semantic_ids/ stage's."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from data.cli import dataset_arguments, log, prepare_dataset, run_and_print
from scaling.engine import trained_table
from semantic_ids import artefact
from semantic_ids.artefact import METHODS, SemanticIdConfig

PROG = "python -m data semantic-ids"  # the name users know it by; python -m scaling.build_ids is the same


def build_ids(args: argparse.Namespace) -> dict:
    config = SemanticIdConfig(
        method=args.method, levels=args.levels, codebook=args.codebook, source=args.source, seed=args.seed,
        dim=args.dim, window=args.window, n_init=args.n_init, lloyd=args.lloyd, balanced_iters=args.balanced_iters,
        rqvae_steps=args.rqvae_steps)
    prepared = prepare_dataset(args)
    ids = artefact.build(prepared, config, mesh=_row_mesh(), use_cache=not args.no_cache, log=log,
                         trained_table=trained_table.read)
    artefact.save(ids, Path(args.out))
    log(f"wrote {args.out}: {len(ids.item_ids)} items x {ids.codes.shape[1]} codes")
    return {"dataset": args.dataset, "out": args.out, **config.to_dict(), "input_hash": ids.input_hash,
            "items": int(len(ids.item_ids)), **ids.quality}


def _row_mesh():
    """A one-axis mesh over every device when there are several (quantisers shard items over it)."""
    import jax
    from jax.sharding import Mesh

    if jax.device_count() == 1:
        return None
    return Mesh(np.asarray(jax.devices()), ("rows",))


def parser() -> argparse.ArgumentParser:
    what = "build semantic IDs (residual codes + a collision code) for every item and measure their quality"
    ids = argparse.ArgumentParser(prog=PROG, description=what)
    dataset_arguments(ids, as_flag=True)
    defaults = SemanticIdConfig()
    ids.add_argument("--method", choices=METHODS, default=defaults.method)
    ids.add_argument("--levels", type=int, default=defaults.levels, help="residual levels L (the ID has L + 1 codes)")
    ids.add_argument("--codebook", type=int, default=defaults.codebook, help="codes per level K")
    ids.add_argument("--source", default=defaults.source,
                     help="item vectors: metadata, cooccurrence, checkpoint:WORKDIR, npy:FILE, or A+B")
    ids.add_argument("--seed", type=int, default=defaults.seed)
    ids.add_argument("--dim", type=int, default=defaults.dim, help="width of each SVD-reduced vector part")
    ids.add_argument("--window", type=int, default=defaults.window, help="co-occurrence window in training sequences")
    ids.add_argument("--n-init", type=int, default=defaults.n_init, help="k-means restarts per level")
    ids.add_argument("--lloyd", choices=("full", "minibatch"), default=defaults.lloyd)
    ids.add_argument("--balanced-iters", type=int, default=defaults.balanced_iters,
                     help="balanced Lloyd rounds over all items (rqkmeans-balanced)")
    ids.add_argument("--rqvae-steps", type=int, default=defaults.rqvae_steps)
    ids.add_argument("--out", required=True, help="write the artefact (.npz) here (it is also kept in the cache)")
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    return run_and_print(build_ids, parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
