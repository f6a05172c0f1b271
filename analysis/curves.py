"""Training curves: every trial's evaluations during training, read from its metrics.jsonl, at
the tokens and FLOPs it had trained on by then; and the compute frontier of the whole curves.

Chinchilla's approach 1 (Hoffmann et al. 2022, section 3.1): for each compute value the lowest
loss any run reached with that much compute, over all runs' intermediate evaluations, and a power
law L(C) fitted to that lower envelope. The final-point frontier (analysis/frontier.py) takes one
point per run; this one uses every evaluation, so it sees where smaller models stop improving.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import FitError

CURVE_COLUMNS = ("trial_id", "step", "tokens", "train_flops", "eval_loss", "hr@10")


def _interpolated(steps: np.ndarray, known_steps: list[int], known: list[float]) -> np.ndarray:
    """Cumulative counts at `steps` from the training records' (older metrics files' eval
    records carry none): linear between logged steps."""
    if not known_steps:
        return np.full(len(steps), np.nan)
    return np.interp(steps, known_steps, known)


def metrics_lines(trial_folder: Path) -> list[str]:
    """A trial's metrics records: metrics.jsonl, then metrics.parts/*.jsonl in name order (the
    parts an object-store workdir is written in, scaling/services/metrics_log.py)."""
    paths = [trial_folder / "metrics.jsonl", *sorted((trial_folder / "metrics.parts").glob("*.jsonl"))]
    return [line for path in paths if path.is_file() for line in path.read_text().splitlines()]


def trial_curve(lines: list[str]) -> pd.DataFrame:
    """The eval records of one trial's metrics lines: step, tokens, train_flops, eval_loss
    (validation), hr@10 (validation); empty when it has none."""
    rows, train_steps, train_tokens, train_flops = [], [], [], []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "learning/loss" in record and "progress/tokens" in record:
            train_steps.append(record["step"])
            train_tokens.append(record["progress/tokens"])
            train_flops.append(record["progress/train_flops"])
        if "eval/valid_loss" in record or "eval/valid_hr@10" in record:
            rows.append({"step": record["step"], "tokens": record.get("progress/tokens", np.nan),
                         "train_flops": record.get("progress/train_flops", np.nan),
                         "eval_loss": record.get("eval/valid_loss", np.nan),
                         "hr@10": record.get("eval/valid_hr@10", np.nan)})
    curve = pd.DataFrame(rows, columns=CURVE_COLUMNS[1:]).drop_duplicates("step", keep="last")
    for column, known in (("tokens", train_tokens), ("train_flops", train_flops)):
        missing = curve[column].isna().to_numpy()
        if missing.any():
            curve.loc[missing, column] = _interpolated(curve["step"].to_numpy()[missing], train_steps, known)
    return curve.sort_values("step").reset_index(drop=True)


def load_curves(results_path: Path, trial_ids: list[str]) -> pd.DataFrame:
    """Every trial's curve, from WORKDIR/trials/ID/metrics.jsonl beside WORKDIR/results.jsonl;
    FitError when no trial has one (results that are not a sweep's, or curves not kept)."""
    folder = Path(results_path).parent / "trials"
    parts = []
    for trial_id in trial_ids:
        lines = metrics_lines(folder / str(trial_id))
        if lines:
            curve = trial_curve(lines)
            if len(curve):
                parts.append(curve.assign(trial_id=trial_id))
    if not parts:
        raise FitError(f"no evaluation records in {folder}/*/metrics.jsonl (training curves need the sweep's "
                       f"trial folders beside its results file)")
    return pd.concat(parts, ignore_index=True)[list(CURVE_COLUMNS)]
