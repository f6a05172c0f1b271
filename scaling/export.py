"""`python -m scaling.export`: a trained trial as a directory that serves without the training code.

  --workdir TRIAL_DIR [--step N|last|best] [--metric valid_hr@10] --out EXPORT_DIR
  [--k 50] [--platforms cpu,cuda,tpu] [--json]

EXPORT_DIR holds:
  config.json          the trial config
  items.json           internal -> original item ids (item_ids[i - 1] is dense item i), user ids
                       (for families that hash users), the training popularity order (fallback)
  params.safetensors   the parameters only, no optimizer state, flat "a/b/c" names
  serve.jax            jax.export serialisation (StableHLO) of
                       (params, histories, timestamps, lengths, users) -> (items, scores),
                       batch dimension symbolic, lowered for every platform named
  export.json          what the loader reads: signature, k, history length, platforms, provenance
  README.txt           the same for a person
  MANIFEST.sha256      sha256 of every other file (`sha256sum -c MANIFEST.sha256` checks it too)

Parameters are stored as safetensors: one self-describing file (names, dtypes and shapes in a
JSON header), read by memory map with no code execution, and the loader then needs only numpy and
the small safetensors package, where an orbax checkpoint would bring orbax, tensorstore and the
train state's tree layout. The serving function takes the parameters as arguments, so serve.jax
stays small and a re-trained model of the same shape reuses it. `python -m scaling.serve` loads it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from data.dataset import prepare_section
from data.errors import DataError
from data.split import leave_one_out
from models.core import family as families
from models.core.serving import portable_kernels, serving_batch
from scaling.config import ConfigError, from_json
from scaling.engine import checkpoint
from scaling.engine.compiled import trial_model
from scaling.serve import MANIFEST, sha256
from scaling.services.metrics_log import read_records
from scaling.services.workdir import is_local

FORMAT_VERSION = 1
PLATFORMS = ("cpu", "cuda", "tpu")
SIGNATURE = {
    "inputs": {
        "params": "dict name -> array, as params.safetensors holds them",
        "histories": "int32 (B, T): dense item ids, oldest first, left-aligned, 0 after the row's length",
        "timestamps": "int32 (B, T): seconds, any origin (only differences within a row count)",
        "lengths": "int32 (B,): history items per row, 0..T",
        "users": "int32 (B,): dense user index (items.json user_ids), -1 for a user training did not see",
    },
    "outputs": {
        "items": "int32 (B, k): dense item ids, best first, never an item of the row's history; 0 = none found",
        "scores": "float32 (B, k): the family's score of each item (cosine for decoder-only families, "
                  "log-probability of the semantic ID for the encoder-decoder); -inf where items is 0",
    },
}
RULES = """Request rules (scaling.serve applies them before calling serve.jax):
- Unknown item ids (not in items.json) are dropped from the history and listed under "unknown_items".
- A history longer than T keeps its most recent T items; "truncated" says how many were dropped.
- An empty history (after dropping unknown ids) is answered with the most popular training items
  not in it, "fallback": "popularity", scores = the items' share of training interactions.
- Without timestamps every item counts as simultaneous (families with a time signal see zero gaps).
- A user id unknown to the training data serves as user -1 (families that hash users then read
  the history alone)."""


class ExportError(Exception):
    """A trial that cannot be exported as asked: one line for the user."""


@dataclasses.dataclass(frozen=True)
class TrainedTrial:
    """A finished (or checkpointed) trial, rebuilt for inference."""

    workdir: epath.Path
    config: Any  # scaling.config.TrialConfig
    family: Any
    model: Any
    params: Any  # nested dict of host arrays
    step: int
    prepared: Any  # data.dataset.PreparedData
    train_sequences: Any  # data.sequences.Sequences: what the model trained on


def checkpoint_steps(workdir: epath.Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "state").is_dir()) \
        if folder.is_dir() else []


def _eval_records(workdir: epath.Path) -> dict[int, dict]:
    records: dict[int, dict] = {}
    for record in read_records(workdir):
        if any(key.startswith("eval/") for key in record):
            records.setdefault(int(record["step"]), {}).update(
                {k[len("eval/"):]: v for k, v in record.items() if k.startswith("eval/")})
    return records


def choose_step(workdir: epath.Path, step: str, metric: str) -> int:
    """The checkpoint step `step` names: an integer, "last", or "best" (the kept checkpoint whose
    evaluation in metrics.jsonl has the best `metric`; losses are minimised, the rest maximised)."""
    steps = checkpoint_steps(workdir)
    if not steps:
        raise ExportError(f"{workdir}: no checkpoint under {workdir / 'checkpoints'}")
    if step == "last":
        return steps[-1]
    if step == "best":
        evaluated = _eval_records(workdir)
        scored = [(evaluated[s][metric], s) for s in steps if metric in evaluated.get(s, {})]
        if not scored:
            raise ExportError(f"{workdir}: no kept checkpoint (steps {steps}) has an evaluation of {metric!r} "
                              f"in metrics.jsonl")
        return (min if "loss" in metric else max)(scored)[1]
    if not step.isdigit() or int(step) not in steps:
        raise ExportError(f"--step {step}: not a kept checkpoint of {workdir} (steps {steps}, or last, best)")
    return int(step)


def load_trial(workdir: epath.Path, step: int | None = None, log: Callable[[str], None] | None = None) -> TrainedTrial:
    """The trial's config, data, model and the parameters of checkpoint `step` (default the last)."""
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise ExportError(f"{workdir}: no config.json (not a trial workdir)")
    config = from_json(config_path.read_text())
    prepared = prepare_section(config.data)
    split = leave_one_out(prepared.sequences, config.data.split)
    family = families.of(config.model)
    model = trial_model(config, prepared.sequences.num_items, prepared, log)
    try:
        params, step = checkpoint.restore_params(workdir / "checkpoints", step)
    except FileNotFoundError as error:
        raise ExportError(str(error)) from None
    return TrainedTrial(workdir, config, family, model, params, step, prepared, split.train)


