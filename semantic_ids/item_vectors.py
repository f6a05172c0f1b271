"""Item vectors to quantise into semantic IDs, from a source spec:

  metadata          content: TF-IDF of titles, multi-hot genres/categories, brands, standardised
                    year/price, reduced by a truncated SVD (data/item_features.py)
  cooccurrence      collaborative: truncated SVD of the PPMI co-occurrence of the training
                    sequences (every user's validation and test targets removed)
  checkpoint:DIR    the item table of a trained lab trial (its workdir)
  npy:FILE          a user file: .npy with one row per item in ascending original-id order, or
                    .npz with `item_ids` and `vectors`
  A+B               parts concatenated, each centred and scaled to unit mean per-dimension
                    variance, then weighted so that every part carries the same total variance

Rows come out in dense-id order (row i - 1 = dense item i), which is ascending original-id order.
A single part other than npy: is centred and scaled as above; a single npy: part is used as given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from data import item_features
from data.dataset import PreparedData
from data.errors import DataError
from semantic_ids.cooccurrence import cooccurrence_counts, ppmi, training_sequences

PART_KINDS = ("metadata", "cooccurrence", "checkpoint:DIR", "npy:FILE")


@dataclasses.dataclass(frozen=True)
class VectorOptions:
    """dim: width of each SVD-reduced part (metadata, co-occurrence). window: co-occurrence of two
    items at most this many positions apart in a user's training sequence."""

    dim: int = 32
    window: int = 20
    seed: int = 0


# (trial workdir, source part) -> (its item table, the trial's original item ids of its rows, what
# was read); raises DataError naming the part. The engine's reader: scaling/engine/trained_table.py.
TrainedTable = Callable[[Path, str], tuple[np.ndarray, np.ndarray, dict]]


@dataclasses.dataclass(frozen=True, eq=False)
class ItemVectors:
    vectors: np.ndarray  # (num_items, d) float32, dense-id order
    parts: tuple[dict, ...]  # per part: its spec and width (and what it was read from)

    @property
    def digest(self) -> str:
        """sha256 of the vectors' shape and float32 bytes: the artefact's record of its input."""
        blob = hashlib.sha256(json.dumps(list(self.vectors.shape)).encode())
        blob.update(np.ascontiguousarray(self.vectors, np.float32).tobytes())
        return blob.hexdigest()


def split_source(source: str) -> list[str]:
    parts = [part.strip() for part in source.split("+")]
    if not source.strip() or any(not part for part in parts):
        raise DataError(f"--source {source!r}: expected PART[+PART...] with PART one of {', '.join(PART_KINDS)}")
    for part in parts:
        kind, separator, path = part.partition(":")
        if part in ("metadata", "cooccurrence"):
            continue
        if kind not in ("checkpoint", "npy") or not separator:
            raise DataError(f"--source {source!r}: unknown part {part!r}; known: {', '.join(PART_KINDS)}")
        if not path.strip():
            raise DataError(f"--source {source!r}: {kind}: needs a path")
    return parts


def item_vectors(prepared: PreparedData, source: str, options: VectorOptions = VectorOptions(),
                 log: Callable[[str], None] | None = None, trained_table: TrainedTable | None = None) -> ItemVectors:
    """The vectors of `source` for every item of the prepared dataset; `trained_table` reads the
    item table of a trial's checkpoint (parts checkpoint:DIR)."""
    parts = split_source(source)
    vectors, described = [], []
    for part in parts:
        matrix, description = _part(prepared, part, options, trained_table)
        _check_rows(matrix, prepared, part)
        vectors.append(matrix)
        described.append({"part": part, "dim": int(matrix.shape[1]), **description})
        if log is not None:
            log(f"item vectors {part}: {matrix.shape[0]} x {matrix.shape[1]}")
    if len(parts) == 1 and parts[0].startswith("npy:"):
        return ItemVectors(vectors[0].astype(np.float32), tuple(described))
    total_dim = sum(v.shape[1] for v in vectors)
    scaled = [_unit_variance(v) * np.sqrt(total_dim / (len(vectors) * v.shape[1])) for v in vectors]
    return ItemVectors(np.concatenate(scaled, 1).astype(np.float32), tuple(described))


