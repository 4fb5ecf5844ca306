"""Convolutional EP: eqjax against a PyTorch baseline and against the convolutions' own time.

    python -m benchmarks.conv_vs_torch [--rounds 5] [--batches 2] [--nets dchn chn-28] [--breakdown]
                                       [--profile]
                                       [--output benchmarks/conv_vs_torch_results.json]

Nets (random data of the right shapes; linear output units in the energy, squared error, centered
EP with beta 0.25, the same number of even/odd fixed-point sweeps in every phase, nudged phases
started from the free state, plain SGD):

- ``dchn``: Scellier et al. 2023's deep convolutional Hopfield network, 32x32x3 input, 3x3 convs
  with 128-256-512-512 channels and padding 1, 2x2 max pooling after each; batch 16, 5/5/5 sweeps;
- ``chn-28``: 28x28x1 input, 5x5 convs with 32 and 64 channels, no padding, 2x2 max pooling;
  batch 32, 15/15/15 sweeps.

For each net, seconds per batch of

- ``eqjax``: ``jax.jit(eqjax.train_epoch(...))`` over ``--batches`` batches, per batch, compiled first;
- ``torch``: the same training step in eager PyTorch with all cores (benchmarks/torch_ep.py);
- ``limit``: the convolution passes a step needs, alone, in the fastest formulation found (stride-1
  NHWC convolutions, each pass in the formulation eqjax's relaxation chooses: XLA's, Winograd's
  or from the input's side, ``eqjax.models.conv_ops.pass_method``): per sweep,
  one forward and one transposed convolution (as a forward one with the flipped kernel) per pair
  of conv layers, inside one loop as in a relaxation;
  then EP's weight update: per pair, a forward convolution at each nudged state and a kernel
  gradient (``kernel_cotangent``, as EP's update computes it), and the input layer's convolution
  and kernel gradient. Pooling, clipping, the dense
  output and the optimizer are left out.

and the ratios torch / eqjax and eqjax / limit. ``--profile`` adds where eqjax's training step of
the first net spends its time, from JAX's profiler (:func:`step_profile`). ``--breakdown`` adds
where one relaxation sweep of the first net spends its time (each measured in a loop of sweeps, as
the relaxation runs), and the time of each convolution pass of every net in each formulation
(XLA's, Winograd's F(2x2) and F(4x4), from the input's side).

Timing as in ``make bench``: every case compiled and warmed up, then rounds that time every case
back to back (a burst of load hits all of a round); medians over rounds. Writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import eqjax
from benchmarks.profiling import operation_times
from eqjax.models.conv_ops import (apply_feedback, apply_kernel, conv, feedback_kernel, input_gradient,
                                   kernel_cotangent, per_example_dot, pool, pass_method, prepare_feedback,
                                   prepare_kernel, unpool)
from eqjax.phases import Free
from eqjax.solvers import FixedPoint

ROOT = Path(__file__).resolve().parents[1]
NETS = {
    "dchn": dict(image_shape=(32, 32, 3), channels=(128, 256, 512, 512), kernel=3, padding=1, batch=16, sweeps=5),
    "chn-28": dict(image_shape=(28, 28, 1), channels=(32, 64), kernel=5, padding=0, batch=32, sweeps=15),
}
BETA, LEARNING_RATE = 0.25, 0.01


def model_of(net: dict):
    return eqjax.models.conv_hopfield(net["image_shape"], net["channels"], kernel=net["kernel"],
                                      padding=net["padding"], pooling="max", readout="hopfield",
                                      output_bounds=(-math.inf, math.inf))


def data(net: dict, batches: int, seed: int = 0):
    """Random images in [0, 1] and labels, ``(batches, B, H * W * C)`` and ``(batches, B)``."""
    model, shape = model_of(net), (batches, net["batch"])
    x = jax.random.uniform(jax.random.key(seed), shape + model.input_shape)
    return x, jax.random.randint(jax.random.key(seed + 1), shape, 0, 10)


def wall(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


class EqjaxCase:
    """eqjax's epoch path over ``batches`` batches; ``run()`` returns seconds per batch."""

    def __init__(self, net, batches):
        model, sweeps = model_of(net), net["sweeps"]
        solver = FixedPoint(tol=0.0, max_steps=sweeps, check_every=sweeps)
        self.estimator = eqjax.estimators.EP(beta=BETA, variant="centered")
        optimizer = optax.sgd(LEARNING_RATE)
        self.epoch = jax.jit(eqjax.train_epoch(eqjax.train_step(model, eqjax.costs.squared_error(), optimizer)))
        params = model.init(jax.random.key(0))
        self.arguments = (params, optimizer.init(params), solver, self.estimator, *data(net, batches))
        self.batches = batches

    def run(self) -> float:
        return wall(lambda: self.epoch(*self.arguments)) / self.batches


