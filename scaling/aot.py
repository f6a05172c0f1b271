"""Compile a trial's train and eval steps for a mesh without running them (MaxText's
train_compile): per-device memory from XLA's memory analysis, the layout of the catalogue
tables, FLOPs per step. Nothing is initialised: the steps are lowered on abstract arrays.

`compile_only` is what `python -m benchmarks.throughput --compile-only` prints and what
`python -m sweeps show --accelerator` estimates HBM from. `python -m scaling.aot` compiles a
list of trial configs on N simulated CPU devices in a fresh process (the device count of a
process is fixed when its backend starts).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
from typing import Any, Sequence

import flax.linen as nn
import jax

from models.core import axes
from models.core.serving import portable_kernels
from scaling.config import ConfigError, TrialConfig, from_dict
from scaling.engine import flops, xla_cost
from scaling.engine.compiled import build_trainer
from scaling.engine.mesh import batch_sharding, make_mesh


def _abstract_batch(fields: dict, rows: int, row_len: int, mesh: Any) -> dict[str, jax.ShapeDtypeStruct]:
    shape = lambda field: tuple(row_len if a == axes.LENGTH else rows for a in field.axes)
    return {name: jax.ShapeDtypeStruct(shape(field), field.dtype, sharding=batch_sharding(mesh, len(field.axes)))
            for name, field in fields.items()}


def _shard_bytes(abstract: Any, shardings: Any) -> int:
    """Bytes of one device's shards of a tree of abstract arrays laid out by `shardings`."""
    sizes = jax.tree.map(lambda leaf, sharding: math.prod(sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize,
                         abstract, shardings)
    return int(sum(jax.tree.leaves(sizes)))


def catalogue_tables(trainer: Any) -> dict[str, str]:
    """'path' -> the partition spec of every parameter whose rows grow with the catalogue."""
    boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)
    flat = jax.tree_util.tree_flatten_with_path(trainer.boxed_params, is_leaf=boxed)[0]
    specs = jax.tree_util.tree_flatten_with_path(trainer.shardings["params"])[0]
    out = {}
    for (path, leaf), (_, sharding) in zip(flat, specs):
        if boxed(leaf) and axes.TABLE_ROWS in leaf.names:
            out["/".join(str(getattr(k, "key", k)) for k in path)] = str(sharding.spec)
    return out


def compile_only(config: TrialConfig, num_items: int, mesh: Any, accelerator: bool = False) -> dict[str, Any]:
    """Per-device bytes of the compiled train step (arguments, outputs, temporaries, the train
    state by parts) and eval step, the catalogue tables' partition specs, and FLOPs per step of
    full rows. accelerator: compile as an accelerator would run it (one micro-batch when
    train.grad_accum is automatic, the portable kernels), not as this CPU would."""
    if accelerator and config.train.grad_accum == 0:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, grad_accum=1))
    trainer = build_trainer(config, num_items, mesh, total_steps=max(config.train.steps, 1))
    family, model = trainer.family, trainer.config.model
    rows, row_len = config.train.batch_size, config.data.row_len
    train_batch = _abstract_batch(family.train_fields(model), rows, row_len, mesh)
    eval_batch = _abstract_batch(family.eval_fields(model), config.train.eval_batch_size, row_len, mesh)
    with portable_kernels() if accelerator else contextlib.nullcontext(), trainer.context():
        lowered = trainer.train_step.lower(trainer.abstract_state, train_batch, jax.random.key(0))
        compiled = lowered.compile()
        evaluated = trainer.eval_step.lower(trainer.abstract_state["params"], eval_batch).compile()
    memory, eval_memory = compiled.memory_analysis(), evaluated.memory_analysis()
    state, shardings = trainer.abstract_state, trainer.shardings
    counts = family.full_row_counts(model, rows, row_len)
    result = {
        "trial_id": config.trial_id, "mesh": dict(mesh.shape), "devices": mesh.size, "num_items": num_items,
        "batch": rows, "seq_len": row_len, "grad_accum": trainer.grad_accum,
        "argument_bytes": memory.argument_size_in_bytes, "output_bytes": memory.output_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes, "temp_bytes": memory.temp_size_in_bytes,
        "peak_bytes": memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes,
        "params_bytes": _shard_bytes(state["params"], shardings["params"]),
        "optimizer_bytes": _shard_bytes(state["opt_state"], shardings["opt_state"]),
        "state_bytes_total": sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state)),
        "eval_argument_bytes": eval_memory.argument_size_in_bytes, "eval_temp_bytes": eval_memory.temp_size_in_bytes,
        "catalogue_tables": catalogue_tables(trainer),
        "params": trainer.param_count,
        "train_flops_per_step": flops.model_flops_from_counts(model, trainer.config.train, counts, num_items),
        "executed_flops_per_step": flops.executed_flops(model, rows, row_len, config.train.loss, config.train.negatives,
                                                        num_items, config.train),
        "xla_flops_per_step": xla_cost.total_flops(compiled) * mesh.size,  # cost_analysis counts one device's program
    }
    if trainer.grad_accum > 1:  # XLA counts a loop body once: the whole step's count is not its
        result["xla_flops_per_step"] = None
    return result


