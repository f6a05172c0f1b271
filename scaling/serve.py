"""`python -m scaling.serve EXPORT_DIR`: top-k items from an export of `python -m scaling.export`.

  EXPORT_DIR --history 50,172,133 [--timestamps T1,T2,T3] [--user ID] [--k 10] [--json]
  EXPORT_DIR --input requests.jsonl [--k 10] [--batch 128]

Needs only jax, numpy and safetensors: this module imports nothing else of this repository, so
a serving process carries no flax, optax or training code. --history takes original item ids
(as the dataset spells them); the answer is {"items": [...], "scores": [...]} in original ids,
plus "unknown_items", "truncated" or "fallback" when a request rule applied (see README.txt of
the export). --input reads one JSON object per line, {"history": [...], "timestamps": [...]
(optional), "user": ... (optional)}, and prints one answer per line in the same order.

The export's MANIFEST.sha256 is checked before anything is loaded: a missing or changed file, a
required file the manifest does not list, or a platform serve.jax was not lowered for, is one
line and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import numpy as np

MANIFEST = "MANIFEST.sha256"
REQUIRED = ("serve.jax", "params.safetensors", "items.json", "export.json", "config.json", "README.txt")


class ServeError(Exception):
    """A bad export or request: one line for the user, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Request:
    history: Sequence[Any]  # original item ids, oldest first
    timestamps: Sequence[int] | None = None
    user: Any = None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(directory: Path) -> None:
    """Every file of the manifest present with its checksum, and every required file listed."""
    if not directory.is_dir():
        raise ServeError(f"{directory}: not an export directory")
    manifest = directory / MANIFEST
    if not manifest.exists():
        raise ServeError(f"{directory}: no {MANIFEST} (incomplete export)")
    listed = {}
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise ServeError(f"{manifest}: line {number} is not 'SHA256  FILE'")
        listed[name] = digest
    for name in REQUIRED:
        if name not in listed:
            raise ServeError(f"{manifest}: does not list {name} (incomplete export)")
    for name, digest in listed.items():
        path = directory / name
        if not path.is_file():
            raise ServeError(f"{path}: missing (incomplete export)")
        if sha256(path) != digest:
            raise ServeError(f"{path}: checksum differs from {MANIFEST} (corrupted export)")


def current_platform() -> str:
    backend = jax.default_backend()
    if backend == "gpu":
        return "rocm" if "rocm" in jax.devices()[0].client.platform_version.lower() else "cuda"
    return backend