class TorchCase:
    """The PyTorch baseline on the same shapes; ``run()`` returns seconds per batch."""

    def __init__(self, net, batches):
        import torch

        from benchmarks.torch_ep import ConvEP

        torch.set_num_threads(os.cpu_count())
        self.torch = torch
        self.model = ConvEP(net["image_shape"], net["channels"], net["kernel"], net["padding"],
                            sweeps=(net["sweeps"],) * 3, beta=BETA, learning_rate=LEARNING_RATE)
        x, y = data(net, batches)
        height, width, channels = net["image_shape"]
        images = np.asarray(x).reshape(batches, net["batch"], height, width, channels).transpose(0, 1, 4, 2, 3)
        self.x, self.y = torch.from_numpy(np.array(images)), torch.from_numpy(np.asarray(y, np.int64))

    def run(self) -> float:
        start = time.perf_counter()
        for xb, yb in zip(self.x, self.y):
            self.model.step(xb, yb)
        return (time.perf_counter() - start) / len(self.x)


def conv_pairs(net: dict):
    """Per pair of conv layers ``(k-1, k)``: the lower map's batched shape and the kernel's shape."""
    model = model_of(net)
    maps = model.layer_shapes[: model.num_conv]
    kernels = model.weight_shapes[: model.num_conv]
    return [((net["batch"], *maps[k - 1]), kernels[k]) for k in range(1, model.num_conv)]


class LimitCase:
    """The convolutions of one training step alone (see the module docstring); ``run()`` returns
    seconds per batch."""

    def __init__(self, net):
        pairs, padding, model = conv_pairs(net), net["padding"], model_of(net)
        keys = iter(jax.random.split(jax.random.key(0), 4 * len(pairs) + 4))
        lowers = tuple(jax.random.uniform(next(keys), shape) for shape, _ in pairs)
        kernels = tuple(0.05 * jax.random.normal(next(keys), shape) for _, shape in pairs)
        total_sweeps = 3 * net["sweeps"]

        def sweeps(lowers, kernels):  # forward then transposed, chained so nothing leaves the loop
            size = kernels[0].shape[0]
            methods = pass_method("auto", size, padding), pass_method("auto", size, size - 1 - padding)
            forward = tuple(prepare_kernel(w, methods[0]) for w in kernels)
            flipped = tuple(prepare_feedback(w, methods[1]) for w in kernels)

            def body(_, maps):
                return tuple(1e-3 * apply_feedback(apply_kernel(a, w, size, padding, methods[0]), f, size, padding,
                                                   methods[1])
                             for a, w, f in zip(maps, forward, flipped))

            return jax.lax.fori_loop(0, total_sweeps, body, lowers)

        def weight_update(lowers, kernels, image, first):
            grads = []
            for a, w in zip(lowers, kernels):
                for state in (a, 1 - a):  # the two nudged states
                    grads.append(kernel_cotangent(state, conv(state, w, padding), w.shape[0], padding))
            drive = conv(image, first, padding)
            grads.append(kernel_cotangent(image, drive, first.shape[0], padding))
            return grads

        image = jax.random.uniform(next(keys), (net["batch"], *net["image_shape"]))
        first = 0.05 * jax.random.normal(next(keys), model.weight_shapes[0])
        self.parts = (lambda f=jax.jit(sweeps): f(lowers, kernels),
                      lambda f=jax.jit(weight_update): f(lowers, kernels, image, first))

    def run(self) -> float:
        return sum(wall(part) for part in self.parts)


