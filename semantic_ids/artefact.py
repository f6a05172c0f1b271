"""Semantic IDs: item vectors -> L residual codes -> one collision code -> a unique (L + 1)-tuple per
item, saved as an .npz artefact that records how it was made, with its quality measured.

Artefact arrays: item_ids (original ids, ascending; int64 when every id is an integer), codes
(int32, items x (L + 1), row i for item_ids[i], the last column the collision code), and scalars
method, source, seed, input_hash (sha256 of the quantised vectors), config (JSON of every
setting), quality (JSON of the metrics in semantic_ids/quality.py), vector_parts (JSON).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from data.dataset import PreparedData
from data.errors import DataError
from data.item_features import item_labels
from data.sources import cache_dir, local_file
from semantic_ids import quality as id_quality
from semantic_ids.cooccurrence import cooccurrence_counts, training_sequences
from semantic_ids.item_vectors import ItemVectors, TrainedTable, VectorOptions, item_vectors

METHODS = ("rqkmeans", "rqkmeans-balanced", "rqvae")
ARTEFACT_VERSION = 1  # bump when the same config would give different codes


@dataclasses.dataclass(frozen=True)
class SemanticIdConfig:
    """How a set of semantic IDs is built; every field is a sweep axis.

    Defaults for a catalogue of about 1.7k items (ML-100K): 3 levels x 64 codes. Level 1 splits the
    catalogue into groups of ~26 items (shared prefixes the generator can learn from); measured on
    ML-100K, balanced residual k-means then leaves 6.4% of the items in a collision, in groups of
    at most 5, so the collision code needs 5 values, and the code vocabulary is 3 x 64 + 5. (3 x 32
    collides 23%, groups up to 11; 3 x 256, TIGER's choice for ~10^4-10^5 items, puts ~7 items
    under each first code.) Balanced residual k-means needs no training and uses every code; the
    content + collaborative source combines what the items are with how they are consumed.
    """

    method: str = "rqkmeans-balanced"
    levels: int = 3
    codebook: int = 64
    source: str = "metadata+cooccurrence"
    seed: int = 0
    dim: int = 32  # width of each SVD-reduced vector part
    window: int = 20  # co-occurrence window (positions) in training sequences
    n_init: int = 3  # k-means restarts per level
    lloyd: str = "full"  # full | minibatch
    balanced_iters: int = 3
    rqvae_steps: int = 3000

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DataError(f"--method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.lloyd not in ("full", "minibatch"):
            raise DataError(f"lloyd={self.lloyd!r}: expected full or minibatch")
        for name in ("levels", "codebook", "dim", "window", "n_init"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DataError(f"{name}={value!r} must be a positive integer")
        if self.codebook < 2:
            raise DataError(f"codebook={self.codebook} must be at least 2")
        if self.balanced_iters < 0 or self.rqvae_steps < 0:
            raise DataError("balanced_iters and rqvae_steps must be non-negative")
        if not 0 <= self.seed < 2**32:
            raise DataError(f"seed={self.seed} must be in [0, 2**32)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, eq=False)
class SemanticIds:
    item_ids: np.ndarray  # (n,) ascending original ids
    codes: np.ndarray  # (n, L + 1) int32
    config: dict
    quality: dict
    input_hash: str
    vector_parts: tuple

    @property
    def collision_code(self) -> bool:
        """Whether the last column is the collision code (always, except for JSON IDs given distinct)."""
        return bool(self.config.get("collision_code", True))

    @property
    def levels(self) -> int:
        return self.codes.shape[1] - int(self.collision_code)

    def vocabulary_sizes(self) -> list[int]:
        """Codes per position: the codebook size for the L levels, the largest group for the last."""
        collision = [int(self.codes[:, -1].max()) + 1] if self.collision_code else []
        return [int(self.config["codebook"])] * self.levels + collision


def collision_codes(codes: np.ndarray) -> np.ndarray:
    """The (L + 1)-th code: 0, 1, 2, ... among items sharing an L-tuple, in row order (row order is
    ascending original item id), so every item's full ID is unique."""
    group = id_quality.tuple_groups(codes)
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    first = np.searchsorted(sorted_group, sorted_group, side="left")
    rank = np.empty(len(codes), np.int32)
    rank[order] = np.arange(len(codes)) - first
    return rank