class ExportedModel:
    """A verified export: call recommend() with requests in original ids."""

    def __init__(self, directory: Path | str):
        from safetensors.numpy import load_file

        self.directory = Path(directory)
        verify(self.directory)
        self.info = json.loads((self.directory / "export.json").read_text())
        platform = current_platform()
        if platform not in self.info["platforms"]:
            raise ServeError(f"{self.directory}: lowered for {', '.join(self.info['platforms'])}, "
                             f"not for this {platform} backend")
        self.exported = jax.export.deserialize(bytearray((self.directory / "serve.jax").read_bytes()))
        self.params = load_file(str(self.directory / "params.safetensors"))
        items = json.loads((self.directory / "items.json").read_text())
        self.item_ids = items["item_ids"]
        self.dense_item = {original: i + 1 for i, original in enumerate(self.item_ids)}
        self.dense_user = {original: u for u, original in enumerate(items["user_ids"])}
        self.popular = list(zip(items["popular_items"], items["popular_shares"]))
        self.k = int(self.info["k"])
        self.length = int(self.info["history_length"])

    def arrays(self, requests: Sequence[Request]) -> tuple[list[np.ndarray], list[dict]]:
        """The serving function's inputs for `requests`, and what each request's rules did."""
        rows = len(requests)
        histories = np.zeros((rows, self.length), np.int32)
        timestamps = np.zeros((rows, self.length), np.int32)
        lengths = np.zeros(rows, np.int32)
        users = np.full(rows, -1, np.int32)
        notes: list[dict] = []
        for row, request in enumerate(requests):
            times = request.timestamps
            if times is not None and len(times) != len(request.history):
                raise ServeError(f"request {row + 1}: {len(times)} timestamps for {len(request.history)} history items")
            note: dict = {}
            known = [(self.dense_item[str(item)], int(times[i]) if times is not None else 0)
                     for i, item in enumerate(request.history) if str(item) in self.dense_item]
            unknown = [str(item) for item in request.history if str(item) not in self.dense_item]
            if unknown:
                note["unknown_items"] = unknown
            if len(known) > self.length:
                note["truncated"] = len(known) - self.length
                known = known[-self.length:]
            if known:
                items, stamps = np.array(known, np.int64).T
                stamps = stamps - stamps.min()
                if stamps.max() > np.iinfo(np.int32).max:
                    raise ServeError(f"request {row + 1}: timestamps span more than 2^31 seconds")
                histories[row, : len(known)] = items
                timestamps[row, : len(known)] = stamps
                lengths[row] = len(known)
            if request.user is not None:
                users[row] = self.dense_user.get(str(request.user), -1)
            notes.append(note)
        return [histories, timestamps, lengths, users], notes

    def call(self, histories: np.ndarray, timestamps: np.ndarray, lengths: np.ndarray,
             users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The exported function on dense ids: (items (B, k), scores (B, k))."""
        items, scores = self.exported.call(self.params, histories, timestamps, lengths, users)
        return np.asarray(items), np.asarray(scores)

    def recommend(self, requests: Sequence[Request], k: int = 10, batch: int | None = None) -> list[dict]:
        """One {"items", "scores"} answer in original ids per request. batch: rows per call
        (the last call is padded to it, so one compiled shape serves every call)."""
        if not 1 <= k <= self.k:
            raise ServeError(f"--k {k}: this export returns at most {self.k} items")
        answers = []
        batch = batch or max(len(requests), 1)
        for start in range(0, len(requests), batch):
            chunk = list(requests[start : start + batch])
            inputs, notes = self.arrays(chunk + [Request(())] * (batch - len(chunk)))
            items, scores = self.call(*inputs)
            for row, note in enumerate(notes[: len(chunk)]):
                if inputs[2][row] == 0:
                    top = self.popular[:k]
                    answers.append({"items": [self.item_ids[i - 1] for i, _ in top],
                                    "scores": [share for _, share in top], "fallback": "popularity", **note})
                    continue
                found = [(int(i), float(s)) for i, s in zip(items[row], scores[row]) if i > 0][:k]
                answers.append({"items": [self.item_ids[i - 1] for i, _ in found],
                                "scores": [s for _, s in found], **note})
        return answers


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def read_requests(path: Path) -> list[Request]:
    """Requests of a JSON-lines file; a malformed line is a ServeError naming it."""
    if not path.is_file():
        raise ServeError(f"--input {path}: no such file")
    requests = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            history, times = record["history"], record.get("timestamps")
            if not isinstance(history, list) or (times is not None and not isinstance(times, list)):
                raise TypeError("history and timestamps must be lists")
            requests.append(Request(history, None if times is None else [int(t) for t in times], record.get("user")))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ServeError(f"{path}:{number}: not a request object with a history list ({error})") from None
    return requests


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scaling.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", type=Path, help="an export directory (python -m scaling.export --out)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", help="comma-separated original item ids, oldest first")
    source.add_argument("--input", type=Path, help="JSON lines of requests; one answer line each")
    parser.add_argument("--timestamps", help="comma-separated seconds, one per history item")
    parser.add_argument("--user", help="the user's original id (families that hash users)")
    parser.add_argument("--k", type=int, default=10, help="items per answer (at most the export's k)")
    parser.add_argument("--batch", type=int, default=128, help="--input: requests per call")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser


def _answers(model: ExportedModel, requests: list[Request], args: argparse.Namespace) -> Iterable[dict]:
    started = time.perf_counter()
    for start in range(0, len(requests), args.batch):
        yield from model.recommend(requests[start : start + args.batch], args.k, args.batch)
        done = min(start + args.batch, len(requests))
        print(f"{done}/{len(requests)} requests, {done / (time.perf_counter() - started):.0f}/s",
              file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.batch < 1:
            raise ServeError(f"--batch {args.batch}: must be at least 1")
        if args.input is None:
            try:
                times = None if args.timestamps is None else [int(t) for t in _split(args.timestamps)]
            except ValueError:
                raise ServeError(f"--timestamps {args.timestamps!r}: not comma-separated integers") from None
            request = Request(_split(args.history), times, args.user)
            model = ExportedModel(args.export)
            (answer,) = model.recommend([request], args.k)
            if args.json:
                print(json.dumps(answer))
            else:
                for rank, (item, score) in enumerate(zip(answer["items"], answer["scores"]), start=1):
                    print(f"{rank:>3}  {item}  {score:.4f}")
            return 0
        requests = read_requests(args.input)
        model = ExportedModel(args.export)
        for answer in _answers(model, requests, args):
            print(json.dumps(answer), flush=True)
    except ServeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
