"""The embedded default dataset end to end: counts, the tie rule, the popularity floor, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.baseline import popularity_baseline, popularity_counts, popularity_ranks
from data.pipeline import PipelineConfig, eval_dataset, padding_fraction
from data.ranking import ranking_metrics, ranks_from_scores
from data.split import leave_one_out

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_counts_and_metadata(ml100k) -> None:
    seqs = ml100k.sequences
    assert (seqs.num_users, seqs.num_items, len(seqs.items)) == (943, 1682, 100_000)
    assert ml100k.item_metadata is not None and len(ml100k.item_metadata) == 1682
    assert ml100k.item_metadata.loc[0, "movie_title"] == "Toy Story"  # dense item 1 = original id 1


def test_cached_item_metadata_is_read_on_first_use(ml100k, use_lab_cache, tmp_path) -> None:
    """A cached dataset holds its item table's file and reads it when first asked (a trial that
    never asks never imports pandas: tests/test_architecture.py); the table equals a fresh one."""
    import pandas as pd

    from data.dataset import PreparedData, prepare
    from data.errors import DataError

    cached = prepare("ml-100k")
    assert isinstance(cached.metadata, Path) and cached.metadata.is_file()
    pd.testing.assert_frame_equal(cached.item_metadata, prepare("ml-100k", use_cache=False).item_metadata)
    damaged = tmp_path / "items.parquet"
    damaged.write_bytes(b"not parquet")
    with pytest.raises(DataError, match=f"{damaged}: damaged cache entry"):
        PreparedData("ml-100k", cached.sequences, damaged, {}, {}).item_metadata


def test_tie_rule_decides_415_test_targets(ml100k) -> None:
    seqs = ml100k.sequences
    last, second = seqs.timestamps[seqs.offsets[1:] - 1], seqs.timestamps[seqs.offsets[1:] - 2]
    assert int(np.sum(last == second)) == 415  # the figure ../shared/specs/hstu.md quotes
    within_user = np.repeat(np.arange(943), seqs.lengths)
    same_user = within_user[1:] == within_user[:-1]
    assert np.all(np.diff(seqs.timestamps)[same_user] >= 0)


def test_popularity_ranks_equal_dense_scoring(ml100k) -> None:
    split = leave_one_out(ml100k.sequences)
    counts = popularity_counts(split)
    fast = popularity_ranks(counts, split.test, max_len=50)
    dense = []
    for batch in eval_dataset(split.test, row_len=50, batch_size=256):
        scores = np.tile(counts.astype(float), (len(batch["items"]), 1))
        dense.append(ranks_from_scores(scores, batch["eval_target"], batch["items"])[batch["eval_valid"]])
    assert np.array_equal(fast, np.concatenate(dense))
    metrics = popularity_baseline(split)["test"]
    assert metrics == ranking_metrics(popularity_ranks(counts, split.test, 200))
    assert 0.05 < metrics["hr@10"] < 0.10 and metrics["ndcg@10"] < metrics["hr@10"]


def test_packing_saves_most_padding_at_max_len_200(ml100k) -> None:
    train = leave_one_out(ml100k.sequences).train
    padded = padding_fraction(train, PipelineConfig(row_len=200))
    packed = padding_fraction(train, PipelineConfig(row_len=200, packed=True))
    assert padded > 0.5 and packed < 0.05


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SCALING_LAB_CACHE=str(cache))
    return subprocess.run([sys.executable, "-m", "data", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_stats_json_and_bad_input(ml100k, lab_cache: Path, tmp_path: Path) -> None:
    done = run_cli("stats", "ml-100k", "--json", cache=lab_cache)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100000)
    assert stats["sequence_length"]["p0"] == 20

    bad = tmp_path / "u.data"
    bad.write_text("1\t2\t3\t4\n1\t2\n")
    failed = run_cli("stats", str(bad), cache=lab_cache)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1] == f"error: {bad}:2: expected 4 fields, got 2: '1\\t2'"
    assert "Traceback" not in failed.stderr

    unknown = run_cli("baseline", "popularity", "ml-2k", cache=lab_cache)
    assert unknown.returncode == 2 and "known: ml-100k, ml-1m" in unknown.stderr
