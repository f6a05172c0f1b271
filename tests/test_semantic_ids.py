"""Semantic IDs end to end: item vectors from every source, collision codes, quality metrics, the
artefact and `python -m data semantic-ids`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from data import item_features
from data.dataset import PreparedData, prepare
from data.errors import DataError
from data.sequences import Sequences
from semantic_ids import quality as id_quality
from semantic_ids.artefact import SemanticIdConfig, SemanticIds, build, collision_codes, load, save
from semantic_ids.cooccurrence import cooccurrence_counts, ppmi, training_sequences
from semantic_ids.item_vectors import VectorOptions, item_vectors
from tests.conftest import REPO_ROOT

SYNTHETIC = "synthetic:users=300,items=120,seed=5,mean_events=12"


def sequences_of(users: list[list[int]], num_items: int) -> Sequences:
    lengths = [len(u) for u in users]
    items = np.concatenate([np.asarray(u, np.int32) for u in users])
    return Sequences(offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), items=items,
                     timestamps=np.arange(len(items), dtype=np.int64), ratings=None, num_items=num_items,
                     user_ids=np.arange(len(users)), item_ids=np.arange(1, num_items + 1) * 10)


def prepared_of(sequences: Sequences, metadata: pd.DataFrame | None = None) -> PreparedData:
    return PreparedData("test", sequences, metadata, {}, {})


@pytest.fixture(scope="module")
def small(lab_cache) -> PreparedData:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCALING_LAB_CACHE", str(lab_cache))
        return prepare(SYNTHETIC)


# ---- item vectors --------------------------------------------------------------------------------


def test_cooccurrence_counts_pairs_within_the_window_of_one_user():
    seqs = sequences_of([[1, 2, 3], [3, 1]], 4)
    counts = cooccurrence_counts(seqs, window=1).toarray()
    expected = np.zeros((4, 4))
    for a, b in ((1, 2), (2, 3), (3, 1)):  # neighbours within each user; not 3 -> 3 across users
        expected[a - 1, b - 1] += 1
        expected[b - 1, a - 1] += 1
    np.testing.assert_array_equal(counts, expected)
    wide = cooccurrence_counts(seqs, window=2).toarray()
    assert wide[0, 2] == 2 and wide[1, 0] == 1  # (1, 3) within two positions for user 0, and user 1


def test_ppmi_matches_its_formula():
    counts = sp.csr_matrix(np.array([[0, 2, 1], [2, 0, 0], [1, 0, 0]], float))
    total, marginal = 6.0, np.array([3.0, 2.0, 1.0])
    expected = np.zeros((3, 3))
    for i, j in ((0, 1), (1, 0), (0, 2), (2, 0)):
        expected[i, j] = max(0.0, np.log(counts[i, j] * total / (marginal[i] * marginal[j])))
    np.testing.assert_allclose(ppmi(counts).toarray(), expected)


def test_cooccurrence_vectors_ignore_every_held_out_target():
    """Changing every user's validation and test targets changes nothing; changing a training
    item does (so the first check can fail)."""
    rng = np.random.default_rng(0)
    users = [list(rng.integers(1, 41, 12)) for _ in range(60)]
    base = item_vectors(prepared_of(sequences_of(users, 40)), "cooccurrence", VectorOptions(dim=8))
    moved_targets = [u[:-2] + [int(rng.integers(1, 41)), int(rng.integers(1, 41))] for u in users]
    same = item_vectors(prepared_of(sequences_of(moved_targets, 40)), "cooccurrence", VectorOptions(dim=8))
    np.testing.assert_array_equal(base.vectors, same.vectors)
    moved_train = [[u[1]] + u[1:] for u in users]
    other = item_vectors(prepared_of(sequences_of(moved_train, 40)), "cooccurrence", VectorOptions(dim=8))
    assert not np.array_equal(base.vectors, other.vectors)
    assert len(training_sequences(sequences_of(users, 40)).items) == 60 * 10


def test_metadata_vectors_encode_titles_labels_and_numbers():
    metadata = pd.DataFrame({"item": [1, 2, 3, 4, 5, 6], "movie_title": ["Star Wars", "Star Trek", "Heat", "Heat",
                                                                         "Up", None],
                             "release_year": [1977.0, 1979.0, 1995.0, 1995.0, np.nan, 2009.0],
                             "class": ["Sci-Fi Action", "Sci-Fi", "Crime", "Crime", "Animation", "Animation"]})
    blocks = item_features.metadata_blocks(metadata)
    assert set(blocks) == {"movie_title", "release_year", "class"}
    assert blocks["class"].shape == (6, 4) and blocks["release_year"].shape == (6, 2)  # value + missing flag
    assert blocks["movie_title"].shape[1] == 2  # tokens in at least two titles: "star", "heat"
    vectors = item_features.metadata_vectors(metadata, dim=4, seed=0)
    np.testing.assert_allclose(vectors[2], vectors[3], atol=1e-6)  # identical rows, identical vectors
    assert not np.allclose(vectors[0], vectors[2])
    labels = item_features.item_labels(metadata).toarray()
    assert labels.sum(1).tolist() == [2, 1, 1, 1, 1, 1]


def test_sources_from_files_align_by_item_id(tmp_path):
    seqs = sequences_of([[1, 2, 3, 4, 1], [2, 3, 4, 1, 2]], 4)
    prepared = prepared_of(seqs)
    table = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.save(tmp_path / "v.npy", table)
    np.testing.assert_array_equal(item_vectors(prepared, f"npy:{tmp_path / 'v.npy'}").vectors, table)
    order = np.array([2, 0, 3, 1])
    np.savez(tmp_path / "v.npz", item_ids=seqs.item_ids[order], vectors=table[order])
    np.testing.assert_array_equal(item_vectors(prepared, f"npy:{tmp_path / 'v.npz'}").vectors, table)
    both = item_vectors(prepared, f"npy:{tmp_path / 'v.npy'}+npy:{tmp_path / 'v.npz'}").vectors
    assert both.shape == (4, 4)
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-6)  # parts centred...
    np.testing.assert_allclose([np.mean(both[:, :2] ** 2), np.mean(both[:, 2:] ** 2)], [1, 1], rtol=1e-5)  # ...and scaled


@pytest.mark.parametrize("make, message", [
    (lambda p: np.save(p / "bad.npy", np.zeros((3, 2))), "3, 2"),
    (lambda p: np.save(p / "bad.npy", np.array([[0, 1], [np.nan, 0], [1, 1], [2, 2]])), "NaN or Inf.*item 20"),
    (lambda p: (p / "bad.npy").write_text("not numpy"), "cannot read"),
    (lambda p: np.savez(p / "bad.npy", item_ids=np.array([10, 20, 30]), vectors=np.zeros((3, 2))), "no vector for 1"),
    (lambda p: (np.savez(p / "full.npz", item_ids=np.arange(4), vectors=np.zeros((4, 2))),
                (p / "bad.npy").write_bytes((p / "full.npz").read_bytes()[:150])), "cannot read"),
    (lambda p: np.savez(p / "bad.npy", item_ids=np.int64(3), vectors=np.zeros((1, 2))), "are not \\(n,\\)"),
    (lambda p: np.savez(p / "bad.npy", item_ids=np.zeros(0), vectors=np.zeros((0, 2))), "are not \\(n,\\)"),
    (lambda p: np.savez(p / "bad.npy", other=np.zeros(3)), "needs arrays item_ids and vectors"),
])
def test_bad_vector_files_name_the_problem(tmp_path, make, message):
    make(tmp_path)
    path = tmp_path / "bad.npy"
    if not path.exists():
        path = tmp_path / "bad.npy.npz"
    prepared = prepared_of(sequences_of([[1, 2, 3, 4], [4, 3, 2, 1]], 4))
    with pytest.raises(DataError, match=message):
        item_vectors(prepared, f"npy:{path}")


def test_unknown_source_parts_are_refused():
    prepared = prepared_of(sequences_of([[1, 2, 3]], 3))
    for source, message in (("text", "unknown part 'text'"), ("metadata+", "expected PART"), ("npy:", "needs a path"),
                            ("metadata", "no item metadata")):
        with pytest.raises(DataError, match=message):
            item_vectors(prepared, source)


def test_checkpoint_source_reads_a_trials_item_table(tmp_path, small, use_lab_cache):
    import jax.numpy as jnp

    from scaling.engine import checkpoint, trained_table
    from scaling.config import DataConfig, TrialConfig

    workdir = tmp_path / "trial"
    workdir.mkdir()
    (workdir / "config.json").write_text(TrialConfig(data=DataConfig(name=SYNTHETIC)).to_json())
    n = small.sequences.num_items
    table = np.random.default_rng(0).normal(size=(n + 1, 6)).astype(np.float32)
    manager = checkpoint.manager(workdir / "checkpoints", keep=1, asynchronous=False)
    checkpoint.save(manager, 7, {"params": {"item_embedding": jnp.asarray(table), "other": jnp.zeros(3)},
                                 "step": jnp.int32(7)}, {"iterator": {}})
    manager.close()
    with pytest.raises(DataError, match="no reader of trained trials"):
        item_vectors(small, f"checkpoint:{workdir}")
    vectors = item_vectors(small, f"checkpoint:{workdir}", trained_table=trained_table.read)
    assert vectors.parts[0]["step"] == 7
    directions = table[1:] / np.linalg.norm(table[1:], axis=1, keepdims=True)  # the rows the model scores with
    centred = directions - directions.mean(0)
    np.testing.assert_allclose(vectors.vectors, centred / np.sqrt(np.mean(centred**2)), rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="cannot read"):
        item_vectors(small, f"checkpoint:{tmp_path / 'missing'}", trained_table=trained_table.read)
    for entry in (workdir / "checkpoints" / "7" / "state").iterdir():  # damage the saved arrays
        if entry.is_file():
            entry.write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read the item table"):
        item_vectors(small, f"checkpoint:{workdir}", trained_table=trained_table.read)


# ---- codes and quality ---------------------------------------------------------------------------


def test_collision_codes_make_every_id_unique_in_row_order():
    codes = np.array([[0, 1], [2, 2], [0, 1], [0, 1], [2, 2], [1, 0]])
    np.testing.assert_array_equal(collision_codes(codes), [0, 0, 1, 2, 1, 0])
    full = np.concatenate([codes, collision_codes(codes)[:, None]], 1)
    assert len(np.unique(full, axis=0)) == len(full)


def test_quality_metrics_match_hand_counts():
    codes = np.array([[0, 1], [2, 2], [0, 1], [0, 1], [2, 2], [1, 0]])
    assert id_quality.collisions(codes) == {"collision_rate": 0.5, "largest_collision_group": 3}
    usage = id_quality.level_usage(codes, 4)
    assert usage["utilization"] == [0.75, 0.75]
    p = np.array([3, 1, 2]) / 6
    assert usage["entropy"][0] == pytest.approx(-(p * np.log2(p)).sum())
    first = codes[:, 0]
    linked = sp.csr_matrix(np.array([[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0],
                                     [0, 0, 0, 0, 0, 1], [0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]]))
    # linked pairs (0,2), (1,4), (3,5): 2 of the 4 same-first-code pairs, 3 of all 15 pairs
    assert id_quality.cooccurrence_lift(first, linked) == pytest.approx((2 / 4) / (3 / 15))
    labels = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]]))
    sharing = [(i, j) for i in range(6) for j in range(i + 1, 6) if (labels[i].toarray() * labels[j].toarray()).sum()]
    same = [(i, j) for i in range(6) for j in range(i + 1, 6) if first[i] == first[j]]
    expected = (len(set(sharing) & set(same)) / len(same)) / (len(sharing) / 15)
    assert id_quality.label_lift(first, labels) == pytest.approx(expected)


@pytest.mark.parametrize("sizes", [[150] * 20, [2000] + [10] * 100])
def test_sampled_label_lift_estimates_the_exact_one(monkeypatch, sizes):
    """Also with very unequal groups, where drawing an item and then a partner would be biased."""
    rng = np.random.default_rng(0)
    first = np.repeat(np.arange(len(sizes)), sizes)
    labels = sp.csr_matrix(np.eye(12)[np.where(rng.random(len(first)) < 0.5, first % 12, rng.integers(0, 12, len(first)))])
    exact = id_quality.label_lift(first, labels)
    monkeypatch.setattr(id_quality, "EXACT_PAIRS_UP_TO", 100)
    assert id_quality.label_lift(first, labels) == pytest.approx(exact, rel=0.05)


def test_a_label_on_most_items_is_ignored_by_the_lift():
    first = np.array([0, 0, 1, 1])
    genre = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1], [0, 1]]))
    everywhere = sp.hstack([genre, np.ones((4, 1))])  # a top-level category on every item
    assert id_quality.label_lift(first, everywhere) == id_quality.label_lift(first, genre) == pytest.approx(3.0)


@pytest.fixture(scope="module")
def built(small, lab_cache) -> SemanticIds:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCALING_LAB_CACHE", str(lab_cache))
        return build(small, SemanticIdConfig(codebook=8, source="cooccurrence", dim=8, n_init=2))


@pytest.mark.slow
def test_built_ids_are_unique_balanced_and_cached(built, small, use_lab_cache, monkeypatch):
    assert built.codes.shape == (small.sequences.num_items, 4) and built.codes.dtype == np.int32
    assert len(np.unique(built.codes, axis=0)) == len(built.codes)
    assert np.bincount(built.codes[:, 0]).max() <= -(-len(built.codes) // 8)
    assert (np.diff(built.item_ids.astype(np.int64)) > 0).all()
    assert built.quality["utilization"][0] == 1.0 and len(built.quality["entropy"]) == 3
    from semantic_ids import artefact as semantic_ids

    quantise = semantic_ids._quantise
    monkeypatch.setattr(semantic_ids, "_quantise", lambda *a: pytest.fail("the cache was not used"))
    again = build(small, SemanticIdConfig(codebook=8, source="cooccurrence", dim=8, n_init=2))
    np.testing.assert_array_equal(again.codes, built.codes)
    monkeypatch.setattr(semantic_ids, "_quantise", quantise)
    rebuilt = build(small, SemanticIdConfig(codebook=8, source="cooccurrence", dim=8, n_init=2), use_cache=False)
    np.testing.assert_array_equal(rebuilt.codes, built.codes)
    assert rebuilt.input_hash == built.input_hash


def test_artefact_round_trip_and_damage(built, tmp_path):
    path = tmp_path / "ids.npz"
    save(built, path)
    loaded = load(path)
    np.testing.assert_array_equal(loaded.codes, built.codes)
    np.testing.assert_array_equal(loaded.item_ids, built.item_ids)
    assert loaded.config == built.config and loaded.input_hash == built.input_hash
    with np.load(path) as arrays:
        assert str(arrays["method"]) == "rqkmeans-balanced" and int(arrays["seed"]) == 0
        stored = dict(arrays)
    stored["codes"] = np.zeros_like(built.codes)
    np.savez(tmp_path / "clash.npz", **stored)
    with pytest.raises(DataError, match="share a full semantic ID"):
        load(tmp_path / "clash.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a semantic-ID artefact"):
        load(tmp_path / "junk.npz")


@pytest.mark.slow
def test_a_damaged_cache_entry_is_rebuilt(small, use_lab_cache):
    config = SemanticIdConfig(codebook=8, source="cooccurrence", dim=8, n_init=1, levels=1)
    first = build(small, config)
    entries = sorted((use_lab_cache / "semantic_ids").glob("*.npz"), key=lambda p: p.stat().st_mtime)
    entries[-1].write_bytes(entries[-1].read_bytes()[:100])
    np.testing.assert_array_equal(build(small, config).codes, first.codes)


@pytest.mark.slow
def test_quality_without_a_leave_one_out_split(tmp_path):
    """Users with fewer than 3 events: no co-occurrence lift, the rest is measured."""
    prepared = prepared_of(sequences_of([[1, 2], [3, 4, 5, 6, 7, 8]], 8))
    np.save(tmp_path / "v.npy", np.arange(16, dtype=np.float32).reshape(8, 2) ** 1.5)
    ids = build(prepared, SemanticIdConfig(codebook=2, levels=2, source=f"npy:{tmp_path / 'v.npy'}", n_init=1),
                use_cache=False)
    assert ids.quality["cooccurrence_lift"] is None and ids.quality["genre_lift"] is None
    assert ids.quality["utilization"] == [1.0, 1.0]


def test_codebook_larger_than_the_catalogue_is_refused(small):
    with pytest.raises(DataError, match="larger than the catalogue"):
        build(small, SemanticIdConfig(codebook=10_000, source="cooccurrence"), use_cache=False)


# ---- the command ---------------------------------------------------------------------------------


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    """The command in a process of its own with a bare environment (but the run's XLA settings)."""
    xla = {key: value for key, value in os.environ.items() if key.startswith(("JAX_", "XLA_"))}
    return subprocess.run([sys.executable, "-m", "data", "semantic-ids", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, env={**xla, "PATH": "/usr/bin:/bin", "SCALING_LAB_CACHE": str(cache),
                                                       "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu"})


def run_in_process(*args: str) -> tuple[int, str]:
    """(exit status, stderr) of the command's main() called here (`python -m data semantic-ids`
    hands its arguments to it)."""
    import contextlib
    import io

    from scaling.build_ids import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = main(list(args))
        except SystemExit as exit:  # argparse's own refusals
            status = exit.code
    return status, stderr.getvalue()


@pytest.mark.slow
def test_command_writes_the_artefact_and_prints_its_quality(tmp_path, lab_cache, monkeypatch):
    out = tmp_path / "ids.npz"
    done = run_cli("--data", SYNTHETIC, "--source", "cooccurrence", "--codebook", "8", "--dim", "8",
                   "--method", "rqkmeans", "--out", str(out), "--json", cache=lab_cache)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("collision_rate", "largest_collision_group", "utilization", "entropy", "recon_error", "seconds"):
        assert key in result
    assert len(result["utilization"]) == 3
    assert "level 3/3" in done.stderr
    ids = load(out)
    assert ids.config["method"] == "rqkmeans" and ids.quality["collision_rate"] == result["collision_rate"]
    monkeypatch.setenv("SCALING_LAB_CACHE", str(lab_cache))
    for args, message in ((("--codebook", "100000"), "larger than the catalogue"),
                          (("--source", "npy:/nonexistent.npy"), "cannot read"),
                          (("--source", "metadata+graph"), "unknown part 'graph'"),
                          (("--levels", "0"), "levels=0"),
                          (("--codebook", "8", "--dim", "8", "--source", "cooccurrence", "--out", "/proc/ids.npz"),
                           "cannot write the artefact")):
        if "--out" not in args:
            args = (*args, "--out", str(tmp_path / "unused.npz"))
        status, stderr = run_in_process("--data", SYNTHETIC, *args)  # the process above exits with main()'s status
        assert status == 2, (args, stderr)
        assert stderr.strip().splitlines()[-1].startswith("error:") and message in stderr


def test_amazon_metadata_gives_content_vectors(tmp_path):
    """Title, brand, categories and price of an Amazon meta file (read beside the reviews)."""
    from data.sources import load_interactions
    from data.sequences import PreprocessOptions, build_sequences, item_metadata_in_dense_order

    reviews = [{"reviewerID": f"U{u}", "asin": f"B{(u + t) % 6}", "overall": 5.0, "unixReviewTime": t}
               for u in range(4) for t in range(5)]
    (tmp_path / "reviews_Toys_5.json").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    meta = [{"asin": f"B{i}", "title": ["Red Car", "Blue Car", "Red Doll", "Doll House", "Car Park", "Kite"][i],
             "brand": ["Acme", "Acme", "Toyco", "Toyco", None, None][i], "price": [5, 6, 9, None, 20, 3][i],
             "categories": [["Toys", "Cars"]] if "Car" in ["Red Car", "Blue Car", "Red Doll", "Doll House", "Car Park",
                                                           "Kite"][i] else [["Toys", "Dolls"]]} for i in range(6)]
    (tmp_path / "meta_Toys.json").write_text("".join(json.dumps(m) + "\n" for m in meta))
    interactions = load_interactions(str(tmp_path))
    seqs, _ = build_sequences(interactions, PreprocessOptions())
    prepared = prepared_of(seqs, item_metadata_in_dense_order(seqs, interactions.item_metadata))
    assert set(item_features.metadata_blocks(prepared.item_metadata)) == {"title", "categories", "brand", "price"}
    vectors = item_vectors(prepared, "metadata", VectorOptions(dim=4)).vectors
    assert vectors.shape == (6, 4) and np.isfinite(vectors).all()
    assert item_features.item_labels(prepared.item_metadata).shape == (6, 3)  # Toys, Cars, Dolls


@pytest.mark.slow
def test_ml100k_metadata_ids_group_items_of_a_genre(ml100k, use_lab_cache):
    """ML-100K's content (titles, year, genres, knowledge graph) from the recbole wheel: items under
    one first code share a genre far more often than random pairs."""
    metadata = ml100k.item_metadata
    assert metadata["kg"].notna().sum() > 1500  # the films linked to the knowledge graph
    assert set(item_features.metadata_blocks(metadata)) == {"movie_title", "release_year", "class", "kg"}
    ids = build(ml100k, SemanticIdConfig(source="metadata", n_init=1), use_cache=False)
    assert ids.codes.shape == (1682, 4) and len(np.unique(ids.codes, axis=0)) == 1682
    assert ids.quality["genre_lift"] > 1.5 and ids.quality["utilization"] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("shape, exact_up_to", [((30, 50), 4096), ((50, 30), 4096), ((500, 40), 4096),
                                                ((300, 200), 10)])
@pytest.mark.slow
def test_truncated_svd_matches_numpy(shape, exact_up_to, monkeypatch):
    monkeypatch.setattr(item_features, "EXACT_SVD_UP_TO", exact_up_to)  # 10: the randomised path
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(shape[0], 6)) @ rng.normal(size=(6, shape[1])) + 0.01 * rng.normal(size=shape)
    got = item_features.truncated_svd(sp.csr_matrix(matrix), 4, seed=0)
    u, s, _ = np.linalg.svd(matrix, full_matrices=False)
    expected = u[:, :4] * s[:4]
    expected *= np.sign(expected[np.abs(expected).argmax(0), np.arange(4)])
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * s[0] / np.sqrt(shape[0]))
