"""`python -m scaling.coord_check`: µP's coordinate check (Tensor Programs V, figures 5 and 11).

The same trial at several widths (d_model; heads fixed), standard and µP, a few Adam steps on the
same batches. After each step, per layer (Model.coordinates: the blocks' outputs), the typical
size of a coordinate of the activations, mean |x_t|, and of their change since initialisation,
mean |x_t - x_0|. In the standard parametrization, the change grows with width once training
starts (each hidden weight moves by ~ lr per coordinate, so its output by ~ lr x width); under
µP it stays within a constant band, which is what lets a learning rate tuned narrow transfer.

  python -m scaling.coord_check --preset hstu-ml1m --data ml-100k --widths 32,64,128,256 \\
      --steps 4 --set train.learning_rate=1e-2 [--per-width d_ff=4] --out DIR [--json]

writes DIR/coord_check.jsonl (one record per parametrization, width, step and layer) and
DIR/coord_check.{png,svg}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from data.errors import DataError
from scaling.config import ConfigError, TrialConfig, with_overrides
from scaling.engine.compiled import build_trainer
from scaling.engine.mesh import make_mesh


def check(config: TrialConfig, num_items: int, batches: Sequence[dict], widths: Sequence[int],
          parametrizations: Sequence[str] = ("standard", "mup"), log: Callable[[str], None] = lambda m: None,
          per_width: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One record per (parametrization, width, step 0..len(batches), layer): activation and
    update (mean |x_t - x_0|) sizes, on batches[0] after each step on batches[0..t-1]; µP's base
    width is the narrowest. per_width: other model widths that scale with d_model, as ratios
    ({"d_ff": 4} gives d_ff = 4 d_model)."""
    mesh = make_mesh("data=1", jax.devices()[:1])
    records = []
    for name in parametrizations:
        for width in widths:
            log(f"coordinate check: {name} d_model={width}")
            scaled = {key: int(round(ratio * width)) for key, ratio in (per_width or {}).items()}
            model = dataclasses.replace(config.model, d_model=width, parametrization=name, base_width=min(widths),
                                        **scaled)
            trial = dataclasses.replace(config, model=model, mesh=dataclasses.replace(config.mesh, spec="data=1"))
            trainer = build_trainer(trial, num_items, mesh, total_steps=len(batches))
            with trainer.context():
                coordinates = jax.jit(trainer.functions.model.coordinates)
                probe = trainer.train_batch(batches[0])
                state = trainer.init(jax.random.key(trial.train.seed))
                first = jax.device_get(coordinates(state["params"], probe))
                for step in range(len(batches) + 1):
                    if step:
                        state, _ = trainer.train_step(state, trainer.train_batch(batches[step - 1]), jax.random.key(1))
                    now = first if not step else jax.device_get(coordinates(state["params"], probe))
                    for layer in sorted(now):
                        records.append({"parametrization": name, "width": width, "step": step, "layer": layer,
                                        "activation": float(np.mean(np.abs(now[layer]))),
                                        "update": float(np.mean(np.abs(now[layer] - first[layer])))})
    return records


def growth(records: Sequence[dict], parametrization: str, step: int, key: str = "update") -> float:
    """The largest ratio, over layers, of `key` at the widest width to it at the narrowest."""
    rows = [r for r in records if r["parametrization"] == parametrization and r["step"] == step]
    widths = sorted({r["width"] for r in rows})
    by = {(r["layer"], r["width"]): r[key] for r in rows}
    return max(by[(layer, widths[-1])] / by[(layer, widths[0])] for layer in {r["layer"] for r in rows})


def plot(records: Sequence[dict], stem: Path) -> list[Path]:
    """Update size against width, one panel per parametrization, a line per step and layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["parametrization"] for r in records}, key=lambda n: n != "standard")
    steps = sorted({r["step"] for r in records if r["step"] > 0})
    layers = sorted({r["layer"] for r in records})
    figure, panels = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), sharey=True, squeeze=False)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(steps)))
    for panel, name in zip(panels[0], names):
        for color, step in zip(colors, steps):
            for index, layer in enumerate(layers):
                rows = sorted((r for r in records if (r["parametrization"], r["step"], r["layer"]) == (name, step, layer)),
                              key=lambda r: r["width"])
                panel.plot([r["width"] for r in rows], [r["update"] for r in rows], marker="o", ms=3, color=color,
                           alpha=0.9, label=f"step {step}" if index == 0 else None,
                           linestyle=("-", "--", ":", "-.")[index % 4])
        panel.set_xscale("log", base=2)
        panel.set_yscale("log")
        panel.set_xlabel("width d_model")
        panel.set_title(f"{'µP' if name == 'mup' else 'standard'}: growth x{growth(records, name, steps[-1]):.2g}")
        panel.legend(fontsize=7)
    panels[0][0].set_ylabel("mean |x_t - x_0| per coordinate")
    figure.suptitle(f"Coordinate check: block outputs ({', '.join(layers)}; line style per block)", fontsize=9)
    figure.tight_layout()
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path, dpi=130)
    plt.close(figure)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scaling.coord_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hstu-ml1m", help="a scaling.train preset")
    parser.add_argument("--model", help="model family, if not the preset's")
    parser.add_argument("--data", default="ml-100k")
    parser.add_argument("--widths", default="32,64,128,256", help="d_model values; µP's base is the narrowest")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--per-width", action="append", metavar="KEY=RATIO", default=[],
                        help="a model width that scales with d_model, e.g. d_ff=4 (d_ff = 4 x d_model)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", required=True, help="folder for coord_check.jsonl and the figure")
    parser.add_argument("--json", action="store_true", help="print the growth factors as one JSON object")
    args = parser.parse_args(argv)
    from data.dataset import prepare_section
    from data.pipeline import PipelineConfig, train_dataset
    from data.split import leave_one_out
    from scaling.presets import preset

    try:
        widths = [int(w) for w in args.widths.split(",")]
        if len(widths) < 2 or args.steps < 1:
            raise ConfigError(f"--widths {args.widths!r} needs two widths or more and --steps at least 1")
        overrides = ([f"model.family={args.model}"] if args.model else []) + [f"data.name={args.data}",
                                                                                "model.dropout=0", *(args.set or [])]
        config = with_overrides(preset(args.preset), overrides)
        prepared = prepare_section(config.data)
        split = leave_one_out(prepared.sequences, config.data.split)
        pipeline = PipelineConfig(batch_size=config.train.batch_size, row_len=config.data.row_len, seed=config.train.seed)
        iterator = iter(train_dataset(split.train, pipeline))
        batches = [next(iterator) for _ in range(args.steps)]
        per_width = {key.removeprefix("model."): float(ratio) for key, _, ratio in
                     (item.partition("=") for item in args.per_width)}
        records = check(config, prepared.sequences.num_items, batches, widths,
                        log=lambda m: print(m, file=sys.stderr, flush=True), per_width=per_width)
    except (ValueError, TypeError, ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coord_check.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    figures = plot(records, out / "coord_check")
    summary = {name: growth(records, name, args.steps) for name in ("standard", "mup")}
    print(json.dumps({"growth": summary, "figures": [str(p) for p in figures]}, sort_keys=True) if args.json else
          "\n".join(f"{name}: update at widest / narrowest width, largest over layers, step {args.steps}: {value:.3g}"
                    for name, value in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
