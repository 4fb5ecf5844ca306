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
import contextlib
import csv
import io
import itertools
import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    # run as a program: one XLA device per CPU core, so that the members are sharded over the cores
    # (set before JAX starts; an XLA_FLAGS of the user's own wins; accelerators are not affected)
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import eqjax  # noqa: E402
from experiments import configs, runfiles, train  # noqa: E402

TRACED = ("beta", "eta", "learning_rate", "tol", "step_size", "decay", "seed")
EVAL_BATCH = 1000


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
    distributed = parser.add_argument_group(
        "several processes (jax.distributed; one command per host, the same arguments but --process-id)")
    distributed.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator")
    distributed.add_argument("--num-processes", type=int, help="number of processes")
    distributed.add_argument("--process-id", type=int, help="this process's index, 0 to num-processes - 1")
    distributed.add_argument("--distributed", action="store_true",
                             help="initialise from the cluster's environment (SLURM, TPU pods, ...)")
    return parser.parse_args(argv)


DISTRIBUTED = ("coordinator", "num_processes", "process_id", "distributed")


def start_distributed(args) -> bool:
    """``jax.distributed.initialize`` when asked; returns whether this process writes the results
    (process 0 only). Must run before anything touches a JAX device."""
    if args.coordinator or args.distributed:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
        if args.coordinator:
            if args.num_processes is None or args.process_id is None:
                raise SystemExit("--coordinator needs --num-processes and --process-id")
            jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        else:
            jax.distributed.initialize()
    return jax.process_index() == 0


def parse_json(text: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if text.replace("-", "").replace("_", "").isalnum():
            return text  # a bare word, e.g. variant=centered
        raise SystemExit(f"{what}: {text!r} is not valid JSON")


def parse_axes(items, config) -> dict:
    axes = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"--grid {item!r}: expected KEY=V1,V2,...")
        if key != "seed" and key not in config and key not in configs.OPTIONAL:
            raise SystemExit(f"--grid {item!r}: the config has no entry {key!r} (has {sorted(config)})")
        if key in axes:
            raise SystemExit(f"--grid {key} given twice")
        axes[key] = [parse_json(v, f"--grid {key}") for v in values.split(",")]
    return axes


def is_traced(key, value) -> bool:
    return key in TRACED and isinstance(value, (int, float)) and not isinstance(value, bool)


def member_table(axes: dict) -> list[dict]:
    """Every combination of the axes, the last varying fastest."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def error_rate(model, cost, solver, params, x, y):
    """Fraction of misclassified examples, relaxing ``EVAL_BATCH`` examples at a time in a scan
    (the last batch padded; padding does not count)."""
    n = x.shape[0]
    batches = -(-n // EVAL_BATCH)
    pad = batches * EVAL_BATCH - n
    xb = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]).reshape(batches, EVAL_BATCH, *x.shape[1:])
    yb = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(batches, EVAL_BATCH)
    real = (jnp.arange(batches * EVAL_BATCH) < n).reshape(batches, EVAL_BATCH)

    def wrong(total, batch):
        xi, yi, mask = batch
        free = eqjax.relax_batch(model, cost, solver, params, xi)
        prediction = eqjax.costs.predict(jax.vmap(model.output)(free.state))
        return total + jnp.sum((prediction != yi) & mask, dtype=total.dtype), None

    total, _ = jax.lax.scan(wrong, jnp.zeros((), jnp.int32), (xb, yb, real))
    return total / n


def member_function(config: dict, traced_keys: tuple, num_train: int):
    """``fn(h, x, y, x_val, y_val, x_test, y_test, orders, keys)`` training one member for
    ``len(orders)`` epochs; ``h`` holds the member's traced values."""
    static_model, cost = configs.build(dict(config))[:2]

    def fn(h, x, y, x_val, y_val, x_test, y_test, orders, keys):
        member = dict(config, **{k: h[k] for k in traced_keys if k != "seed"})
        _, _, solver, estimator, optimizer = configs.build(member)
        eval_solver = solver.replace(max_steps=config.get("eval_steps", solver.max_steps))
        seed = h["seed"] if "seed" in traced_keys else config["seed"]
        params = static_model.init(jax.random.key(seed), jnp.float32)
        state = configs.initial_state(config, static_model, num_train)
        chunk = eqjax.train_chunk(static_model, cost, optimizer, warm_start=config.get("warm_start", False),
                                  persistent=config.get("persistent", False),
                                  random_sign=config.get("random_sign", False))

        def epoch(carry, data):
            order, epoch_keys = data
            params, opt_state, state = carry
            params, opt_state, state, metrics = chunk(params, opt_state, state, solver, estimator, x[order], y[order],
                                                      order, epoch_keys)
            record = {"validation_error": error_rate(static_model, cost, eval_solver, params, x_val, y_val),
                      "train_error": 1 - jnp.mean(metrics["accuracy"]),
                      "train_loss": jnp.mean(metrics["loss"]),
                      "converged": jnp.mean(metrics["free_converged"]),
                      "nonfinite": jnp.mean(metrics["free_nonfinite"])}
            return (params, opt_state, state), record

        (params, _, _), records = jax.lax.scan(epoch, (params, optimizer.init(params), state), (orders, keys))
        records["test_error"] = error_rate(static_model, cost, eval_solver, params, x_test, y_test)
        records["params_finite"] = eqjax._checks.all_finite(params)
        return records

    return fn