def _unit_variance(matrix: np.ndarray) -> np.ndarray:
    """Centred, then scaled as a whole so that the mean per-dimension variance is 1."""
    centred = matrix.astype(np.float64) - matrix.mean(0)
    mean_variance = np.mean(centred**2)
    return centred / np.sqrt(mean_variance) if mean_variance > 0 else centred


def _part(prepared: PreparedData, part: str, options: VectorOptions,
          trained_table: TrainedTable | None) -> tuple[np.ndarray, dict]:
    if part == "metadata":
        return item_features.metadata_vectors(prepared.item_metadata, options.dim, options.seed, part), {}
    if part == "cooccurrence":
        train = training_sequences(prepared.sequences)
        matrix = ppmi(cooccurrence_counts(train, options.window))
        empty = int(np.sum(np.diff(matrix.indptr) == 0))
        return item_features.truncated_svd(matrix, options.dim, options.seed), {"window": options.window,
                                                                                 "items_without_cooccurrence": empty}
    kind, path = part.split(":", 1)
    if kind == "checkpoint":
        if trained_table is None:
            raise DataError(f"{part}: no reader of trained trials was given (the lab's commands and trials pass "
                            f"scaling.engine.trained_table.read)")
        table, trial_items, described = trained_table(Path(path), part)
        return _aligned(trial_items, table, prepared.sequences.item_ids, part), described
    return user_file_vectors(Path(path), prepared.sequences.item_ids, part), {}


def _check_rows(matrix: np.ndarray, prepared: PreparedData, part: str) -> None:
    item_ids = prepared.sequences.item_ids
    if matrix.ndim != 2 or matrix.shape[0] != len(item_ids):
        raise DataError(f"{part}: {matrix.shape[0] if matrix.ndim else 0} rows for {len(item_ids)} items "
                        f"(expected a 2-D array, one row per item)")
    bad = ~np.all(np.isfinite(matrix), 1)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(f"{part}: {int(bad.sum())} rows hold NaN or Inf (the first for item {item_ids[first]}, row {first})")


def _aligned(ids: np.ndarray, vectors: np.ndarray, item_ids: np.ndarray, part: str) -> np.ndarray:
    """Rows of `vectors` (keyed by `ids`) in the order of `item_ids`; every item must be present."""
    keys = np.asarray(ids).astype(str)
    wanted = np.asarray(item_ids).astype(str)
    if len(np.unique(keys)) != len(keys):
        raise DataError(f"{part}: item_ids has repeated ids")
    order = np.argsort(keys)
    position = np.searchsorted(keys[order], wanted)
    position = np.minimum(position, len(keys) - 1)
    found = keys[order][position] == wanted
    if not found.all():
        missing = wanted[~found]
        raise DataError(f"{part}: no vector for {len(missing)} of the {len(wanted)} items (e.g. {missing[0]!r})")
    return vectors[order][position]


def user_file_vectors(path: Path, item_ids: np.ndarray, part: str) -> np.ndarray:
    """A .npy of num_items rows (ascending original id) or an .npz with item_ids and vectors."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            ids, vectors = None, loaded
        else:
            with loaded:
                if not {"item_ids", "vectors"} <= set(loaded.files):
                    raise DataError(f"{part}: {path} needs arrays item_ids and vectors (it has "
                                    f"{', '.join(loaded.files) or 'none'})")
                ids, vectors = loaded["item_ids"], loaded["vectors"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{part}: cannot read {path} ({error})") from None
    if not np.issubdtype(vectors.dtype, np.number) or vectors.dtype == np.bool_:
        raise DataError(f"{part}: {path} holds {vectors.dtype} values, not numbers")
    if ids is None:
        if vectors.ndim != 2 or vectors.shape[0] != len(item_ids):
            raise DataError(f"{part}: {path} holds an array of shape {vectors.shape}; expected ({len(item_ids)}, d), "
                            f"one row per item in ascending original-id order")
        return vectors.astype(np.float32)
    if ids.ndim != 1 or vectors.ndim != 2 or len(ids) != len(vectors) or not len(ids):
        raise DataError(f"{part}: {path}: item_ids {ids.shape} and vectors {vectors.shape} are not (n,) and (n, d)")
    return _aligned(ids, vectors, item_ids, part).astype(np.float32)
