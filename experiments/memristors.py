"""Accuracy of EP training through memristor device models: versus the number of conductance
levels and versus cycle-to-cycle write noise.

    python -m experiments.memristors [--dataset mnist] [--train-limit 60000] [--epochs 2]

Trains the `drn-xs` configuration (resistive 2x784-100-10, centered EP, SGD) once per device
setting, with the device model of `eqjax.analog.memristors.memristor` applied to the conductances
after the optimizer: ideal (continuous) conductances; a finite number of levels with updates
rounded to the nearest whole pulse, or stochastically (unbiased); write noise at a fixed number of
levels. Writes `runs/memristors-<time>/results.json` and `memristors.png`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from tqdm import tqdm

import eqjax
from experiments import common, configs, runfiles
from experiments.run_config import RunConfig
from experiments.splits import load_split
from eqjax.analog import memristors  # noqa: E402

G_MAX = 1.0  # siemens: range of the simulated devices (trained DRN-XS conductances reach about 0.6 S)


def train_and_test(config, device, data, epochs, seed) -> float:
    """Test error of the config's model trained through ``device`` (an optax transformation of the
    conductances' updates) for ``epochs`` epochs, as make train trains it: its state options (warm
    start), its data order and its evaluation budget."""
    x, y, x_test, y_test = data
    model, cost, solver, estimator, _ = configs.build(config)
    schedule = optax.exponential_decay(config.learning_rate, config.batches_per_epoch, config.decay, staircase=True)
    # the device writes conductances; bias currents (programmable current sources) take the update as is
    optimizer = optax.chain(optax.sgd(schedule), optax.masked(device, eqjax.models.conductance_mask))
    params = model.init(jax.random.key(seed))
    opt_state, state = optimizer.init(params), configs.initial_state(config, model, len(x))
    chunk = configs.chunk_function(config, model, cost, optimizer)
    batch = config.batch_size
    batches = len(x) // batch
    for e in range(epochs):
        order = jnp.asarray(common.epoch_order(seed, e, len(x), batches * batch).reshape(batches, batch))
        keys = jax.random.split(jax.random.fold_in(jax.random.key(seed + 1), e), batches)
        params, opt_state, state, _ = chunk(params, opt_state, state, solver, estimator, x[order], y[order], order, keys)
    result = eqjax.error_rate(model, cost, common.eval_solver(config, solver), params, x_test, y_test)
    return float(result["error"])


def plot(run_dir: Path, results: list, args) -> None:
    """``memristors.png``: test error against conductance levels (left) and write noise (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ideal = 100 * results[0]["test_error"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for kind, label in (("nearest", "nearest pulse"), ("stochastic", "stochastic pulses")):
        runs = [r for r in results if r["kind"] == kind]
        left.semilogx([r["levels"] for r in runs], [100 * r["test_error"] for r in runs], "o-", base=2, label=label)
    left.axhline(ideal, color="gray", ls="--", label="ideal (continuous) conductances")
    left.set(xlabel="conductance levels", ylabel="test error (%)", yscale="log",
             title="nonlinear pulses (0.5 / 0.5), no noise")
    left.legend()
    by_noise = [r for r in results if r["kind"] == "noise"]
    right.plot([r["write_std"] for r in by_noise], [100 * r["test_error"] for r in by_noise], "o-")
    right.axhline(ideal, color="gray", ls="--")
    right.set(xlabel="write noise (relative std per write)", yscale="log",
              title=f"{args.noise_levels} levels, stochastic pulses")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    fig.suptitle(f"EP on DRN-XS through memristor models, {args.dataset}, {args.train_limit} examples, {args.epochs} epochs")
    fig.tight_layout()
    runfiles.save_figure(fig, run_dir / "memristors.png")


def main(argv=None):
    """Run the sweep; returns the run directory."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--train-limit", type=int, default=60_000)
    parser.add_argument("--test-limit", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 1.0, 3.0])
    parser.add_argument("--noise-levels", type=int, default=256, help="levels of the write-noise runs")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)

    data = (*load_split(args.dataset, "train", args.train_limit), *load_split(args.dataset, "test", args.test_limit))
    config = RunConfig.from_dict(configs.CONFIGS["drn-xs"])
    config = config.updated(batches_per_epoch=args.train_limit // config.batch_size)
    settings = ([("ideal", None, 0.0)] + [("nearest", L, 0.0) for L in args.levels]
                + [("stochastic", L, 0.0) for L in args.levels]
                + [("noise", args.noise_levels, s) for s in args.noise])
    results = []
    for kind, levels, noise in tqdm(settings, desc="device settings"):
        device = (memristors.conductance_bounds(0.0) if kind == "ideal" else
                  memristors.memristor(0.0, G_MAX, num_levels=levels, potentiation=0.5, depression=0.5,
                                    write_std=noise, stochastic_pulses=kind != "nearest", seed=args.seed))
        start = time.time()
        error = train_and_test(config, device, data, args.epochs, args.seed)
        results.append({"kind": kind, "levels": levels, "write_std": noise, "test_error": error,
                        "seconds": time.time() - start})
        print(json.dumps(results[-1]), flush=True)

    run_dir = runfiles.fresh_directory(args.runs_dir, f"memristors-{time.strftime('%Y%m%d-%H%M%S')}")
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "g_max": G_MAX, "results": results}
    runfiles.atomic_write_text(run_dir / "results.json", json.dumps(record, indent=2))
    plot(run_dir, results, args)
    print(f"wrote {run_dir}/results.json and memristors.png")
    return run_dir


if __name__ == "__main__":
    main()
