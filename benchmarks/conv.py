"""Convolutional EP training speed on this machine against backpropagation on the same architecture.

    python -m benchmarks.conv [--chunk 10] [--rounds 5] [--output benchmarks/conv_results.json]

Cases, all the conv-fmnist config of experiments/configs.py (28x28 input, 5x5 conv 32 with padding
2 -> max pool 14x14, 3x3 conv 64 with padding 1 -> max pool 7x7, 10 outputs read out of the energy,
cross-entropy, batch 32, Adam), trained on Fashion-MNIST exactly as `make train` trains it
(`eqjax.train_chunk` under `jax.jit`, data on device; the pixels are not standardised here, which
changes no arithmetic), from initialisation:

- ``ep``: centered EP, fixed-point relaxation of at most 15 free / 10 + 10 nudged sweeps,
  stopping at the tolerance (as `make train`);
- ``ep-fixed``: the same with exactly 15 / 10 / 10 sweeps (``tol = 0``);
- ``bptt``: backpropagation through the 15 unrolled free-phase sweeps of the same energy and
  solver (``eqjax.estimators.BPTT``, the truncated BP baseline of Scellier et al. 2024): the
  gradient EP estimates, computed by reverse-mode AD;
- ``feedforward``: backprop through the feedforward CNN with the same layers (each clipped to
  [0, 1], same pooling and output), one forward and backward pass per batch: the cost of the
  architecture itself.

It also times 50 kernel gradients of the second conv layer inside one ``lax.scan``, by JAX's own
transpose of the convolution and by :func:`eqjax.models.conv.weight_gradient` (which the
parameter gradients use: XLA's CPU backend runs the former far slower inside loops).

Timing as in `make bench`: everything compiled first, one warm-up round, then rounds that time one
chunk of every case back to back (interleaved, so a burst of load from other jobs hits every case of
that round); seconds per 60,000-example epoch and EP/BP ratios are medians over rounds. Prints a
Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from eqjax.models.conv_ops import conv, weight_gradient

from benchmarks.run import BackpropCase, EPCase, timed
from experiments import configs
from experiments.splits import load_split

ROOT = Path(__file__).resolve().parents[1]
EPOCH_EXAMPLES = 60_000
CONFIG = "conv-fmnist"
CASES = {  # name: (config overrides, table label)
    "ep": ({}, "EP, centered, <= 15/10/10 sweeps to tol"),
    "ep-fixed": ({"tol": 0.0, "check_every": 5}, "EP, exactly 15/10/10 sweeps"),
    "bptt": ({"estimator": "bptt", "tol": 0.0, "check_every": 15}, "BPTT through 15 sweeps"),
}


def feedforward_case(x, y, chunk_batches) -> BackpropCase:
    """Backprop through the feedforward CNN of the same layers (clipped to the model's boxes),
    trained with the config's optimizer."""
    config = configs.named(CONFIG, batches_per_epoch=EPOCH_EXAMPLES // 32)
    model, cost, _, _, optimizer = configs.build(config)
    loss = lambda p, xb, yb: jnp.mean(jax.vmap(cost)(model.feedforward(p, xb), yb))
    return BackpropCase(loss, model.init(jax.random.key(0), jnp.float32), optimizer, x, y, chunk_batches,
                        config.batch_size)


def kernel_gradient_in_a_loop(rounds: int = 3, steps: int = 50) -> dict:
    """Seconds for ``steps`` kernel cotangents of the conv-fmnist net's second layer (batch 32,
    14x14x32 -> 64, 3x3) inside one ``lax.scan``, computed by JAX's transpose of the convolution
    (``jax.vjp`` of :func:`~eqjax.models.conv.conv`) and by
    :func:`~eqjax.models.conv.weight_gradient` (what EP's and backprop's parameter gradients use),
    medians of ``rounds`` after a warm-up, and their ratio."""
    keys = jax.random.split(jax.random.key(0), 3)
    a = jax.random.normal(keys[0], (32, 14, 14, 32))
    w = 0.05 * jax.random.normal(keys[1], (3, 3, 32, 64))
    g = jax.random.normal(keys[2], (32, 14, 14, 64))
    transpose = lambda a_: jax.vjp(lambda k: conv(a_, k, 1), w)[1](g)[0]
    explicit = lambda a_: weight_gradient(a_, g, 3, 1)

    def in_a_loop(gradient):  # the carry changes every step, so nothing is hoisted out of the loop
        step = lambda carry, _: (0.999 * carry + 1e-6 * jnp.sum(gradient(carry)), None)
        return jax.jit(lambda a_: jax.lax.scan(step, a_, None, length=steps)[0])

    seconds = {}
    for name, gradient in (("jax_transpose", transpose), ("weight_gradient", explicit)):
        fn = in_a_loop(gradient)
        timed(fn, a)  # compile and warm up
        seconds[name] = statistics.median(timed(fn, a)[0] for _ in range(rounds))
    seconds["ratio"] = seconds["jax_transpose"] / seconds["weight_gradient"]
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk", type=int, default=10, help="batches of 32 per timed chunk")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up round")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "conv_results.json")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.chunk < 1:
        parser.error("--rounds and --chunk must be at least 1")
    examples = (args.rounds + 1) * args.chunk * 32
    if examples > EPOCH_EXAMPLES:
        parser.error(f"{args.rounds + 1} rounds of {args.chunk} batches need {examples} examples, there are 60,000")
    x, y = load_split("fashion-mnist", "train", examples)
    config = configs.named(CONFIG, batches_per_epoch=EPOCH_EXAMPLES // 32)
    cases = {name: EPCase(config.updated(**overrides), x, y, args.chunk) for name, (overrides, _) in CASES.items()}
    cases["feedforward"] = feedforward_case(x, y, args.chunk)
    compiled = {name: case.compile()[0] for name, case in cases.items()}  # seconds (and MiB)
    for r in range(args.rounds + 1):  # round 0 warms up
        print(f"round {r}/{args.rounds}{' (warm-up)' if r == 0 else ''} ...", file=sys.stderr, flush=True)
        for case in cases.values():
            case.times.append(case.run(r))

    scale = EPOCH_EXAMPLES / (args.chunk * 32)
    epochs = {name: [t * scale for t in case.times[1:]] for name, case in cases.items()}
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpus": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend()},
               "settings": {"config": CONFIG, "chunk_batches": args.chunk, "timed_rounds": args.rounds,
                            "batch": 32}}
    labels = dict({name: label for name, (_, label) in CASES.items()},
                  feedforward="feedforward CNN backprop (same layers)")
    print("\n| case | s/epoch | compile s | EP / this | mean sweeps per phase |")
    print("|---|---|---|---|---|")
    for name, case in cases.items():
        ratio = statistics.median(e / b for e, b in zip(epochs["ep"], epochs[name]))
        steps = ({k: statistics.mean(s[k] for s in case.steps[1:]) for k in case.steps[1]} if case.steps else {})
        results[name] = {"seconds_per_epoch": statistics.median(epochs[name]), "compile_seconds": compiled[name],
                         "chunk_seconds": case.times[1:], "ep_over_this": ratio, "mean_steps": steps}
        shown = ", ".join(f"{k.removesuffix('_steps')} {v:.1f}" for k, v in steps.items()) or "-"
        print(f"| {labels[name]} | {results[name]['seconds_per_epoch']:.0f} | {compiled[name]:.1f} | {ratio:.2f} | "
              f"{shown} |")
    results["kernel_gradient_in_a_loop"] = loop = kernel_gradient_in_a_loop()
    print(f"\n50 kernel gradients in one lax.scan: JAX's transpose {loop['jax_transpose']:.2f} s, "
          f"weight_gradient {loop['weight_gradient']:.2f} s ({loop['ratio']:.0f}x)")
    args.output.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.output}")
    return results


if __name__ == "__main__":
    main()
