"""Convolutional EP on an accelerator: seconds per CIFAR-10 epoch, and a short real training run.

    python -m benchmarks.device_conv [--output FILE] [--train-seconds 240] [--data-dir DIR]
    python -m benchmarks.device_conv --tiny          # the same code path on a CPU, in seconds

For a session lent a GPU (one or several: the batch is sharded over every device with
:mod:`eqjax.parallel`). It writes its figures to a JSON file (``--output``, default
``$OUT/device_conv.json`` when ``$OUT`` is set, else ``benchmarks/device_conv_results.json``):

1. **epoch time**: EP training on 50,000 generated 32x32x3 images (uniform pixels, random labels;
   the arithmetic does not depend on the values), batch 128, the CIFAR-10 pipeline on device
   (random crop with 4 pixels of padding, horizontal flip, normalisation; :mod:`eqjax.images`),
   timed over ``--timing-batches`` batches after compilation and scaled to an epoch;
2. **a short real run** when CIFAR-10's python batches are found (``--data-dir``, ``$EQJAX_DATA``
   or the download cache; checksummed by :func:`eqjax.data.load`): training for
   ``--train-seconds``, then the test error on ``--eval-examples`` test images. Without the data
   the file says so.

Network: the layers of Laborieux et al. 2021's CIFAR-10 net (3x3 convs with 128, 256, 512, 512
channels, paddings 1, 1, 1, 0, 2x2 max pooling after each: 16, 8, 4, then 1x1x512), 10 linear
output units in the energy with a cross-entropy cost, centered EP (beta 0.5), block-coordinate
relaxation (``--free-steps`` / ``--nudged-steps`` sweeps), Adam. Reference points (issue 14): under
100 s per epoch on one modern GPU is the target; holomorphic EP's JAX code takes about 235 s per
epoch on an A100.

``--tiny`` shrinks everything (channels 4 and 8, batch 8, a few batches) so the whole script,
including the real-run path on generated batch files, runs on a CPU in a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import eqjax
from eqjax import images, parallel

ROOT = Path(__file__).resolve().parents[1]
FULL = dict(channels=(128, 256, 512, 512), padding=(1, 1, 1, 0), batch=128, timing_batches=20)
TINY = dict(channels=(4, 8), padding=(1, 1), batch=8, timing_batches=2)
EPOCH_EXAMPLES = 50_000


def default_output() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "device_conv.json" if out else ROOT / "benchmarks" / "device_conv_results.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a CPU")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--timing-batches", type=int, help="batches timed for the epoch time")
    parser.add_argument("--train-seconds", type=float, default=240.0, help="budget of the real run (0: skip it)")
    parser.add_argument("--eval-examples", type=int, default=10_000, help="test images evaluated after it")
    parser.add_argument("--free-steps", type=int, default=40)
    parser.add_argument("--nudged-steps", type=int, default=15)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--data-dir", help="directory holding cifar-10-batches-py (else $EQJAX_DATA, the cache)")
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else FULL
    args.timing_batches = args.timing_batches or sizes["timing_batches"]
    args.output = args.output or default_output()
    for name in ("timing_batches", "free_steps", "nudged_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args, sizes


def build(sizes, args):
    """Model, cost, solver, estimator, optimizer and the jitted data-parallel epoch of batches."""
    model = eqjax.models.conv_hopfield((32, 32, 3), sizes["channels"], kernel=3, padding=sizes["padding"],
                                       pooling="max", output_bounds=(-np.inf, np.inf))
    cost = eqjax.costs.cross_entropy()
    solver = eqjax.solvers.BlockCoordinate(tol=1e-4, max_steps=args.free_steps, check_every=5)
    estimator = eqjax.estimators.EP(beta=0.5, variant="centered",
                                    nudged_solver=solver.replace(max_steps=args.nudged_steps))
    optimizer = optax.adam(args.learning_rate)
    step = parallel.train_step(model, cost, optimizer)
    pipeline = images.cifar10_pipeline(augment=True)

    def augmented_step(params, opt_state, solver, estimator, x, y, state0=None, key=None):
        crop_key, step_key = jax.random.split(key)
        return step(params, opt_state, solver, estimator, pipeline(x, crop_key), y, state0, step_key)

    epoch = jax.jit(eqjax.train_epoch(augmented_step), donate_argnums=(0, 1))
    return model, cost, solver, estimator, optimizer, epoch, pipeline


def stacked(x, y, batch, first, count):
    """Batches ``first .. first + count`` of ``(x, y)`` as ``(count, batch, ...)`` arrays, each batch
    split over the devices (axis 1), where the data-parallel step reads it."""
    rows = slice(first * batch, (first + count) * batch)
    return parallel.shard_batch((x[rows].reshape(count, batch, -1), y[rows].reshape(count, batch)),
                                parallel.batch_mesh(), axis=1)


def epoch_time(sizes, args, parts) -> dict:
    """Seconds per 50,000-image epoch on generated data, from ``timing_batches`` timed batches."""
    model, _, solver, estimator, optimizer, epoch, _ = parts
    batch, count = sizes["batch"], args.timing_batches
    key_x, key_y = jax.random.split(jax.random.key(0))
    x = jax.random.uniform(key_x, (2 * count * batch, 32 * 32 * 3), jnp.float32)
    y = jax.random.randint(key_y, (2 * count * batch,), 0, 10)
    params = model.init(jax.random.key(1), jnp.float32)
    opt_state = optimizer.init(params)
    keys = jax.random.split(jax.random.key(2), count)
    start = time.perf_counter()
    params, opt_state, metrics = jax.block_until_ready(epoch(params, opt_state, solver, estimator,
                                                             *stacked(x, y, batch, 0, count), keys))
    first_call = time.perf_counter() - start  # compilation and one run
    start = time.perf_counter()
    params, opt_state, metrics = jax.block_until_ready(epoch(params, opt_state, solver, estimator,
                                                             *stacked(x, y, batch, count, count), keys))
    seconds = time.perf_counter() - start
    return {"seconds_per_epoch": seconds * EPOCH_EXAMPLES / (count * batch), "timed_batches": count,
            "timed_seconds": seconds, "compile_and_first_call_seconds": first_call,
            "mean_sweeps": {k: float(jnp.mean(v)) for k, v in metrics.items() if k.endswith("_steps")}}


def real_run(sizes, args, parts) -> dict:
    """Train on CIFAR-10 for ``train_seconds``, then the test error; or why it was skipped."""
    if args.train_seconds <= 0:
        return {"skipped": "--train-seconds 0"}
    try:
        train_images, train_labels = eqjax.data.load("cifar10", "train", data_dir=args.data_dir)
        test_images, test_labels = eqjax.data.load("cifar10", "test", data_dir=args.data_dir)
    except eqjax.data.DatasetError as error:
        return {"skipped": f"CIFAR-10 not available: {error}"}
    model, cost, solver, estimator, optimizer, epoch, pipeline = parts
    batch, chunk = sizes["batch"], min(50, len(train_images) // sizes["batch"])
    x = images.to_unit(train_images).reshape(len(train_images), -1)
    y = jnp.asarray(train_labels)
    params = model.init(jax.random.key(3), jnp.float32)
    opt_state = optimizer.init(params)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    batches_per_epoch, done, start, chunks = len(x) // batch, 0, time.perf_counter(), []
    while time.perf_counter() - start < args.train_seconds:
        first = done % batches_per_epoch
        count = min(chunk, batches_per_epoch - first)
        keys = jax.random.split(jax.random.fold_in(jax.random.key(4), done), count)
        params, opt_state, metrics = epoch(params, opt_state, solver, estimator, *stacked(x, y, batch, first, count),
                                           keys)
        done += count
        chunks.append({"batches": done, "seconds": time.perf_counter() - start,
                       "train_error": 1 - float(jnp.mean(metrics["accuracy"]))})
    seconds = time.perf_counter() - start
    count = min(args.eval_examples, len(test_images))
    x_test = pipeline(images.to_unit(test_images[:count]).reshape(count, -1))  # normalised, no augmentation
    eval_solver = solver.replace(max_steps=2 * solver.max_steps)
    wrong = 0
    for i in range(0, count, 1000):
        aux = eqjax.evaluate(model, cost, eval_solver, params, x_test[i:i + 1000], jnp.asarray(test_labels[i:i + 1000]))
        wrong += int(jnp.sum(1 - aux["accuracy"]))
    return {"train_seconds": seconds, "batches": done, "epochs": done / batches_per_epoch,
            "test_error": wrong / count, "test_examples": count, "chunks": chunks}


def main(argv=None) -> dict:
    args, sizes = parse_args(argv)
    parts = build(sizes, args)
    results = {
        "machine": {"platform": platform.platform(), "jax": jax.__version__, "backend": jax.default_backend(),
                    "devices": [str(d) for d in jax.devices()]},
        "settings": {"tiny": args.tiny, "channels": sizes["channels"], "batch": sizes["batch"],
                     "free_steps": args.free_steps, "nudged_steps": args.nudged_steps,
                     "learning_rate": args.learning_rate, "beta": 0.5},
    }
    results["epoch_time"] = epoch_time(sizes, args, parts)
    print(f"{results['epoch_time']['seconds_per_epoch']:.1f} s per CIFAR-10 epoch (generated data, "
          f"{len(jax.devices())} x {jax.devices()[0].platform})", flush=True)
    results["real_run"] = real_run(sizes, args, parts)
    print(json.dumps(results["real_run"] if "skipped" in results["real_run"] else
                     {k: v for k, v in results["real_run"].items() if k != "chunks"}))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