def _quantise(vectors: np.ndarray, config: SemanticIdConfig, mesh: Any, log: Callable | None) -> tuple:
    """(the quantised vectors, what training reported: RQ-VAE's errors before and after)."""
    from semantic_ids import kmeans
    from semantic_ids.residual_kmeans import residual_kmeans

    if config.method == "rqvae":
        from semantic_ids.rqvae import RQVAEOptions, train_rqvae

        return train_rqvae(vectors, config.levels, config.codebook, config.seed,
                           RQVAEOptions(steps=config.rqvae_steps), mesh=mesh, log=log)
    options = kmeans.KMeansOptions(n_init=config.n_init, lloyd=config.lloyd,
                                   balanced=config.method == "rqkmeans-balanced",
                                   balanced_iters=config.balanced_iters)
    quantised = residual_kmeans(vectors, config.levels, config.codebook, config.seed, options, mesh=mesh, log=log)
    return quantised, {}


def quality(prepared: PreparedData, codes: np.ndarray, vectors: np.ndarray, reconstruction: np.ndarray,
            codebook: int, window: int) -> dict:
    """Every metric of semantic_ids/quality.py for the L residual levels of `codes` (no collision code)."""
    from semantic_ids.residual_kmeans import relative_error

    first = codes[:, 0]
    labels = item_labels(prepared.item_metadata)
    try:
        linked = cooccurrence_counts(training_sequences(prepared.sequences), window)
    except DataError:  # users too short for a leave-one-out split: no training sequences to judge by
        linked = None
    return {
        **id_quality.collisions(codes),
        **id_quality.level_usage(codes, codebook),
        "recon_error": relative_error(vectors, reconstruction),
        "genre_lift": None if labels is None else id_quality.label_lift(first, labels),
        "cooccurrence_lift": None if linked is None else id_quality.cooccurrence_lift(first, linked),
    }


def _cache_path(digest: str, config: SemanticIdConfig, item_ids: np.ndarray) -> Path:
    blob = json.dumps({"version": ARTEFACT_VERSION, "input": digest, "config": config.to_dict(),
                       "items": hashlib.sha256(item_ids.astype(str).tobytes()).hexdigest()},
                      sort_keys=True)
    return cache_dir() / "semantic_ids" / f"{hashlib.sha256(blob.encode()).hexdigest()[:20]}.npz"


def build(prepared: PreparedData, config: SemanticIdConfig, *, mesh: Any = None, use_cache: bool = True,
          log: Callable[[str], None] | None = None, trained_table: TrainedTable | None = None) -> SemanticIds:
    """Semantic IDs of every item of `prepared`; a second call with the same inputs reads the cache.
    trained_table: the reader of checkpoint:DIR sources (semantic_ids.item_vectors.TrainedTable)."""
    started = time.perf_counter()
    num_items = prepared.sequences.num_items
    if config.codebook > num_items:
        raise DataError(f"--codebook {config.codebook} is larger than the catalogue ({num_items} items)")
    vectors: ItemVectors = item_vectors(prepared, config.source,
                                        VectorOptions(config.dim, config.window, config.seed), log, trained_table)
    path = _cache_path(vectors.digest, config, prepared.sequences.item_ids)
    if use_cache and path.is_file():
        try:
            cached = load(path)
            if log is not None:
                log(f"semantic IDs from the cache: {path}")
            cached.quality["seconds"] = time.perf_counter() - started
            return cached
        except DataError as error:
            if log is not None:
                log(f"rebuilding: {error}")
    if log is not None:
        log(f"quantising {num_items} items x {vectors.vectors.shape[1]} dims: {config.method}, "
            f"{config.levels} levels x {config.codebook} codes")
    quantised, stats = _quantise(vectors.vectors, config, mesh, log)
    codes = np.concatenate([quantised.codes, collision_codes(quantised.codes)[:, None]], 1).astype(np.int32)
    metrics = quality(prepared, quantised.codes, vectors.vectors, quantised.reconstruction, config.codebook,
                      config.window)
    metrics.update({f"rqvae_{k}": v for k, v in stats.items()})
    metrics["collision_code_size"] = int(codes[:, -1].max()) + 1
    metrics["seconds"] = time.perf_counter() - started
    ids = SemanticIds(prepared.sequences.item_ids, codes, config.to_dict(), metrics, vectors.digest, vectors.parts)
    if use_cache:
        save(ids, path)
    return ids


