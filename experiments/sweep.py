"""Hyperparameter sweep of a named config: every member trained as one vmapped, compiled program.

    make sweep ARGS="--model dhn-1h --grid beta=0.1,0.2,0.5 --grid learning_rate=0.02,0.05 --epochs 3 --validation 10000"
    python -m experiments.sweep --resume runs/<sweep>          # continue; finished members are kept

Each ``--grid KEY=V1,V2,...`` is an axis (values in JSON); the members are every combination.
Numeric values of ``beta``, ``eta``, ``learning_rate``, ``tol``, ``step_size``, ``decay`` and ``seed`` are
traced: members that differ only in them train together in one compiled call (vmapped over
members, sharded over the local devices). Any other entry (e.g. ``variant``, ``gain``,
``free_steps``) is static: each combination of static values is a group with its own compile.

Every member sees the same data order (from ``--data-seed`` and the epoch); ``seed`` sets its
initialisation. The last ``--validation`` training examples are held out: the best member is the
one with the lowest final validation error, and its test error is reported once.

Several processes (one or more devices each; the member axis is sharded over all of them): run the
same command on every host with ``--coordinator HOST0:PORT --num-processes N --process-id I`` (or
``--distributed`` where JAX finds the cluster itself, e.g. under SLURM). Only process 0 writes;
``--resume`` needs the sweep directory on a file system every process sees.

Writes ``runs/<sweep>/`` with ``sweep.json`` (the arguments), ``results.csv`` (one row per member:
hyperparameters, validation error per epoch, final test error, converged fraction of the free
phase, diverged flag (non-finite parameters or training loss); appended as calls finish, so ``--resume`` skips finished members) and
``sweep.png`` (final validation error over the grid).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # run as a program: one XLA device per CPU core, so that the members are sharded over the cores
    # (set before JAX starts; an XLA_FLAGS of the user's own wins; accelerators are not affected)
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import jax  # noqa: E402

from experiments import common, configs, sweeping  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dhn-1h", choices=sorted(configs.CONFIGS))
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a sweep axis (values in JSON; repeat for more axes)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry for every member (VALUE in JSON)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--validation", type=int, default=10_000, help="training examples held out")
    parser.add_argument("--train-limit", type=int, help="use only the first N training examples")
    parser.add_argument("--test-limit", type=int, help="use only the first N test examples")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the data order (shared)")
    parser.add_argument("--members-per-call", type=int, help="members per compiled call (memory bound)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--data-dir", help="directory with IDX files (else $EQJAX_DATA, packaged copies)")
    parser.add_argument("--resume", type=Path, help="sweep directory to continue")
    common.add_distributed_options(parser)
    return parser.parse_args(argv)


def parse_grid(items) -> dict:
    """``{key: [values]}`` from ``--grid KEY=V1,V2,...`` items (values as ``--set`` reads them)."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"--grid {item!r}: expected KEY=V1,V2,...")
        if key in grid:
            raise SystemExit(f"--grid {key} given twice")
        grid[key] = [common.parse_value(v, f"--grid {key}") for v in values.split(",")]
    return grid


def plan_from_args(args) -> sweeping.SweepPlan:
    """The plan a command line asks for."""
    return sweeping.SweepPlan(model=args.model, grid=parse_grid(args.grid), overrides=common.parse_overrides(args.set),
                              dataset=args.dataset,
                              epochs=args.epochs, validation=args.validation, train_limit=args.train_limit,
                              test_limit=args.test_limit, data_seed=args.data_seed,
                              members_per_call=args.members_per_call)


def resumed_plan(args) -> sweeping.SweepPlan:
    """The plan recorded in ``--resume``'s ``sweep.json`` (``SystemExit`` when it is missing or
    damaged, or when an option that would change the sweep is given)."""
    run_dir = args.resume
    if not (run_dir / "sweep.json").exists():
        raise SystemExit(f"--resume {run_dir}: no sweep.json there (not a sweep directory)")
    defaults = vars(parse_args(["--resume", str(run_dir)]))
    changed = [k for k, v in vars(args).items() if k not in common.DISTRIBUTED + ("resume", "data_dir") and v != defaults[k]]
    if changed:
        raise SystemExit(f"--resume continues {run_dir} with its own settings; "
                         f"{', '.join('--' + k.replace('_', '-') for k in changed)} cannot change "
                         "(only --data-dir and the process options may be given)")
    try:
        record = json.loads((run_dir / "sweep.json").read_text())
        if isinstance(record, dict) and "plan" in record:
            return sweeping.read_plan(run_dir)
        return plan_from_args(parse_args(record["argv"]))  # a record of the command line alone
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SystemExit(f"--resume {run_dir}: sweep.json is not a sweep's record ({type(error).__name__}: "
                         f"{error}); nothing was changed") from None


def main(argv=None):
    """Run (or resume) the sweep a command line asks for; returns its directory (``None`` on
    processes other than the first)."""
    args = parse_args(argv)
    primary = common.start_distributed(args)
    plan = resumed_plan(args) if args.resume else plan_from_args(args)
    base = sweeping.check(plan)  # before anything is written
    run_dir = args.resume
    if run_dir is None and primary:
        run_dir = sweeping.new_directory(plan, args.runs_dir, sys.argv[1:] if argv is None else list(argv))
    return sweeping.execute(plan, base, run_dir, args.data_dir, primary)


if __name__ == "__main__":
    main()
