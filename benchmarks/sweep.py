"""`make bench`, second part: a vmapped sweep against the same members run one after the other.

A 16-member grid (4 beta x 4 learning rates) of DHN-1H training on MNIST, ``--batches`` batches per
member from initialisation, exactly as `make train` trains (`eqjax.train_chunk`, warm start, block-
coordinate relaxation stopping at the tolerance):

- sweep: `eqjax.sweep.run`'s compiled program, all 16 members in one call, the member axis sharded
  over the devices, each device vmapping all its members at once (``vectorize=None``) or walking
  through them one at a time (``vectorize=1``);
- sequential: the same member function, jitted once for one member (its hyperparameters traced),
  called 16 times.

All are compiled before timing, then timed in interleaved rounds (each sweep call, then the 16
sequential calls); the ratios sweep / sequential are medians over rounds. Also reported: compile
time of the sweep, XLA's buffer sizes for one call with all members and with ``members_per_call``
members. Run it with ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` for two CPU devices
(`make bench` runs both). Prints one Markdown table row and writes JSON to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
from experiments import configs  # noqa: E402
from experiments.splits import load_split  # noqa: E402

import eqjax  # noqa: E402
from eqjax.sweep import MEMBERS  # noqa: E402

GRID = eqjax.sweep.product(beta=[0.1, 0.2, 0.3, 0.5], learning_rate=[0.01, 0.02, 0.05, 0.1])
MIB = 2**20


def member_function(batches: int):
    """``fn(h, x, y, index, keys)``: DHN-1H trained on ``batches`` batches with member ``h``'s beta and rate."""
    config = dict(configs.CONFIGS["dhn-1h"], batches_per_epoch=batches)
    model, cost = configs.build(config)[:2]

    def fn(h, x, y, index, keys):
        _, _, solver, estimator, optimizer = configs.build(dict(config, beta=h["beta"], learning_rate=h["learning_rate"]))
        chunk = eqjax.train_chunk(model, cost, optimizer, warm_start=True)
        params = model.init(jax.random.key(0), jnp.float32)
        state = configs.initial_state(config, model, 0)
        params, _, _, metrics = chunk(params, optimizer.init(params), state, solver, estimator, x[index], y[index],
                                      index, keys)
        return {"loss": jnp.mean(metrics["loss"]), "w": params["weights"][1]}

    return fn


def xla_mib(jitted, *args) -> float:
    stats = jitted.lower(*args).compile().memory_analysis()
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes) / MIB


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=100, help="training batches per member")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds after a warm-up round")
    parser.add_argument("--members-per-call", type=int, default=4, help="for the memory figure")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "sweep_results.json")
    args = parser.parse_args()
    batch = configs.CONFIGS["dhn-1h"]["batch_size"]
    n = args.batches * batch
    x, y = load_split("mnist", "train", n)
    index = jnp.arange(n).reshape(args.batches, batch)
    keys = jax.random.split(jax.random.key(0), args.batches)
    shared = (x, y, index, keys)
    fn = member_function(args.batches)
    members = eqjax.sweep.num_members(GRID)

    modes = {"vmap all": None, "one at a time": 1}
    start = time.perf_counter()
    swept = eqjax.sweep.run(fn, GRID, *shared)  # compiles, then runs once (warm-up)
    compile_and_first = time.perf_counter() - start
    for vectorize in modes.values():
        eqjax.sweep.run(fn, GRID, *shared, vectorize=vectorize)
    single = jax.jit(fn)
    rows = [{k: jnp.asarray(v[i]) for k, v in GRID.items()} for i in range(members)]
    jax.block_until_ready(single(rows[0], *shared))

    sweep_times, sequential_times = {mode: [] for mode in modes}, []
    for _ in range(args.rounds):
        for mode, vectorize in modes.items():
            start = time.perf_counter()
            eqjax.sweep.run(fn, GRID, *shared, vectorize=vectorize)
            sweep_times[mode].append(time.perf_counter() - start)
        start = time.perf_counter()
        for row in rows:
            jax.block_until_ready(single(row, *shared))
        sequential_times.append(time.perf_counter() - start)
    ratios = {mode: statistics.median(s / q for s, q in zip(times, sequential_times))
              for mode, times in sweep_times.items()}

    loop_losses = np.array([float(single(row, *shared)["loss"]) for row in rows])
    agreement = float(np.max(np.abs(loop_losses - swept.outputs["loss"]) / np.abs(loop_losses)))
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), (MEMBERS,))
    spread = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(MEMBERS))
    vmapped = jax.jit(jax.vmap(fn, in_axes=(0, None, None, None, None)), out_shardings=spread)
    memory = {count: xla_mib(vmapped, {k: jnp.asarray(v[:count]) for k, v in GRID.items()}, *shared)
              for count in (members, args.members_per_call)}
    result = {
        "devices": len(jax.devices()), "members": members, "batches_per_member": args.batches,
        "sweep_seconds": {mode: statistics.median(times) for mode, times in sweep_times.items()},
        "sequential_seconds": statistics.median(sequential_times),
        "sweep_over_sequential": ratios,
        "sweep_compile_and_first_call_seconds": compile_and_first,
        "xla_mib": {str(k): v for k, v in memory.items()},
        "max_relative_loss_difference": agreement,
    }
    for mode in modes:
        print(f"| {result['devices']} | {mode} | {members} x {args.batches} batches | "
              f"{result['sweep_seconds'][mode]:.2f} | {result['sequential_seconds']:.2f} | {ratios[mode]:.2f} | "
              f"{compile_and_first:.1f} | {memory[members]:.0f} / {memory[args.members_per_call]:.0f} "
              f"({args.members_per_call} per call) | {agreement:.1e} |")
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
