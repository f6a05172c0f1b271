"""Bad input fails loudly with one clear FitError naming the input; results files load as tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis import chinchilla, isoflop, loglinear, power, records
from analysis.errors import FitError
from analysis.run import Columns, fit_table

X = np.geomspace(1e6, 1e9, 8)
Y = 2.0 + 50.0 * X ** -0.3


@pytest.mark.parametrize("fit, minimum", [
    (lambda k: power.fit_power(X[:k], Y[:k], bootstrap=0), power.MIN_POINTS),
    (lambda k: loglinear.fit_loglinear(X[:k], Y[:k], bootstrap=0), loglinear.MIN_POINTS),
    (lambda k: chinchilla.fit_chinchilla(X[:k], X[::-1][:k] * 10, Y[:k], bootstrap=0, starts=np.ones((1, 5))),
     chinchilla.MIN_POINTS),
    (lambda k: isoflop.fit_isoflop(X[:k], Y[:k], np.full(k, 1e18), bootstrap=0), 6),
])
def test_too_few_points(fit, minimum):
    with pytest.raises(FitError, match=f"{minimum - 1} point\\(s\\) given, the fit needs at least {minimum}"):
        fit(minimum - 1)


@pytest.mark.parametrize("bad, message", [(0.0, "non-positive"), (-3.0, "non-positive"), (np.nan, "non-finite")])
def test_bad_values_under_a_log_name_the_input_and_row(bad, message):
    x = X.copy()
    x[5] = bad
    with pytest.raises(FitError, match=f"compute: 1 {message} value.*row 5"):
        power.fit_power(x, Y, bootstrap=0, x_name="compute")
    with pytest.raises(FitError, match=message):
        loglinear.fit_loglinear(x, Y, bootstrap=0)
    with pytest.raises(FitError, match=f"N \\(parameters\\).*{message}"):
        chinchilla.fit_chinchilla(x, X * 20, Y, bootstrap=0)


def test_nan_in_y_is_rejected_even_where_no_log_is_taken():
    y = Y.copy()
    y[2] = np.nan
    with pytest.raises(FitError, match="hr@10: 1 non-finite value"):
        loglinear.fit_loglinear(X, y, bootstrap=0, y_name="hr@10")


def test_all_equal_x():
    with pytest.raises(FitError, match="all values are equal"):
        power.fit_power(np.full(8, 1e6), Y, bootstrap=0)
    with pytest.raises(FitError, match="all values are equal"):
        loglinear.fit_loglinear(np.full(8, 1e6), Y, bootstrap=0)
    with pytest.raises(FitError, match="all values are equal"):
        chinchilla.fit_chinchilla(np.full(8, 1e6), X, Y, bootstrap=0)


def test_isoflop_needs_two_budgets_with_a_minimum():
    n = np.geomspace(1e6, 1e8, 6)
    loss = 3 - 0.1 * np.log(n)  # falls monotonically: no parabola has a minimum
    with pytest.raises(FitError, match="0 budget\\(s\\) with a loss minimum"):
        isoflop.fit_isoflop(np.tile(n, 2), np.tile(loss, 2), np.repeat([1e18, 1e19], 6), bootstrap=0)


def test_power_without_a_trend_in_the_asked_direction():
    with pytest.raises(FitError, match="no rising trend"):
        power.fit_power(X, Y, direction="rising", bootstrap=0)


def _write_results(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_results_jsonl_skips_failed_records_with_a_note(tmp_path):
    path = _write_results(tmp_path / "results.jsonl", [
        {"trial_id": "a", "status": "ok", "params": 10, "mesh": {"data": 2}},
        {"trial_id": "b", "status": "failed: out of memory"},
        {"trial_id": "c", "status": "ok", "params": 20}])
    notes = []
    table = records.load_table(path, note=notes.append)
    assert table["trial_id"].tolist() == ["a", "c"]
    assert "mesh.data" in table.columns
    assert len(notes) == 1 and "b (failed: out of memory)" in notes[0]


@pytest.mark.parametrize("content, message", [
    ('{"status": "ok"}\n{not json\n', r"results.jsonl:2: not a JSON object"),
    ('[1, 2]\n', r"results.jsonl:1: not a JSON object"),
    ('{"status": "failed: x"}\n', "no records with status ok"),
])
def test_malformed_results_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "results.jsonl"
    path.write_text(content)
    with pytest.raises(FitError, match=message):
        records.load_table(path)


def test_missing_file_and_missing_column(tmp_path):
    with pytest.raises(FitError, match="no such file"):
        records.load_table(tmp_path / "absent.csv")
    path = tmp_path / "runs.csv"
    path.write_text("flops,loss\n1e18,3.0\n2e18,2.9\n4e18,2.8\n8e18,2.75\n")
    table = records.load_table(path)
    with pytest.raises(FitError, match=r"runs.csv: missing column 'hr@10' \(have: flops, loss\)"):
        fit_table(table, "power", Columns(x="flops", y="hr@10"))
    with pytest.raises(FitError, match="no parameter-count \\(N\\) column"):
        fit_table(table, "chinchilla", Columns(c="flops"))


def test_non_numeric_cell_names_column_and_row(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("flops,loss\n1e18,3.0\n2e18,oops\n4e18,2.8\n8e18,2.75\n")
    with pytest.raises(FitError, match=r"column 'loss' row 1: not a number: 'oops'"):
        fit_table(records.load_table(path), "loglinear", Columns(x="flops", y="loss"))


def test_tokens_derived_from_compute_when_only_compute_is_given(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("N,C,loss\n" + "".join(f"{n},{c},{3.0}\n" for n, c in [(1e6, 6e15), (2e6, 6e15), (4e6, 6e16)]))
    from analysis.run import resolve_n_d_c

    used, data = resolve_n_d_c(records.load_table(path), Columns(n="N", c="C"))
    assert used["d"] == "C / (6 N)"
    assert data["d"] == pytest.approx([1e9, 5e8, 2.5e9])


def test_drop_highest_removes_exactly_the_top_rows(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("loss\n" + "".join(f"{v}\n" for v in [3.0, 5.0, 2.0, 4.0, 1.0]))
    kept = records.drop_highest(records.load_table(path), "loss", 2)
    assert sorted(kept["loss"]) == [1.0, 2.0, 3.0]


def test_the_n_of_c_equals_6nd_is_the_count_that_makes_it_hold():
    """A full softmax over the catalogue costs 6 (items x d) FLOPs a token: its compute is 6 N D
    with N the total count; a sampled softmax's is near the non-embedding one."""
    import pandas as pd

    non_embedding, total, tokens = np.array([600.0, 1500.0, 10_000.0]), np.array([16_600.0, 33_500.0, 74_000.0]), 1e6
    full = pd.DataFrame({"params_non_embedding": non_embedding, "params": total, "tokens": tokens,
                         "train_flops": 6.0 * (total + 0.02 * non_embedding) * tokens})
    chosen, ratios = records.params_for_compute(full)
    assert chosen == "params" and ratios["params"] == pytest.approx(1.0, abs=0.01) and ratios["params_non_embedding"] > 10
    sampled = full.assign(train_flops=6.0 * 1.3 * non_embedding * tokens)
    assert records.params_for_compute(sampled)[0] == "params_non_embedding"
    assert records.params_for_compute(full.drop(columns="tokens")) is None