def save(ids: SemanticIds, path: Path) -> None:
    """Write the artefact atomically (a partial file never stands under the final name)."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial.npz")  # processes may build the same IDs at once
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(ids, partial)
        os.replace(partial, path)
    except OSError as error:
        if partial.parent.is_dir():
            partial.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write the artefact ({error.strerror or error})") from None


def _write(ids: SemanticIds, partial: Path) -> None:
    np.savez(partial, item_ids=ids.item_ids, codes=ids.codes, method=np.str_(ids.config["method"]),
             source=np.str_(ids.config["source"]), seed=np.int64(ids.config["seed"]),
             input_hash=np.str_(ids.input_hash), config=np.str_(json.dumps(ids.config, sort_keys=True)),
             quality=np.str_(json.dumps(ids.quality, sort_keys=True)),
             vector_parts=np.str_(json.dumps(list(ids.vector_parts), sort_keys=True)))


def load(path: Path) -> SemanticIds:
    """Read and check an artefact: one code row per item, every full ID unique."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            item_ids, codes = arrays["item_ids"], arrays["codes"]
            config = json.loads(str(arrays["config"]))
            quality_metrics = json.loads(str(arrays["quality"]))
            input_hash = str(arrays["input_hash"])
            parts = tuple(json.loads(str(arrays["vector_parts"])))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: not a semantic-ID artefact ({error})") from None
    if codes.ndim != 2 or codes.shape[0] != len(item_ids) or codes.dtype != np.int32:
        raise DataError(f"{path}: codes {codes.shape} {codes.dtype} do not give one int32 row per item")
    if len(np.unique(codes, axis=0)) != len(codes):
        raise DataError(f"{path}: two items share a full semantic ID")
    return SemanticIds(item_ids, codes, config, quality_metrics, input_hash, parts)


def load_json(path: str | Path, item_ids: np.ndarray, codebook: int) -> SemanticIds:
    """IDs given as JSON, `{item: [c1, ..., cL]}` (TIGER-style repositories' index files; a path or
    "NAME:FILE" beside a local dataset, e.g. amazon-beauty:index_rqvae.json), for the
    catalogue `item_ids` (original ids, dense order), used as given: L codes per item, a collision
    code appended only when some items share an L-tuple. Every item of the catalogue needs one,
    all of one length, each code in [0, codebook); ids of items the data lacks are ignored (their
    count is in the quality record). A violation is one DataError naming the file and the key."""
    path = local_file(str(path))  # a path, or "NAME:FILE" beside a local dataset (data/sources.py)
    try:
        raw = path.read_bytes()
        given = json.loads(raw)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a JSON file of semantic IDs ({error})") from None
    if not isinstance(given, dict) or not given:
        raise DataError(f"{path}: expected a non-empty object {{item: [code, ...]}}")
    wanted = [str(item) for item in item_ids]
    missing = [item for item in wanted if item not in given]
    if missing:
        raise DataError(f"{path}: item {missing[0]!r} has no semantic ID ({len(missing)} of {len(wanted)} "
                        f"items of the data have none)")
    length = None
    rows = []
    for item in wanted:
        codes = given[item]
        if not isinstance(codes, list) or not codes or not all(type(c) is int for c in codes):
            raise DataError(f"{path}: item {item!r}: expected a list of integer codes, got {codes!r:.80}")
        if length is None:
            length = len(codes)
        elif len(codes) != length:
            raise DataError(f"{path}: item {item!r} has {len(codes)} codes, the others {length}")
        bad = [c for c in codes if not 0 <= c < codebook]
        if bad:
            raise DataError(f"{path}: item {item!r}: code {bad[0]} is outside 0..{codebook - 1} "
                            f"(model.ids_codebook={codebook})")
        rows.append(codes)
    levels = np.asarray(rows, np.int32)
    metrics = {**id_quality.collisions(levels), **id_quality.level_usage(levels, codebook),
               "items_not_in_data": len(given) - len(wanted)}
    repeated = metrics["largest_collision_group"] > 1
    codes = np.concatenate([levels, collision_codes(levels)[:, None]], 1).astype(np.int32) if repeated else levels
    config = {"method": "json", "levels": int(length), "codebook": int(codebook), "source": str(path), "seed": None,
              "collision_code": bool(repeated)}
    return SemanticIds(np.asarray(item_ids), codes, config, metrics, hashlib.sha256(raw).hexdigest(), ())
