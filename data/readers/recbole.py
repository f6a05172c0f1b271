"""RecBole atomic files: `NAME.inter` (and `NAME.item`, `NAME.kg` + `NAME.link`) with typed headers
like `user_id:token`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import DataError, located
from data.interactions import Interactions
from data.readers.delimited import read_delimited

_FIELD_KINDS = {"token": "str", "token_seq": "str", "float": "float", "float_seq": "str"}


def _typed_header(path: Path) -> list[tuple[str, str]]:
    """[(field name, RecBole type)] from the first line of an atomic file."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline().rstrip("\r\n")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    fields = []
    for column in first.split("\t"):
        name, _, kind = column.partition(":")
        if kind not in _FIELD_KINDS:
            raise located(path, 1, f"header field {column!r} needs a type ({', '.join(_FIELD_KINDS)})", first)
        fields.append((name, kind))
    return fields


def _find_inter_file(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.inter"))
        if len(found) != 1:
            raise DataError(f"{path}: expected exactly one *.inter file, found {len(found)}")
        return found[0]
    if path.suffix != ".inter":
        raise DataError(f"{path}: a RecBole interaction file ends in .inter")
    return path


def read_recbole(path: Path) -> Interactions:
    """Interactions from `*.inter` (a file or the folder holding it); metadata from `*.item`."""
    inter_path = _find_inter_file(path)
    header = _typed_header(inter_path)
    names = [name for name, _ in header]
    roles = {"user": "user_id", "item": "item_id", "timestamp": "timestamp"}
    for role, field in roles.items():
        if field not in names:
            raise located(inter_path, 1, f"no {field} field (a sequential dataset needs {', '.join(roles.values())})")
    kinds = {"user_id": "str", "item_id": "str", "timestamp": "float"}
    if "rating" in names:
        kinds["rating"] = "float"
    frame = read_delimited(inter_path, sep="\t", names=names, kinds=kinds, header_lines=1)
    return Interactions(
        user=frame["user_id"].to_numpy(object),
        item=frame["item_id"].to_numpy(object),
        timestamp=np.floor(frame["timestamp"].to_numpy()).astype(np.int64),
        rating=frame["rating"].to_numpy(np.float32) if "rating" in kinds else None,
        item_metadata=_with_knowledge_graph(_read_items(inter_path.with_suffix(".item")), inter_path),
        source=str(inter_path),
    )


def _read_items(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    header = _typed_header(path)
    names = [name for name, _ in header]
    if "item_id" not in names:
        raise located(path, 1, "no item_id field")
    kinds = {name: ("str" if name == "item_id" else _FIELD_KINDS[kind]) for name, kind in header}
    frame = read_delimited(path, sep="\t", names=names, kinds=kinds, header_lines=1)
    return frame.rename(columns={"item_id": "item"})


def _with_knowledge_graph(items: pd.DataFrame | None, inter_path: Path) -> pd.DataFrame | None:
    """Add a `kg` column (space-separated `relation=entity` tokens of every triple that names the
    item's entity, as head or as tail) when NAME.kg and NAME.link stand beside NAME.inter."""
    kg_path, link_path = inter_path.with_suffix(".kg"), inter_path.with_suffix(".link")
    if items is None or not (kg_path.is_file() and link_path.is_file()):
        return items
    link = read_delimited(link_path, sep="\t", names=["item", "entity"], kinds={"item": "str", "entity": "str"},
                          header_lines=1)
    triples = read_delimited(kg_path, sep="\t", names=["head", "relation", "tail"],
                             kinds={"head": "str", "relation": "str", "tail": "str"}, header_lines=1)
    entity_of = dict(zip(link["entity"], link["item"]))
    tokens: dict[str, list[str]] = {}
    for head, relation, tail in zip(triples["head"], triples["relation"], triples["tail"]):
        if head in entity_of:
            tokens.setdefault(entity_of[head], []).append(f"{relation}={tail}")
        if tail in entity_of:
            tokens.setdefault(entity_of[tail], []).append(f"{relation}={head}")
    items = items.copy()
    items["kg"] = [" ".join(tokens[item]) if item in tokens else None for item in items["item"].astype(str)]
    return items
