"""eqjax's figures on an accelerator, in one run of a few minutes, written as JSON.

    python -m benchmarks.accelerator [--output FILE] [--timing-batches N]
    python -m benchmarks.accelerator --tiny     # the same code paths on a CPU, in seconds

On a machine with one or several GPUs (every batch is sharded over all the devices JAX sees,
parameters replicated, as ``make train`` does), on generated data of the right shapes (the
arithmetic does not depend on the values):

1. ``conv_epochs``: seconds per 50,000-image CIFAR-10 epoch of the ``dchn-cifar10`` and
   ``conv-cifar10`` configs (experiments/configs.py), trained as ``make train`` trains them
   (``configs.chunk_function``: ``eqjax.train_chunk`` under ``jax.jit``), timed over
   ``--timing-batches`` batches after compilation;
2. ``dhn_epoch``: seconds per 60,000-image MNIST epoch of ``dhn-1h``, the same way;
3. ``sweep``: the 16-member grid of ``make bench``'s sweep case (DHN-1H, 4 betas x 4 learning
   rates, ``--sweep-batches`` batches per member): ``eqjax.sweep.run`` with its default mode
   against the same jitted member function called once per member, and their ratio;
4. ``data_parallel``: seconds per ``dchn-cifar10`` training step with the batch sharded over all
   devices and on the first device alone, and their ratio.

The JSON goes to ``--output`` (default ``$OUT/accelerator.json`` when ``$OUT`` is set, else
``benchmarks/accelerator_results.json``). ``--tiny`` shrinks the nets (conv channels 4 and 8, a
64-unit hidden layer), the batches and the budgets so that the whole script runs on a CPU in the
slow tests.
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

import eqjax
from benchmarks.run import batch_steps
from experiments import configs
from experiments.run_config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
CONV_CONFIGS = ("dchn-cifar10", "conv-cifar10")
EPOCH_EXAMPLES = {"cifar10": 50_000, "mnist": 60_000}
TINY = {"sizes": {"conv": [3072, 4, 8, 10], "dense": [784, 64, 10]}, "num_conv": 2, "batch_size": 8,
        "free_steps": 3, "nudged_steps": 2, "eval_steps": 3}


def default_output() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "accelerator.json" if out else ROOT / "benchmarks" / "accelerator_results.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny nets and budgets, for a CPU")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--timing-batches", type=int, default=None, help="batches timed per epoch figure")
    parser.add_argument("--sweep-batches", type=int, default=None, help="training batches per sweep member")
    args = parser.parse_args(argv)
    args.timing_batches = args.timing_batches or (2 if args.tiny else 10)
    args.sweep_batches = args.sweep_batches or (2 if args.tiny else 50)
    args.output = args.output or default_output()
    if args.timing_batches < 1 or args.sweep_batches < 1:
        parser.error("--timing-batches and --sweep-batches must be at least 1")
    return args


def config_of(name: str, tiny: bool):
    """The named config, shrunk by :data:`TINY` when ``tiny``."""
    config = dict(configs.CONFIGS[name])
    if tiny:
        family = "conv" if config.get("family") == "conv" else "dense"
        config.update({k: v for k, v in TINY.items() if k != "sizes"}, sizes=TINY["sizes"][family])
        if family == "conv":
            config.update(kernel=3, padding=1)
            if isinstance(config["learning_rate"], list):  # one rate per layer
                config["learning_rate"] = config["learning_rate"][: len(config["sizes"]) - 1]
    return RunConfig.from_dict(config)


def generated(config, count: int, seed: int = 0):
    """``count`` uniform inputs of the config's input size and random labels."""
    kx, ky = jax.random.split(jax.random.key(seed))
    return (jax.random.uniform(kx, (count, config.sizes[0]), jnp.float32),
            jax.random.randint(ky, (count,), 0, config.sizes[-1]))