def flatten(params: Any) -> dict[str, np.ndarray]:
    """{"a/b/c": array} of a nested dict of arrays."""
    flat: dict[str, np.ndarray] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key in sorted(node):
                visit(f"{prefix}/{key}" if prefix else str(key), node[key])
        else:
            flat[prefix] = np.ascontiguousarray(np.asarray(node))

    visit("", dict(params))
    return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        node = nested
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def serving_function(trial: TrainedTrial, k: int) -> Callable:
    """(flat params, histories, timestamps, lengths, users) -> (items, scores), traceable."""
    config = trial.config

    def serve(params: dict, histories: jax.Array, timestamps: jax.Array, lengths: jax.Array,
              users: jax.Array) -> tuple[jax.Array, jax.Array]:
        batch = serving_batch(config.model, histories, timestamps, lengths, users, config.data.row_len)
        top = trial.model.top_items(unflatten(params), batch, k)
        return top["items"], top["scores"]

    return serve


def export_function(trial: TrainedTrial, k: int, platforms: Sequence[str]) -> jax.export.Exported:
    """serve() lowered for `platforms` with a symbolic batch dimension b. The portable kernels are
    traced (not the XLA:CPU forms of models/core/layers.py), so one module suits every platform."""
    flat = flatten(trial.params)
    (b,) = jax.export.symbolic_shape("b")
    t = trial.config.data.max_len
    specs = ({name: jax.ShapeDtypeStruct(v.shape, v.dtype) for name, v in flat.items()},
             jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.int32),
             jax.ShapeDtypeStruct((b,), jnp.int32), jax.ShapeDtypeStruct((b,), jnp.int32))
    with portable_kernels():
        return jax.export.export(jax.jit(serving_function(trial, k)), platforms=tuple(platforms))(*specs)


def code_version() -> str:
    """The repository's git commit (with "+dirty" for uncommitted changes), or "unknown"."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def step_metrics(workdir: epath.Path, step: int) -> dict[str, float]:
    """The metrics of `step`: result.json's when it is the trial's final step, else its eval record."""
    result_path = workdir / "result.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        if result.get("steps") == step:
            keys = [k for k, v in result.items() if isinstance(v, float) and
                    (k.split("_")[-1].startswith(("hr@", "ndcg@", "mrr")) or k in ("eval_loss", "test_loss", "mrr"))]
            return {k: result[k] for k in sorted(keys)}
    return {k: v for k, v in sorted(_eval_records(workdir).get(step, {}).items()) if isinstance(v, (int, float))}


def popularity(train_sequences: Any, count: int) -> tuple[list[int], list[float]]:
    """The `count` most interacted-with dense items of the training sequences and their shares."""
    counts = np.bincount(train_sequences.items, minlength=train_sequences.num_items + 1)[1:]
    order = np.argsort(-counts, kind="stable")[:count]
    return [int(i) + 1 for i in order], [float(counts[i] / max(counts.sum(), 1)) for i in order]


def _readme(info: dict) -> str:
    inputs = "\n".join(f"  {name:<11} {text}" for name, text in info["signature"]["inputs"].items())
    outputs = "\n".join(f"  {name:<11} {text}" for name, text in info["signature"]["outputs"].items())
    metrics = "\n".join(f"  {k} = {v:.6g}" for k, v in info["metrics"].items()) or "  (none recorded)"
    return f"""Exported {info['family']} model of trial {info['trial_id']}, step {info['step']}

Serve it: python -m scaling.serve THIS_DIR --history ID,ID,... [--timestamps S,S,...] --k 10 --json
(needs only jax, numpy and safetensors). Or in Python:
  exported = jax.export.deserialize(open("serve.jax", "rb").read())
  items, scores = exported.call(safetensors.numpy.load_file("params.safetensors"),
                                histories, timestamps, lengths, users)

