"""Prepared datasets: source -> filtered, remapped sequences, cached on disk by content key."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from data import sources
from data.errors import DataError
from data.sequences import PreprocessOptions, Sequences, build_sequences, item_metadata_in_dense_order

if TYPE_CHECKING:
    import pandas as pd

CACHE_FORMAT_VERSION = 2  # 2: ML-100K item metadata gained its knowledge graph (kg)


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedData:
    """Sequences of a source after preprocessing, with what the source said about itself.

    item_metadata: aligned with dense ids (row i-1 = item i), or None; from the cache, read on
    first use (most trials never read it, and pandas is then never imported). report: counts of
    what each preprocessing step kept and removed. properties: numbers the source knows
    (synthetic entropy, ...).
    """

    name: str
    sequences: Sequences
    metadata: pd.DataFrame | Path | None  # the table, or the cache's parquet file holding it
    report: dict
    properties: dict

    @functools.cached_property
    def item_metadata(self) -> pd.DataFrame | None:
        if not isinstance(self.metadata, Path):
            return self.metadata
        import pandas as pd

        try:
            return pd.read_parquet(self.metadata)
        except (OSError, ValueError) as error:
            raise DataError(f"{self.metadata}: damaged cache entry ({error}); remove its folder to prepare "
                            f"{self.name} again") from None


def prepare(
    name_or_path: str,
    *,
    format: str | None = None,
    columns: Mapping[str, str] | None = None,
    options: PreprocessOptions = PreprocessOptions(),
    use_cache: bool = True,
) -> PreparedData:
    """Read, filter, remap and sort a dataset; a second call with the same inputs reads the cache."""
    key = cache_key(name_or_path, format, columns, options)
    folder = sources.cache_dir() / "sequences" / key
    if use_cache and (folder / "report.json").is_file():
        cached = _load(folder, name_or_path)
        if cached is not None:
            return cached
    interactions = sources.load_interactions(name_or_path, format, columns)
    sequences, report = build_sequences(interactions, options)
    metadata = item_metadata_in_dense_order(sequences, interactions.item_metadata)
    prepared = PreparedData(name_or_path, sequences, metadata, report, dict(interactions.properties))
    if use_cache:
        _save(folder, prepared)
    return prepared


def prepare_section(data: Any) -> PreparedData:
    """prepare() of a trial's data section (scaling.config.DataConfig: name, format, columns,
    user_core, item_core): the one place a trial's settings become a dataset."""
    columns = None
    if data.columns:
        from data.readers.tabular import parse_column_mapping  # the readers (and pandas) only for a file's columns

        columns = parse_column_mapping(data.columns)
    return prepare(data.name, format=data.format or None, columns=columns,
                   options=PreprocessOptions(data.user_core, data.item_core))


def _source_identity(name_or_path: str, format: str | None) -> object:
    if name_or_path.startswith("synthetic:"):
        from data import synthetic

        return [synthetic.GENERATOR_VERSION, repr(synthetic.parse_spec(name_or_path))]
    if name_or_path == "ml-100k":
        return [sources.RECBOLE_WHEEL_SHA256]
    if name_or_path in sources.GROUPLENS_RELEASES:
        return [name_or_path]
    try:
        path = sources.local_file(name_or_path)
    except DataError:
        return [name_or_path]  # load_interactions will say what is wrong with it
    if not path.exists():
        return [name_or_path]
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def cache_key(
    name_or_path: str, format: str | None, columns: Mapping[str, str] | None, options: PreprocessOptions
) -> str:
    """Hash of the source's identity (content or file stamps) and every option that shapes the output."""
    blob = json.dumps(
        {
            "version": CACHE_FORMAT_VERSION,
            "source": _source_identity(name_or_path, format),
            "format": format,
            "columns": dict(columns or {}),
            "options": dataclasses.asdict(options),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _save(folder: Path, prepared: PreparedData) -> None:
    seqs = prepared.sequences
    tmp = sources.staging_folder(folder)
    arrays = {
        "offsets": seqs.offsets,
        "items": seqs.items,
        "timestamps": seqs.timestamps,
        "user_ids": seqs.user_ids,
        "item_ids": seqs.item_ids,
    }
    if seqs.ratings is not None:
        arrays["ratings"] = seqs.ratings
    np.savez(tmp / "sequences.npz", **arrays)
    if prepared.item_metadata is not None:
        prepared.item_metadata.to_parquet(tmp / "items.parquet")
    meta = {"report": prepared.report, "properties": prepared.properties, "num_items": seqs.num_items}
    (tmp / "report.json").write_text(json.dumps(meta, sort_keys=True))
    sources.publish_folder(tmp, folder)


def _load(folder: Path, name: str) -> PreparedData | None:
    """The cached entry, or None (after removing it) when it cannot be read."""
    try:
        meta = json.loads((folder / "report.json").read_text())
        with np.load(folder / "sequences.npz", allow_pickle=False) as arrays:
            seqs = Sequences(
                offsets=arrays["offsets"],
                items=arrays["items"],
                timestamps=arrays["timestamps"],
                ratings=arrays["ratings"] if "ratings" in arrays else None,
                num_items=int(meta["num_items"]),
                user_ids=arrays["user_ids"],
                item_ids=arrays["item_ids"],
            )
        items_path = folder / "items.parquet"
        metadata = items_path if items_path.is_file() else None
    except (OSError, ValueError, KeyError) as error:
        print(f"re-reading the source: damaged cache entry {folder} ({error})", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return PreparedData(name, seqs, metadata, meta["report"], meta["properties"])