def csv_fields(axes, epochs):
    return (list(axes) + [f"validation_error_{e + 1}" for e in range(epochs)]
            + ["test_error", "train_error", "train_loss", "converged", "diverged", "group_seconds"])


def read_rows(path: Path, fields: list[str]) -> list[dict]:
    """The complete rows of ``results.csv`` (a line cut by a killed run is dropped)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if all(r.get(k) not in (None, "") for k in fields)]


def as_number(text: str):
    try:
        return float(text)
    except ValueError:
        return None


def plot(run_dir: Path, axes: dict, rows: list[dict], epochs: int):
    """Final validation error against the first axis with several values, one line per
    combination of the other axes; diverged members are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = [n for n in axes if len(axes[n]) > 1] or list(axes)
    x_name, others = names[0], names[1:]
    final = f"validation_error_{epochs}"
    numeric = all(as_number(r[x_name]) is not None for r in rows)
    lines = {}
    for r in rows:
        if r["diverged"] == "0":
            lines.setdefault(tuple(r[n] for n in others), []).append(r)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, members in sorted(lines.items()):
        if numeric:
            members = sorted(members, key=lambda r: as_number(r[x_name]))
        xs = [as_number(r[x_name]) if numeric else r[x_name] for r in members]
        ax.plot(xs, [100 * float(r[final]) for r in members], "o-",
                label=", ".join(f"{n}={v}" for n, v in zip(others, label)) or None)
    if numeric and rows and min(as_number(r[x_name]) for r in rows) > 0:
        ax.set_xscale("log")
        ax.set_xticks(sorted({as_number(r[x_name]) for r in rows}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(x_name)
    ax.set_ylabel(f"validation error after epoch {epochs} (%)")
    ax.grid(True, which="both", alpha=0.3)
    if others:
        ax.legend(fontsize=8)
    ax.set_title(run_dir.name, fontsize=9)
    fig.tight_layout()
    runfiles.save_figure(fig, run_dir / "sweep.png")
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    primary = start_distributed(args)
    run_dir = args.resume
    if run_dir is not None:
        if not (run_dir / "sweep.json").exists():
            raise SystemExit(f"--resume {run_dir}: no sweep.json there (not a sweep directory)")
        current = args
        defaults = vars(parse_args(["--resume", str(run_dir)]))
        changed = [k for k, v in vars(current).items() if k not in DISTRIBUTED + ("resume", "data_dir") and v != defaults[k]]
        if changed:
            raise SystemExit(f"--resume continues {run_dir} with its own settings; "
                             f"{', '.join('--' + k.replace('_', '-') for k in changed)} cannot change "
                             "(only --data-dir and the process options may be given)")
        try:
            args = parse_args(json.loads((run_dir / "sweep.json").read_text())["argv"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise SystemExit(f"--resume {run_dir}: sweep.json is not a sweep's record ({type(error).__name__}: "
                             f"{error}); nothing was changed") from None
        for name in DISTRIBUTED:  # this invocation's process layout, not the first one's
            setattr(args, name, getattr(current, name))
    base = dict(configs.CONFIGS[args.model])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in base and key not in configs.OPTIONAL:
            raise SystemExit(f"--set {item}: {args.model} has no entry {key!r}")
        base[key] = parse_json(value, f"--set {key}")
    axes = parse_axes(args.grid, base)
    if not axes:
        raise SystemExit("give at least one --grid KEY=V1,V2,...")
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be at least 1, got {args.epochs}")
    if args.members_per_call is not None and args.members_per_call < 1:
        raise SystemExit(f"--members-per-call must be at least 1, got {args.members_per_call}")
    for member in member_table(axes):  # every member's config must make sense before anything is written
        try:
            configs.validate(dict(base, **member))
        except ValueError as error:
            raise SystemExit(f"--grid/--set: {error}") from None
        if dict(base, **member).get("crop_padding") or dict(base, **member).get("flip"):
            raise SystemExit("make sweep does not augment images (crop_padding, flip); train such configs with make train")
    if run_dir is None and primary:
        name = f"sweep-{args.model}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = runfiles.fresh_directory(args.runs_dir, name)
        record = {"argv": sys.argv[1:] if argv is None else list(argv), "axes": axes}
        runfiles.atomic_write_text(run_dir / "sweep.json", json.dumps(record, indent=2))

    with runfiles.RunLock(run_dir) if primary else contextlib.nullcontext():  # one process per sweep directory
        return run_members(args, base, axes, run_dir, primary)


def run_members(args, base: dict, axes: dict, run_dir, primary: bool):
    """Train the members of the sweep not yet in ``results.csv`` (appending a row per member as it
    finishes), then plot and report; ``run_dir`` is ``None`` on processes other than the first."""
    # the splits of make train (standardised when the config says so)
    data = train.load_data(dict(base, dataset=args.dataset, train_limit=args.train_limit, test_limit=args.test_limit,
                                validation=args.validation), args.data_dir)
    x, y, x_val, y_val, x_test, y_test = (data[k] for k in ("x", "y", "x_val", "y_val", "x_test", "y_test"))
    if args.validation == 0:
        x_val, y_val = x_test, y_test  # the papers' setting: select on test (reported as such)
    batch = base["batch_size"]
    batches = len(x) // batch
    orders = np.stack([np.random.default_rng([args.data_seed, e]).permutation(len(x))[: batches * batch]
                       .reshape(batches, batch) for e in range(args.epochs)])
    keys = jax.vmap(lambda e: jax.random.split(jax.random.fold_in(jax.random.key(args.data_seed + 1), e), batches))(
        jnp.arange(args.epochs))
    shared = (x, y, x_val, y_val, x_test, y_test, jnp.asarray(orders), keys)

    results = None if run_dir is None else run_dir / "results.csv"  # None: a new sweep, not process 0
    fields = csv_fields(axes, args.epochs)
    members = member_table(axes)
    finished = [] if results is None else read_rows(results, fields)
    if primary:  # only complete rows (a kill can cut the last one), rewritten atomically, then appended to
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(finished)
        runfiles.atomic_write_text(results, text.getvalue())
    done = {tuple(r[k] for k in axes) for r in finished}
    pending = [m for m in members if tuple(str(m[k]) for k in axes) not in done]
    groups = {}
    for m in pending:
        static = tuple((k, json.dumps(v)) for k, v in m.items() if not is_traced(k, v))
        groups.setdefault(static, []).append(m)
    bar = tqdm(total=len(members), initial=len(members) - len(pending), desc="members", unit="member",
               disable=not primary)
    with open(results, "a", newline="") if primary else contextlib.nullcontext() as f:
        writer = csv.DictWriter(f, fieldnames=fields) if primary else None
        for static, group in groups.items():
            config = dict(base, **{k: json.loads(v) for k, v in static}, batches_per_epoch=batches,
                          seed=base.get("seed", 0))
            traced_keys = tuple(k for k in axes if k not in dict(static))
            grid = {k: np.asarray([m[k] for m in group]) for k in traced_keys} or {"_": np.zeros(len(group))}
            start = time.time()

            def save(indices, outputs, group=group, start=start):
                for i in indices:
                    out = jax.tree.map(lambda leaf: leaf[i - indices[0]], outputs)
                    row = {k: group[i][k] for k in axes}
                    row.update({f"validation_error_{e + 1}": round(float(v), 6)
                                for e, v in enumerate(out["validation_error"])})
                    finite = bool(out["params_finite"]) and np.isfinite(out["train_loss"][-1])
                    row.update(test_error=round(float(out["test_error"]), 6),
                               train_error=round(float(out["train_error"][-1]), 6),
                               train_loss=float(out["train_loss"][-1]),
                               converged=round(float(out["converged"][-1]), 6), diverged=int(not finite),
                               group_seconds=round(time.time() - start, 1))
                    if primary:
                        writer.writerow(row)
                if primary:
                    f.flush()
                bar.update(len(indices))

            fn = member_function(config, traced_keys, len(x))
            eqjax.sweep.run(fn, grid, *shared, members_per_call=args.members_per_call, on_call=save)
    bar.close()
    if not primary:
        return None
    rows = read_rows(results, fields)
    final = f"validation_error_{args.epochs}"
    usable = [r for r in rows if r["diverged"] == "0"]
    plot(run_dir, axes, rows, args.epochs)
    split = "validation" if args.validation else "test (no validation split)"
    if usable:
        best = min(usable, key=lambda r: float(r[final]))
        chosen = ", ".join(f"{k}={best[k]}" for k in axes)
        print(f"best member by {split} error: {chosen}: {split} error {100 * float(best[final]):.2f}%, "
              f"test error {100 * float(best['test_error']):.2f}%")
    print(f"{len(rows)} members ({len(rows) - len(usable)} diverged); {results}, {run_dir / 'sweep.png'}")
    return run_dir


if __name__ == "__main__":
    main()
