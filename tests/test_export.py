"""Export and serving: the exported function against in-process inference for every family, the
request layout against the host pipeline, the loader's isolation, checksums and request rules."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from data.pipeline import history_row
from data.sequences import Sequences
from models.core import family as families
from models.core.serving import history_batch
from scaling import export, serve
from scaling.config import DataConfig, ModelConfig, TrainConfig, TrialConfig
from scaling.engine import trial
from scaling.presets import preset

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_ITEMS, HISTORY, K = 12, 6, 5
FAMILY_MODELS = {
    "hstu": ModelConfig(family="hstu", d_model=8, blocks=1, heads=2, max_positions=8, dropout=0.0, input_dropout=0.0),
    "sasrec": ModelConfig(family="sasrec", d_model=8, blocks=1, heads=2, max_positions=8, dropout=0.0,
                          input_dropout=0.0),
    "encdec": ModelConfig(family="encdec", d_model=8, heads=2, d_ff=16, encoder_blocks=1, decoder_blocks=1,
                          dropout=0.0, history_items=3, user_buckets=5, ids_levels=2, ids_codebook=4,
                          relative_buckets=8, relative_max_distance=16, score_chunk=5, beam_width=4),
}


def requests(rows: int, seed: int) -> tuple[np.ndarray, ...]:
    """Random request arrays: histories of 1..HISTORY distinct items (one full row), seconds apart."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, HISTORY + 1, rows).astype(np.int32)
    lengths[0] = HISTORY
    histories = np.zeros((rows, HISTORY), np.int32)
    timestamps = np.zeros((rows, HISTORY), np.int32)
    for r, n in enumerate(lengths):
        histories[r, :n] = rng.permutation(NUM_ITEMS)[:n] + 1
        timestamps[r, :n] = np.cumsum(rng.integers(1, 10**6, n))
    users = rng.integers(-1, 20, rows).astype(np.int32)
    return histories, timestamps, lengths, users


