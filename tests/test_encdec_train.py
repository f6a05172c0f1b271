"""The encoder-decoder through the engine: scaling.train on real data (result.json keys as HSTU's,
the IDs' provenance) and a sweep mixing hstu and encdec trials that runs and reports."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from scaling import train

TINY_ENCDEC = ["--model", "encdec", "--set", "model.d_model=16", "--set", "model.heads=2", "--set", "model.d_ff=32",
               "--set", "model.encoder_blocks=1", "--set", "model.decoder_blocks=1", "--set", "model.ids_codebook=8",
               "--set", "model.history_items=4", "--set", "model.targets_per_row=3", "--set", "model.ids_source=cooccurrence",
               "--set", "data.max_len=20", "--set", "train.batch_size=16", "--set", "train.eval_batch_size=32"]
SYNTHETIC = "synthetic:users=120,items=60,seed=2,mean_events=15"


@pytest.mark.slow(20)
def test_encdec_trains_and_reports_like_hstu(tmp_path: Path, use_lab_cache: Path, capsys) -> None:
    workdir = tmp_path / "trial"
    code = train.main([*TINY_ENCDEC, "--data", SYNTHETIC, "--steps", "4", "--workdir", str(workdir), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "ok" and result["model"] == "encdec"
    for key in ("hr@10", "ndcg@10", "mrr", "valid_hr@10", "eval_loss", "train_flops", "mfu", "params",
                "params_non_embedding", "params_active"):
        assert result[key] is not None, key
    assert result["params_active"] == result["params"] > result["params_non_embedding"]
    # beam search beside the exact scorer: constrained, it never returns an ID of no item
    assert result["invalid_rate"] == 0.0 and 0.0 <= result["unconstrained_invalid_rate"] <= 1.0
    assert 0.0 <= result["beam_exact_agreement"] <= 1.0 and 0.0 <= result["beam_hr@10"] <= 1.0
    assert result["beam_width"] == 20 and result["decode_flops_per_user"] > 0
    ids = result["semantic_ids"]
    assert (ids["method"], ids["levels"], ids["codebook"], ids["source"]) == ("rqkmeans-balanced", 3, 8, "cooccurrence")
    assert len(ids["input_hash"]) == 64


def test_a_bad_id_artefact_is_one_line_and_exit_2(tmp_path: Path, use_lab_cache: Path, capsys) -> None:
    """A semantic-ID artefact that cannot be read is refused before training."""
    assert train.main([*TINY_ENCDEC, "--data", SYNTHETIC, "--steps", "1", "--workdir", str(tmp_path / "bad"),
                       "--set", "model.ids=/nonexistent.npz"]) == 2
    assert "semantic IDs" in capsys.readouterr().err


@pytest.mark.slow(15)
def test_a_sweep_mixes_hstu_and_encdec(tmp_path: Path, use_lab_cache: Path, monkeypatch) -> None:
    from sweeps import __main__ as sweeps_main
    from tests.in_process import trials_in_process

    trials_in_process(monkeypatch)

    spec = tmp_path / "mixed.py"
    spec.write_text(textwrap.dedent(f"""
        from models.core.config import ModelConfig
        from scaling.config import DataConfig, TrainConfig, TrialConfig
        from sweeps.spec import Sweep, ladder
        BASE = TrialConfig(data=DataConfig(name={SYNTHETIC!r}, max_len=20),
                           model=ModelConfig(family="hstu", d_model=16, blocks=1, heads=2, max_positions=32),
                           train=TrainConfig(batch_size=16, steps=4, log_every=2, eval_batch_size=32, negatives=8))
        SWEEP = Sweep("mixed", BASE, ladder("model", [
            {{"model.family": "hstu"}},
            {{"model.family": "encdec", "model.heads": 2, "model.d_ff": 32, "model.encoder_blocks": 1,
              "model.decoder_blocks": 1, "model.ids_codebook": 8, "model.history_items": 4,
              "model.targets_per_row": 3, "model.ids_source": "cooccurrence",
              "model.beam_width": 0}},  # exact scoring: the beam is the test above's
        ], labels=["hstu", "encdec"]))
    """))
    workdir = tmp_path / "sweep"
    assert sweeps_main.main(["run", str(spec), "--workdir", str(workdir)]) == 0
    records = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["model"] for r in records) == ["encdec", "hstu"]
    assert all(r["status"] == "ok" and r["hr@10"] is not None and r["train_flops"] > 0 for r in records)
    report = (workdir / "report" / "report.md").read_text()
    assert "| encdec |" in report and "| hstu |" in report
