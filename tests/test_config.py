"""Trial configs: bad values refused in one line before data or compilation, the tagged model
section round-tripping through JSON and `--set`, and trial ids that survive new fields.

tests/golden/trial_configs_2026-12-01.json holds every shipped spec's and preset's config as the
2026-12-01 code wrote it (flat model section), keyed by the trial id that code gave it.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import jax
import pytest

from models.core import family as families
from models.decoder_only.hstu import HSTUConfig
from models.decoder_only.sasrec import SASRecConfig
from scaling import config as config_module
from scaling import train as train_module
from scaling.config import ConfigError, DataConfig, ModelConfig, TrainConfig, TrialConfig, from_dict, from_json, with_overrides
from scaling.engine import trial
from scaling.presets import PRESETS, preset
from sweeps.spec import load_spec

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((REPO_ROOT / "tests" / "golden" / "trial_configs_2026-12-01.json").read_text())["configs"]
SPECS = sorted((REPO_ROOT / "sweeps" / "configs").glob("*.py"))
SPECS_2026_12_01 = [spec for spec in SPECS if spec.stem in ("ml100k_hstu", "ml20m_v5p", "synthetic_v5e")]  # specs added later have no golden ids
SHARED_IDS = REPO_ROOT.parent / "shared" / "trial_ids_2026-12-01.txt"

# (arguments after --preset tiny, the one line printed); every one exits with status 2.
BEFORE_DATA = [
    (["--set", "train.steps=-5"], "error: train.steps=-5 must be >= 0 (0 = train by epochs)"),
    (["--epochs", "0"], "error: train.epochs=0.0 must be > 0 when train.steps=0 (train by epochs)"),
    (["--set", "train.epochs=inf"], "error: train.epochs=inf must be finite and > 0 when train.steps=0"),
    (["--set", "train.seed=-1"], "error: train.seed=-1 must be in [0, 2**32)"),
    (["--set", "model.ffn_dim=-7"], "error: model.ffn_dim=-7 must be >= 0 (0 = d_model)"),  # SASRec's rule
    (["--set", "model.ffn_activation=banana"], "error: model.ffn_activation='banana'; allowed: relu, gelu"),
    (["--model", "sasrec", "--set", "model.time_buckets=0"], "error: model.time_buckets=0 must be >= 1"),
    (["--set", "train.learning_rate=inf"], "error: train.learning_rate=inf must be finite and > 0"),
    (["--set", "train.learning_rate=nan"], "error: train.learning_rate=nan must be finite and > 0"),
    (["--set", "train.temperature=0"], "error: train.temperature=0.0 must be finite and > 0"),
    (["--set", "train.batch_size=0"], "error: train.batch_size=0 must be >= 1"),
    (["--set", "train.eval_batch_size=0"], "error: train.eval_batch_size=0 must be >= 1"),
    (["--set", "train.negatives=0"], "error: train.negatives=0 must be >= 1"),
    (["--set", "train.beta2=1"], "error: train.beta2=1.0 must be in [0, 1)"),
    (["--set", "train.grad_accum=3"], "error: train.batch_size=32 is not divisible by train.grad_accum=3"),
    (["--set", "model.dqk=-4"], "error: model.dqk=-4 must be >= 0 (0 = d_model // heads)"),
    (["--set", "model.dropout=1"], "error: model.dropout=1.0 must be in [0, 1)"),
    (["--set", "model.blocks=0"], "error: model.blocks=0 must be >= 1"),
    (["--set", "model.heads=3"], "error: model.d_model=16 is not divisible by model.heads=3; set model.dqk and model.dv"),
    (["--model", "sasrec", "--set", "model.heads=3"], "error: model.d_model=16 is not divisible by model.heads=3"),
    (["--model", "sasrec", "--set", "model.attention=blockwise"],
     "error: model.attention='blockwise': SASRec attention is dense (blockwise is HSTU's)"),
    (["--set", "data.max_len=300"], "error: data.max_len + 1 = 301 exceeds model.max_positions = 32"),
    (["--set", "data.max_len=0"], "error: data.max_len=0 must be >= 1"),
    (["--set", "model.widht=8"], "error: unknown config key model.widht for model.family='hstu'; known: attention, "
     "attention_block, attention_divisor, base_width, blocks, causal_splits, compute_dtype, d_model, dqk, dropout, dv, "
     "family, feed_forward_dim, heads, input_dropout, max_positions, parametrization, relative_bias, time_buckets"),
    (["--mesh", "data=3"], "error: mesh spec 'data=3' needs 3 devices, but 8 are available"),
]
AFTER_DATA = [  # need the catalogue size or the mesh; refused before anything compiles
    (["--set", "train.negatives=1682"], "error: train.negatives=1682 must be below the catalogue size (1682 items)"),
    (["--mesh", "data=8", "--set", "train.eval_batch_size=12"],
     "error: train.eval_batch_size = 12 rows do not split over data x fsdp = 8 and 1 processes"),
]


def _refused(tmp_path: Path, capsys, extra: list[str]) -> list[str]:
    """The stderr lines of a run that must exit with status 2."""
    code = train_module.main(["--preset", "tiny", "--workdir", str(tmp_path / "w"), *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    return lines


@pytest.mark.parametrize("extra, line", BEFORE_DATA, ids=[" ".join(a) for a, _ in BEFORE_DATA])
def test_bad_values_are_refused_before_any_data_is_read(tmp_path, capsys, monkeypatch, extra, line) -> None:
    monkeypatch.setattr(trial, "prepare_section", lambda *a, **k: pytest.fail("data was read"))
    assert _refused(tmp_path, capsys, extra) == [line]
    assert not (tmp_path / "w" / "config.json").exists()


@pytest.mark.parametrize("extra, line", AFTER_DATA, ids=[" ".join(a) for a, _ in AFTER_DATA])
def test_data_rules_are_checked_before_anything_compiles(tmp_path, capsys, monkeypatch, use_lab_cache, ml100k,
                                                        extra, line) -> None:
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("something was compiled"))
    lines = _refused(tmp_path, capsys, extra)
    assert lines[-1] == line and lines[0].startswith("data ml-100k: 943 users")  # the progress line, then the error
    # the workdir holds only the refused config, so another config may use it (here: another seed)
    assert _refused(tmp_path, capsys, [*extra, "--seed", "1"])[-1] == line


def test_unknown_family_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"^model.family='bert'; known: encdec, hstu, .*sasrec"):
        with_overrides(preset("tiny"), ["model.family=bert"])


def test_bad_value_in_a_sweep_spec_names_the_file_and_the_trial(tmp_path: Path, capsys) -> None:
    from sweeps import __main__ as sweeps_main

    spec = tmp_path / "bad_rate.py"
    spec.write_text(textwrap.dedent("""
        from scaling.presets import preset
        from sweeps.spec import Sweep, axis
        SWEEP = Sweep("bad_rate", preset("tiny"), axis("lr", "train.learning_rate", [1e-3, -1.0]))
    """))
    assert sweeps_main.main(["show", str(spec)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {spec}: sweep bad_rate, trial lr=-1.0: train.learning_rate=-1.0 must be finite and > 0")


PRESETS_2026_12_01 = ("hstu-ml1m", "hstu-large-ml1m", "sasrec-ml1m", "tiny")  # presets added later have no golden ids


def _all_configs(presets=tuple(PRESETS), specs=tuple(SPECS)) -> list[TrialConfig]:
    """Every preset, also switched to HSTU and SASRec where its fields make a valid one of those
    (tiger-beauty's 6 heads of 64 do not divide its width 128, as HSTU needs), and every spec's trials."""
    configs = [preset(name) for name in presets]
    for name in presets:
        for family in ("hstu", "sasrec"):
            try:
                configs.append(preset(name, family))
            except ConfigError as error:
                assert "is not divisible by model.heads" in str(error), (name, family, error)
    return configs + [trial.config for spec in specs for trial in load_spec(spec).trials()]


def test_configs_round_trip_through_json_and_overrides() -> None:
    for config in _all_configs():
        again = from_json(config.to_json())
        assert again == config and again.trial_id == config.trial_id
        model = config.model.to_dict()
        overrides = [f"model.{key}={value}" for key, value in model.items()]
        assert with_overrides(preset("tiny"), overrides).model == config.model
    sasrec = with_overrides(preset("sasrec-ml1m"), ["model.ffn_dim=64", "model.ffn_activation=gelu"])
    assert isinstance(sasrec.model, SASRecConfig) and sasrec.model.ffn_width == 64
    assert from_json(sasrec.to_json()) == sasrec


def test_family_switch_keeps_shared_fields_and_checks_the_new_family() -> None:
    switched = with_overrides(preset("tiny"), ["model.family=sasrec", "model.ffn_dim=8"])
    assert isinstance(switched.model, SASRecConfig)
    assert (switched.model.d_model, switched.model.heads, switched.model.ffn_dim) == (16, 2, 8)
    back = with_overrides(switched, ["model.family=hstu"])
    assert isinstance(back.model, HSTUConfig) and back.model.legacy_values == (("ffn_dim", 8),)
    with pytest.raises(ConfigError, match="unknown config key model.time_bucketz for model.family='sasrec'"):
        with_overrides(preset("tiny"), ["model.family=sasrec", "model.time_bucketz=3"])


def test_configs_written_on_2026_12_01_load_with_their_ids() -> None:
    for trial_id, values in GOLDEN.items():
        config = from_dict(values)
        assert config.trial_id == trial_id
        assert config.canonical() == values  # the id hashes exactly what the old file held


def test_shipped_specs_and_presets_keep_their_2026_12_01_ids() -> None:
    """Every id of 2026-12-01 is still produced (a spec may have gained trials since)."""
    ids = {config.trial_id for config in _all_configs(PRESETS_2026_12_01, SPECS_2026_12_01)}
    assert set(GOLDEN) <= ids
    if SHARED_IDS.is_file():  # the list kept beside the project, when present
        spec_ids = {t.trial_id for spec in SPECS_2026_12_01 for t in load_spec(spec).trials()}
        assert set(SHARED_IDS.read_text().split()) <= spec_ids


def _with_new_field(cls: type, name: str) -> type:
    return dataclasses.make_dataclass(f"{cls.__name__}Plus", [(name, float, dataclasses.field(default=0.5))],
                                      bases=(cls,), frozen=True)


@pytest.mark.slow
def test_a_field_added_with_its_default_changes_no_id(monkeypatch) -> None:
    before = {spec.name: [t.trial_id for t in load_spec(spec).trials()] for spec in SPECS}
    for name in ("hstu", "sasrec"):
        monkeypatch.setattr(families.get(name), "config_class", _with_new_field(families.get(name).config_class, "knob"))
    monkeypatch.setitem(config_module.SECTIONS, "train", _with_new_field(TrainConfig, "knob"))
    monkeypatch.setitem(config_module.SECTIONS, "data", _with_new_field(DataConfig, "knob"))
    for spec in SPECS:
        trials = load_spec(spec).trials()
        assert all(hasattr(t.config.model, "knob") and hasattr(t.config.train, "knob") for t in trials)
        assert [t.trial_id for t in trials] == before[spec.name]
    base = load_spec(SPECS[0]).trials()[0].config
    for key in ("model.knob", "train.knob", "data.knob"):  # set away from its default, it is part of the trial
        assert with_overrides(base, [f"{key}=0.25"]).trial_id != base.trial_id


def test_model_config_constructor_builds_the_family_class() -> None:
    assert isinstance(ModelConfig(family="hstu", dqk=8, dv=8, heads=3, d_model=10), HSTUConfig)
    assert isinstance(ModelConfig(family="sasrec", ffn_dim=8), SASRecConfig)
    assert ModelConfig(family="sasrec", time_buckets=128) == ModelConfig(family="sasrec")  # an old default, dropped
    with pytest.raises(ConfigError, match="model.family='hstu' in a SASRecConfig"):
        dataclasses.replace(ModelConfig(family="sasrec"), family="hstu")
