"""Train an EP model on MNIST / Fashion-MNIST: the main job behind `make train`.

    python -m experiments.train [--model dhn-1h] [--dataset mnist] [--epochs 5] [--seed 0]
    python -m experiments.train --resume runs/<run>      # continue from its last checkpoint

Writes a run directory with config.json, metrics.jsonl (one strict-JSON line per chunk of batches
and per epoch), checkpoint.msgpack (flax serialization with a version and a SHA-256 checksum,
written atomically after every epoch, and after a chunk when the last save is --checkpoint-seconds
old) and curve.png. Data order depends only on (seed, epoch), so a resumed run ends with the same
parameters as an uninterrupted one.

Nothing is lost or silently wrong: options are validated before anything is written; a run
directory is locked while a process trains in it; a non-finite loss or parameter stops the run at
once, logs the chunk with null values and "diverged": true, and keeps the last good checkpoint; a
missing, corrupt or foreign checkpoint is refused on --resume, which also refuses options that
would change the run (only --epochs, --checkpoint-seconds, --data-dir and --devices may be given).

Every batch is sharded over all the devices JAX sees (--devices N for fewer): parameters
replicated, gradients averaged (eqjax.parallel); one CPU or GPU runs the plain step.

Several processes (one or more devices each, e.g. one per host): run the same command on every
host with --coordinator HOST0:PORT --num-processes N --process-id I (or --distributed where JAX
finds the cluster itself, e.g. under SLURM). Every batch is sharded over every device of every
process; process 0 alone writes the run directory and shows progress; --resume needs the run
directory on a file system every process sees, and may resume with another number of processes.
A process that stops makes the others stop with an error (the checkpoint keeps the last saved
state).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

import eqjax
from experiments import common, configs, runfiles
from experiments.run_config import RunConfig


# Options that define a run: set when it starts, never changed by --resume.
RUN_OPTIONS = {"model": "dhn-1h", "dataset": "mnist", "seed": 0, "train_limit": None, "test_limit": None,
               "validation": 0, "patience": None, "chunk": 250}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(configs.CONFIGS), help="named config (default dhn-1h)")
    parser.add_argument("--dataset", choices=["mnist", "fashion-mnist", "cifar10"],
                        help="default mnist; cifar10 reads the python batches from --data-dir or $EQJAX_DATA")
    parser.add_argument("--epochs", type=int, help="total epochs (default 5, or the resumed run's)")
    parser.add_argument("--seed", type=int, help="initialisation and data order (default 0)")
    parser.add_argument("--resume", type=Path, help="run directory to continue (with its own settings; only --epochs, "
                                                     "--checkpoint-seconds, --data-dir and --devices may be given)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--train-limit", type=int, help="use only the first N training examples")
    parser.add_argument("--test-limit", type=int, help="use only the first N test examples")
    parser.add_argument("--validation", type=int,
                        help="hold out the last N training examples and report their error per epoch")
    parser.add_argument("--patience", type=int,
                        help="with --validation: stop after this many epochs without a better validation "
                             "error; best.msgpack keeps the parameters of the best epoch")
    parser.add_argument("--chunk", type=int, help="batches per compiled chunk (and log line; default 250)")
    parser.add_argument("--checkpoint-seconds", type=float, default=60.0,
                        help="save a checkpoint after a chunk when the last one is this old (and at "
                             "every epoch's end); 0 saves after every chunk")
    parser.add_argument("--data-dir", help="directory with IDX files (else $EQJAX_DATA, packaged copies)")
    parser.add_argument("--devices", type=int,
                        help="shard every batch over the first N of jax.devices() (default: all of them; "
                             "the batch size must be a multiple of N)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, VALUE in JSON (e.g. --set warm_start=false)")
    parser.add_argument("--stop-after-chunks", type=int, help=argparse.SUPPRESS)  # for resume tests
    common.add_distributed_options(parser)
    return parser.parse_args(argv)


def say(*args):
    """``print`` on process 0 only (every process runs the same loop)."""
    if jax.process_index() == 0:
        print(*args)


def check_options(args):
    """``SystemExit`` naming the first option out of its range, or a run option given to ``--resume``
    (``--devices`` may change on resume: it changes where the arithmetic runs, not what it is)."""
    rules = [("epochs", args.epochs, lambda v: v >= 1, "at least 1"),
             ("chunk", args.chunk, lambda v: v >= 1, "at least 1"),
             ("train-limit", args.train_limit, lambda v: v >= 1, "at least 1"),
             ("test-limit", args.test_limit, lambda v: v >= 1, "at least 1"),
             ("validation", args.validation, lambda v: v >= 0, "0 or more"),
             ("patience", args.patience, lambda v: v >= 1, "at least 1"),
             ("checkpoint-seconds", args.checkpoint_seconds, lambda v: v >= 0, "0 or more"),
             # jax.random.key(seed + 1) takes a 32-bit seed: larger ones would wrap onto smaller
             ("seed", args.seed, lambda v: 0 <= v < 2**31 - 1, f"between 0 and {2**31 - 2}"),
             ("devices", args.devices, lambda v: 1 <= v <= len(jax.devices()),
              f"between 1 and the {len(jax.devices())} device(s) JAX sees")]
    for name, value, ok, what in rules:
        if value is not None and not ok(value):
            raise SystemExit(f"--{name} must be {what}, got {value}")
    if args.devices is not None and jax.process_count() > 1:
        raise SystemExit("--devices picks devices of one process; with several processes every device of every "
                         "process trains")
    if args.resume:
        given = [name for name in RUN_OPTIONS if getattr(args, name) is not None] + (["set"] if args.set else [])
        if given:
            raise SystemExit(f"--resume continues {args.resume} with its own settings; "
                             f"{', '.join('--' + g.replace('_', '-') for g in given)} cannot change (only --epochs, "
                             "--checkpoint-seconds, --data-dir and --devices may be given)")


def new_config(args) -> RunConfig:
    """The named config with ``--set`` overrides and the run options, validated."""
    options = {name: default if getattr(args, name) is None else getattr(args, name)
               for name, default in RUN_OPTIONS.items()}
    if options["patience"] is not None and not options["validation"]:
        raise SystemExit("--patience needs --validation N > 0")
    model = options.pop("model")
    return common.run_config(model, args.set, args.epochs or 5, **options)


def resumed_config(args) -> RunConfig:
    """The config of the run directory being resumed, with a new ``--epochs`` if given."""
    path = args.resume / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"--resume {args.resume}: no config.json there (not a run directory)") from None
    except json.JSONDecodeError as error:
        raise SystemExit(f"--resume {args.resume}: config.json is not valid JSON ({error})") from None
    model = config.get("model") if isinstance(config, dict) else None
    missing = ([] if model not in configs.CONFIGS else
               sorted((set(configs.CONFIGS[model]) | set(RUN_OPTIONS) | {"epochs"}) - set(config)))
    if model not in configs.CONFIGS or missing:
        raise SystemExit(f"--resume {args.resume}: config.json lacks {missing or ['model']} (was it edited?); "
                         "nothing was changed")
    config["epochs"] = args.epochs or config["epochs"]
    return common.checked_config(config, f"--resume {args.resume}: config.json (nothing was changed)")


def new_run_dir(runs_dir: Path, config: RunConfig, overrides: list) -> Path:
    """A fresh directory ``<model>-<dataset>-seed<seed>-<time>[-<hash of --set>]``, suffixed ``-2``,
    ``-3``... if taken (two runs started in the same second never share one)."""
    name = f"{config.model}-{config.dataset}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    if overrides:
        name += "-" + hashlib.sha1(json.dumps(sorted(overrides)).encode()).hexdigest()[:6]
    return runfiles.fresh_directory(runs_dir, name)


def plot_curve(run_dir: Path, records):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r for r in records if r["kind"] == "epoch"]
    chunks = [r for r in records if r["kind"] == "chunk"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if chunks:
        ax.plot([r["progress"] for r in chunks], [100 * r["train_error"] for r in chunks], ".-", alpha=0.5,
                label="train error (running, per chunk)")
    if epochs:
        ax.plot([r["epoch"] for r in epochs], [100 * r["test_error"] for r in epochs], "o-", label="test error")
    if any("validation_error" in r for r in epochs):
        ax.plot([r["epoch"] for r in epochs], [100 * r["validation_error"] for r in epochs], "s-",
                label="validation error")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(run_dir.name)
    fig.tight_layout()
    runfiles.save_figure(fig, run_dir / "curve.png")
    plt.close(fig)


def read_records(path: Path):
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by an interruption: drop it
            break
    return records


def written_before(record, position) -> bool:
    """Whether a metrics record belongs to the work a checkpoint at ``position`` contains."""
    if record["kind"] == "epoch":  # written once position reached (record["epoch"], 0)
        return record["epoch"] <= position["epoch"]
    return (record["epoch"], record["batch_end"]) <= (position["epoch"], position["batch"])


def early_stop(config: RunConfig, epochs_done: list) -> bool:
    """With ``patience``: whether the last ``patience`` epochs brought no better validation error
    (then the best epoch is printed)."""
    if not config.patience or not epochs_done:
        return False
    best = min(epochs_done, key=lambda r: r["validation_error"])
    if epochs_done[-1]["epoch"] - best["epoch"] < config.patience:
        return False
    say(f"early stop: no better validation error for {config.patience} epochs; best epoch {best['epoch']} "
        f"(validation {100 * best['validation_error']:.2f}%, test {100 * best['test_error']:.2f}%), its "
        "parameters in best.msgpack")
    return True


CONVERGED_WARNING = 0.9  # warn when fewer test examples than this reach the tolerance


class Training:
    """One run's loop: chunks of batches with logging and checkpoints, epoch-end evaluation."""

    def __init__(self, args, config, data, devices):
        self.args, self.config, self.data = args, config, data
        self.model, self.cost, self.solver, self.estimator, self.optimizer = configs.build(config)
        try:
            eqjax.check_inputs(self.model, data["x"], data["y"])
        except (ValueError, TypeError) as error:
            raise SystemExit(f"the data do not fit the model: {error}") from None
        self.run_dir = self.checkpoint = self.metrics_path = None  # use_directory sets them
        self.chunk_fn = configs.chunk_function(config, self.model, self.cost, self.optimizer, devices)
        self.eval_solver = common.eval_solver(config, self.solver)
        self.base_key = jax.random.key(config.seed + 1)
        self.eval_key, self.augment_key = jax.random.split(self.base_key)  # apart from the batches' keys
        self.augment = common.augmentation(config)
        self.chunks_done, self.last_save = 0, time.monotonic()
        self.records = []  # the run's metrics records, as metrics.jsonl holds them
        self.primary, self.multi = jax.process_index() == 0, jax.process_count() > 1
        mesh = eqjax.parallel.batch_mesh(devices)
        self.replicated = NamedSharding(mesh, PartitionSpec()) if self.multi else None
        # the held-out sets placed once (with several processes, on every process's devices), and
        # their batches shared out over the training's devices (the same figures as on one)
        held_out = {k: data[k] for k in ("x_test", "y_test", "x_val", "y_val") if k in data}
        self.data = {**data, **self.to_devices(held_out)}
        batch = common.EVAL_BATCH
        self.error_rate = (eqjax.parallel.sharded_error_rate(self.model, self.cost, mesh, batch_size=batch)
                           if len(devices) > 1 else
                           functools.partial(eqjax.error_rate, self.model, self.cost, batch_size=batch))

    def use_directory(self, run_dir: Path | None):
        """Write this run's files into ``run_dir`` (``None``: a process other than the first, on a
        new run: it writes nothing)."""
        self.run_dir = run_dir
        self.checkpoint = run_dir and run_dir / "checkpoint.msgpack"
        self.metrics_path = run_dir and run_dir / "metrics.jsonl"

    # --- several processes: arrays on every process's devices, one writer -------------------------

    def to_devices(self, tree):
        """``tree`` as the compiled chunk takes it: unchanged with one process; with several,
        replicated on every device of every process (each process gives the same values)."""
        return eqjax.parallel.put_global(tree, self.replicated) if self.multi else tree

    def local(self, replicated_tree):
        """This process's copy of replicated arrays."""
        return jax.tree.map(lambda a: a.addressable_data(0), replicated_tree) if self.multi else replicated_tree

    def to_host(self, tree):
        """``tree`` readable on this host (to write it): unchanged with one process; with several,
        gathered as NumPy arrays, and every process calls this at the same point."""
        return eqjax.parallel.to_host(tree) if self.multi else tree

    def agreed(self, flag: bool) -> bool:
        """Process 0's ``flag`` on every process (e.g. whether a checkpoint is due by its clock)."""
        if not self.multi:
            return flag
        from jax.experimental import multihost_utils

        return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))

    def write(self, log, record: dict):
        """Append ``record`` to the run's records and to ``log``."""
        self.records.append(record)
        log.write(runfiles.strict_json(record) + "\n")
        log.flush()

    def preflight(self):
        """Trace one training batch with abstract values (nothing runs): whatever the config gets
        wrong at trace time (a learning rule the model cannot use, ...) stops the run here, before
        a directory is created."""
        params = self.model.init(jax.random.key(self.config.seed), jnp.float32)
        opt_state = self.optimizer.init(params)
        state = configs.initial_state(self.config, self.model, len(self.data["x"]))
        index = jnp.arange(self.config.batch_size).reshape(1, -1)
        try:
            jax.eval_shape(self.chunk_fn, params, opt_state, state, self.solver, self.estimator, self.data["x"][index],
                           self.data["y"][index], index, jax.random.split(self.base_key, 1))
        except (ValueError, TypeError) as error:
            raise SystemExit(f"this config cannot train: {error}") from None

    def start_state(self, resume: bool):
        """``(params, opt_state, state, position)`` from initialisation or the run's checkpoint."""
        params = self.model.init(jax.random.key(self.config.seed), jnp.float32)
        opt_state = self.optimizer.init(params)
        state = configs.initial_state(self.config, self.model, len(self.data["x"]))
        position = {"epoch": 0, "batch": 0}
        if resume:
            target = {"params": params, "opt_state": opt_state, "state": state, "position": position}
            restored = runfiles.load_checkpoint(self.checkpoint, target)
            params, opt_state, state = restored["params"], restored["opt_state"], restored["state"]
            position = {k: int(v) for k, v in restored["position"].items()}
            say(f"resuming {self.run_dir} at epoch {position['epoch']}, batch {position['batch']}")
        return (*self.to_devices((params, opt_state, state)), position)

    def save(self, carry, position):
        params, opt_state, state = self.to_host(carry)
        if self.primary:
            runfiles.save_checkpoint(self.checkpoint, {"params": params, "opt_state": opt_state, "state": state,
                                                       "position": position})
        self.last_save = time.monotonic()

    def run_chunk(self, carry, epoch, order, first, last, log, bar):
        """Train batches ``first:last`` of the epoch; log them; checkpoint when due. Stops the
        run (``SystemExit``) on a non-finite loss or parameter, keeping the last good checkpoint."""
        batches = len(order)
        idx = order[first:last]
        keys = jax.vmap(lambda i: jax.random.fold_in(self.base_key, i))(jnp.arange(first, last) + epoch * batches)
        xs = self.data["x"][idx]
        if self.augment is not None:
            xs = self.augment(xs, jax.random.fold_in(self.augment_key, first + epoch * batches))
        params, opt_state, state, metrics = self.chunk_fn(*carry, self.solver, self.estimator,
                                                          *self.to_devices((xs, self.data["y"][idx], idx, keys)))
        summary = {k: float(np.mean(np.asarray(v, np.float64))) for k, v in self.to_host(metrics).items()}
        record = {"kind": "chunk", "epoch": epoch, "batch_start": first, "batch_end": last,
                  "progress": epoch + last / batches, "train_loss": summary["loss"],
                  "train_error": 1 - summary["accuracy"],
                  **{k: v for k, v in summary.items() if k not in ("loss", "accuracy")}}
        finite = np.isfinite(summary["loss"]) and all(bool(jnp.isfinite(p).all())
                                                      for p in jax.tree.leaves(self.local(params)))
        # the log line first: a resume restarts from the last save and drops the lines written
        # after it, so no line is lost or repeated
        self.write(log, record)
        if not finite:
            bar.close()
            kept = (f"{self.checkpoint} keeps the last good state" if self.checkpoint and self.checkpoint.exists() else
                    "no checkpoint was written yet (it diverged before the first one)")
            raise SystemExit(f"training diverged in epoch {epoch + 1}, batches {first}-{last}: the loss is "
                             f"{summary['loss']} ({100 * summary.get('free_nonfinite', 0):.0f}% of relaxations "
                             f"non-finite). {kept}; start a new run with a smaller learning rate "
                             "(--set learning_rate=...)")
        carry, position = (params, opt_state, state), {"epoch": epoch, "batch": last}
        self.chunks_done += 1
        stopping = bool(self.args.stop_after_chunks) and self.chunks_done >= self.args.stop_after_chunks
        if stopping or self.agreed(time.monotonic() - self.last_save >= self.args.checkpoint_seconds):
            self.save(carry, position)
        bar.update(last - first)
        bar.set_postfix(loss=f"{summary['loss']:.4f}", err=f"{100 * record['train_error']:.2f}%",
                        steps=f"{summary['free_steps']:.1f}", conv=f"{summary['free_converged']:.2f}")
        return carry, position, stopping

    def error(self, params, x, y, key) -> tuple[float, float]:
        """``(error, converged)`` of the free phase on ``(x, y)`` with the evaluation's solver
        (:func:`eqjax.error_rate`, ``common.EVAL_BATCH`` examples at a time, the batches shared out
        over the devices when there are several)."""
        result = self.local(self.error_rate(self.eval_solver, params, x, y, *self.to_devices((key,))))
        return float(result["error"]), float(result["converged"])

    def end_epoch(self, carry, epoch, seconds, log) -> bool:
        """Evaluate, log, checkpoint and plot after an epoch; whether to stop early."""
        params = carry[0]
        key = jax.random.fold_in(self.eval_key, epoch)
        error, converged = self.error(params, self.data["x_test"], self.data["y_test"], jax.random.fold_in(key, 0))
        chunks = [r for r in self.records if r["kind"] == "chunk" and r["epoch"] == epoch]
        train_error = float(np.mean([r["train_error"] for r in chunks]))
        record = {"kind": "epoch", "epoch": epoch + 1, "train_error": train_error, "test_error": error,
                  "test_converged": converged, "epoch_seconds": seconds}
        validation = ""
        if self.config.validation:
            record["validation_error"], record["validation_converged"] = self.error(
                params, self.data["x_val"], self.data["y_val"], jax.random.fold_in(key, 1))
            validation = f", validation error {100 * record['validation_error']:.2f}%"
        self.write(log, record)
        say(f"epoch {epoch + 1}: train error {100 * train_error:.2f}% (running){validation}, test error "
            f"{100 * error:.2f}% ({100 * converged:.1f}% converged), {seconds:.1f} s")
        chance = 1 - 1 / self.model.num_outputs
        if error >= chance - 0.05:
            say(f"warning: the test error {100 * error:.1f}% is at chance level ({100 * chance:.0f}%): the run is "
                "not learning (a learning rate too large or too small?)")
        if converged < CONVERGED_WARNING:
            say(f"warning: only {100 * converged:.1f}% of the test examples reached the tolerance within "
                f"{self.eval_solver.max_steps} steps: the test error is that of unfinished relaxations (raise --set "
                "eval_steps to read the net nearer equilibrium; python -m experiments.eval_budget RUN_DIR compares "
                "budgets)")
        epochs_done = [r for r in self.records if r["kind"] == "epoch"]
        # best.msgpack before the epoch's checkpoint: a kill in between resumes inside this epoch,
        # which retrains it to the same parameters and saves best.msgpack again
        best = self.config.validation and min(epochs_done, key=lambda r: r["validation_error"])
        if best and best["epoch"] == epoch + 1:
            best_params = self.to_host(params)
            if self.primary:
                runfiles.save_checkpoint(self.run_dir / "best.msgpack", {"params": best_params})
        self.save(carry, {"epoch": epoch + 1, "batch": 0})
        if self.primary:
            plot_curve(self.run_dir, self.records)
        return bool(best) and early_stop(self.config, epochs_done)

    def run(self, carry, position) -> bool:
        """Train up to ``config.epochs``; False when stopped by ``--stop-after-chunks``."""
        config, batch = self.config, self.config.batch_size
        batches = len(self.data["x"]) // batch
        with open(self.metrics_path, "a") if self.primary else io.StringIO() as log:
            for epoch in range(position["epoch"], config.epochs):
                order = common.epoch_order(config.seed, epoch, len(self.data["x"]), batches * batch)
                order = jnp.asarray(order.reshape(batches, batch))
                start = time.time()
                bar = tqdm(total=batches, initial=position["batch"], desc=f"epoch {epoch + 1}/{config.epochs}",
                           unit="batch", dynamic_ncols=True, disable=not self.primary)
                for first in range(position["batch"], batches, config.chunk):
                    carry, position, stopping = self.run_chunk(carry, epoch, order, first,
                                                               min(first + config.chunk, batches), log, bar)
                    if stopping:
                        bar.close()
                        say(f"stopped after {self.chunks_done} chunks (checkpoint in {self.run_dir})")
                        return False
                bar.close()
                position = {"epoch": epoch + 1, "batch": 0}
                if self.end_epoch(carry, epoch, time.time() - start, log):
                    break
        return True