def ms_per_iteration(fn, args, rounds: int, iterations: int) -> float:
    """Median milliseconds per loop iteration of ``jax.jit(fn)(*args)`` (a loop of ``iterations``),
    after one call that compiles it."""
    jitted = jax.jit(fn)
    wall(lambda: jitted(*args))
    return 1e3 * statistics.median(wall(lambda: jitted(*args)) for _ in range(rounds)) / iterations


def sweep_breakdown(net: dict, rounds: int, sweeps: int = 10) -> dict:
    """Milliseconds per relaxation sweep (free phase, batch and shapes of ``net``), each measured as
    ``sweeps`` iterations of one loop: the sweep eqjax runs; the same with XLA's convolutions for
    every pass (``conv_method="direct"``); the same sweep with JAX's own
    reverse-mode rules for the convolutions (the plain energy, as eqjax relaxed conv nets before);
    and its parts alone: the forward convolutions, the transposed ones as JAX emits them and as
    forward convolutions with flipped kernels (all XLA's), and the max pooling's selection
    (``unpool``)."""
    model, padding = model_of(net), net["padding"]
    params = model.init(jax.random.key(0))
    x = data(net, 1)[0][0]
    state = tuple(jax.random.uniform(jax.random.key(3), (net["batch"], *s)) for s in model.layer_shapes)
    cost, solver = eqjax.costs.squared_error(), FixedPoint(tol=0.0, max_steps=1)
    plain = lambda k, lower, upper: per_example_dot(upper, pool(conv(lower, params["weights"][k], padding), "max", 2))

    def relaxation(energy, model=model):  # the batch's kernels prepared outside the timed loop
        def run(prepared, x, state):
            F = energy(prepared, model)
            return jax.lax.fori_loop(0, sweeps, lambda _, s: solver.step(F, s, None, model.bounds)[0], state)

        return run

    eqjax_energy = lambda prepared, model: eqjax.total_energy(model, cost, Free(), prepared, x, None)
    plain_energy = lambda prepared, model: lambda s: jnp.sum(model.internal_energies(prepared["params"], s, plain)
                                                      - per_example_dot(s[0], prepared["drive"]))
    direct = model.replace(conv_method="direct")
    prepared = model.prepare(params, x)
    pairs = conv_pairs(net)
    lowers = tuple(jax.random.uniform(jax.random.key(4), shape) for shape, _ in pairs)
    kernels = params["weights"][1: model.num_conv]
    outputs = tuple(conv(a, w, padding) for a, w in zip(lowers, kernels))

    def each_pair(fn):  # fn(lower, kernel, output) for every pair, in a loop of sweeps, fed back
        def run(lowers, kernels, outputs):
            def body(_, maps):
                return tuple(0.999 * a + 1e-6 * jnp.mean(fn(a, w, z)) for a, w, z in zip(maps, kernels, outputs))

            return jax.lax.fori_loop(0, sweeps, body, lowers)

        return run

    def jax_transpose(a, w, z):
        return jax.linear_transpose(lambda a_: conv(a_, w, padding), a)(z + a[:, :1, :1, :1])[0]

    cases = {
        "eqjax sweep": (relaxation(eqjax_energy), (prepared, x, state)),
        "eqjax sweep with XLA's convolutions": (relaxation(eqjax_energy, direct),
                                                (direct.prepare(params, x), x, state)),
        "sweep through JAX's conv transposes": (relaxation(plain_energy), (prepared, x, state)),
        "forward convolutions": (each_pair(lambda a, w, z: conv(a, w, padding)), (lowers, kernels, outputs)),
        "transposed convolutions (JAX's transpose)": (each_pair(jax_transpose), (lowers, kernels, outputs)),
        "transposed convolutions (flipped kernels)": (
            each_pair(lambda a, w, z: input_gradient(z + a[:, :1, :1, :1], feedback_kernel(w), padding)),
            (lowers, kernels, outputs)),
        "max-pooling selection (unpool)": (
            each_pair(lambda a, w, z: unpool(pool(z, "max", 2) + a[:, :1, :1, :1], z, "max", 2)), (lowers, kernels, outputs)),
    }
    timings = {}
    for name, (fn, args) in cases.items():
        timings[name] = ms_per_iteration(fn, args, rounds, sweeps)
    return timings


