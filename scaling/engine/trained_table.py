"""The item table of a trained trial, as semantic IDs read it (the source checkpoint:DIR;
semantic_ids.item_vectors.TrainedTable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.dataset import prepare_section
from data.errors import DataError
from models.core import family as families, tables
from scaling.config import ConfigError, from_json
from scaling.engine import checkpoint


def read(workdir: Path, part: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(the newest checkpoint's item table, the trial's original item ids of its rows, what was
    read); DataError naming `part` when the trial cannot give one."""
    try:
        config = from_json((workdir / "config.json").read_text())
    except OSError as error:
        raise DataError(f"{part}: cannot read {workdir / 'config.json'} ({error.strerror})") from None
    except ConfigError as error:
        raise DataError(f"{part}: {workdir / 'config.json'}: {error}") from None
    try:
        params, step = checkpoint.restore_params(workdir / "checkpoints")
        table = families.of(config.model).item_table(config.model, params)
    except Exception as error:  # orbax / tensorstore raise many kinds on a damaged checkpoint
        raise DataError(f"{part}: cannot read the item table of a checkpoint in {workdir / 'checkpoints'} "
                        f"({type(error).__name__}: {error})") from None
    if table is None:
        raise DataError(f"{part}: the {config.model.family} family has no item table")
    trial_items = prepare_section(config.data).sequences.item_ids
    if len(table) + 1 == tables.padded_rows(len(trial_items) + 1):  # a padded catalogue table: zero rows past the items
        table = table[:len(trial_items)]
    if len(trial_items) != len(table):
        raise DataError(f"{part}: the checkpoint's item table has {len(table)} rows, its data {len(trial_items)} items")
    return table, trial_items, {"step": int(step), "trial_data": config.data.name}
