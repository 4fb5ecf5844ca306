"""`make bench`: a sweep of a small net, where vmapping the members pays on a CPU.

32 members (beta 0.1, 0.2, 0.3, 0.5 x learning rates 0.01, 0.02, 0.05, 0.1 x seeds 0, 1) of a
64-32-10 bilinear Hopfield net, each trained for 3 epochs of 20 batches of 16 synthetic digits
(block-coordinate relaxation, centered EP): `eqjax.sweep.run` with its default mode, one member at
a time (``vectorize=1``), all vmapped (``vectorize=32``), and the same member function jitted once
and called 32 times ("sequential"). Interleaved rounds after a warm-up; medians. Prints a Markdown
table. ``--profile`` then runs the vmapped sweep under JAX's profiler and prints where its time
goes, by kind of XLA operation (count and milliseconds per sweep).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import optax

import eqjax
from benchmarks.profiling import by_kind, operation_times
from eqjax.estimators import EP
from eqjax.solvers import BlockCoordinate

MODEL = eqjax.models.hopfield((64, 32, 10), gain=0.5)
COST = eqjax.costs.squared_error()
GRID = eqjax.sweep.product(beta=[0.1, 0.2, 0.3, 0.5], learning_rate=[0.01, 0.02, 0.05, 0.1], seed=[0, 1])


def member(h, xs, ys):
    """Final-epoch mean loss of one member trained for 3 epochs on ``xs`` ``(20, 16, 64)``."""
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=h["learning_rate"])
    params = MODEL.init(jax.random.key(h["seed"]))
    opt_state = optimizer.init(params)
    epoch = eqjax.train_epoch(eqjax.train_step(MODEL, COST, optimizer))
    solver = BlockCoordinate(tol=1e-5, max_steps=30)
    for _ in range(3):
        params, opt_state, metrics = epoch(params, opt_state, solver, EP(beta=h["beta"]), xs, ys)
    return metrics["loss"].mean()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="also show where the vmapped sweep's time goes")
    args = parser.parse_args(argv)
    x, y = eqjax.synthetic.digits(jax.random.key(0), 320)
    xs, ys = x.reshape(20, 16, 64), y.reshape(20, 16)
    single = jax.jit(member)
    rows = [jax.tree.map(lambda a, i=i: a[i], GRID) for i in range(eqjax.sweep.num_members(GRID))]
    cases = {"default": lambda: eqjax.sweep.run(member, GRID, xs, ys).outputs,
             "one at a time": lambda: eqjax.sweep.run(member, GRID, xs, ys, vectorize=1).outputs,
             "vmap all": lambda: eqjax.sweep.run(member, GRID, xs, ys, vectorize=32).outputs,
             "sequential": lambda: [single(r, xs, ys) for r in rows]}
    seconds = {name: [] for name in cases}
    for round_ in range(args.rounds + 1):  # round 0 compiles and warms up
        for name, case in cases.items():
            start = time.perf_counter()
            jax.block_until_ready(case())
            if round_:
                seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    fastest = min(medians[name] for name in ("one at a time", "vmap all"))
    print("| 32 members of a 64-32-10 net | s | / fastest mode | sequential / this |")
    print("|---|---|---|---|")
    for name, value in medians.items():
        print(f"| {name} | {value:.3f} | {value / fastest:.2f} | {medians['sequential'] / value:.2f} |")
    if args.profile:
        kinds = by_kind(operation_times(cases["vmap all"]))
        total_count, total_ms = sum(c for c, _ in kinds.values()), sum(ms for _, ms in kinds.values())
        print(f"\nThe vmapped sweep under the profiler: {total_count:.0f} operations, {total_ms:.1f} ms of "
              "operation time (both threads) per sweep")
        print("| operation | count | ms | us each |\n|---|---|---|---|")
        for kind, (count, ms) in sorted(kinds.items(), key=lambda item: -item[1][1])[:8]:
            print(f"| {kind} | {count:.0f} | {ms:.1f} | {1e3 * ms / count:.1f} |")


if __name__ == "__main__":
    main()
