"""HSTU against numbers computed by the reference implementation itself.

tests/golden/hstu_reference_golden.npz was written by running the research path of
meta-recsys/generative-recommenders (hstu.py, sampled_softmax.py, autoregressive_losses.py,
features.py at facebookresearch/generative-recommenders 044c378/44b62c6; PyTorch 2.13 on CPU,
fbgemm's dense_to_jagged / jagged_to_padded_dense / complete_cumsum replaced by plain torch ops)
on a tiny configuration: 40 items, D 8, 2 blocks, 2 heads, dqk = dv = 4, max_sequence_length 20
(so N = 20 + 11 = 31), relative biases redrawn from N(0, 0.5) so they matter. Four users with
histories of 20, 7, 1 and 13 items and time gaps from 0 s to 35 days. It holds, from the
reference in eval mode (no dropout):
- eval_query: model.encode() of the histories, as its eval computes the query;
- train_outputs, loss, grad/*: one step of its train loop (target scattered at past_lengths,
  SampledSoftmaxLoss, temperature 0.05) with the 6 negatives per position fixed to `negatives`
  (two accidental hits planted), and the gradients of every parameter;
- param/*: the reference's weights, named and laid out as ours (out_kernel transposed).
tests/numpy_reference.py checks the spec as we read it; this checks the reading.
"""

from __future__ import annotations

from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.config import ModelConfig
from models.decoder import MODEL_INPUTS, build_model
from models.losses import sampled_softmax_loss

GOLDEN = Path(__file__).parent / "golden" / "hstu_reference_golden.npz"
CONFIG = ModelConfig(family="hstu", d_model=8, blocks=2, heads=2, dqk=4, dv=4, max_positions=31,
                     dropout=0.2, input_dropout=0.2)
ITEMS = 40


def reference_rows(golden: dict, with_target: bool) -> tuple[dict, np.ndarray]:
    """Our padded rows for the golden users: the history, plus the target when training."""
    lengths = golden["history_lengths"]
    width = golden["history_items"].shape[1] + int(with_target)
    rows = {key: np.zeros((len(lengths), width), np.int32) for key in MODEL_INPUTS + ("targets",)}
    for r, n in enumerate(lengths):
        items = list(golden["history_items"][r, :n]) + [golden["target_items"][r]]
        times = list(golden["history_timestamps"][r, :n]) + [golden["target_timestamps"][r]]
        m = n + int(with_target)
        rows["items"][r, :m] = items[:m]
        rows["timestamps"][r, :m] = times[:m]
        rows["next_timestamps"][r, :m] = (times[1:] + times[-1:])[:m]
        rows["targets"][r, :m] = (items[1:] + [0])[:m]
        rows["segment_ids"][r, :m] = 1
        rows["positions"][r, :m] = np.arange(m)
    return {key: jnp.asarray(value) for key, value in rows.items()}, lengths


@pytest.fixture(scope="module")
def golden() -> dict:
    return dict(np.load(GOLDEN))


@pytest.fixture(scope="module")
def model_and_params(golden):
    model = build_model(CONFIG, ITEMS)
    rows, _ = reference_rows(golden, with_target=False)
    boxed = model.init(jax.random.PRNGKey(0), {k: rows[k] for k in MODEL_INPUTS})["params"]
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(boxed), sep="/")
    assert sorted(flat) == sorted(k[len("param/"):] for k in golden if k.startswith("param/"))
    for name, box in flat.items():
        value = jnp.asarray(golden["param/" + name])
        assert box.value.shape == value.shape, name
        flat[name] = box.replace_boxed(value)
    return model, flax.traverse_util.unflatten_dict(flat, sep="/")


def test_eval_query_equals_the_reference(golden, model_and_params):
    model, params = model_and_params
    rows, lengths = reference_rows(golden, with_target=False)
    outputs = np.asarray(model.apply({"params": params}, {k: rows[k] for k in MODEL_INPUTS}))
    query = outputs[np.arange(len(lengths)), lengths - 1]
    np.testing.assert_allclose(query, golden["eval_query"], atol=2e-6)


def test_training_loss_and_gradients_equal_the_reference(golden, model_and_params):
    model, params = model_and_params
    rows, lengths = reference_rows(golden, with_target=True)
    negatives = jnp.asarray(golden["negatives"])

    def mean_loss(p):
        outputs = model.apply({"params": p}, {k: rows[k] for k in MODEL_INPUTS})
        total, count = sampled_softmax_loss(outputs, rows["targets"], model.apply({"params": p}, method=model.candidates),
                                            negatives, temperature=0.05)
        return total / count, outputs

    (loss, outputs), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
    real = np.arange(outputs.shape[1])[None, :] < lengths[:, None]  # the reference leaves the target out
    np.testing.assert_allclose(np.asarray(outputs)[real], golden["train_outputs"][real], atol=2e-6)
    np.testing.assert_allclose(float(loss), float(golden["loss"]), rtol=1e-6)
    for name, grad in flax.traverse_util.flatten_dict(flax.core.unfreeze(grads), sep="/").items():
        expected = golden["grad/" + name]
        np.testing.assert_allclose(np.asarray(grad.value), expected, atol=1e-5 * np.abs(expected).max(), err_msg=name)