def training_seconds(config, batches: int, devices) -> dict:
    """Seconds for ``batches`` training batches of ``config`` as ``make train`` runs them (compiled
    first, then one timed call), and the compile-and-first-call time."""
    config = config.updated(batches_per_epoch=batches)
    model, cost, solver, estimator, optimizer = configs.build(config)
    chunk = configs.chunk_function(config, model, cost, optimizer, devices)
    batch = config.batch_size
    x, y = generated(config, 2 * batches * batch)
    params = model.init(jax.random.key(1), jnp.float32)
    carry = (params, optimizer.init(params), configs.initial_state(config, model, len(x)))
    seconds = []
    for first in (0, batches):  # the first call compiles
        index = jnp.arange(first * batch, (first + batches) * batch).reshape(batches, batch)
        keys = jax.random.split(jax.random.key(first), batches)
        start = time.perf_counter()
        *carry, metrics = jax.block_until_ready(chunk(*carry, solver, estimator, x[index], y[index], index, keys))
        seconds.append(time.perf_counter() - start)
    return {"compile_and_first_call_seconds": seconds[0], "timed_seconds": seconds[1], "timed_batches": batches,
            "mean_sweeps": batch_steps(metrics)}


def epoch_figure(name: str, dataset: str, args) -> dict:
    config = config_of(name, args.tiny)
    result = training_seconds(config, args.timing_batches, jax.devices())
    per_batch = result["timed_seconds"] / args.timing_batches
    return dict(result, seconds_per_epoch=per_batch * EPOCH_EXAMPLES[dataset] / config.batch_size,
                batch=config.batch_size)


def sweep_figure(args) -> dict:
    """The 16-member DHN-1H sweep (default mode) against its member function called per member."""
    from benchmarks.sweep import GRID

    config = config_of("dhn-1h", args.tiny).updated(batches_per_epoch=args.sweep_batches)
    model, cost = configs.build(config)[:2]
    batch, batches = config.batch_size, args.sweep_batches
    x, y = generated(config, batches * batch)
    index = jnp.arange(batches * batch).reshape(batches, batch)
    keys = jax.random.split(jax.random.key(0), batches)

    def member(h, x, y, index, keys):
        member = config.updated(beta=h["beta"], learning_rate=h["learning_rate"])
        _, _, solver, estimator, optimizer = configs.build(member)
        chunk = eqjax.train_chunk(model, cost, optimizer, warm_start=True)
        params = model.init(jax.random.key(0), jnp.float32)
        params, _, _, metrics = chunk(params, optimizer.init(params), configs.initial_state(config, model, 0), solver,
                                      estimator, x[index], y[index], index, keys)
        return {"loss": jnp.mean(metrics["loss"])}

    members = eqjax.sweep.num_members(GRID)
    rows = [{k: jnp.asarray(v[i]) for k, v in GRID.items()} for i in range(members)]
    single = jax.jit(member)

    def sweep():
        return eqjax.sweep.run(member, GRID, x, y, index, keys).outputs["loss"]

    def one_after_another():
        return [single(row, x, y, index, keys)["loss"] for row in rows]

    seconds = {}
    for name, fn in (("sweep", sweep), ("one_call_per_member", one_after_another)):
        jax.block_until_ready(fn())  # compiles
        start = time.perf_counter()
        jax.block_until_ready(fn())
        seconds[name] = time.perf_counter() - start
    return {"members": members, "batches_per_member": batches, "seconds": seconds,
            "sweep_over_one_call_per_member": seconds["sweep"] / seconds["one_call_per_member"]}


def data_parallel_figure(args) -> dict:
    """Seconds per dchn-cifar10 step with the batch sharded over all devices and on one."""
    config = config_of("dchn-cifar10", args.tiny)
    everywhere = training_seconds(config, args.timing_batches, jax.devices())
    alone = training_seconds(config, args.timing_batches, jax.devices()[:1])
    per_step = lambda r: r["timed_seconds"] / args.timing_batches
    return {"devices": len(jax.devices()), "seconds_per_step_all_devices": per_step(everywhere),
            "seconds_per_step_one_device": per_step(alone), "one_over_all": per_step(alone) / per_step(everywhere)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = {"machine": {"platform": platform.platform(), "jax": jax.__version__, "backend": jax.default_backend(),
                           "devices": [str(d) for d in jax.devices()]},
               "settings": {"tiny": args.tiny, "timing_batches": args.timing_batches,
                            "sweep_batches": args.sweep_batches}}

    def record(key, figure):
        results[key] = figure
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2))  # after every figure: a cut run keeps the rest
        print(f"{key}: {json.dumps(figure)}", flush=True)

    record("conv_epochs", {name: epoch_figure(name, "cifar10", args) for name in CONV_CONFIGS})
    record("dhn_epoch", epoch_figure("dhn-1h", "mnist", args))
    record("sweep", sweep_figure(args))
    record("data_parallel", data_parallel_figure(args))
    print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
