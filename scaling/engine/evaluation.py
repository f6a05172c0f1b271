"""A trial's evaluation: ranking metrics over every target of a split (full ranking or the
family's top-K lists), and the steps at which training evaluates."""

from __future__ import annotations

from typing import Any

import numpy as np

from data.pipeline import eval_dataset
from data.ranking import DEFAULT_KS, ranking_metrics, ranks_from_top_k
from data.split import EvalTargets


def evaluate(trainer: Any, params: Any, targets: EvalTargets) -> dict[str, float]:
    """Ranking metrics (and the family's eval loss, if it has one) over every user's target:
    from each target's rank, or from the family's top-K lists (metrics at K up to the list's
    length only). A family may add named lists beside the rank ("lists": {name: top-K}, metrics
    as name_hr@10, ...) and per-row values to average ("means": {name: (B,)}). A family that
    also ranks with the history kept ("rank_with_history") gives both rules: train.exclude_history
    picks the headline, the other is named history_included_* / history_excluded_*."""
    config = trainer.config
    ranks, ranks_with_history, losses, list_length = [], [], [], None
    named: dict[str, list] = {}
    named_length: dict[str, int] = {}
    means: dict[str, list] = {}
    for host_batch in eval_dataset(targets, config.data.row_len, config.train.eval_batch_size,
                                   history_len=config.data.max_len):
        out = trainer.eval_step(params, trainer.eval_batch(host_batch))
        valid = np.asarray(out["valid"])
        if "rank_with_history" in out:
            ranks_with_history.append(np.asarray(out["rank_with_history"])[valid])
        if "rank" in out:
            ranks.append(np.asarray(out["rank"])[valid])
        else:
            top_k = np.asarray(out["top_k"])
            list_length = top_k.shape[1]
            ranks.append(ranks_from_top_k(top_k, np.asarray(out["target"]))[valid])
        for name, top_k in out.get("lists", {}).items():
            top_k = np.asarray(top_k)
            named_length[name] = top_k.shape[1]
            named.setdefault(name, []).append(ranks_from_top_k(top_k, np.asarray(out["target"]))[valid])
        for name, values in out.get("means", {}).items():
            means.setdefault(name, []).append(np.asarray(values, np.float64)[valid])
        if "loss" in out:
            losses.append(np.asarray(out["loss"])[valid])
    ks = [k for k in DEFAULT_KS if list_length is None or k <= list_length]
    metrics = ranking_metrics(np.concatenate(ranks), ks)
    if ranks_with_history:
        with_history = ranking_metrics(np.concatenate(ranks_with_history), ks)
        if config.train.exclude_history:
            metrics.update({f"history_included_{key}": value for key, value in with_history.items()})
        else:
            metrics = {**with_history, **{f"history_excluded_{key}": value for key, value in metrics.items()}}
    for name, parts in named.items():
        shown = [k for k in DEFAULT_KS if k <= named_length[name]] or [named_length[name]]
        metrics.update({f"{name}_{key}": value for key, value in ranking_metrics(np.concatenate(parts), shown).items()})
    metrics.update({name: float(np.mean(np.concatenate(parts))) for name, parts in means.items()})
    if losses:
        metrics["loss"] = float(np.mean(np.concatenate(losses)))
    return metrics


def evaluation_steps(train: Any, total_steps: int) -> set[int]:
    """Steps before the last with a periodic evaluation: every train.eval_every, and
    train.eval_points spread evenly (the last of them is the final evaluation)."""
    steps = set(range(train.eval_every, total_steps, train.eval_every)) if train.eval_every else set()
    steps |= {round(k * total_steps / train.eval_points) for k in range(1, train.eval_points)}
    return {step for step in steps if 0 < step < total_steps}