def compile_in_subprocess(configs: Sequence[TrialConfig], num_items: int, devices: int, mesh_spec: str | None = None,
                          accelerator: bool = True) -> list[dict[str, Any]]:
    """compile_only of each config in one fresh process with `devices` simulated CPU devices
    (mesh_spec overrides the configs' mesh.spec; "auto" puts every device on data)."""
    payload = json.dumps([config.to_dict() for config in configs])
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "scaling.aot", "--configs", "-", "--num-items", str(num_items), "--json"]
    command += (["--mesh", mesh_spec] if mesh_spec else []) + (["--accelerator"] if accelerator else [])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=root)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(process.stdout.read()), daemon=True)
    reader.start()  # read both pipes at once: a child blocked on a full stdout would never close stderr
    process.stdin.write(payload)
    process.stdin.close()
    last = "no output"
    for line in process.stderr:  # its progress lines through, XLA's warnings left out
        if line.strip():
            last = line.strip()
        if line.startswith(("[", "error:")):
            print(line.rstrip(), file=sys.stderr, flush=True)
    reader.join()
    output = "".join(chunks)
    if process.wait() != 0:
        raise ConfigError(f"compiling on {devices} simulated devices failed: {last.removeprefix('error: ')}")
    return json.loads(output.strip().splitlines()[-1])["results"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scaling.aot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", required=True, help="a JSON file holding a list of trial configs ('-': stdin)")
    parser.add_argument("--num-items", type=int, required=True, help="catalogue size")
    parser.add_argument("--mesh", help="mesh spec for every config (default: each config's mesh.spec)")
    parser.add_argument("--accelerator", action="store_true",
                        help="compile as an accelerator runs it: one micro-batch, portable kernels")
    parser.add_argument("--json", action="store_true", help="print {\"results\": [...]} as the last line")
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.configs == "-" else open(args.configs).read()
        values = json.loads(text)
        if not isinstance(values, list):
            raise ConfigError(f"--configs {args.configs}: expected a JSON list of trial configs")
        configs = [from_dict(v) for v in values]
        results = []
        for index, config in enumerate(configs, 1):
            if args.mesh:
                config = dataclasses.replace(config, mesh=dataclasses.replace(config.mesh, spec=args.mesh))
            print(f"[{index}/{len(configs)}] compiling trial {config.trial_id} on {jax.device_count()} devices",
                  file=sys.stderr, flush=True)
            results.append(compile_only(config, args.num_items, make_mesh(config.mesh.spec), args.accelerator))
    except (OSError, json.JSONDecodeError) as error:
        print(f"error: --configs {args.configs}: {error}", file=sys.stderr)
        return 2
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"results": results}, sort_keys=True) if args.json else
          "\n".join(json.dumps(r, sort_keys=True) for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
