"""Checkpoints under a relative workdir (the sweeps' default) save and restore; a trial that the
previous stack (jax 0.10.2 on Python 3.11) checkpointed resumes on this one to the old result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.engine import checkpoint

# the tiny preset on a synthetic catalogue, 8 steps with a checkpoint every 4, run to the end on
# the old stack; kept: config.json, metrics.jsonl and the step-4 checkpoint (as if killed after
# step 8 before its checkpoint was committed), and the old run's result beside it
PREVIOUS_STACK = Path(__file__).parent / "golden" / "checkpoint_jax0.10.2"


def test_relative_directory_saves_and_restores(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.array(3, jnp.int32)}
    manager = checkpoint.manager("workdirs/trial/checkpoints", keep=2, asynchronous=False)
    checkpoint.save(manager, 3, state, {"tokens": 12.0})
    manager.wait_until_finished()
    assert (tmp_path / "workdirs/trial/checkpoints/3").is_dir()
    restored, progress = checkpoint.restore(manager, 3, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
    manager.close()
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert progress == {"tokens": 12.0}


@pytest.mark.slow
def test_a_checkpoint_of_the_previous_stack_resumes_to_its_result(tmp_path, use_lab_cache, capsys) -> None:
    from scaling import train

    workdir = tmp_path / "trial"
    shutil.copytree(PREVIOUS_STACK / "workdir", workdir)
    expected = json.loads((PREVIOUS_STACK / "result.json").read_text())
    assert train.main(["--config", str(workdir / "config.json"), "--workdir", str(workdir), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert "resumed from step 4" in captured.err and result["resumed_from_step"] == 4
    assert (result["trial_id"], result["steps"], result["tokens"], result["train_flops"]) == \
        (expected["trial_id"], expected["steps"], expected["tokens"], expected["train_flops"])
    for key in ("final_train_loss", "eval_loss", "test_loss", "hr@10", "ndcg@10", "hr@50", "mrr", "valid_hr@10"):
        assert result[key] == pytest.approx(expected[key], rel=1e-5), key