serve.jax: T = {info['history_length']}, k = {info['k']}, any batch size B, platforms {', '.join(info['platforms'])}.
Inputs:
{inputs}
Outputs:
{outputs}

{RULES}

Provenance:
  trial id      {info['trial_id']}
  trial dir     {info['workdir']}
  step          {info['step']}
  data          {info['data']} ({info['num_items']} items, {info['num_users']} users)
  code version  {info['code_version']}
  exported      {info['created']}
  jax           {info['jax_version']}
Metrics at that step:
{metrics}
"""


def write_export(trial: TrainedTrial, out: Path, k: int, platforms: Sequence[str],
                 log: Callable[[str], None] = lambda message: None) -> dict:
    """Write EXPORT_DIR (see the module docstring); returns export.json's content."""
    from safetensors.numpy import save_file

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out}: exists and is not an empty directory")
    sequences = trial.prepared.sequences
    if k > sequences.num_items:
        raise ExportError(f"--k {k}: the catalogue has {sequences.num_items} items")
    final, out = out, out.parent / f".{out.name}.partial"  # renamed when complete: no half-written export
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log(f"lowering the serving function for {', '.join(platforms)} (k {k}, history {trial.config.data.max_len})")
    exported = export_function(trial, k, platforms)
    (out / "serve.jax").write_bytes(exported.serialize())
    save_file(flatten(trial.params), str(out / "params.safetensors"))
    (out / "config.json").write_text(trial.config.to_json())
    popular, shares = popularity(trial.train_sequences, min(sequences.num_items, k + trial.config.data.max_len))
    (out / "items.json").write_text(json.dumps({
        "item_ids": [str(i) for i in sequences.item_ids], "user_ids": [str(u) for u in sequences.user_ids],
        "popular_items": popular, "popular_shares": shares}))
    info = {
        "format_version": FORMAT_VERSION, "family": trial.config.model.family, "trial_id": trial.config.trial_id,
        "workdir": str(Path(trial.workdir).resolve() if is_local(trial.workdir) else trial.workdir),
        "step": trial.step, "metrics": step_metrics(trial.workdir, trial.step),
        "k": k, "history_length": trial.config.data.max_len, "platforms": list(exported.platforms),
        "num_items": sequences.num_items, "num_users": sequences.num_users, "data": trial.config.data.name,
        "signature": SIGNATURE, "code_version": code_version(), "jax_version": jax.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "export.json").write_text(json.dumps(info, indent=1, sort_keys=True))
    (out / "README.txt").write_text(_readme(info))
    files = sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    (out / MANIFEST).write_text("".join(f"{sha256(out / name)}  {name}\n" for name in files))
    if final.exists():
        final.rmdir()
    out.rename(final)
    return info


def export_trial(workdir: epath.Path, out: Path, step: str = "last", metric: str = "valid_hr@10", k: int = 50,
                 platforms: Sequence[str] = PLATFORMS, log: Callable[[str], None] = lambda message: None) -> dict:
    """Export checkpoint `step` (N, last, best by `metric`) of the trial in `workdir` to `out`."""
    workdir = epath.Path(workdir)
    chosen = choose_step(workdir, step, metric)
    log(f"exporting {workdir} step {chosen}")
    trial = load_trial(workdir, chosen, log)
    info = write_export(trial, out, k, platforms, log)
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    return {**info, "out": str(out), "bytes": sizes, "total_bytes": sum(sizes.values())}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scaling.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=epath.Path, required=True,
                        help="a trial's workdir (config.json, checkpoints/; local or gs://)")
    parser.add_argument("--step", default="last", help="checkpoint step: N, last, or best (by --metric)")
    parser.add_argument("--metric", default="valid_hr@10", help="metrics.jsonl eval metric that picks --step best")
    parser.add_argument("--out", type=Path, required=True, help="the export directory (must not exist or be empty)")
    parser.add_argument("--k", type=int, default=50, help="items the serving function returns (the loader's limit)")
    parser.add_argument("--platforms", default=",".join(PLATFORMS), help="comma-separated: cpu, cuda, rocm, tpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    unknown = [p for p in platforms if p not in ("cpu", "cuda", "rocm", "tpu")]
    log = lambda message: print(message, file=sys.stderr, flush=True)
    try:
        if unknown or not platforms:
            raise ExportError(f"--platforms {args.platforms!r}: known platforms are cpu, cuda, rocm, tpu")
        if args.k < 1:
            raise ExportError(f"--k {args.k}: must be at least 1")
        summary = export_trial(args.workdir, args.out, args.step, args.metric, args.k, platforms, log)
    except (ExportError, ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log(f"wrote {summary['out']}: {summary['total_bytes'] / 1e6:.2f} MB "
        f"({', '.join(f'{n} {b / 1e6:.2f} MB' for n, b in summary['bytes'].items())})")
    print(json.dumps(summary, sort_keys=True) if args.json else summary["out"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
