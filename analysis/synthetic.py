"""Planted laws: runs drawn from known parameters plus multiplicative noise, for validating the
fitters (does a fit recover what was planted?) and for rendering a report without a sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from analysis import chinchilla

CHINCHILLA_LIKE = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.36}


def noisy(values: np.ndarray, relative_noise: float, rng: np.random.Generator) -> np.ndarray:
    """`values` times exp(N(0, relative_noise^2))."""
    return values * np.exp(rng.normal(0.0, relative_noise, size=np.shape(values)))


def power_law(x: np.ndarray, E: float, A: float, alpha: float, direction: str, relative_noise: float,
              seed: int) -> np.ndarray:
    sign = 1.0 if direction == "falling" else -1.0
    return noisy(E + sign * A * x ** (-alpha), relative_noise, np.random.default_rng(seed))


def joint_law_runs(params: dict[str, float], n: np.ndarray, d: np.ndarray, relative_noise: float,
                   seed: int) -> np.ndarray:
    """Final losses of runs (n[i], d[i]) under L(N, D) with noise."""
    return noisy(chinchilla.predict_loss(params, n, d), relative_noise, np.random.default_rng(seed))


def isoflop_runs(params: dict[str, float], budgets: np.ndarray, sizes_per_budget: int, span_decades: float,
                 relative_noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C, loss) of runs on iso-compute slices centred on the joint law's N_opt(C), spanning
    +/- span_decades / 2 in N."""
    allocation = chinchilla.allocation(params["alpha"], params["beta"], params["A"], params["B"])
    full = {**params, **allocation}
    n_rows, c_rows = [], []
    for budget in budgets:
        centre = chinchilla.compute_optimal(full, budget)[0]
        sizes = centre * np.logspace(-span_decades / 2, span_decades / 2, sizes_per_budget)
        n_rows.append(sizes)
        c_rows.append(np.full(sizes_per_budget, budget))
    n, c = np.concatenate(n_rows), np.concatenate(c_rows)
    return n, c, joint_law_runs(params, n, c / (6 * n), relative_noise, seed)


def sweep_records(seed: int = 0) -> list[dict]:
    """A small results.jsonl-like sweep: sizes x sequence lengths x training lengths, plus one failed trial.

    Loss follows the joint law, HR@10 rises log-linearly in compute, MFU grows with size.
    """
    rng = np.random.default_rng(seed)
    records: list[dict] = []
    for d_model, blocks in ((32, 2), (64, 2), (128, 2), (256, 2)):  # N 4x apart, as the steps: IsoFLOP diagonals
        params = 12 * blocks * d_model ** 2 + 2000 * d_model
        non_embedding = 12 * blocks * d_model ** 2
        for max_len in (50, 100, 200):
            for steps in (200, 800, 3200):
                tokens = steps * 64 * max_len
                flops = 6.0 * non_embedding * tokens
                loss = float(joint_law_runs({"E": 4.0, "A": 60.0, "B": 900.0, "alpha": 0.3, "beta": 0.35},
                                            np.array([non_embedding]), np.array([tokens]), 0.005, int(rng.integers(1 << 30)))[0])
                hr = 0.02 + 0.012 * np.log(flops / 1e10) * (1 + 0.1 * np.log2(max_len / 50)) + rng.normal(0, 0.002)
                records.append({"trial_id": f"d{d_model}-l{max_len}-s{steps}", "status": "ok", "model": "hstu",
                                "params": params, "params_non_embedding": non_embedding, "d_model": d_model,
                                "blocks": blocks, "max_len": max_len, "steps": steps, "tokens": tokens,
                                "train_flops": flops, "wall_seconds": flops / 2e10,
                                "mfu": 0.05 + 0.1 * np.log10(d_model / 16) + rng.normal(0, 0.005),
                                "peak_flops": 1e12, "final_train_loss": loss * 0.98, "eval_loss": loss,
                                "hr@10": float(max(hr, 1e-3)), "ndcg@10": float(max(hr, 1e-3)) * 0.55,
                                "hr@50": float(max(hr, 1e-3)) * 2.2, "ndcg@50": float(max(hr, 1e-3)) * 0.7,
                                "mrr": float(max(hr, 1e-3)) * 0.4})
    records.append({"trial_id": "d512-l200-s3200", "status": "failed: out of memory", "model": "hstu"})
    return records


def write_curves(records: list[dict], workdir: Path, points: int = 4, seed: int = 0) -> None:
    """WORKDIR/trials/ID/metrics.jsonl for every ok record: `points` evaluations at equal steps
    along its training, loss from the same joint law at the tokens seen by then (the training
    curves of a sweep's report), the last one its final result."""
    rng = np.random.default_rng(seed)
    law = {"E": 4.0, "A": 60.0, "B": 900.0, "alpha": 0.3, "beta": 0.35}
    for record in records:
        if record.get("status") != "ok":
            continue
        lines = []
        for k in range(1, points + 1):
            step = record["steps"] * k // points
            tokens = record["tokens"] * k / points
            flops = record["train_flops"] * k / points
            loss = record["eval_loss"] if k == points else float(
                joint_law_runs(law, np.array([record["params_non_embedding"]]), np.array([tokens]), 0.005,
                               int(rng.integers(1 << 30)))[0])
            hr = record["hr@10"] if k == points else record["hr@10"] * (0.5 + 0.5 * k / points)
            lines.append(json.dumps({"step": step, "progress/tokens": tokens, "progress/train_flops": flops,
                                     "eval/valid_loss": loss, "eval/valid_hr@10": hr}))
        folder = Path(workdir) / "trials" / record["trial_id"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
