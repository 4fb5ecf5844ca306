"""`make bench`, second part: a sweep as one compiled program against the same members run one after the other.

A 16-member grid (4 beta x 4 learning rates) of DHN-1H training on MNIST, ``--batches`` batches per
member from initialisation, exactly as `make train` trains (`eqjax.train_chunk`, warm start, block-
coordinate relaxation stopping at the tolerance):

- sweep: `eqjax.sweep.run`'s compiled program, all 16 members in one call, the member axis sharded
  over the devices, each device walking through its members ``vectorize`` at a time: one at a
  time (a loop inside the program), in vmapped groups of 2 or 4, or all at once ("vmap all");
- sequential: the same member function, jitted once for one member (its hyperparameters traced),
  called 16 times;
- bound: the part of each member's work that a sweep cannot merge, run like "sequential": per
  batch the products with the member's own ``W_1`` (784 x 1024), i.e. the input field ``x W_1``,
  the weight gradient ``x^T d`` and the SGD update, with a stand-in for the relaxation (a clip).
  Vmapping merges only the relaxation's small products across members; these stay one product per
  member (the same FLOPs and, vmapped, ``members x 3.2 MB`` of weights streamed per batch). Their
  share of the sequential time bounds what vectorizing can gain on one device.

All are compiled before timing, then timed in interleaved rounds (each sweep call, then the 16
sequential calls, then the bound); the ratios to sequential are medians of per-round ratios. Also
reported: compile time of the sweep, XLA's buffer sizes for one call with all members and with
``members_per_call`` members (all vmapped, and one at a time). Run it with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` for two CPU devices (`make bench` runs both).
Prints Markdown table rows and writes JSON to ``--output``.
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
from eqjax.models.hopfield import input_field  # noqa: E402
from eqjax.sweep import MEMBERS  # noqa: E402

GRID = eqjax.sweep.product(beta=[0.1, 0.2, 0.3, 0.5], learning_rate=[0.01, 0.02, 0.05, 0.1])
MIB = 2**20


def member_function(batches: int):
    """``fn(h, x, y, index, keys)``: DHN-1H trained on ``batches`` batches with member ``h``'s beta and rate."""
    config = configs.named("dhn-1h", batches_per_epoch=batches)
    model, cost = configs.build(config)[:2]

    def fn(h, x, y, index, keys):
        member = config.updated(beta=h["beta"], learning_rate=h["learning_rate"])
        _, _, solver, estimator, optimizer = configs.build(member)
        chunk = eqjax.train_chunk(model, cost, optimizer, warm_start=True)
        params = model.init(jax.random.key(0), jnp.float32)
        state = configs.initial_state(config, model, 0)
        params, _, _, metrics = chunk(params, optimizer.init(params), state, solver, estimator, x[index], y[index],
                                      index, keys)
        return {"loss": jnp.mean(metrics["loss"]), "w": params["weights"][1]}

    return fn


