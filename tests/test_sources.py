"""Dataset names: GroupLens download with md5 check, the manual-placement message, the wheel check."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import zipfile
from pathlib import Path

import pytest

from data import sources
from data.errors import DataError


def ml1m_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-1m/ratings.dat", "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978298413\n")
        archive.writestr("ml-1m/movies.dat", "10::GoldenEye (1995)::Action\n20::Casino (1995)::Drama\n")
    return buffer.getvalue()


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> list[str]:
    asked: list[str] = []

    def urlopen(url: str, timeout: float = 0):
        asked.append(url)
        if url not in files:
            raise urllib.error.URLError("no network")
        return FakeResponse(files[url])

    monkeypatch.setattr(sources.urllib.request, "urlopen", urlopen)
    return asked


def test_placed_archive_is_used_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALING_LAB_CACHE", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "ml-1m.zip").write_bytes(ml1m_zip())
    asked = serve(monkeypatch, {})
    got = sources.load_interactions("ml-1m")
    assert asked == [] and got.item.tolist() == [10, 20, 10]
    assert got.item_metadata["title"].tolist() == ["GoldenEye (1995)", "Casino (1995)"]


def test_download_verified_by_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALING_LAB_CACHE", str(tmp_path))
    archive = ml1m_zip()
    url = sources.GROUPLENS + "ml-1m.zip"
    serve(monkeypatch, {url: archive, url + ".md5": f"{hashlib.md5(archive).hexdigest()}  ml-1m.zip\n".encode()})
    assert sources.load_interactions("ml-1m").user.tolist() == [1, 1, 2]
    assert (tmp_path / "downloads" / "ml-1m.zip").read_bytes() == archive


def test_md5_mismatch_is_rejected_and_nothing_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALING_LAB_CACHE", str(tmp_path))
    url = sources.GROUPLENS + "ml-1m.zip"
    serve(monkeypatch, {url: ml1m_zip(), url + ".md5": b"0" * 32 + b"  ml-1m.zip\n"})
    with pytest.raises(DataError, match="md5 of the download does not match"):
        sources.load_interactions("ml-1m")
    assert not any((tmp_path / "downloads").iterdir())


def test_no_network_says_which_file_to_place_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALING_LAB_CACHE", str(tmp_path))
    serve(monkeypatch, {})
    with pytest.raises(DataError) as caught:
        sources.load_interactions("ml-20m")
    assert f"place it at {tmp_path / 'downloads' / 'ml-20m.zip'}" in str(caught.value)
    assert "ml-20m.zip" in str(caught.value) and "\n" not in str(caught.value)


def test_tampered_wheel_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALING_LAB_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / sources.RECBOLE_WHEEL).write_bytes(b"not the wheel")
    with pytest.raises(DataError, match="sha256 .* is not the expected"):
        sources.load_interactions("ml-100k")


def test_unknown_name_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="known: ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, amazon-beauty, synthetic:"):
        sources.load_interactions(str(tmp_path / "ml-7m"))


def test_a_cache_entry_published_twice_keeps_the_first_copy_whole(tmp_path) -> None:
    """The processes of a job on one machine may prepare the same entry at once: the first
    rename wins, a later one is dropped, and no staging folder is left behind."""
    folder = tmp_path / "entry"
    for content in ("first", "second"):
        staged = sources.staging_folder(folder)
        (staged / "sequences.npz").write_text(content)
        sources.publish_folder(staged, folder)
    assert (folder / "sequences.npz").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
