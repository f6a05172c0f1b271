"""Train steps on 8 simulated devices: same loss and gradients on every mesh and micro-batching,
parameters really sharded by the rules, checkpoints restored onto another mesh continue identically."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from data.interactions import Interactions
from data.pipeline import PipelineConfig, eval_dataset, train_dataset
from data.sequences import PreprocessOptions, build_sequences
from data.split import leave_one_out
from models.core.config import ModelConfig
from scaling.config import ConfigError, DataConfig, MeshConfig, TrainConfig, TrialConfig
from scaling.engine import checkpoint
from scaling.engine.compiled import build_trainer
from scaling.engine.mesh import make_mesh, parse_mesh_spec

MESHES = ("data=8", "fsdp=8", "data=2,fsdp=2,tensor=2")
NUM_ITEMS = 63  # vocab 64: divisible by every mesh axis used here


def _config(family: str) -> TrialConfig:
    if family.startswith("encdec"):  # vocabulary 2 + 4 x 8 codes + 14 users = 48 rows; 3 drawn examples per row
        # encdec-moe: 4 experts, top 2, capacity 6 of a row's 12 decoder tokens x 2 / 4 (some dropped)
        moe = dict(experts=4, top_k=2, capacity_factor=1.0, expert_d_ff=16) if family == "encdec-moe" else {}
        model = ModelConfig(family="encdec", d_model=16, heads=2, d_ff=32, encoder_blocks=1, decoder_blocks=1,
                            dropout=0.1, history_items=4, ids_codebook=8, user_buckets=14, targets_per_row=3, **moe)
    else:
        model = ModelConfig(family=family, d_model=16, blocks=1, heads=2, dqk=8, dv=8, max_positions=16,
                            dropout=0.1, input_dropout=0.1, ffn_dim=32)
    return TrialConfig(
        data=DataConfig(max_len=11),
        model=model,
        train=TrainConfig(batch_size=8, steps=4, negatives=8, eval_batch_size=8),
    )


def _sequences():
    rng = np.random.default_rng(0)
    user, item, ts = [], [], []
    for u in range(24):
        n = int(rng.integers(4, 20))
        user += [u] * n
        item += ((np.arange(n) + 7 * u) % NUM_ITEMS + 1).tolist()  # every item occurs
        ts += np.cumsum(rng.integers(1, 10**6, n)).tolist()
    seqs, _ = build_sequences(Interactions(np.array(user), np.array(item), np.array(ts, np.int64)), PreprocessOptions())
    assert seqs.num_items == NUM_ITEMS
    return seqs


@pytest.fixture(scope="module")
def host_batches():
    iterator = iter(train_dataset(leave_one_out(_sequences()).train, PipelineConfig(batch_size=8, row_len=12, packed=True),
                                  0, 1))
    return [next(iterator) for _ in range(3)]


@pytest.mark.slow
def test_encdec_evaluation_and_beam_search_equal_single_device() -> None:
    """The exact ranks, the beam's lists and its rates: the trie's tables placed by the rules."""
    eval_batch = next(iter(eval_dataset(leave_one_out(_sequences()).valid, 12, 8, history_len=11)))
    outputs = []
    for spec in ("data=1", "data=2,fsdp=2,tensor=2"):
        config = dataclasses.replace(_config("encdec"), mesh=MeshConfig(spec))
        devices = jax.devices()[:1] if spec == "data=1" else jax.devices()
        trainer = build_trainer(config, NUM_ITEMS, make_mesh(spec, devices), total_steps=4)
        with trainer.context():
            params = trainer.init(jax.random.key(1))["params"]
            outputs.append(jax.device_get(trainer.eval_step(params, trainer.eval_batch(eval_batch))))
    single, sharded = outputs
    assert set(single) >= {"rank", "lists", "means"} and single["lists"]["beam"].shape == (8, 10)
    for key in ("rank", "valid", "target"):
        np.testing.assert_array_equal(sharded[key], single[key])
    np.testing.assert_array_equal(sharded["lists"]["beam"], single["lists"]["beam"])
    assert (single["means"]["invalid_rate"] == 0).all()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), sharded["means"], single["means"])


def one_step(family: str, spec: str, batch: dict):
    config = dataclasses.replace(_config(family), mesh=MeshConfig(spec))
    devices = jax.devices()[:1] if spec == "data=1" else jax.devices()
    trainer = build_trainer(config, NUM_ITEMS, make_mesh(spec, devices), total_steps=4)
    with trainer.context():
        state = trainer.init(jax.random.key(1))
        params = jax.device_get(state["params"])
        grads, loss_sum, count, _ = jax.jit(trainer.functions.gradients)(state["params"], trainer.train_batch(batch),
                                                                         jax.random.key(2))
        return params, jax.device_get(grads), float(loss_sum / count), trainer, state


def assert_same_draws(params: dict, reference: dict) -> None:
    """Initial parameters equal to one ulp. The random bits are the same on every mesh (threefry is
    partitionable); a normal initialiser turns them into samples through erf_inv, which XLA's CPU
    backend evaluates with instructions chosen per processor and per loop shape (its
    "platform-dependent math"). With jax 0.12 on one machine, one of the 64 elements of the MoE
    router, normal(0.02), came out 1 ulp (3.7e-9) apart on the 8-device meshes, whose shards hold
    8 or 32 of them (bitwise equal on an AVX2 machine). A draw from another key or with another
    scale misses by far more than an ulp."""
    jax.tree.map(lambda a, b: np.testing.assert_array_max_ulp(a, b, maxulp=1), params, reference)


@pytest.mark.slow(18)
@pytest.mark.parametrize("family", ["hstu", "sasrec", "encdec-moe"])  # encdec-moe: the dense encdec and its experts
def test_loss_and_gradients_equal_single_device(family: str, host_batches) -> None:
    """HSTU on every mesh; the others where their parameters are split (data=8 only splits the batch)."""
    ref_params, ref_grads, ref_loss, _, _ = one_step(family, "data=1", host_batches[0])
    for spec in MESHES if family == "hstu" else MESHES[1:]:
        params, grads, loss, trainer, state = one_step(family, spec, host_batches[0])
        assert_same_draws(params, ref_params)
        assert loss == pytest.approx(ref_loss, rel=1e-5), spec
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), grads, ref_grads)


# (mesh, train.grad_accum); 0 = the automatic CPU micro-batching, made to split here (see below)
SPLITS = (("data=1", 4), ("data=2,fsdp=2,tensor=2", 2), ("data=4", 0))


def per_step(family: str, spec: str, grad_accum: int, host_batches, seeds: tuple[int, ...] = (5,)) -> tuple[list, int]:
    """(per seed, per step (mean loss, gradient norm) over the batches; the micro-batches used) of
    a fresh trainer: dropout, drawn negatives and drawn examples all on."""
    config = dataclasses.replace(_config(family), mesh=MeshConfig(spec))
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, grad_accum=grad_accum))
    devices = jax.devices()[:math.prod(int(part.split("=")[1]) for part in spec.split(","))]
    trainer = build_trainer(config, NUM_ITEMS, make_mesh(spec, devices), total_steps=len(host_batches))
    runs = []
    with trainer.context():
        for seed in seeds:
            init_key, step_key = jax.random.split(jax.random.key(seed))
            state, losses = trainer.init(init_key), []
            for batch in host_batches:
                state, metrics = trainer.train_step(state, trainer.train_batch(batch), step_key)
                losses.append((float(metrics["loss_sum"] / metrics["positions"]), float(metrics["grad_norm"])))
            runs.append(losses)
    return runs, trainer.grad_accum


@pytest.mark.slow(18)
@pytest.mark.parametrize("family", ["hstu", "encdec-moe"])
def test_per_step_losses_are_the_same_on_every_mesh_and_micro_batching(family: str, host_batches,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """To 1e-5 on any mesh with any micro-batching (with dropout, sampled negatives and drawn
    examples, whose draws must not follow the split). Bitwise equality of two runs on one mesh:
    tests/test_faults.py compares separate training processes exactly."""
    from models.core import family as families
    from scaling.engine import compiled as trainer_module

    (reference, other_seed), _ = per_step(family, "data=1", 1, host_batches, seeds=(5, 6))
    assert other_seed[0][0] != reference[0][0]  # the draws are live: another seed, another first loss
    config = _config(family)  # the automatic split: one row per device per micro-batch on data=4
    monkeypatch.setattr(trainer_module, "CPU_SCORES_BYTES",
                        families.of(config.model).scores_bytes_per_row(config.model, config.data.row_len))
    for spec, grad_accum in SPLITS if family == "hstu" else SPLITS[1:]:
        (losses,), used = per_step(family, spec, grad_accum, host_batches)
        assert used == (grad_accum or 2), (spec, used)
        np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=f"{spec}, grad_accum={grad_accum}")


def test_experts_are_sharded_over_the_data_axis() -> None:
    trainer = build_trainer(dataclasses.replace(_config("encdec-moe"), mesh=MeshConfig("data=2,fsdp=2,tensor=2")),
                            NUM_ITEMS, make_mesh("data=2,fsdp=2,tensor=2"), total_steps=4)
    with trainer.context():
        state = trainer.init(jax.random.key(0))
    ffn = state["params"]["decoder_0"]["ffn"]
    assert ffn["wi"].sharding.spec == PartitionSpec("data", "fsdp", "tensor")  # (expert, embed, mlp)
    assert ffn["wo"].sharding.spec == PartitionSpec("data", "tensor", "fsdp")
    assert ffn["wi"].addressable_shards[0].data.shape == (4 // 2, 16 // 2, 16 // 2)


def test_parameters_are_sharded_as_the_rules_say() -> None:
    trainer = build_trainer(dataclasses.replace(_config("hstu"), mesh=MeshConfig("data=2,fsdp=2,tensor=2")),
                            NUM_ITEMS, make_mesh("data=2,fsdp=2,tensor=2"), total_steps=4)
    with trainer.context():
        state = trainer.init(jax.random.key(0))
    params = state["params"]
    expected = {
        "item_embedding": PartitionSpec("tensor", "fsdp"),  # (table_rows, embed): small, by the ordinary rule
        "position_embedding": PartitionSpec(None, "fsdp"),  # (positions, embed)
    }
    for name, spec in expected.items():
        assert params[name].sharding.spec == spec, name
    block = params["block_0"]
    assert block["uvqk"].sharding.spec == PartitionSpec("fsdp", "tensor")
    assert block["out_kernel"].sharding.spec == PartitionSpec("tensor", "fsdp")
    assert block["rel_pos_bias"].sharding.spec == PartitionSpec(None)
    shard = block["uvqk"].addressable_shards[0].data
    assert shard.shape == (16 // 2, 64 // 2)  # really split, not replicated
    mu = state["opt_state"][0].mu["block_0"]["uvqk"]
    assert mu.sharding.spec == block["uvqk"].sharding.spec  # Adam moments follow their parameter


@pytest.mark.slow
def test_checkpoint_restores_onto_another_mesh_and_training_continues(tmp_path, host_batches) -> None:
    def trainer_for(spec: str):
        config = dataclasses.replace(_config("hstu"), mesh=MeshConfig(spec))
        return build_trainer(config, NUM_ITEMS, make_mesh(spec), total_steps=4)

    first = trainer_for("data=8")
    key = jax.random.key(3)
    with first.context():
        state = first.init(jax.random.key(0))
        state, _ = first.train_step(state, first.train_batch(host_batches[0]), key)
        manager = checkpoint.manager(tmp_path / "ckpt", keep=2, asynchronous=False)
        checkpoint.save(manager, 1, state, {"epoch": 0, "row": 8})
        manager.wait_until_finished()
        _, metrics = first.train_step(state, first.train_batch(host_batches[1]), key)
        expected_loss = float(metrics["loss_sum"] / metrics["positions"])

    second = trainer_for("data=2,fsdp=2,tensor=2")
    with second.context():
        target = checkpoint.abstract_like(second.abstract_state, second.shardings)
        restored, data_state = checkpoint.restore(manager, 1, target)
        assert data_state == {"epoch": 0, "row": 8} and int(restored["step"]) == 1
        assert restored["params"]["item_embedding"].sharding.spec == PartitionSpec("tensor", "fsdp")
        _, metrics = second.train_step(restored, second.train_batch(host_batches[1]), key)
        assert float(metrics["loss_sum"] / metrics["positions"]) == pytest.approx(expected_loss, rel=1e-5)
    manager.close()


def test_impossible_meshes_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="needs 12 devices, but 8 are available"):
        parse_mesh_spec("data=3,fsdp=4", 8)
    with pytest.raises(ConfigError, match="'pipeline=2' is not AXIS=SIZE"):
        parse_mesh_spec("pipeline=2", 8)
    config = dataclasses.replace(_config("hstu"), train=TrainConfig(batch_size=6, eval_batch_size=8))
    with pytest.raises(ConfigError, match="6 rows do not split over data x fsdp = 8"):
        build_trainer(config, NUM_ITEMS, make_mesh("data=8"), total_steps=1)


def test_tensor_groups_stay_within_a_process_on_gpu_jobs() -> None:
    """4 processes x 8 GPUs (ordered by process, as jax.devices() is): tensor=8 fits a node,
    tensor=16 would all-reduce across nodes and is refused; data and fsdp may cross them."""
    import types

    from scaling.engine.mesh import check_tensor_within_processes

    devices = np.array([types.SimpleNamespace(id=i, process_index=i // 8, platform="gpu") for i in range(32)])
    check_tensor_within_processes("data=2,fsdp=2,tensor=8", devices.reshape(2, 2, 8))
    check_tensor_within_processes("data=32", devices.reshape(32, 1, 1))
    with pytest.raises(ConfigError, match=r"a tensor group of 16 devices spans processes \[0, 1\]; keep tensor "
                                          r"within a node \(8 devices per process\)"):
        check_tensor_within_processes("data=2,tensor=16", devices.reshape(2, 1, 16))
    tpu = np.array([types.SimpleNamespace(id=i, process_index=i // 4, platform="tpu") for i in range(16)])
    check_tensor_within_processes("tensor=16", tpu.reshape(1, 1, 16))  # ICI spans hosts