def pass_formulations(net: dict, rounds: int, sweeps: int = 10) -> dict:
    """Milliseconds per pass of each pair of conv layers of ``net``, forward (``k x k`` kernel,
    padding ``p``) and feedback (the flipped kernel, padding ``k - 1 - p``), in each formulation:
    XLA's convolution, Winograd's F(2x2) and F(4x4) (:mod:`eqjax.models.winograd`) and from the
    input's side (``scatter_conv``); kernels prepared outside the loop, as the relaxation does.
    ``{"HxWxC->C' kKpP": {"forward direct": ms, ...}}``."""
    from eqjax.models import winograd

    def formulation(method, feedback):  # (prepare(w), apply(input, prepared, k, forward padding))
        apply = apply_feedback if feedback else apply_kernel
        if method == "winograd-4":  # the Winograd passes with 4x4 tiles (the tile size is the kernel's)
            flip = (lambda w: jnp.flip(w, (0, 1))) if feedback else (lambda w: w)
            return lambda w: winograd.kernel_transform(flip(w), 4), lambda a, u, k, pad: apply(a, u, k, pad, "winograd")
        prepare = prepare_feedback if feedback else prepare_kernel
        return lambda w: prepare(w, method), lambda a, u, k, pad: apply(a, u, k, pad, method)

    timings = {}
    for (shape, kernel_shape) in conv_pairs(net):
        k, pad = kernel_shape[0], net["padding"]
        a = jax.random.uniform(jax.random.key(0), shape)
        w = 0.05 * jax.random.normal(jax.random.key(1), kernel_shape)
        row = {}
        for direction, inputs in {"forward": a, "feedback": conv(a, w, pad)}.items():
            for method in ("direct", "winograd", "winograd-4", "scatter"):
                prepare, apply = formulation(method, direction == "feedback")

                def run(b, u, apply=apply):
                    body = lambda _, b: b + 1e-6 * jnp.mean(apply(b, u, k, pad))
                    return jax.lax.fori_loop(0, sweeps, body, b)

                row[f"{direction} {method}"] = ms_per_iteration(run, (inputs, prepare(w)), rounds, sweeps)
        timings[f"{'x'.join(map(str, shape[1:]))}->{kernel_shape[-1]} k{k}p{pad}"] = row
    return timings


