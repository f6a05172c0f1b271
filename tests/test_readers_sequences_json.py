"""The two JSON forms of generative-recommendation repositories: ordered sequences
{user: [item, ...]} as --data, and semantic IDs {item: [c1, ..., cL]} as model.ids; Amazon Beauty
(../shared) read to the counts SOURCE.md gives, when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data import dataset, sources
from data.__main__ import main as data_main
from data.errors import DataError
from data.readers.sequences_json import read_sequences_json
from semantic_ids import artefact as semantic_ids
from tests.conftest import SHARED

BEAUTY = SHARED / "data" / "amazon-beauty"


def write(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


def test_sequences_keep_each_list_in_order_with_positions_for_time(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.json", {"7": [3, 1, 2], "2": [1, 5, 3, 4]})
    interactions = read_sequences_json(path)
    assert interactions.user.tolist() == ["7"] * 3 + ["2"] * 4
    assert interactions.item.tolist() == [3, 1, 2, 1, 5, 3, 4] and interactions.item.dtype == np.int64
    assert interactions.timestamp.tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert interactions.properties == {"has_timestamps": 0.0}
    strings = read_sequences_json(write(tmp_path / "s.json", {"u": ["b", "a"]}))
    assert strings.item.tolist() == ["b", "a"]


def test_a_json_path_is_read_by_its_content(tmp_path: Path) -> None:
    sequences = write(tmp_path / "inter.json", {"u1": [1, 2, 3], "u2": [2, 3, 4]})
    reviews = tmp_path / "reviews.json"
    reviews.write_text(json.dumps({"reviewerID": "u", "asin": "i", "overall": 5.0, "unixReviewTime": 1}) + "\n")
    assert sources.detect_format(sequences) == "sequences-json"
    assert sources.detect_format(reviews) == "amazon"
    prepared = dataset.prepare(str(sequences), use_cache=False)
    assert prepared.sequences.num_items == 4 and prepared.properties["has_timestamps"] == 0.0
    np.testing.assert_array_equal(prepared.sequences.item_ids, [1, 2, 3, 4])


@pytest.mark.parametrize("value, problem", [
    ([1, 2], "expected a non-empty object"),
    ({"u1": [1, 2], "u2": 3}, "user 'u2': expected a non-empty list of item ids"),
    ({"u1": [1, 2], "u2": []}, "user 'u2': expected a non-empty list"),
    ({"u1": [1, [2]]}, r"user 'u1': item \[2\] is not an integer or a string id"),
    ({"u1": [1, 2], "u2": ["a"]}, "item ids mix integers and strings"),
])
def test_bad_sequences_are_one_line_naming_file_and_user(tmp_path: Path, value, problem: str) -> None:
    path = write(tmp_path / "bad.json", value)
    with pytest.raises(DataError, match=problem) as raised:
        read_sequences_json(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_the_stats_command_says_there_is_no_time(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "inter.json", {"u1": [1, 2, 3], "u2": [2, 3, 4, 1]})
    assert data_main(["stats", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["time_span"] is None and stats["has_timestamps"] == 0.0 and stats["interactions"] == 7
    (tmp_path / "broken.json").write_text('{"u1": [1, 2')
    assert data_main(["stats", str(tmp_path / "broken.json"), "--format", "sequences-json"]) == 2
    assert "broken.json: not valid JSON" in capsys.readouterr().err


ITEMS = np.array([10, 11, 12, 13])


def test_semantic_ids_as_json_are_used_as_given_when_distinct(tmp_path: Path) -> None:
    path = write(tmp_path / "ids.json", {"10": [0, 1], "11": [0, 2], "12": [3, 1], "13": [3, 3], "99": [1, 1]})
    ids = semantic_ids.load_json(path, ITEMS, 4)
    assert ids.codes.tolist() == [[0, 1], [0, 2], [3, 1], [3, 3]] and not ids.collision_code and ids.levels == 2
    assert ids.quality["collision_rate"] == 0.0 and ids.quality["items_not_in_data"] == 1
    assert ids.config["method"] == "json" and len(ids.input_hash) == 64


def test_repeated_json_ids_get_a_collision_code(tmp_path: Path) -> None:
    path = write(tmp_path / "ids.json", {"10": [0, 1], "11": [0, 1], "12": [3, 1], "13": [0, 1]})
    ids = semantic_ids.load_json(path, ITEMS, 4)
    assert ids.collision_code and ids.levels == 2
    assert ids.codes.tolist() == [[0, 1, 0], [0, 1, 1], [3, 1, 0], [0, 1, 2]]
    assert ids.quality["largest_collision_group"] == 3


@pytest.mark.parametrize("value, problem", [
    ({"10": [0, 1], "11": [0, 2], "12": [3, 1]}, "item '13' has no semantic ID \\(1 of 4"),
    ({"10": [0, 1], "11": [0, 2, 1], "12": [3, 1], "13": [1, 1]}, "item '11' has 3 codes, the others 2"),
    ({"10": [0, 1], "11": [0, 4], "12": [3, 1], "13": [1, 1]}, "item '11': code 4 is outside 0..3"),
    ({"10": [0, 1], "11": [0, 1.5], "12": [3, 1], "13": [1, 1]}, "item '11': expected a list of integer codes"),
    ([[0, 1]], "expected a non-empty object"),
])
def test_bad_json_ids_are_one_line_naming_file_and_item(tmp_path: Path, value, problem: str) -> None:
    path = write(tmp_path / "ids.json", value)
    with pytest.raises(DataError, match=problem) as raised:
        semantic_ids.load_json(path, ITEMS, 4)
    assert str(path) in str(raised.value)


@pytest.mark.skipif(not BEAUTY.is_dir(), reason="../shared/data/amazon-beauty is outside the repository")
def test_amazon_beauty_reads_to_the_published_counts() -> None:
    prepared = dataset.prepare(str(BEAUTY / "inter.json"), use_cache=False)
    sequences = prepared.sequences
    assert (len(sequences.user_ids), sequences.num_items, len(sequences.items)) == (22363, 12101, 198502)
    for name in ("index_rqvae.json", "index_rqkmeans.json"):
        ids = semantic_ids.load_json(BEAUTY / name, sequences.item_ids, 256)
        assert ids.codes.shape == (12101, 4) and not ids.collision_code, name


def test_the_encoder_decoder_takes_json_ids_with_or_without_a_collision_code(tmp_path: Path) -> None:
    import types

    from models.core import family as families
    from models.encdec.config import EncDecConfig
    from models.encdec.model import synthetic_codes, vocabulary_codes
    from scaling.config import ConfigError
    from semantic_ids.trial_codes import item_codes

    def semantic_ids_for(config: EncDecConfig, prepared, log):  # the family's request, the stage's codes
        made = item_codes(families.get("encdec").item_codes_request(config), prepared, log)
        return made.codes, made.provenance

    prepared = types.SimpleNamespace(sequences=types.SimpleNamespace(item_ids=ITEMS))
    distinct = write(tmp_path / "distinct.json", {"10": [0, 1], "11": [0, 2], "12": [3, 1], "13": [3, 3]})
    repeated = write(tmp_path / "repeated.json", {"10": [0, 1], "11": [0, 1], "12": [3, 1], "13": [3, 3]})
    config = EncDecConfig(ids=str(distinct), ids_levels=2, ids_codebook=4, ids_collision_code=False)
    codes, record = semantic_ids_for(config, prepared, None)
    assert config.id_length == 2 and codes.shape == (4, 2) and record["method"] == "json"
    assert vocabulary_codes(codes, config).shape == (5, 2)
    with pytest.raises(ConfigError, match="the IDs are distinct as given: set model.ids_collision_code=false"):
        semantic_ids_for(EncDecConfig(ids=str(distinct), ids_levels=2, ids_codebook=4), prepared, None)
    with pytest.raises(ConfigError, match="items share IDs, so a collision code is needed"):
        semantic_ids_for(EncDecConfig(ids=str(repeated), ids_levels=2, ids_codebook=4, ids_collision_code=False),
                         prepared, None)
    with pytest.raises(ConfigError, match="has 2 codes per item, model.ids_levels=3"):
        semantic_ids_for(EncDecConfig(ids=str(distinct), ids_levels=3, ids_codebook=4, ids_collision_code=False),
                         prepared, None)
    with pytest.raises(ConfigError, match="needs IDs given distinct"):
        semantic_ids_for(EncDecConfig(ids_levels=2, ids_codebook=4, ids_collision_code=False), prepared, None)
    assert synthetic_codes(16, 2, 4, collision_code=False).tolist()[5] == [1, 1]
    with pytest.raises(ConfigError, match="exact_scorer=false ranks by the beam alone: set model.beam_width > 0"):
        EncDecConfig(exact_scorer=False, beam_width=0)
    with pytest.raises(ConfigError, match="17 items do not fit 2 levels of 4 codes"):
        synthetic_codes(17, 2, 4, collision_code=False)


def test_a_local_dataset_is_found_under_scaling_lab_data_or_named_missing(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "data" / "amazon-beauty"
    folder.mkdir(parents=True)
    write(folder / "inter.json", {"u1": [1, 2, 3], "u2": [3, 2, 1]})
    write(folder / "index_x.json", {"1": [0, 1], "2": [1, 0], "3": [1, 1]})
    monkeypatch.setenv("SCALING_LAB_DATA", str(tmp_path / "data"))
    assert sources.local_file("amazon-beauty") == folder / "inter.json"
    assert sources.local_file("some/other.json") == Path("some/other.json")
    prepared = dataset.prepare("amazon-beauty", use_cache=False)
    ids = semantic_ids.load_json("amazon-beauty:index_x.json", prepared.sequences.item_ids, 2)
    assert ids.codes.tolist() == [[0, 1], [1, 0], [1, 1]]
    with pytest.raises(DataError, match=r"amazon-beauty:index_y.json: .*index_y.json not found; .*SCALING_LAB_DATA"):
        sources.local_file("amazon-beauty:index_y.json")
    monkeypatch.setenv("SCALING_LAB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="amazon-beauty: .* not found"):
        dataset.prepare("amazon-beauty", use_cache=False)