def report(run_dir: Path, config: RunConfig, records: list):
    final = [r for r in records if r["kind"] == "epoch"]
    if not final:
        return
    say(f"final test error {100 * final[-1]['test_error']:.2f}% after {final[-1]['epoch']} epochs; "
        f"run directory {run_dir} (curve.png, metrics.jsonl, checkpoint.msgpack)")
    if config.validation:
        best = min(final, key=lambda r: r["validation_error"])
        say(f"selected on validation: epoch {best['epoch']}, validation error "
            f"{100 * best['validation_error']:.2f}%, test error {100 * best['test_error']:.2f}% (best.msgpack)")


def training_devices(requested, batch_size: int) -> list:
    """The devices every batch is sharded over: the first ``requested`` of ``jax.devices()`` (all of
    them when ``None``); ``SystemExit`` when the batch does not split evenly over them."""
    devices = jax.devices()[: requested or len(jax.devices())]
    if batch_size % len(devices):
        raise SystemExit(f"the batch of {batch_size} examples does not split over {len(devices)} devices; "
                         "pass --devices N with N dividing the batch size")
    if len(devices) > 1:
        say(f"every batch is sharded over {len(devices)} devices ({devices[0].platform})")
    return devices


def run_directory(args, config) -> Path | None:
    """The directory to write: ``--resume``'s, or a new one with its config.json (process 0; the
    others write nothing on a new run)."""
    if args.resume:
        return args.resume
    if jax.process_index():
        return None
    run_dir = new_run_dir(args.runs_dir, config, args.set)
    runfiles.atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=2))
    return run_dir


