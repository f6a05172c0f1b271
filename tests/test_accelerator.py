"""benchmarks.accelerator: its --small run holds every section; the profile attribution, the
trace reading and the peak table on hand-made inputs; bad input is one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import accelerator, accelerator_shapes
from scaling.engine import hardware
from scaling.services import profiling
from tests.conftest import xla_flags

REPO_ROOT = Path(__file__).resolve().parents[1]
STEP = "jit(train_step)"


def test_profile_shares_attribute_ops_by_their_scopes() -> None:
    ops = [
        (f"{STEP}/jvp(SequentialRecommender)/block_0/attention/bhid,bhjd->bhij/dot_general", 3.0),
        (f"{STEP}/transpose(jvp(SequentialRecommender))/block_0/attention/jit(silu)/mul", 1.0),
        (f"{STEP}/jvp(SequentialRecommender)/attention/log", 0.5),  # HSTU's time buckets
        (f"{STEP}/jvp(SequentialRecommender)/block_0/bld,de->ble/dot_general", 2.0),
        (f"{STEP}/transpose(jvp(SequentialRecommender))/embedding_lookup/jit(_take)/scatter-add", 0.5),
        (f"{STEP}/jvp(negatives)/vmap(jit(_randint))/add", 0.25),
        (f"{STEP}/transpose(jvp(loss))/bld,blrd->blr/dot_general", 0.75),
        (f"{STEP}/optimizer/sqrt", 1.0),
        (f"{STEP}/transpose(jvp(SequentialRecommender))/block_0/mul", 0.5),
        ("copy.3", 0.5),  # no metadata
    ]
    shares = accelerator.profile_shares(ops)
    assert list(shares) == list(accelerator.PARTS)
    assert shares == pytest.approx({accelerator.ATTENTION: 0.45, accelerator.MATMULS: 0.2, accelerator.LOOKUPS: 0.15,
                                    accelerator.OPTIMIZER: 0.1, accelerator.OTHER: 0.1})
    with pytest.raises(ValueError, match="no op time"):
        accelerator.profile_shares([])


HLO = """HloModule jit_train_step, is_scheduled=true

%fused_dot (p0: f32[4,8], p1: f32[8,2]) -> f32[4,2] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,2]{1,0} parameter(1)
  %dot.1 = f32[4,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(train_step)/jvp(m)/block_0/attention/bhid,bhjd->bhij/dot_general"}
  ROOT %tanh.1 = f32[4,2]{1,0} tanh(%dot.1), metadata={op_name="jit(train_step)/jvp(m)/tanh"}
}

%fused_add (q0: f32[4,2]) -> f32[4,2] {
  %q0 = f32[4,2]{1,0} parameter(0)
  ROOT %add.1 = f32[4,2]{1,0} add(%q0, %q0), metadata={op_name="jit(train_step)/optimizer/add"}
}

