"""The record a finished trial writes (result.json): one flat object of sizes, tokens, FLOPs,
MFU, losses, the test metrics of the selected evaluation and of the last, and where it ran."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from data.ranking import DEFAULT_KS, ranking_metrics
from scaling.config import TrialConfig
from scaling.engine import flops
from scaling.engine.meter import StepMeter
from scaling.engine.selection import Evaluations

RESULT_METRICS = tuple(ranking_metrics(np.ones(1)))  # HR@K and NDCG@K at every K of DEFAULT_KS, MRR
VALID_METRICS = tuple(ranking_metrics(np.ones(1), DEFAULT_KS[:-1]))  # the validation ones, without the longest list
STANDARD_METRICS = frozenset({"loss", *RESULT_METRICS})


def result_record(config: TrialConfig, trainer: Any, meter: StepMeter, evaluations: Evaluations, *,
                  steps: int, steps_per_epoch: int, valid: Mapping[str, float], test: Mapping[str, float],
                  floors: Mapping[str, float], wall_seconds: float, this_run_seconds: float,
                  peak: tuple[float, str], resumed_from: int | None) -> dict[str, Any]:
    """result.json of a trial that trained `steps` steps and ended with the evaluation (valid, test).
    wall_seconds: over every resumed segment; peak: (FLOP/s of all devices, its source)."""
    data, train = config.data, config.train
    counted = flops.param_counts(config.model, trainer.num_items)
    best = evaluations.best
    return {
        "trial_id": config.trial_id,
        "status": "ok",
        "model": config.model.family,
        "data": data.name,
        "split": data.split,
        "params": trainer.param_count,
        "params_non_embedding": counted["params_non_embedding"],
        "params_active": counted["params_active"],
        **trainer.family.summary(config.model),
        **trainer.functions.model.provenance(),
        "max_len": data.max_len,
        "packed": data.packed,
        "seed": train.seed,
        "batch_size": train.batch_size,
        "grad_accum": trainer.grad_accum,
        "steps": steps,
        "epochs": steps / steps_per_epoch,
        "tokens": meter.tokens,
        "train_flops": meter.flops,
        "six_n_d": flops.six_n_d(counted["params_non_embedding"], meter.tokens),
        "flop_convention": flops.FLOP_CONVENTION,
        "wall_seconds": wall_seconds,
        "wall_seconds_this_run": this_run_seconds,
        **meter.summary(),
        "peak_flops": peak[0],
        "peak_flops_source": peak[1],
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "mesh": dict(trainer.mesh.shape),
        "final_train_loss": meter.final_loss,
        "eval_loss": valid.get("loss"),
        "test_loss": test.get("loss"),
        **floors,  # a synthetic source's irreducible loss on the events of eval_loss (test_: of test_loss)
        # test metrics at the evaluation of best validation HR@10 (scaling/engine/selection.py), the last beside
        "selected_step": best.step,
        **{key: best.test.get(key) for key in RESULT_METRICS},
        **{f"last_{key}": test.get(key) for key in RESULT_METRICS},
        **{f"valid_{key}": best.valid.get(key) for key in VALID_METRICS},
        **{key: value for key, value in best.test.items() if key not in STANDARD_METRICS},  # a family's own
        "resumed_from_step": resumed_from,
        **evaluations.plateau(),
    }