def step_profile(net: dict, top: int = 12) -> dict:
    """Where eqjax's training step of ``net`` spends its time under JAX's profiler
    (:mod:`benchmarks.profiling`), in milliseconds of operation time per batch (both threads):
    totals inside the relaxation loops and in the rest of the step (each phase's last sweep before
    its stopping test, the kernel preparation, EP's weight update, the optimizer), each split
    into matrix products and convolutions (``ynn_fusion``) and the rest; and the ``top`` slowest
    operations."""
    case = EqjaxCase(net, 2)
    case.run()  # compiled and warmed up before the trace
    rows = operation_times(case.run, case.epoch.lower(*case.arguments).compile().as_text())
    totals = collections.defaultdict(float)
    for row in rows:
        where = "relaxation loop" if row.in_loop else "rest of the step"
        what = "products and convolutions" if row.kind == "ynn_fusion" else "other operations"
        totals[f"{where}: {what}"] += row.ms / case.batches
    slowest = [{"operation": row.name, "from": row.source.rsplit("/", 1)[-1] or row.name, "shape": row.shape,
                "in_loop": row.in_loop, "count": row.count / case.batches, "ms": row.ms / case.batches}
               for row in rows[:top]]
    return {"ms_per_batch": dict(sorted(totals.items(), key=lambda item: -item[1])), "slowest": slowest}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up round")
    parser.add_argument("--batches", type=int, default=2, help="batches per timed eqjax epoch and torch loop")
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=list(NETS))
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of one sweep")
    parser.add_argument("--profile", action="store_true",
                        help="also profile eqjax's training step of the first net (JAX's profiler)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "conv_vs_torch_results.json")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batches < 1:
        parser.error("--rounds and --batches must be at least 1")
    import torch

    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpus": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
                           "torch_threads": os.cpu_count(), "backend": jax.default_backend()},
               "settings": {"rounds": args.rounds, "batches": args.batches, "beta": BETA}}
    print("| net | batch | sweeps free / + / - | eqjax s/batch | PyTorch s/batch | PyTorch / eqjax | "
          "limit s/batch | eqjax / limit |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.nets:
        net = NETS[name]
        cases = {"eqjax": EqjaxCase(net, args.batches), "torch": TorchCase(net, args.batches), "limit": LimitCase(net)}
        times = {case: [] for case in cases}
        for r in range(args.rounds + 1):  # round 0 compiles and warms up
            print(f"{name}: round {r}/{args.rounds}{' (warm-up)' if r == 0 else ''} ...", file=sys.stderr, flush=True)
            for case_name, case in cases.items():
                seconds = case.run()
                if r:
                    times[case_name].append(seconds)
        median = {case: statistics.median(t) for case, t in times.items()}
        speedup = statistics.median(t / e for t, e in zip(times["torch"], times["eqjax"]))
        over_limit = statistics.median(e / lim for e, lim in zip(times["eqjax"], times["limit"]))
        results[name] = {"net": {k: list(v) if isinstance(v, tuple) else v for k, v in net.items()},
                         "seconds_per_batch": median, "rounds": times, "torch_over_eqjax": speedup,
                         "eqjax_over_limit": over_limit}
        sweeps = net["sweeps"]
        print(f"| {name} | {net['batch']} | {sweeps} / {sweeps} / {sweeps} | {median['eqjax']:.3f} | "
              f"{median['torch']:.3f} | {speedup:.2f} | {median['limit']:.3f} | {over_limit:.2f} |", flush=True)
    if args.breakdown:
        name = args.nets[0]
        results["sweep_breakdown"] = {"net": name, "ms_per_sweep": sweep_breakdown(NETS[name], args.rounds)}
        print(f"\nOne free-phase sweep of {name} (batch {NETS[name]['batch']}), ms, in a loop of sweeps:")
        for part, ms in results["sweep_breakdown"]["ms_per_sweep"].items():
            print(f"  {part}: {ms:.1f}")
        results["pass_formulations"] = {}
        for net_name in args.nets:
            results["pass_formulations"][net_name] = pass_formulations(NETS[net_name], args.rounds)
            print(f"\nOne convolution pass of {net_name} (batch {NETS[net_name]['batch']}), ms, per formulation:")
            for pair, row in results["pass_formulations"][net_name].items():
                print(f"  {pair}: " + ", ".join(f"{method} {ms:.2f}" for method, ms in row.items()))
    if args.profile:
        name = args.nets[0]
        results["step_profile"] = {"net": name, **step_profile(NETS[name])}
        totals = results["step_profile"]["ms_per_batch"]
        print(f"\neqjax's training step of {name} under the profiler, ms of operation time per batch (both "
              f"threads), {sum(totals.values()):.0f} in all:")
        for part, ms in totals.items():
            print(f"  {part}: {ms:.1f}")
        print("The slowest operations (ms per batch, times run per batch, JAX source, shape):")
        for row in results["step_profile"]["slowest"]:
            print(f"  {row['ms']:6.1f} {row['count']:4.0f}x {row['from']} {row['shape']}"
                  f"{' (in the loop)' if row['in_loop'] else ''}")
    args.output.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.output}")
    return results


if __name__ == "__main__":
    main()
