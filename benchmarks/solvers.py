"""Block-coordinate sweeps against their Anderson acceleration on DHN-1H (MNIST, batch 16).

Run as ``python -m benchmarks.solvers``. Parameters are measured twice: at initialisation and after
``--train-batches`` batches of ordinary DHN-1H training (block-coordinate, the `make train` settings;
3750 batches is one epoch). For each, on ``--batches`` MNIST training batches relaxed as training
relaxes them (the free phase warm-started from the previous batch's free state, then the nudged
phases at beta = +-0.2 from the free state), batches of the MNIST test set:

- sweeps per phase (free, positive, negative) to the tolerance 1e-4 with the tolerance tested after
  every sweep (``check_every = 1``, at most 200 sweeps), and the fraction of examples converged;
  the warm-start chain is block-coordinate's, so both solvers start every phase from the same state;
- the same with the training settings (at most 15 sweeps, the tolerance tested every 5);
- ``max |s_BC - s_Anderson|`` over all units, batches and phases (exact-sweep runs), and each
  solver's true residual ``max |G(s) - s|`` at its returned state (``G`` one block-coordinate sweep);
- the cost of one step: microseconds per sweep and per Anderson step (fixed-length relaxations of
  one batch, interleaved rounds, medians).

Epoch time: DHN-1H training (`eqjax.train_chunk` under `jax.jit`, exactly as `make train` runs it,
solver swapped) in interleaved rounds of ``--chunk`` batches per solver after a compile and warm-up
round; seconds per 60,000-example epoch are medians over rounds, the ratio Anderson / BC the median
of the per-round ratios. Prints a Markdown table and writes JSON to ``--output``.
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
from eqjax.loop import per_example_max_abs_difference  # noqa: E402
from eqjax.phases import Free, Nudge  # noqa: E402
from eqjax.solvers import Anderson, BlockCoordinate  # noqa: E402

EPOCH_BATCHES = 3750  # 60,000 / 16
PHASES = ("free", "positive", "negative")


def config_for(solver: str):
    return configs.named("dhn-1h", solver=solver, batches_per_epoch=EPOCH_BATCHES)


def train(model, cost, x, y, batches: int):
    """DHN-1H parameters after ``batches`` batches of block-coordinate training from seed 0."""
    config = config_for("block_coordinate")
    _, _, solver, estimator, optimizer = configs.build(config)
    params = model.init(jax.random.key(0), jnp.float32)
    if batches == 0:
        return params
    chunk = configs.chunk_function(config, model, cost, optimizer)
    index = jnp.arange(batches * 16).reshape(batches, 16) % len(x)
    params, _, _, _ = chunk(params, optimizer.init(params), configs.initial_state(config, model, 0), solver,
                            estimator, x[index], y[index], index, jax.random.split(jax.random.key(1), batches))
    return params


def relaxation_figures(model, cost, params, x, y, solvers: dict, batches: int, first: int) -> dict:
    """Per solver and phase: mean sweeps, fraction converged, max true residual; and the max state
    difference between the first two solvers. Every phase of every solver starts from the same
    state (the first solver's warm-start chain)."""

    @jax.jit
    def phases(solver, params, xb, yb, start):
        prepared = model.prepare(params, xb)
        free = eqjax.relax_unchecked(model, cost, solver, params, xb, None, Free(), start, None, prepared)
        return {"free": free,
                "positive": eqjax.relax_unchecked(model, cost, solver, params, xb, yb, Nudge(0.2), free.state, None, prepared),
                "negative": eqjax.relax_unchecked(model, cost, solver, params, xb, yb, Nudge(-0.2), free.state, None, prepared)}

    @jax.jit
    def true_residual(params, xb, yb, state, beta):
        F = eqjax.total_energy(model, cost, Nudge(beta), model.prepare(params, xb), xb, yb)
        swept, _ = BlockCoordinate().step(F, state, None, model.bounds)
        return jnp.max(per_example_max_abs_difference(swept, state))

    names = list(solvers)
    steps = {n: {p: [] for p in PHASES} for n in names}
    converged = {n: {p: [] for p in PHASES} for n in names}
    residual = {n: {p: 0.0 for p in PHASES} for n in names}
    difference = 0.0
    warm = None
    for b in range(first, first + batches):
        xb, yb = x[16 * b: 16 * b + 16], y[16 * b: 16 * b + 16]
        start = jax.vmap(model.init_state)(xb) if warm is None else warm
        results = {n: phases(s, params, xb, yb, start) for n, s in solvers.items()}
        warm = results[names[0]]["free"].state
        for n in names:
            for p, beta in zip(PHASES, (0.0, 0.2, -0.2)):
                eq = results[n][p]
                steps[n][p].append(float(eq.num_steps.mean()))
                converged[n][p].append(float(eq.converged.mean()))
                residual[n][p] = max(residual[n][p], float(true_residual(params, xb, yb, eq.state, beta)))
        for p in PHASES:
            difference = max(difference, float(eqjax.loop.max_abs_difference(results[names[0]][p].state,
                                                                              results[names[1]][p].state)))
    return {"sweeps": {n: {p: float(np.mean(v)) for p, v in steps[n].items()} for n in names},
            "converged": {n: {p: float(np.mean(v)) for p, v in converged[n].items()} for n in names},
            "true_residual": residual, "max_state_difference": difference}


def step_costs(model, cost, params, x, rounds: int, steps: int = 15) -> dict:
    """Microseconds per relaxation step (one sweep, or one Anderson step: a sweep plus the
    extrapolation and its safeguard) on one batch of 16: fixed-length free relaxations (``tol = 0``),
    timed in interleaved rounds; medians over rounds."""
    fixed = dict(tol=0.0, max_steps=steps, check_every=steps)
    solvers = {"block_coordinate": BlockCoordinate(**fixed), "anderson": Anderson(**fixed)}
    xb = x[:16]
    run = {name: jax.jit(lambda p, xb, s=s: eqjax.relax_unchecked(model, cost, s, p, xb).state).lower(params, xb).compile()
           for name, s in solvers.items()}
    micros = {name: [] for name in run}
    for _ in range(rounds):
        for name, fn in run.items():
            start = time.perf_counter()
            for _ in range(20):
                jax.block_until_ready(fn(params, xb))
            micros[name].append((time.perf_counter() - start) / 20 / steps * 1e6)
    return {name: statistics.median(v) for name, v in micros.items()}


def epoch_times(model, cost, x, y, chunk_batches: int, rounds: int) -> dict:
    """Seconds per epoch of DHN-1H training with each solver (medians over interleaved rounds)."""
    cases = {}
    for name in ("block_coordinate", "anderson"):
        config = config_for(name)
        _, _, solver, estimator, optimizer = configs.build(config)
        params = model.init(jax.random.key(0), jnp.float32)
        cases[name] = {"fn": configs.chunk_function(config, model, cost, optimizer), "solver": solver,
                       "estimator": estimator,
                       "carry": (params, optimizer.init(params), configs.initial_state(config, model, 0))}
    seconds = {name: [] for name in cases}
    steps = {name: {p: [] for p in PHASES} for name in cases}
    for r in range(rounds + 1):  # round 0 compiles and warms up
        index = (jnp.arange(chunk_batches * 16) + r * chunk_batches * 16).reshape(chunk_batches, 16) % len(x)
        keys = jax.random.split(jax.random.key(r), chunk_batches)
        for name, case in cases.items():
            start = time.perf_counter()
            *carry, metrics = case["fn"](*case["carry"], case["solver"], case["estimator"], x[index], y[index],
                                         index, keys)
            jax.block_until_ready(carry)
            elapsed = time.perf_counter() - start
            case["carry"] = tuple(carry)
            if r:
                seconds[name].append(elapsed * EPOCH_BATCHES / chunk_batches)
                for p in PHASES:
                    steps[name][p].append(float(jnp.mean(metrics[f"{p}_batch_steps"])))
    ratios = [a / b for a, b in zip(seconds["anderson"], seconds["block_coordinate"])]
    return {"seconds_per_epoch": {n: statistics.median(s) for n, s in seconds.items()},
            "anderson_over_block_coordinate": statistics.median(ratios),
            "steps_during_training": {n: {p: float(np.mean(v)) for p, v in s.items()} for n, s in steps.items()},
            "rounds": rounds, "batches_per_round": chunk_batches}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=50, help="batches relaxed per parameter set")
    parser.add_argument("--train-batches", type=int, default=EPOCH_BATCHES,
                        help="block-coordinate training batches before the second measurement")
    parser.add_argument("--chunk", type=int, default=500, help="training batches per timed round and solver")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after a warm-up round")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "solvers_results.json")
    args = parser.parse_args()
    x, y = load_split("mnist", "train")
    x_test, y_test = load_split("mnist", "test")
    config = config_for("block_coordinate")
    model, cost = configs.build(config)[:2]
    exact = dict(tol=config.tol, max_steps=200, check_every=1)
    as_trained = dict(tol=config.tol, max_steps=config.free_steps, check_every=config.check_every)
    settings = {"every sweep tested": exact, "as trained (<= 15, tested every 5)": as_trained}
    result = {"config": "dhn-1h", "batch_size": 16, "relaxation_batches": args.batches, "relaxation": {}}
    rows = []
    for when, batches in (("init", 0), (f"after {args.train_batches} training batches", args.train_batches)):
        params = train(model, cost, x, y, batches)
        for setting, fields in settings.items():
            solvers = {"block_coordinate": BlockCoordinate(**fields), "anderson": Anderson(**fields)}
            figures = relaxation_figures(model, cost, params, x_test, y_test, solvers, args.batches, 0)
            result["relaxation"][f"{when}, {setting}"] = figures
            s, c = figures["sweeps"], figures["converged"]
            rows.append(f"| {when} | {setting} | "
                        + " | ".join(f"{s['block_coordinate'][p]:.2f} / {s['anderson'][p]:.2f}" for p in PHASES)
                        + f" | {min(c['block_coordinate'].values()):.3f} / {min(c['anderson'].values()):.3f}"
                        + f" | {figures['max_state_difference']:.1e}"
                        + f" | {max(figures['true_residual']['block_coordinate'].values()):.1e} / "
                          f"{max(figures['true_residual']['anderson'].values()):.1e} |")
    result["microseconds_per_step"] = step_costs(model, cost, params, x_test, 4 * args.rounds)
    result["training"] = epoch_times(model, cost, x, y, args.chunk, args.rounds)
    result["devices"] = [str(d) for d in jax.devices()]
    print("| parameters | tolerance test | free sweeps BC / AA | positive | negative | min converged BC / AA "
          "| max abs state difference | max true residual BC / AA |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    t = result["training"]
    print()
    print("| training (dhn-1h settings) | s/epoch | free / positive / negative steps |")
    print("|---|---|---|")
    for name in ("block_coordinate", "anderson"):
        st = t["steps_during_training"][name]
        print(f"| {name} | {t['seconds_per_epoch'][name]:.2f} | "
              f"{st['free']:.2f} / {st['positive']:.2f} / {st['negative']:.2f} |")
    print(f"| ratio Anderson / BC (median of {t['rounds']} rounds of {t['batches_per_round']} batches) | "
          f"{t['anderson_over_block_coordinate']:.3f} | |")
    micros = result["microseconds_per_step"]
    print(f"\nmicroseconds per relaxation step (batch 16, trained parameters): block-coordinate sweep "
          f"{micros['block_coordinate']:.0f}, Anderson step {micros['anderson']:.0f}")
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