def bound_function(batches: int):
    """``fn(h, x, y, index, keys)``: only the per-member products of :func:`member_function`'s
    training (input field, weight gradient and SGD update of ``W_1`` at member ``h``'s rate), from
    the same initialisation; the relaxation is replaced by a clip of the input field."""
    config = configs.named("dhn-1h", batches_per_epoch=batches)
    model = configs.build(config)[0]

    def fn(h, x, y, index, keys):
        weights = model.init(jax.random.key(0), jnp.float32)["weights"][0]

        def batch(w, rows):
            inputs = x[rows]
            hidden = jnp.clip(input_field(inputs, w), 0.0, 1.0)  # stands in for the relaxation
            return w - h["learning_rate"] * (inputs.T @ (hidden - 0.5)) / inputs.shape[0], None

        weights, _ = jax.lax.scan(batch, weights, index)
        return {"w": weights[:, :10]}

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
    batch = configs.named("dhn-1h").batch_size
    n = args.batches * batch
    x, y = load_split("mnist", "train", n)
    index = jnp.arange(n).reshape(args.batches, batch)
    keys = jax.random.split(jax.random.key(0), args.batches)
    shared = (x, y, index, keys)
    fn = member_function(args.batches)
    members = eqjax.sweep.num_members(GRID)

    modes = {"one at a time": 1, "2 at once": 2, "4 at once": 4, "vmap all": members}
    start = time.perf_counter()
    swept = eqjax.sweep.run(fn, GRID, *shared, vectorize=1)  # compiles, then runs once (warm-up)
    compile_and_first = time.perf_counter() - start
    for vectorize in modes.values():
        eqjax.sweep.run(fn, GRID, *shared, vectorize=vectorize)
    rows = [{k: jnp.asarray(v[i]) for k, v in GRID.items()} for i in range(members)]
    single, bound = jax.jit(fn), jax.jit(bound_function(args.batches))
    jax.block_until_ready((single(rows[0], *shared), bound(rows[0], *shared)))

    def one_after_another(jitted):
        start = time.perf_counter()
        for row in rows:
            jax.block_until_ready(jitted(row, *shared))
        return time.perf_counter() - start

    sweep_times, sequential_times, bound_times = {mode: [] for mode in modes}, [], []
    for _ in range(args.rounds):
        for mode, vectorize in modes.items():
            start = time.perf_counter()
            eqjax.sweep.run(fn, GRID, *shared, vectorize=vectorize)
            sweep_times[mode].append(time.perf_counter() - start)
        sequential_times.append(one_after_another(single))
        bound_times.append(one_after_another(bound))
    ratio = lambda times: statistics.median(s / q for s, q in zip(times, sequential_times))
    ratios = {mode: ratio(times) for mode, times in sweep_times.items()}

    loop_losses = np.array([float(single(row, *shared)["loss"]) for row in rows])
    agreement = float(np.max(np.abs(loop_losses - swept.outputs["loss"]) / np.abs(loop_losses)))
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), (MEMBERS,))
    spread = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(MEMBERS))
    vmapped = jax.jit(jax.vmap(fn, in_axes=(0, None, None, None, None)), out_shardings=spread)
    looped = jax.jit(lambda h, *a: jax.lax.map(lambda row: fn(row, *a), h), out_shardings=spread)
    memory = {(name, count): xla_mib(jitted, {k: jnp.asarray(v[:count]) for k, v in GRID.items()}, *shared)
              for name, jitted in (("vmap all", vmapped), ("one at a time", looped))
              for count in (members, args.members_per_call)}
    result = {
        "devices": len(jax.devices()), "members": members, "batches_per_member": args.batches,
        "sweep_seconds": {mode: statistics.median(times) for mode, times in sweep_times.items()},
        "sequential_seconds": statistics.median(sequential_times),
        "sweep_over_sequential": ratios,
        "bound_seconds": statistics.median(bound_times),
        "bound_over_sequential": ratio(bound_times),
        "sweep_compile_and_first_call_seconds": compile_and_first,
        "xla_mib": {str(count): v for (name, count), v in memory.items() if name == "vmap all"},
        "xla_mib_one_at_a_time": {str(count): v for (name, count), v in memory.items() if name == "one at a time"},
        "max_relative_loss_difference": agreement,
    }
    for mode in modes:
        kind = "vmap all" if mode == "vmap all" else "one at a time"
        print(f"| {result['devices']} | {mode} | {members} x {args.batches} batches | "
              f"{result['sweep_seconds'][mode]:.2f} | {result['sequential_seconds']:.2f} | {ratios[mode]:.2f} | "
              f"{compile_and_first:.1f} | {memory[kind, members]:.0f} / {memory[kind, args.members_per_call]:.0f} "
              f"({args.members_per_call} per call) | {agreement:.1e} |")
    print(f"| {result['devices']} | bound: W_1 products only, one member after another | {members} x {args.batches} "
          f"batches | {result['bound_seconds']:.2f} | {result['sequential_seconds']:.2f} | "
          f"{result['bound_over_sequential']:.2f} | | | |")
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
