"""The throughput benchmark's JSON contract and its sweep table, on tiny random-id steps."""

from __future__ import annotations

import json

import pytest

from benchmarks import throughput

TINY = ["--model", "hstu", "--d-model", "16", "--blocks", "1", "--heads", "2", "--batch", "8", "--num-items", "50",
        "--negatives", "8", "--warmup", "1", "--repeats", "2"]


@pytest.mark.slow
def test_single_run_prints_one_json_object(capsys: pytest.CaptureFixture) -> None:
    assert throughput.main(TINY + ["--seq-len", "24", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("step_seconds", "train_flops_per_step", "executed_flops_per_step", "xla_flops_per_step", "mfu",
                "peak_flops", "device_kind", "padding_fraction", "temp_bytes"):
        assert result[key] is not None, key
    assert 0.0 < result["mfu"] < 1.0 and result["padding_fraction"] == 0.0
    # full rows: model FLOPs count half the causal square, the executed step the whole of it
    assert result["train_flops_per_step"] < result["executed_flops_per_step"]
    assert result["xla_dot_flops_per_step"] == pytest.approx(result["executed_flops_per_step"], rel=0.02)
    assert len(result["step_seconds_all"]) == 2


@pytest.mark.slow
def test_sweep_writes_one_row_per_point_and_compiles_only_past_the_limit(tmp_path, capsys) -> None:
    out = tmp_path / "sweep.jsonl"
    argv = TINY + ["--sweep", "--seq-lens", "24", "--attentions", "dense,blockwise", "--attention-block", "8",
                   "--out", str(out), "--time-limit-bytes", "1", "--json"]
    assert throughput.main(argv) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert [r["attention"] for r in rows] == ["dense", "blockwise"]
    assert all(r["step_seconds"] is None and r["temp_bytes"] > 0 for r in rows)  # over a 1-byte limit: not run
    assert [json.loads(line)["attention"] for line in out.read_text().splitlines()] == ["dense", "blockwise"]


def test_bad_sweep_list_is_one_line_and_status_2(capsys: pytest.CaptureFixture) -> None:
    assert throughput.main(TINY + ["--sweep", "--seq-lens", "24,long"]) == 2
    assert "long" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["data=8", "data=2,fsdp=2,tensor=2"])
def test_compile_only_reports_memory_per_device_and_the_table_split_by_rows(mesh, capsys) -> None:
    """70,000 items: a catalogue table padded to 23 x 3072 rows, split over all 8 devices on either
    mesh, so each device holds an eighth of it and of its Adam moments; nothing runs."""
    argv = ["--model", "hstu", "--d-model", "16", "--blocks", "1", "--heads", "2", "--batch", "8", "--seq-len", "24",
            "--num-items", "70000", "--negatives", "8", "--mesh", mesh, "--compile-only", "--json"]
    assert throughput.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["catalogue_tables"] == {"item_embedding": "P(('data', 'fsdp', 'tensor'), None)" if "," in mesh
                                          else "P('data', None)"}
    table_bytes = 23 * 3072 * 16 * 4
    assert table_bytes / 8 <= result["params_bytes"] <= 1.25 * table_bytes / 8 + 20_000  # + the small replicated rest
    assert result["optimizer_bytes"] == pytest.approx(2 * result["params_bytes"], rel=0.02)
    assert result["params_bytes"] + result["optimizer_bytes"] <= 1.25 * result["state_bytes_total"] / 8
    assert result["argument_bytes"] >= result["params_bytes"] + result["optimizer_bytes"]
    assert result["temp_bytes"] > 0 and result["eval_temp_bytes"] > 0
    assert 16 * 70_001 < result["params"] < 16 * 23 * 3072  # padding rows are not parameters
    assert result["train_flops_per_step"] > 0 and result["devices"] == 8


def test_compile_only_refuses_a_mesh_the_devices_cannot_form(capsys) -> None:
    assert throughput.main(TINY + ["--seq-len", "24", "--mesh", "data=3", "--compile-only"]) == 2
    assert capsys.readouterr().err.strip() == "error: mesh spec 'data=3' needs 3 devices, but 8 are available"


def test_the_family_table_reads_finished_trials_and_sets_the_published_rows_beside(tmp_path, capsys) -> None:
    """Trials with an ok result.json are read, not rerun: mean (sd) per row, the published rows below."""
    from benchmarks import family_table

    values = {("sasrec-beauty", 0): 0.06, ("sasrec-beauty", 1): 0.07, ("hstu-beauty", 0): 0.05, ("hstu-beauty", 1): 0.07,
              ("tiger-beauty-cpu-rqkmeans", 0): 0.04}
    for (row, seed), hr10 in values.items():
        workdir = tmp_path / f"{row}-s{seed}"
        workdir.mkdir()
        (workdir / "result.json").write_text(json.dumps({
            "status": "ok", "seed": seed, "trial_id": f"{row}{seed}", "hr@5": hr10 / 2, "hr@10": hr10, "ndcg@5": 0.01,
            "ndcg@10": 0.02, "params": 1000, "train_flops": 2e12, "wall_seconds": 60.0 + seed}))
    report = tmp_path / "table.md"
    rows = "sasrec-beauty,hstu-beauty,tiger-beauty-cpu-rqkmeans"  # the last runs seed 0 only: no seed 1 is trained
    assert family_table.main(["--dataset", "amazon-beauty", "--runs", str(tmp_path), "--seeds", "0,1", "--rows", rows,
                              "--report", str(report), "--json"]) == 0
    rows = {row["row"]: row for row in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]}
    assert rows["sasrec-beauty"]["hr@10"] == pytest.approx(0.065) and rows["hstu-beauty"]["hr@10"] == pytest.approx(0.06)
    assert rows["hstu-beauty"]["hr@10_sd"] == pytest.approx(0.01414, rel=1e-3) and rows["hstu-beauty"]["seeds"] == [0, 1]
    assert rows["tiger-beauty-cpu-rqkmeans"]["seeds"] == [0] and rows["tiger-beauty-cpu-rqkmeans"]["hr@10"] == 0.04
    text = report.read_text()
    assert "| SASRec (ours, seeds 0,1) | 0.0325 (0.0035) | 0.0650 (0.0071) | 0.0100 (0.0000) | 0.0200 (0.0000) |" in text
    assert "| HSTU (phonism/genrec README) | 0.0486 | 0.0708 | 0.0340 | 0.0412 |" in text
    assert family_table.main(["--dataset", "amazon-beauty", "--runs", str(tmp_path), "--rows", "tiger"]) == 2
    assert "unknown row 'tiger'; known: sasrec-beauty, hstu-beauty, tiger-beauty-cpu," in capsys.readouterr().err
