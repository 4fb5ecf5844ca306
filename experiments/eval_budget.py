"""Test error of a run's checkpoint against the number of free-phase sweeps at evaluation.

    python -m experiments.eval_budget runs/<run> [--steps 15 40 100 200] [--test-limit 2000]

A network trained with a relaxation budget that stops short of equilibrium may predict better at
that budget than at its equilibrium; this prints, per budget, the test error and the fraction of
test images whose relaxation reached the tolerance, so that ``eval_steps`` can be chosen and the
gap seen. For conv configs it also prints the error of the feedforward pass of the same weights
(:meth:`eqjax.models.ConvHopfield.feedforward`). Reads the run's config.json and checkpoint.msgpack;
writes nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import serialization

import eqjax
from experiments import common, configs, runfiles


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run directory of make train")
    parser.add_argument("--steps", type=int, nargs="+", default=[15, 40, 100, 200])
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    if min(args.steps) < 1 or args.test_limit < 1:
        raise SystemExit("--steps and --test-limit must be at least 1")
    config = common.checked_config(json.loads((args.run / "config.json").read_text()), f"{args.run}/config.json")
    model, cost, solver, _, _ = configs.build(config.updated(batches_per_epoch=config.batches_per_epoch or 1))
    data = common.load_data(config.updated(test_limit=args.test_limit), args.data_dir)
    stored = runfiles.read_checkpoint(args.run / "checkpoint.msgpack")  # checksum verified
    params = serialization.from_state_dict(model.init(jax.random.key(0), jnp.float32), stored["params"])
    x, y = data["x_test"], data["y_test"]
    rows = []
    if config.family == "conv":
        error = float(jnp.mean(jnp.argmax(model.feedforward(params, x), axis=-1) != y))
        print(f"feedforward pass of the same weights: test error {100 * error:.2f}%")
    for steps in args.steps:
        key = jax.random.key(config.seed)
        result = eqjax.error_rate(model, cost, solver.replace(max_steps=steps), params, x, y, key,
                                   batch_size=common.EVAL_BATCH)
        error, converged = float(result["error"]), float(result["converged"])
        rows.append({"sweeps": steps, "test_error": error, "converged": converged})
        print(f"{steps} sweeps: test error {100 * error:.2f}%, {100 * converged:.1f}% relaxed to the tolerance",
              flush=True)
    return rows


if __name__ == "__main__":
    main()