def host_rows(histories, timestamps, lengths, users, row_len: int) -> dict[str, np.ndarray]:
    """The same requests laid out by the host pipeline (data.pipeline.history_row)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    sequences = Sequences(offsets, np.concatenate([h[:n] for h, n in zip(histories, lengths)]).astype(np.int32),
                          np.concatenate([t[:n] for t, n in zip(timestamps, lengths)]).astype(np.int64), None,
                          NUM_ITEMS, np.arange(len(lengths)), np.arange(NUM_ITEMS))
    rows = [history_row(sequences, u, row_len) for u in range(len(lengths))]
    batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    real = batch["segment_ids"] > 0
    batch["users"] = np.where(real, users[:, None], -1).astype(np.int32)  # the request's user, not the row index
    batch["eval_user"] = users
    return batch


def test_request_layout_equals_the_host_pipeline() -> None:
    histories, timestamps, lengths, users = requests(9, seed=1)
    lengths[3] = 0  # an empty history: an invalid row in both
    histories[3] = 0
    host = host_rows(histories, timestamps, lengths, users, HISTORY + 1)
    traced = jax.jit(history_batch, static_argnums=4)(histories, timestamps, lengths, users, HISTORY + 1)
    assert set(traced) == set(host)
    for name in host:
        np.testing.assert_array_equal(np.asarray(traced[name]), host[name].astype(np.asarray(traced[name]).dtype),
                                      err_msg=name)
    assert not host["eval_valid"][3] and host["eval_valid"].sum() == 8


def trial_of(name: str) -> export.TrainedTrial:
    config = TrialConfig(data=DataConfig(max_len=HISTORY), model=FAMILY_MODELS[name], train=TrainConfig())
    family = families.of(config.model)
    model = family.build(config.model, config.train, NUM_ITEMS)
    example = family.example_batch(config.model, 1, config.data.row_len)
    params = jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.key(3), example)))
    return export.TrainedTrial(Path("."), config, family, model, params, 0, None, None)


@pytest.fixture(scope="module", params=sorted(FAMILY_MODELS))
def exported_family(request):
    trial = trial_of(request.param)
    serialized = export.export_function(trial, K, export.PLATFORMS).serialize()
    return trial, jax.export.deserialize(serialized)


@pytest.mark.slow(3)
@pytest.mark.parametrize("rows", [1, 7])
def test_exported_function_equals_in_process_inference(exported_family, rows: int) -> None:
    trial, exported = exported_family
    assert exported.platforms == export.PLATFORMS
    arrays = requests(rows, seed=rows)
    items, scores = exported.call(export.flatten(trial.params), *arrays)
    host = trial.family.device_batch(trial.config.model, host_rows(*arrays, trial.config.data.row_len),
                                     trial.family.eval_fields(trial.config.model))
    top = jax.jit(lambda params, batch: trial.model.top_items(params, batch, K))(trial.params, host)
    np.testing.assert_array_equal(np.asarray(items), np.asarray(top["items"]))
    np.testing.assert_allclose(np.asarray(scores), np.asarray(top["scores"]), rtol=1e-5, atol=1e-6)
    histories, lengths = arrays[0], arrays[2]
    for r in range(rows):  # history items are never served
        assert not set(np.asarray(items)[r]) & set(histories[r, : lengths[r]])
    scores, items = np.asarray(scores), np.asarray(items)
    assert np.array_equal(items == 0, np.isneginf(scores))  # a beam search that found fewer items pads
    assert np.all(np.diff(np.where(items > 0, scores, -1e30), axis=1) <= 0)


# ---- a trained trial, exported and served through the commands ----------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lab_cache, ml100k):
    """A 6-step tiny HSTU run on ML-100K with checkpoints and evaluations at steps 2, 4 and 6."""
    workdir = tmp_path_factory.mktemp("trial")
    config = preset("tiny")
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, steps=6, log_every=2, checkpoint_every=2, eval_every=2, keep_checkpoints=3))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCALING_LAB_CACHE", str(lab_cache))
        (workdir / "config.json").write_text(config.to_json())  # what `python -m scaling.train` writes
        (workdir / "result.json").write_text(json.dumps(trial.run(config, workdir)))
        out = tmp_path_factory.mktemp("exports") / "hstu"
        summary = export.export_trial(workdir, out, "last", k=20)
    return workdir, out, summary, ml100k


@pytest.mark.slow
def test_export_directory_has_every_file_and_a_valid_manifest(trained) -> None:
    workdir, out, summary, _ = trained
    assert sorted(p.name for p in out.iterdir()) == sorted([*serve.REQUIRED, export.MANIFEST])
    serve.verify(out)
    info = json.loads((out / "export.json").read_text())
    config = json.loads((workdir / "config.json").read_text())
    assert info["step"] == 6
    assert info["trial_id"] == summary["trial_id"] and info["k"] == 20 and info["platforms"] == list(export.PLATFORMS)
    assert json.loads((out / "config.json").read_text()) == config
    result = json.loads((workdir / "result.json").read_text())
    assert info["metrics"]["hr@10"] == result["hr@10"]
    readme = (out / "README.txt").read_text()
    assert info["trial_id"] in readme and "histories" in readme and "Unknown item ids" in readme
    from safetensors.numpy import load_file

    stored = load_file(str(out / "params.safetensors"))
    assert export.checkpoint_steps(workdir) == [2, 4, 6]
    assert not any("opt" in name or "mu" in name.split("/") for name in stored)  # parameters only
    assert "item_embedding" in stored and stored["item_embedding"].shape == (1683, 16)


def test_best_step_is_the_checkpoint_with_the_best_validation_metric(trained) -> None:
    workdir = trained[0]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    valid = {r["step"]: r["eval/valid_hr@10"] for r in records if "eval/valid_hr@10" in r}
    assert set(valid) == {2, 4, 6}
    assert export.choose_step(workdir, "best", "valid_hr@10") == max(valid, key=lambda s: (valid[s], s))
    assert export.choose_step(workdir, "best", "valid_loss") in (2, 4, 6)
    assert export.choose_step(workdir, "4", "valid_hr@10") == 4
    with pytest.raises(export.ExportError, match="not a kept checkpoint"):
        export.choose_step(workdir, "5", "valid_hr@10")
    with pytest.raises(export.ExportError, match="no kept checkpoint"):
        export.choose_step(workdir, "best", "valid_nothing")


def run_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scaling.serve", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_serve_command_answers_in_original_ids_as_in_process_inference(trained) -> None:
    workdir, out, _, prepared = trained
    item_ids = [str(i) for i in prepared.sequences.item_ids]
    history = ["50", "172", "133"]
    done = run_serve(str(out), "--history", ",".join(history), "--timestamps", "100,200,300", "--k", "10", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(answer) == {"items", "scores"} and len(answer["items"]) == 10
    trial = export.load_trial(workdir)
    dense = np.zeros((1, trial.config.data.max_len), np.int32)
    dense[0, :3] = [item_ids.index(i) + 1 for i in history]
    times = np.zeros_like(dense)
    times[0, :3] = [0, 100, 200]
    host = trial.family.device_batch(trial.config.model, host_rows(dense, times, np.array([3]), np.array([-1]),
                                                                   trial.config.data.row_len),
                                     trial.family.eval_fields(trial.config.model))
    top = trial.model.top_items(trial.params, host, 10)
    assert answer["items"] == [item_ids[i - 1] for i in np.asarray(top["items"])[0]]
    np.testing.assert_allclose(answer["scores"], np.asarray(top["scores"])[0], rtol=1e-5, atol=1e-6)


def test_request_rules(trained) -> None:
    out = trained[1]
    model = serve.ExportedModel(out)
    known = model.item_ids[:30]
    plain, unknown, empty, long = model.recommend([
        serve.Request(known[:3]), serve.Request([known[0], "no-such-item", known[1], known[2]]),
        serve.Request(["no-such-item"]), serve.Request(known[:25])], k=5, batch=4)
    assert unknown["items"] == plain["items"] and unknown["unknown_items"] == ["no-such-item"]
    assert empty["fallback"] == "popularity" and empty["items"] == [model.item_ids[i - 1] for i, _ in model.popular[:5]]
    assert long["truncated"] == 25 - model.length
    recent = model.recommend([serve.Request(known[25 - model.length : 25])], k=5)[0]
    assert long["items"] == recent["items"] and long["scores"] == pytest.approx(recent["scores"], rel=1e-5)
    assert not set(plain["items"]) & set(known[:3])
    with pytest.raises(serve.ServeError, match="at most 20"):
        model.recommend([serve.Request(known[:3])], k=21)
    with pytest.raises(serve.ServeError, match="2 timestamps for 3"):
        model.recommend([serve.Request(known[:3], [1, 2])], k=5)


@pytest.mark.slow
def test_requests_file_gives_one_line_per_user_and_a_bad_line_exits_2(trained, tmp_path) -> None:
    out = trained[1]
    model = serve.ExportedModel(out)
    lines = [{"history": model.item_ids[i : i + 3]} for i in range(5)] + [{"history": [], "user": "7"}]
    good = tmp_path / "requests.jsonl"
    good.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = run_serve(str(out), "--input", str(good), "--k", "4", "--batch", "4")
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert answers == model.recommend([serve.Request(line["history"], None, line.get("user")) for line in lines], k=4)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(lines[0]) + "\n{\"items\": [1]}\n")
    done = run_serve(str(out), "--input", str(bad))
    assert done.returncode == 2 and done.stderr.strip() == \
        f"error: {bad}:2: not a request object with a history list ('history')"


def test_serving_imports_no_training_code() -> None:
    code = ("import sys, scaling.serve; roots = {m.split('.')[0] for m in sys.modules}; "
            "print(sorted(roots & {'flax', 'optax', 'orbax', 'models', 'data', 'sweeps', 'analysis', 'grain'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["corrupt", "missing", "unlisted", "platform"])
def test_damaged_export_or_foreign_platform_is_one_line_and_exit_2(trained, tmp_path, damage: str) -> None:
    out = tmp_path / "export"
    shutil.copytree(trained[1], out)
    if damage == "corrupt":
        with open(out / "params.safetensors", "r+b") as handle:
            handle.seek(-4, 2)
            handle.write(b"\x00\x01\x02\x03")
        expected = "checksum differs"
    elif damage == "missing":
        (out / "serve.jax").unlink()
        expected = "serve.jax: missing"
    elif damage == "unlisted":
        manifest = out / export.MANIFEST
        manifest.write_text("".join(l + "\n" for l in manifest.read_text().splitlines() if "items.json" not in l))
        expected = "does not list items.json"
    else:  # lowered for TPU only: the export is intact, this CPU cannot run it
        shutil.rmtree(out)
        export.write_export(export.load_trial(trained[0]), out, 5, ("tpu",))
        expected = "lowered for tpu, not for this cpu backend"
    done = run_serve(str(out), "--history", "50,172", "--json")
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and expected in done.stderr


def test_export_command_bad_input_exits_2(trained, tmp_path) -> None:
    workdir, out = trained[0], trained[1]
    assert export.main(["--workdir", str(workdir), "--out", str(out)]) == 2  # not empty
    assert export.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "x")]) == 2  # no checkpoint
    assert export.main(["--workdir", str(workdir), "--out", str(tmp_path / "x"), "--platforms", "cpu,gpu"]) == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_sweeps_export_picks_the_best_trial(trained, tmp_path) -> None:
    workdir = trained[0]
    spec = tmp_path / "two_seeds.py"
    spec.write_text(textwrap.dedent("""
        import dataclasses
        from scaling.presets import preset
        from sweeps.spec import Sweep, axis
        base = preset("tiny")
        base = dataclasses.replace(base, train=dataclasses.replace(base.train, steps=6, log_every=2,
                                   checkpoint_every=2, eval_every=2, keep_checkpoints=3))
        SWEEP = Sweep(name="two_seeds", base=base, points=axis("lr", "train.learning_rate", [1e-3, 2e-3]))
    """))
    from sweeps.results import ResultsStore
    from sweeps.spec import load_spec

    sweep_dir = tmp_path / "sweep"
    store = ResultsStore(sweep_dir)
    for point, hr in zip(load_spec(spec).trials(), [0.3, 0.1]):
        folder = sweep_dir / "trials" / point.trial_id
        shutil.copytree(workdir / "checkpoints", folder / "checkpoints")
        (folder / "config.json").write_text(point.config.to_json())
        store.record({"trial_id": point.trial_id, "status": "ok", "hr@10": hr})
    best = load_spec(spec).trials()[0]
    done = subprocess.run([sys.executable, "-m", "sweeps", "export", str(spec), "--workdir", str(sweep_dir),
                           "--best", "hr@10", "--out", str(tmp_path / "best"), "--k", "5", "--json"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["trial_id"] == best.trial_id and summary["hr@10"] == 0.3
    assert json.loads((tmp_path / "best" / "export.json").read_text())["trial_id"] == best.trial_id
    done = subprocess.run([sys.executable, "-m", "sweeps", "export", str(spec), "--workdir", str(sweep_dir),
                           "--best", "nothing", "--out", str(tmp_path / "none")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--best nothing" in done.stderr


@pytest.mark.slow
def test_serving_benchmark_times_the_exported_function(trained, capsys) -> None:
    from benchmarks import serving

    workdir = trained[0]
    row = serving.measure("tiny", workdir, k=10, calls=5, steps=1)
    assert (workdir / "export-k10" / export.MANIFEST).exists() and row["step"] == 6 and row["history_length"] == 20
    assert 0 < row["p50_ms_batch1"] <= row["p99_ms_batch1"] and row["users_per_second_batch128"] > 0
    assert row["export_bytes"] > row["params_bytes"] > 16 * 1683 * 4
    assert serving.main(["--trials", "tiny"]) == 2 and "PRESET=WORKDIR" in capsys.readouterr().err
    assert serving.main(["--trials", f"nosuch={workdir}"]) == 2 and "unknown preset 'nosuch'" in capsys.readouterr().err
