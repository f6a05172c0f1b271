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

from data.pipeline import eval_row
from data.sequences import Sequences
from data.split import EvalTargets
from models.core.config import ModelConfig
from models.core.losses import sampled_softmax_loss
from models.decoder_only.decoder import MODEL_INPUTS, build_model

GOLDEN = Path(__file__).parent / "golden" / "hstu_reference_golden.npz"
CONFIG = ModelConfig(family="hstu", d_model=8, blocks=2, heads=2, dqk=4, dv=4, max_positions=31,
                     dropout=0.2, input_dropout=0.2)
ITEMS = 40


def reference_rows(golden: dict) -> tuple[dict, np.ndarray]:
    """The golden users' rows as our pipeline builds them for evaluation (data.pipeline.eval_row):
    the history, each token's next timestamp (the target's at the last), each token's next item."""
    lengths = golden["history_lengths"]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    real = np.arange(golden["history_items"].shape[1])[None, :] < lengths[:, None]
    history = Sequences(offsets=offsets, items=golden["history_items"][real], timestamps=golden["history_timestamps"][real],
                        ratings=None, num_items=ITEMS, user_ids=np.arange(len(lengths)), item_ids=np.arange(1, ITEMS + 1))
    targets = EvalTargets(history, golden["target_items"], golden["target_timestamps"])
    rows = [eval_row(targets, user, golden["history_items"].shape[1]) for user in range(len(lengths))]
    return {key: jnp.asarray(np.stack([row[key] for row in rows])) for key in MODEL_INPUTS + ("targets",)}, lengths


@pytest.fixture(scope="module")
def golden() -> dict:
    return dict(np.load(GOLDEN))


@pytest.fixture(scope="module")
def model_and_params(golden):
    model = build_model(CONFIG, ITEMS)
    rows, _ = reference_rows(golden)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), {k: rows[k] for k in MODEL_INPUTS})["params"]
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(boxed), sep="/")
    assert sorted(flat) == sorted(k[len("param/"):] for k in golden if k.startswith("param/"))
    for name, box in flat.items():
        value = jnp.asarray(golden["param/" + name])
        assert box.value.shape == value.shape, name
        flat[name] = box.replace_boxed(value)
    return model, flax.traverse_util.unflatten_dict(flat, sep="/")


def test_eval_query_equals_the_reference(golden, model_and_params):
    model, params = model_and_params
    rows, lengths = reference_rows(golden)
    outputs = np.asarray(model.apply({"params": params}, {k: rows[k] for k in MODEL_INPUTS}))
    query = outputs[np.arange(len(lengths)), lengths - 1]
    np.testing.assert_allclose(query, golden["eval_query"], atol=2e-6)


@pytest.mark.slow
def test_training_loss_and_gradients_equal_the_reference(golden, model_and_params):
    model, params = model_and_params
    rows, lengths = reference_rows(golden)  # the same supervised positions as the reference's training row
    negatives = jnp.asarray(golden["negatives"][:, : rows["items"].shape[1]])

    def mean_loss(p):
        outputs = model.apply({"params": p}, {k: rows[k] for k in MODEL_INPUTS})
        total, count = sampled_softmax_loss(outputs, rows["targets"], p["item_embedding"].unbox(),
                                            negatives, temperature=0.05)
        return total / count, outputs

    (loss, outputs), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
    real = np.arange(outputs.shape[1])[None, :] < lengths[:, None]
    np.testing.assert_allclose(np.asarray(outputs)[real], golden["train_outputs"][:, : outputs.shape[1]][real], atol=2e-6)
    np.testing.assert_allclose(float(loss), float(golden["loss"]), rtol=1e-6)
    for name, grad in flax.traverse_util.flatten_dict(flax.core.unfreeze(grads), sep="/").items():
        expected = golden["grad/" + name]
        np.testing.assert_allclose(np.asarray(grad.value), expected, atol=1e-5 * np.abs(expected).max(), err_msg=name)
