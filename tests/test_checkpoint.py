"""Checkpoints under a relative workdir (the sweeps' default) save and restore."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scaling import checkpoint


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
