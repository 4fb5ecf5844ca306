"""A hyperparameter sweep as a value: :class:`SweepPlan` (a named config, ``--set`` overrides, the
grid and the data), checked before anything is written, trained as one vmapped, compiled program
per group of static values (:func:`eqjax.sweep.run`), and written to a sweep directory
(``sweep.json``, ``results.csv`` appended member by member, ``sweep.png``).

Shared by the ``sweep`` program (which parses a command line into a plan) and the ``rules``
program (which builds one plan per learning rule).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import itertools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import eqjax
from experiments import common, configs, runfiles
from experiments.run_config import RunConfig

TRACED = ("beta", "eta", "learning_rate", "tol", "step_size", "decay", "seed")
EVAL_BATCH = 1000  # test examples relaxed together by each member (every member's batch is in memory at once)


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """What a sweep trains. ``grid`` ``{key: [values]}``: the members are every combination (the
    last key varying fastest); ``overrides`` ``{key: value}`` apply to every member (``--set``).
    Every member sees the same data order (from ``data_seed`` and the epoch); ``seed`` in the grid
    sets a member's initialisation. The last ``validation`` training examples are held out (none:
    the test split stands in, the papers' setting, reported as such)."""

    model: str
    grid: dict
    overrides: dict = dataclasses.field(default_factory=dict)
    dataset: str = "mnist"
    epochs: int = 3
    validation: int = 10_000
    train_limit: int | None = None
    test_limit: int | None = None
    data_seed: int = 0
    members_per_call: int | None = None


def check(plan: SweepPlan) -> RunConfig:
    """The base config of every member (``SystemExit`` naming the problem when the plan cannot
    train: an unknown model or key, a member whose config is invalid, augmentation)."""
    if plan.model not in configs.CONFIGS:
        raise SystemExit(f"--model must be one of {sorted(configs.CONFIGS)}, got {plan.model!r}")
    entries = common.apply_overrides(configs.CONFIGS[plan.model], plan.overrides, plan.model)
    if not plan.grid:
        raise SystemExit("give at least one --grid KEY=V1,V2,...")
    for key in plan.grid:
        if key != "seed" and key not in entries and key not in configs.OPTIONAL:
            raise SystemExit(f"--grid {key}: the config has no entry {key!r} (has {sorted(entries)})")
    if plan.epochs < 1:
        raise SystemExit(f"--epochs must be at least 1, got {plan.epochs}")
    if plan.members_per_call is not None and plan.members_per_call < 1:
        raise SystemExit(f"--members-per-call must be at least 1, got {plan.members_per_call}")
    for member in member_table(plan.grid):  # every member's config must make sense before anything is written
        config = common.checked_config({**entries, **member}, "--grid/--set")
        if config.crop_padding or config.flip:
            raise SystemExit("make sweep does not augment images (crop_padding, flip); train such configs with make train")
    return RunConfig.from_dict(entries)


