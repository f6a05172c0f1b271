"""A trial's semantic IDs, before its model is built: the family's ItemCodesRequest turned into
finished codes, read from an artefact or a JSON file of given IDs, or built from the trial's data."""

from __future__ import annotations

from typing import Callable

import numpy as np

from config.fields import ConfigError
from data.dataset import PreparedData
from data.errors import DataError
from models.core.family import ItemCodes, ItemCodesRequest
from semantic_ids import artefact
from semantic_ids.item_vectors import TrainedTable


def item_codes(request: ItemCodesRequest, prepared: PreparedData, log: Callable[[str], None] | None = None,
               trained_table: TrainedTable | None = None) -> ItemCodes:
    """Codes in dense-item order with their provenance; ConfigError naming the request's keys."""
    try:
        ids = _ids(request, prepared, log, trained_table)
    except DataError as error:
        raise ConfigError(f"semantic IDs: {error}") from None
    record = {"path": request.path or None, **{k: ids.config[k] for k in ("method", "levels", "codebook", "source", "seed")},
              "input_hash": ids.input_hash, "collision_rate": ids.quality.get("collision_rate"),
              "largest_collision_group": ids.quality.get("largest_collision_group")}
    return ItemCodes(ids.codes, record)


def _ids(request: ItemCodesRequest, prepared: PreparedData, log: Callable[[str], None] | None,
         trained_table: TrainedTable | None) -> artefact.SemanticIds:
    path, key = request.path, request.key
    if path.endswith(".json"):  # a path, or "DATASET:FILE" beside a local dataset
        ids = artefact.load_json(path, prepared.sequences.item_ids, request.codebook)
        appended = ids.config["collision_code"]
        if ids.levels != request.levels:
            raise ConfigError(f"{key('path')}={path!r} has {ids.levels} codes per item, {key('levels')}={request.levels}")
        if appended != request.collision_code:
            raise ConfigError(f"{key('path')}={path!r}: " + (
                f"items share IDs, so a collision code is needed: set {key('collision_code')}=true" if appended else
                f"the IDs are distinct as given: set {key('collision_code')}=false"))
        return ids
    if not request.collision_code:
        raise ConfigError(f"{key('collision_code')}=false needs IDs given distinct ({key('path')}=FILE.json); "
                          f"artefacts and built IDs carry a collision code")
    if path:
        ids = artefact.load(path)
        for field, mine in (("levels", request.levels), ("codebook", request.codebook)):
            if ids.config.get(field) != mine:
                raise ConfigError(f"{key('path')}={path!r} has {field}={ids.config.get(field)}, {key(field)}={mine}")
        expected = prepared.sequences.item_ids
        if len(ids.item_ids) != len(expected) or np.any(ids.item_ids.astype(str) != expected.astype(str)):
            raise ConfigError(f"{key('path')}={path!r} holds IDs of another catalogue "
                              f"({len(ids.item_ids)} items, the data has {len(expected)})")
        return ids
    config = artefact.SemanticIdConfig(method=request.method, levels=request.levels, codebook=request.codebook,
                                       source=request.source, seed=request.seed)
    return artefact.build(prepared, config, log=log, trained_table=trained_table)