def lost_process(error, run_dir) -> str:
    """The message for an operation across processes that failed (another process stopped)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"process {jax.process_index()}: an operation across the {jax.process_count()} processes failed "
            f"({first}); another process has probably stopped. "
            + (f"{run_dir} keeps the last checkpoint: restart every process with --resume {run_dir}"
               if run_dir else "process 0's run directory keeps the last checkpoint"))


def main(argv=None):
    args = parse_args(argv)
    common.start_distributed(args)
    check_options(args)
    config = resumed_config(args) if args.resume else new_config(args)
    devices = training_devices(args.devices, config.batch_size)
    data = common.load_data(config, args.data_dir)  # before creating anything: bad limits leave no directory
    config = config.updated(batches_per_epoch=len(data["x"]) // config.batch_size)
    training = Training(args, config, data, devices)
    training.preflight()
    run_dir = run_directory(args, config)
    training.use_directory(run_dir)
    with runfiles.RunLock(run_dir) if training.primary else contextlib.nullcontext():
        params, opt_state, state, position = training.start_state(resume=bool(args.resume))
        training.records = [r for r in read_records(training.metrics_path) if written_before(r, position)] \
            if run_dir else []
        if training.primary:
            runfiles.atomic_write_text(training.metrics_path,
                                       "".join(runfiles.strict_json(r) + "\n" for r in training.records))
        if early_stop(config, [r for r in training.records if r["kind"] == "epoch"]):
            return run_dir
        try:
            finished = training.run((params, opt_state, state), position)
        except (jax.errors.JaxRuntimeError, ValueError) as error:  # gloo's failures arrive as ValueError
            if not training.multi or not isinstance(error, jax.errors.JaxRuntimeError) and "Gloo" not in str(error):
                raise
            print("\n" + lost_process(error, run_dir), file=sys.stderr, flush=True)
            os._exit(1)  # at once: jax.distributed's shutdown would wait for the lost process's heartbeats
        if finished:
            report(run_dir, config, training.records)
    return run_dir


if __name__ == "__main__":
    main()