ENTRY %main.9 (a: f32[4,8], b: f32[8,2]) -> f32[4,2] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,2]{1,0} parameter(1)
  %fusion.1 = f32[4,2]{1,0} fusion(%a, %b), kind=kOutput, calls=%fused_dot, metadata={op_name="jit(train_step)/jvp(m)/tanh"}
  ROOT %fusion.2 = f32[4,2]{1,0} fusion(%fusion.1), kind=kLoop, calls=%fused_add
}
"""


def test_hlo_ops_stand_for_their_matmul_or_their_metadata() -> None:
    names = profiling.hlo_op_names(HLO)
    assert profiling.hlo_module_name(HLO) == "jit_train_step"
    assert names["fusion.1"].endswith("attention/bhid,bhjd->bhij/dot_general")  # the dot inside, not the root
    assert names["fusion.2"] == "jit(train_step)/optimizer/add"  # no metadata of its own: what it fuses
    assert accelerator.part_of(names["fusion.1"]) == accelerator.ATTENTION
    with pytest.raises(profiling.TraceError):
        profiling.hlo_module_name("not hlo")


def test_nested_op_events_count_once() -> None:
    spans = [(0.0, 10.0, "while.1"), (2.0, 5.0, "fusion.1"), (6.0, 8.0, "fusion.2"), (12.0, 13.0, "copy.1")]
    seconds = {op: s * 1e9 for op, s in profiling._exclusive(spans)}
    assert seconds == pytest.approx({"while.1": 5.0, "fusion.1": 3.0, "fusion.2": 2.0, "copy.1": 1.0})


def test_an_unreadable_trace_is_said_on_the_page(tmp_path: Path) -> None:
    profile = accelerator.read_profile(tmp_path, step_seconds=0.1)
    assert profile["error"].startswith("FileNotFoundError")  # no HLO, no trace: the page says so and goes on
    assert "could not be read here" in accelerator._profile_lines(profile)[0]


def test_peak_table_matches_device_kinds_by_whole_words() -> None:
    assert hardware.datasheet_peak("NVIDIA L4", "bfloat16") == 121e12
    assert hardware.datasheet_peak("NVIDIA L4", "float32") == 30.3e12
    assert hardware.datasheet_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert hardware.datasheet_peak("TPU v5 lite", "bfloat16") == 197e12
    with pytest.raises(hardware.UnknownDevice):
        hardware.datasheet_peak("NVIDIA L40S", "bfloat16")  # not an L4
    kind, devices = hardware.parse_accelerator("l4-8")
    assert (kind.device_kind, devices, kind.hbm_bytes) == ("NVIDIA L4", 8, 24e9)


def test_unwritable_out_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert accelerator.main(["--out", str(blocker / "results"), "--small"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {blocker / 'results'}: cannot write there")


@pytest.mark.slow(60)
def test_small_run_writes_every_section(tmp_path: Path, lab_cache: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), SCALING_LAB_CACHE=str(lab_cache),
               SCALING_LAB_DATA=str(tmp_path / "no-data"))  # as on a GPU machine: tiger-beauty on generated data
    done = subprocess.run([sys.executable, "-m", "benchmarks.accelerator", "--out", str(out), "--small", "--json"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == json.loads((out / "accelerator.json").read_text())
    assert result["platform"] == "cpu" and result["versions"]["jax"]
    for dtype in ("bfloat16", "float32"):
        assert result["matmul"][dtype]["measured"] > 0 and result["matmul"][dtype]["datasheet"] is None
    rows = {row["shape"]: row for row in result["shapes"]}
    assert list(rows) == [shape.name for shape in accelerator_shapes.SMALL_SHAPES]
    for row in rows.values():
        assert "error" not in row, row
        assert math.isfinite(row["step_seconds"]) and row["step_seconds"] > 0
        assert 0 < row["mfu"] < 1 and row["tokens_per_second"] > 0 and row["xla_flops_per_step"] > 0
    assert rows["tiger-beauty"]["data"] == accelerator.SYNTHETIC_BEAUTY
    assert rows["HSTU long"]["attention"] == "blockwise" and rows["HSTU large"]["packed"]
    profile = result["profile"]
    assert "error" not in profile, profile
    assert set(profile["shares"]) == set(accelerator.PARTS) and sum(profile["shares"].values()) == pytest.approx(1.0)
    assert profile["shares"][accelerator.ATTENTION] > 0 and profile["shares"][accelerator.OPTIMIZER] > 0
    assert all(check["ok"] for check in result["smoke"].values()), result["smoke"]
    assert Path(result["smoke"]["sweep"]["report"]).is_file()
    page = (out / "accelerator.md").read_text()
    for heading in ("## Matmul rates", "## Training steps", "## Where the HSTU large step spends device time",
                    "## End-to-end smoke", "A CPU has no datasheet peak", accelerator.SYNTHETIC_BEAUTY):
        assert heading in page
    assert all(f"| {name} |" in page for name in rows) and "failed" not in page.lower()
