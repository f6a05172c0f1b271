"""Dataset names and paths -> Interactions: the embedded default, GroupLens releases, files."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Mapping

from data.errors import DataError
from data.interactions import Interactions

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
_ML100K_IN_WHEEL = "recbole/dataset_example/ml-100k/"
ML100K_FILES = ("inter", "item", "user", "kg", "link")  # .kg / .link: a knowledge graph of the films
GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
# GroupLens release name -> folder inside its zip.
GROUPLENS_RELEASES = {
    "ml-1m": "ml-1m",
    "ml-10m": "ml-10M100K",
    "ml-20m": "ml-20m",
    "ml-25m": "ml-25m",
    "ml-32m": "ml-32m",
}
# Datasets that are not downloaded (no public URL with a stable checksum): named here, read from
# $SCALING_LAB_DATA/NAME/ (default: the cache's datasets/ folder); their companion files (e.g.
# semantic IDs) are named "NAME:FILE".
LOCAL_DATASETS = {
    # TIGER's Amazon Beauty 5-core as sequences JSON, with RQ-VAE and RQ-KMeans semantic IDs beside:
    # github.com/Timoniche/tiger-cf, data/Beauty (inter.json, index_rqvae.json, index_rqkmeans.json)
    "amazon-beauty": "inter.json",
}
FORMATS = ("movielens", "recbole", "amazon", "amazon-csv", "sequences-json", "csv", "parquet")


def cache_dir() -> Path:
    """Where downloads and parsed sequences live: $SCALING_LAB_CACHE or ~/.cache/scaling-lab."""
    return Path(os.environ.get("SCALING_LAB_CACHE", Path.home() / ".cache" / "scaling-lab"))


def staging_folder(folder: Path) -> Path:
    """An empty folder beside `folder`, this process's own, to fill before publish_folder: the
    processes of a multi-process job on one machine may fill the same cache entry at once."""
    staged = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    return staged


def publish_folder(staged: Path, folder: Path) -> None:
    """Rename a filled staging folder to `folder`, whole; when another process published it first,
    keep that copy (each is complete) and drop this one."""
    try:
        staged.rename(folder)
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(staged, ignore_errors=True)


def known_names() -> list[str]:
    return ["ml-100k", *GROUPLENS_RELEASES, *LOCAL_DATASETS, "synthetic:KEY=VALUE,..."]


def data_dir() -> Path:
    """Where the local datasets' folders are: $SCALING_LAB_DATA or the cache's datasets/."""
    return Path(os.environ.get("SCALING_LAB_DATA", cache_dir() / "datasets"))


def local_file(reference: str) -> Path:
    """The file a local dataset's name ("amazon-beauty": its interactions) or "NAME:FILE" (a file
    beside them) stands for; anything else is a path as given. A missing file is one DataError
    saying where it was looked for and how to point elsewhere."""
    name, colon, file = reference.partition(":")
    if name not in LOCAL_DATASETS or (colon and not file):
        return Path(reference)
    path = data_dir() / name / (file or LOCAL_DATASETS[name])
    if not path.is_file():
        raise DataError(f"{reference}: {path} not found; put the dataset's files in {path.parent} "
                        f"or set SCALING_LAB_DATA to the folder that holds {name}/")
    return path


def readable_offline(name_or_path: str) -> bool:
    """Whether reading this dataset needs no download (files present, cached, or generated)."""
    if name_or_path.startswith("synthetic:"):
        return True
    if name_or_path == "ml-100k":
        return (cache_dir() / "ml-100k" / "ml-100k.inter").is_file() or (cache_dir() / "wheels" / RECBOLE_WHEEL).is_file()
    if name_or_path in GROUPLENS_RELEASES:
        return (cache_dir() / name_or_path).is_dir() or (cache_dir() / "downloads" / f"{name_or_path}.zip").is_file()
    if name_or_path in LOCAL_DATASETS:
        return (data_dir() / name_or_path / LOCAL_DATASETS[name_or_path]).is_file()
    return Path(name_or_path).exists()


def load_interactions(
    name_or_path: str,
    format: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> Interactions:
    """Read a named dataset (ml-100k, ml-1m, ..., synthetic:...) or a file/folder in `format`."""
    if name_or_path.startswith("synthetic:"):
        from data import synthetic

        return synthetic.generate(synthetic.parse_spec(name_or_path))
    if name_or_path == "ml-100k":
        from data.readers.recbole import read_recbole

        return read_recbole(ml100k_folder() / "ml-100k.inter")
    if name_or_path in GROUPLENS_RELEASES:
        from data.readers.movielens import read_movielens

        return read_movielens(grouplens_folder(name_or_path))
    path = local_file(name_or_path)
    if not path.exists():
        raise DataError(f"{name_or_path}: no such file or folder, and not a known dataset name "
                        f"(known: {', '.join(known_names())})")
    return read_path(path, format or detect_format(path), columns)


def detect_format(path: Path) -> str:
    """Guess the format of a file or folder from its name (a .json file: from its first bytes); say
    how to choose when it cannot."""
    names = {p.name for p in path.iterdir()} if path.is_dir() else {path.name}
    if names & {"u.data", "ratings.dat", "ratings.csv"}:
        return "movielens"
    if any(n.endswith(".inter") for n in names):
        return "recbole"
    if path.is_file() and path.suffix == ".json":
        from data.readers.sequences_json import looks_like_sequences_json

        if looks_like_sequences_json(path):  # {user: [items]}: by content, as Amazon reviews are .json too
            return "sequences-json"
    if any(n.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")) for n in names):
        return "amazon"
    if path.is_file() and path.suffix == ".parquet":
        return "parquet"
    raise DataError(f"{path}: cannot tell the format; pass --format ({', '.join(FORMATS)})")


def read_path(path: Path, format: str, columns: Mapping[str, str] | None) -> Interactions:
    """Dispatch to the reader of `format`."""
    if format in ("csv", "parquet"):
        from data.readers.tabular import read_tabular

        if not columns:
            raise DataError(f"{path}: --format {format} needs --columns user=COL,item=COL,timestamp=COL[,rating=COL]")
        return read_tabular(path, format, columns)
    if format == "movielens":
        from data.readers.movielens import read_movielens as reader
    elif format == "recbole":
        from data.readers.recbole import read_recbole as reader
    elif format == "amazon":
        from data.readers.amazon import read_amazon_reviews as reader
    elif format == "amazon-csv":
        from data.readers.amazon import read_amazon_ratings_csv as reader
    elif format == "sequences-json":
        from data.readers.sequences_json import read_sequences_json as reader
    else:
        raise DataError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    if format == "amazon" and path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz"))
                       and not p.name.startswith("meta"))
        if len(files) != 1:
            raise DataError(f"{path}: expected one Amazon reviews file in the folder, found {len(files)}")
        metadata = sorted(p for p in path.iterdir() if p.name.startswith("meta")
                          and p.name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")))
        if len(metadata) > 1:
            raise DataError(f"{path}: expected at most one Amazon metadata file (meta_*) in the folder, "
                            f"found {len(metadata)}")
        return reader(files[0], metadata[0] if metadata else None)
    return reader(path)


def ml100k_folder() -> Path:
    """The MovieLens-100K atomic files from the recbole wheel, fetched once into the cache."""
    folder = cache_dir() / "ml-100k"
    if all((folder / f"ml-100k.{suffix}").is_file() for suffix in ML100K_FILES):
        return folder
    wheel = _recbole_wheel()
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete copy
    tmp = staging_folder(folder)
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(_ML100K_IN_WHEEL) and not m.endswith("/")]
        for member in members:
            if member.endswith(tuple(f".{suffix}" for suffix in ML100K_FILES)):
                (tmp / Path(member).name).write_bytes(archive.read(member))
    publish_folder(tmp, folder)
    return folder


def _recbole_wheel() -> Path:
    wheels = cache_dir() / "wheels"
    wheel = wheels / RECBOLE_WHEEL
    if not wheel.is_file():
        wheels.mkdir(parents=True, exist_ok=True)
        print(f"fetching {RECBOLE_WHEEL} (MovieLens-100K ships inside it) into {wheels}", file=sys.stderr)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "recbole==1.2.1", "-d", str(wheels)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.is_file():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"ml-100k: `pip download recbole==1.2.1` failed ({last}); "
                            f"place {RECBOLE_WHEEL} in {wheels}")
    digest = _sha256(wheel)
    if digest != RECBOLE_WHEEL_SHA256:
        raise DataError(f"{wheel}: sha256 {digest} is not the expected {RECBOLE_WHEEL_SHA256}; delete it to refetch")
    return wheel


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def grouplens_folder(name: str) -> Path:
    """The extracted folder of a GroupLens release, downloaded (md5-checked) if it is not there."""
    folder = cache_dir() / name
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    archive = cache_dir() / "downloads" / f"{name}.zip"
    if not archive.is_file():
        _download_grouplens(name, archive)
    inner = GROUPLENS_RELEASES[name] + "/"
    try:
        with zipfile.ZipFile(archive) as zipped:
            tmp = staging_folder(folder)
            for member in zipped.namelist():
                if member.startswith(inner) and not member.endswith("/"):
                    (tmp / member[len(inner):]).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / member[len(inner):]).write_bytes(zipped.read(member))
    except zipfile.BadZipFile:
        raise DataError(f"{archive}: not a zip archive; delete it and try again") from None
    publish_folder(tmp, folder)  # a rename replaces an empty folder
    return folder


def _download_grouplens(name: str, archive: Path) -> None:
    url = f"{GROUPLENS}{name}.zip"
    manual = (f"download {url} and place it at {archive} (or its extracted files in {cache_dir() / name}/); "
              f"set SCALING_LAB_CACHE to use another cache folder")
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    try:
        print(f"downloading {url}", file=sys.stderr)
        with urllib.request.urlopen(f"{url}.md5", timeout=30) as response:
            expected_md5 = response.read().decode().split()[0].strip().lower()
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except (urllib.error.URLError, OSError, IndexError) as error:
        partial.unlink(missing_ok=True)
        raise DataError(f"{name}: cannot download ({error}); {manual}") from None
    if _md5(partial) != expected_md5:
        partial.unlink(missing_ok=True)
        raise DataError(f"{name}: md5 of the download does not match {url}.md5; {manual}")
    partial.rename(archive)
