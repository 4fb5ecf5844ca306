"""Train an EP model on MNIST / Fashion-MNIST: the main job behind `make train`.

    python experiments/train.py [--model dhn-1h] [--dataset mnist] [--epochs 5] [--seed 0]
    python experiments/train.py --resume runs/<run>      # continue from its last checkpoint

Writes a run directory with config.json, metrics.jsonl (one line per chunk of batches and per
epoch), checkpoint.msgpack (flax serialization, written atomically after every epoch, and after a
chunk when the last save is --checkpoint-seconds old) and curve.png. Data order depends only on
(seed, epoch), so a resumed run ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import configs  # noqa: E402

import eqjax  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dhn-1h", choices=sorted(configs.CONFIGS))
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--epochs", type=int, help="total epochs (default 5, or the resumed run's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", type=Path, help="run directory to continue")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--train-limit", type=int, help="use only the first N training examples")
    parser.add_argument("--test-limit", type=int, help="use only the first N test examples")
    parser.add_argument("--validation", type=int, default=0,
                        help="hold out the last N training examples and report their error per epoch")
    parser.add_argument("--patience", type=int,
                        help="with --validation: stop after this many epochs without a better validation "
                             "error; best.msgpack keeps the parameters of the best epoch")
    parser.add_argument("--chunk", type=int, default=250, help="batches per compiled chunk (and log line)")
    parser.add_argument("--checkpoint-seconds", type=float, default=60.0,
                        help="save a checkpoint after a chunk when the last one is this old (and at "
                             "every epoch's end); 0 saves after every chunk")
    parser.add_argument("--data-dir", help="directory with IDX files (else $EQJAX_DATA, packaged copies)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, VALUE in JSON (e.g. --set warm_start=false)")
    parser.add_argument("--stop-after-chunks", type=int, help=argparse.SUPPRESS)  # for resume tests
    return parser.parse_args(argv)


def load_split(dataset, split, limit, data_dir):
    images, labels = eqjax.data.load(dataset, split, data_dir=data_dir)
    if limit:
        images, labels = images[:limit], labels[:limit]
    x = jnp.asarray(images.reshape(len(images), -1), jnp.float32) / 255.0
    return x, jnp.asarray(labels)


def atomic_write_bytes(path: Path, data: bytes):
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: Path, params, opt_state, state, position):
    """Everything a resume needs, flax-serialized and written atomically."""
    blob = {"params": params, "opt_state": opt_state, "state": state, "position": position}
    atomic_write_bytes(path, serialization.to_bytes(blob))


def evaluate_error(model, cost, solver, params, x, y, batch=2000):
    wrong = 0
    for i in range(0, len(x), batch):
        aux = eqjax.evaluate(model, cost, solver, params, x[i : i + batch], y[i : i + batch])
        wrong += int(jnp.sum(1.0 - aux["accuracy"]))
    return wrong / len(x)


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
    fig.savefig(run_dir / "curve.png", dpi=120)
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


def early_stop(config: dict, epochs_done: list) -> bool:
    """With ``patience``: whether the last ``patience`` epochs brought no better validation error
    (then the best epoch is printed)."""
    if not config.get("patience") or not epochs_done:
        return False
    best = min(epochs_done, key=lambda r: r["validation_error"])
    if epochs_done[-1]["epoch"] - best["epoch"] < config["patience"]:
        return False
    print(f"early stop: no better validation error for {config['patience']} epochs; best epoch {best['epoch']} "
          f"(validation {100 * best['validation_error']:.2f}%, test {100 * best['test_error']:.2f}%), its "
          "parameters in best.msgpack")
    return True


def main(argv=None):
    args = parse_args(argv)
    if args.resume:
        run_dir = args.resume
        config = json.loads((run_dir / "config.json").read_text())
        config["epochs"] = args.epochs or config["epochs"]
    else:
        config = dict(configs.CONFIGS[args.model])
        for item in args.set:
            key, _, value = item.partition("=")
            if key not in config and key not in configs.OPTIONAL:
                raise SystemExit(f"--set {item}: {args.model} has no entry {key!r} "
                                 f"(has {sorted(config)}; optional: {sorted(configs.OPTIONAL)})")
            config[key] = json.loads(value)
        config = dict(config, model=args.model, dataset=args.dataset, epochs=args.epochs or 5,
                      seed=args.seed, train_limit=args.train_limit, test_limit=args.test_limit,
                      validation=args.validation, patience=args.patience,
                      chunk=args.chunk, jax_version=jax.__version__, backend=jax.default_backend())
        run_dir = args.runs_dir / f"{args.model}-{args.dataset}-seed{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir.mkdir(parents=True, exist_ok=False)

    x_train, y_train = load_split(config["dataset"], "train", config["train_limit"], args.data_dir)
    (x_train, y_train), (x_val, y_val) = eqjax.data.holdout(x_train, y_train, config.get("validation", 0))
    if config.get("patience") is not None and not (config.get("validation") and config["patience"] >= 1):
        raise SystemExit("--patience needs --validation N > 0 and a patience of at least 1 epoch")
    x_test, y_test = load_split(config["dataset"], "test", config["test_limit"], args.data_dir)
    batch = config["batch_size"]
    batches_per_epoch = len(x_train) // batch
    config["batches_per_epoch"] = batches_per_epoch
    if not args.resume:
        (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    model, cost, solver, estimator, optimizer = configs.build(config)
    eqjax.check_inputs(model, x_train, y_train)

    params = model.init(jax.random.key(config["seed"]))
    opt_state = optimizer.init(params)
    state = configs.initial_state(config, model, len(x_train))
    position = {"epoch": 0, "batch": 0}
    checkpoint = run_dir / "checkpoint.msgpack"
    if args.resume and checkpoint.exists():
        target = {"params": params, "opt_state": opt_state, "state": state, "position": position}
        restored = serialization.from_bytes(target, checkpoint.read_bytes())
        params, opt_state, state = restored["params"], restored["opt_state"], restored["state"]
        position = {k: int(v) for k, v in restored["position"].items()}
        print(f"resuming {run_dir} at epoch {position['epoch']}, batch {position['batch']}")
    metrics_path = run_dir / "metrics.jsonl"
    records = [r for r in read_records(metrics_path) if written_before(r, position)]
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    if early_stop(config, [r for r in records if r["kind"] == "epoch"]):
        return run_dir

    chunk_fn = configs.chunk_function(config, model, cost, optimizer)
    eval_solver = solver.replace(max_steps=config.get("eval_steps", solver.max_steps))
    base_key = jax.random.key(config["seed"] + 1)
    chunks_done, last_save = 0, time.monotonic()
    with open(metrics_path, "a") as log:
        for epoch in range(position["epoch"], config["epochs"]):
            order = np.random.default_rng([config["seed"], epoch]).permutation(len(x_train))
            order = jnp.asarray(order[: batches_per_epoch * batch].reshape(batches_per_epoch, batch))
            start_time = time.time()
            bar = tqdm(total=batches_per_epoch, initial=position["batch"], desc=f"epoch {epoch + 1}/{config['epochs']}",
                       unit="batch", dynamic_ncols=True)
            for first in range(position["batch"], batches_per_epoch, config["chunk"]):
                last = min(first + config["chunk"], batches_per_epoch)
                idx = order[first:last]
                keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(
                    jnp.arange(first, last) + epoch * batches_per_epoch)
                params, opt_state, state, metrics = chunk_fn(
                    params, opt_state, state, solver, estimator, x_train[idx], y_train[idx], idx, keys)
                summary = {k: float(jnp.mean(v)) for k, v in metrics.items()}
                record = {"kind": "chunk", "epoch": epoch, "batch_start": first, "batch_end": last,
                          "progress": epoch + last / batches_per_epoch, "train_loss": summary["loss"],
                          "train_error": 1 - summary["accuracy"],
                          **{k: v for k, v in summary.items() if k not in ("loss", "accuracy")}}
                position = {"epoch": epoch, "batch": last}
                chunks_done += 1
                stopping = bool(args.stop_after_chunks) and chunks_done >= args.stop_after_chunks
                # the log line first: a resume restarts from the last save and drops the lines
                # written after it, so no line is lost or repeated
                log.write(json.dumps(record) + "\n")
                log.flush()
                if stopping or time.monotonic() - last_save >= args.checkpoint_seconds:
                    save_checkpoint(checkpoint, params, opt_state, state, position)
                    last_save = time.monotonic()
                bar.update(last - first)
                bar.set_postfix(loss=f"{summary['loss']:.4f}", err=f"{100 * record['train_error']:.2f}%",
                                steps=f"{summary['free_steps']:.1f}", conv=f"{summary['free_converged']:.2f}")
                if stopping:
                    bar.close()
                    print(f"stopped after {chunks_done} chunks (checkpoint in {run_dir})")
                    return run_dir
            bar.close()
            train_time = time.time() - start_time
            error = evaluate_error(model, cost, eval_solver, params, x_test, y_test)
            epoch_chunks = [r for r in read_records(metrics_path) if r["kind"] == "chunk" and r["epoch"] == epoch]
            train_error = float(np.mean([r["train_error"] for r in epoch_chunks]))
            record = {"kind": "epoch", "epoch": epoch + 1, "train_error": train_error, "test_error": error,
                      "epoch_seconds": train_time}
            validation = ""
            if config.get("validation"):
                record["validation_error"] = evaluate_error(model, cost, eval_solver, params, x_val, y_val)
                validation = f", validation error {100 * record['validation_error']:.2f}%"
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(f"epoch {epoch + 1}: train error {100 * train_error:.2f}% (running){validation}, test error "
                  f"{100 * error:.2f}%, {train_time:.1f} s")
            position = {"epoch": epoch + 1, "batch": 0}
            save_checkpoint(checkpoint, params, opt_state, state, position)
            last_save = time.monotonic()
            epochs_done = [r for r in read_records(metrics_path) if r["kind"] == "epoch"]
            plot_curve(run_dir, read_records(metrics_path))
            if config.get("validation"):
                if min(epochs_done, key=lambda r: r["validation_error"])["epoch"] == epoch + 1:
                    atomic_write_bytes(run_dir / "best.msgpack", serialization.to_bytes({"params": params}))
                if early_stop(config, epochs_done):
                    break
    final = [r for r in read_records(metrics_path) if r["kind"] == "epoch"]
    if final:
        print(f"final test error {100 * final[-1]['test_error']:.2f}% after {final[-1]['epoch']} epochs; "
              f"run directory {run_dir} (curve.png, metrics.jsonl, checkpoint.msgpack)")
        if config.get("validation"):
            best = min(final, key=lambda r: r["validation_error"])
            print(f"selected on validation: epoch {best['epoch']}, validation error "
                  f"{100 * best['validation_error']:.2f}%, test error {100 * best['test_error']:.2f}% (best.msgpack)")
    return run_dir


if __name__ == "__main__":
    main()