def new_directory(plan: SweepPlan, runs_dir: Path, argv=None) -> Path:
    """A fresh sweep directory under ``runs_dir`` with ``sweep.json``: the plan (and the command
    line that made it, for the record)."""
    run_dir = runfiles.fresh_directory(runs_dir, f"sweep-{plan.model}-{plan.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    record = {"plan": dataclasses.asdict(plan), "argv": argv}
    runfiles.atomic_write_text(run_dir / "sweep.json", json.dumps(record, indent=2))
    return run_dir


def read_plan(run_dir: Path) -> SweepPlan:
    """The plan recorded in ``run_dir``'s ``sweep.json`` by :func:`new_directory` (``SystemExit``
    when the record is damaged or holds no plan)."""
    try:
        return SweepPlan(**json.loads((run_dir / "sweep.json").read_text())["plan"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SystemExit(f"{run_dir}: sweep.json is not a sweep's record ({type(error).__name__}: {error}); "
                         "nothing was changed") from None


def execute(plan: SweepPlan, base: RunConfig, run_dir, data_dir=None, primary: bool = True):
    """Train the members of ``run_dir`` not yet in its ``results.csv`` from ``base`` (the config
    :func:`check` returned for the plan), holding the directory's lock (first process only; ``run_dir`` is
    ``None`` on the others); returns ``run_dir``."""
    with runfiles.RunLock(run_dir) if primary else contextlib.nullcontext():  # one process per sweep directory
        return run_members(plan, base, run_dir, primary, data_dir)


def is_traced(key, value) -> bool:
    return key in TRACED and isinstance(value, (int, float)) and not isinstance(value, bool)


def member_table(axes: dict) -> list[dict]:
    """Every combination of the axes, the last varying fastest."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def member_function(config: RunConfig, traced_keys: tuple, num_train: int):
    """``fn(h, x, y, x_val, y_val, x_test, y_test, orders, keys)`` training one member for
    ``len(orders)`` epochs; ``h`` holds the member's traced values."""
    static_model, cost = configs.build(config)[:2]

    def fn(h, x, y, x_val, y_val, x_test, y_test, orders, keys):
        member = config.updated(**{k: h[k] for k in traced_keys if k != "seed"})
        _, _, solver, estimator, optimizer = configs.build(member)
        eval_solver = common.eval_solver(config, solver)
        error = lambda params, x, y, key: eqjax.error_rate(static_model, cost, eval_solver, params, x, y, key,
                                                           batch_size=EVAL_BATCH)["error"]
        seed = h["seed"] if "seed" in traced_keys else config.seed
        params = static_model.init(jax.random.key(seed), jnp.float32)
        state = configs.initial_state(config, static_model, num_train)
        chunk = eqjax.train_chunk(static_model, cost, optimizer, warm_start=config.warm_start,
                                  persistent=config.persistent, random_sign=config.random_sign)

        def epoch(carry, data):
            order, epoch_keys = data
            params, opt_state, state = carry
            params, opt_state, state, metrics = chunk(params, opt_state, state, solver, estimator, x[order], y[order],
                                                      order, epoch_keys)
            record = {"validation_error": error(params, x_val, y_val, jax.random.fold_in(epoch_keys[0], 1)),
                      "train_error": 1 - jnp.mean(metrics["accuracy"]),
                      "train_loss": jnp.mean(metrics["loss"]),
                      "converged": jnp.mean(metrics["free_converged"]),
                      "nonfinite": jnp.mean(metrics["free_nonfinite"])}
            return (params, opt_state, state), record

        (params, _, _), records = jax.lax.scan(epoch, (params, optimizer.init(params), state), (orders, keys))
        records["test_error"] = error(params, x_test, y_test, jax.random.key(seed + 1))
        records["params_finite"] = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
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


def shared_inputs(plan: SweepPlan, base: RunConfig, data_dir) -> tuple:
    """The arrays every member trains on: the splits of make train (standardised when the config
    says so; the test split stands in for validation without ``--validation``, the papers'
    setting, reported as such), each epoch's data order ``(epochs, batches, batch)`` and the
    batches' PRNG keys."""
    data = common.load_data(base.updated(dataset=plan.dataset, train_limit=plan.train_limit,
                                         test_limit=plan.test_limit, validation=plan.validation), data_dir)
    x, y, x_val, y_val, x_test, y_test = (data[k] for k in ("x", "y", "x_val", "y_val", "x_test", "y_test"))
    if plan.validation == 0:
        x_val, y_val = x_test, y_test
    batch = base.batch_size
    batches = len(x) // batch
    orders = np.stack([common.epoch_order(plan.data_seed, e, len(x), batches * batch).reshape(batches, batch)
                       for e in range(plan.epochs)])
    keys = jax.vmap(lambda e: jax.random.split(jax.random.fold_in(jax.random.key(plan.data_seed + 1), e), batches))(
        jnp.arange(plan.epochs))
    return x, y, x_val, y_val, x_test, y_test, jnp.asarray(orders), keys


def pending_groups(results, fields, axes: dict, primary: bool) -> tuple[dict, int]:
    """``({static values: [member, ...]}, members finished)`` for the members not yet in
    ``results.csv``, grouped by the values that change the compiled program. On the first process
    the table is rewritten (atomically) with only its complete rows: a kill can cut the last one."""
    finished = [] if results is None else read_rows(results, fields)
    if primary:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(finished)
        runfiles.atomic_write_text(results, text.getvalue())
    done = {tuple(r[k] for k in axes) for r in finished}
    groups = {}
    for m in member_table(axes):
        if tuple(str(m[k]) for k in axes) not in done:
            static = tuple((k, json.dumps(v)) for k, v in m.items() if not is_traced(k, v))
            groups.setdefault(static, []).append(m)
    return groups, len(finished)


def member_row(out: dict, member: dict, axes: dict, seconds: float) -> dict:
    """One row of ``results.csv`` from a member's outputs (see :func:`member_function`)."""
    row = {k: member[k] for k in axes}
    row.update({f"validation_error_{e + 1}": round(float(v), 6) for e, v in enumerate(out["validation_error"])})
    finite = bool(out["params_finite"]) and np.isfinite(out["train_loss"][-1])
    row.update(test_error=round(float(out["test_error"]), 6), train_error=round(float(out["train_error"][-1]), 6),
               train_loss=float(out["train_loss"][-1]), converged=round(float(out["converged"][-1]), 6),
               diverged=int(not finite), group_seconds=round(seconds, 1))
    return row


def run_members(plan: SweepPlan, base: RunConfig, run_dir, primary: bool, data_dir=None):
    """Train the members of the sweep not yet in ``results.csv`` (appending a row per member as it
    finishes), then plot and report; ``run_dir`` is ``None`` on processes other than the first."""
    shared, axes = shared_inputs(plan, base, data_dir), plan.grid
    results = None if run_dir is None else run_dir / "results.csv"  # None: a new sweep, not process 0
    fields = csv_fields(axes, plan.epochs)
    groups, finished = pending_groups(results, fields, axes, primary)
    bar = tqdm(total=finished + sum(map(len, groups.values())), initial=finished, desc="members", unit="member",
               disable=not primary)
    with open(results, "a", newline="") if primary else contextlib.nullcontext() as f:
        writer = csv.DictWriter(f, fieldnames=fields) if primary else None
        for static, group in groups.items():
            config = base.updated(**{k: json.loads(v) for k, v in static}, batches_per_epoch=shared[6].shape[1])
            traced_keys = tuple(k for k in axes if k not in dict(static))
            grid = {k: np.asarray([m[k] for m in group]) for k in traced_keys} or {"_": np.zeros(len(group))}
            start = time.time()

            def save(indices, outputs, group=group, start=start):
                for i in indices:
                    out = jax.tree.map(lambda leaf: leaf[i - indices[0]], outputs)
                    if primary:
                        writer.writerow(member_row(out, group[i], axes, time.time() - start))
                if primary:
                    f.flush()
                bar.update(len(indices))

            fn = member_function(config, traced_keys, len(shared[0]))
            eqjax.sweep.run(fn, grid, *shared, members_per_call=plan.members_per_call, on_call=save)
    bar.close()
    return report(plan, run_dir, results, fields) if primary else None


def report(plan: SweepPlan, run_dir, results, fields):
    """Plot the sweep and print its best member; returns ``run_dir``."""
    rows, axes = read_rows(results, fields), plan.grid
    final = f"validation_error_{plan.epochs}"
    usable = [r for r in rows if r["diverged"] == "0"]
    plot(run_dir, axes, rows, plan.epochs)
    split = "validation" if plan.validation else "test (no validation split)"
    if usable:
        best = min(usable, key=lambda r: float(r[final]))
        chosen = ", ".join(f"{k}={best[k]}" for k in axes)
        print(f"best member by {split} error: {chosen}: {split} error {100 * float(best[final]):.2f}%, "
              f"test error {100 * float(best['test_error']):.2f}%")
    print(f"{len(rows)} members ({len(rows) - len(usable)} diverged); {results}, {run_dir / 'sweep.png'}")
    return run_dir
