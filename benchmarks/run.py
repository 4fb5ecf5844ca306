"""`make bench`: EP training speed against backprop and against the machine's arithmetic limit.

Everything is measured in one process, interleaved: after compiling every case and one warm-up
round, each round times one chunk of every case back to back, so a burst of load from other jobs
on a shared machine hits all cases of that round alike. Ratios are taken within a round and
reported as the median over rounds; seconds per 60,000-example epoch are medians over rounds too.

- EP training of DHN-1H (784-1024-10, batch 16, centered EP, block-coordinate at most 15/15/15
  steps, stopping at the tolerance; and again with exactly 15/15/15) and of the Scellier-Bengio
  784-500-10 net (batch 20, gradient descent 20/4), exactly as `make train` runs them
  (`eqjax.train_chunk` under `jax.jit`, MNIST on device), from initialisation;
- plain backprop on the same architectures (feedforward MLP, each layer clipped to the EP model's
  box, same initialisation, cost and batch, SGD at one rate of 0.05) trained the same way: the
  EP/BP ratio;
- the arithmetic limit: the matrix products one EP batch needs (see `limit_terms`: the input
  projection and W_1's outer product once per batch, the relaxation's two products per
  interaction for the measured mean number of steps, two outer products per other weight), each
  timed at its shape in the same rounds (the relaxation's two products chained in a loop of their
  own, in the faster weight layout); our epoch time as a multiple of the summed limit;
- compile time of each case's chunk function (once; no later chunk recompiles);
- memory: XLA's buffer sizes for one compiled chunk of each case (arguments, outputs and
  temporaries: the working set of training, without the data set), and the process's peak RSS.

Prints a table and writes benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

ROOT = Path(__file__).resolve().parents[1]
from experiments import configs  # noqa: E402
from experiments.splits import load_split  # noqa: E402

EPOCH_EXAMPLES = 60_000
# EP variants timed: a named config of experiments/configs.py with overrides. "dhn-1h" stops each
# phase at its tolerance (as `make train` does); "dhn-1h-fixed" runs exactly 15 + 15 + 15 steps
# (tol = 0, tested once at the end: the same states as testing every step), the published setting.
VARIANTS = {  # name: (config, overrides, table label)
    "dhn-1h": ("dhn-1h", {}, "DHN-1H 784-1024-10, phases stop at tol"),
    "dhn-1h-fixed": ("dhn-1h", {"tol": 0.0, "check_every": 15}, "DHN-1H, exactly 15/15/15 steps"),
    "sb-500": ("sb-500", {}, "Scellier-Bengio 784-500-10"),
}
MIB = 2**20


def variant_config(name):
    """The config of an EP variant, with ``batches_per_epoch`` set."""

    base, overrides, _ = VARIANTS[name]
    config = configs.named(base, **overrides)
    return config.updated(batches_per_epoch=EPOCH_EXAMPLES // config.batch_size)


def timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def compile_with_memory(jitted, *args) -> tuple[float, float]:
    """``(seconds to lower and compile, MiB)`` of one call; the MiB are its arguments, outputs and
    temporaries (XLA's buffer assignment). The jitted function reuses the compiled executable."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    total = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
             - stats.alias_size_in_bytes)
    return seconds, total / MIB


def batch_steps(metrics) -> dict:
    """``{"<phase>_steps": mean over the chunk's batches of the steps each batch ran}`` from a
    chunk's metrics: the ``<phase>_batch_steps`` metrics (the most steps any example of the batch
    needed: what the batch computed), not ``<phase>_steps`` (the mean of the examples' own counts)."""
    suffix = "_batch_steps"
    return {k.removesuffix(suffix) + "_steps": float(jnp.mean(v)) for k, v in metrics.items() if k.endswith(suffix)}


class EPCase:
    """EP training of a config (as `make train` runs it): ``compile()`` once, then ``run(r)``
    trains on chunk ``r`` (consecutive batches, carrying parameters and state over) and returns its
    seconds."""

    def __init__(self, config, x, y, chunk_batches):
        self.config = config
        model, cost, solver, estimator, optimizer = configs.build(self.config)
        self.chunk = configs.chunk_function(self.config, model, cost, optimizer)
        self.hyper = (solver, estimator)
        params = model.init(jax.random.key(0))
        self.carry = (params, optimizer.init(params), configs.initial_state(self.config, model, len(x)))
        self.x, self.y, self.chunk_batches, self.batch = x, y, chunk_batches, self.config.batch_size
        self.steps, self.times = [], []

    def arguments(self, r):
        first = r * self.chunk_batches * self.batch
        index = jnp.arange(first, first + self.chunk_batches * self.batch).reshape(self.chunk_batches, self.batch)
        keys = jax.random.split(jax.random.key(first), self.chunk_batches)
        return (*self.carry, *self.hyper, self.x[index], self.y[index], index, keys)

    def compile(self):
        return compile_with_memory(self.chunk, *self.arguments(0))

    def run(self, r):
        seconds, (params, opt_state, state, metrics) = timed(self.chunk, *self.arguments(r))
        self.carry = (params, opt_state, state)
        self.steps.append(batch_steps(metrics))
        return seconds


class BackpropCase:
    """Training by backprop on ``loss(params, x_batch, y_batch)`` with ``optimizer``, one
    ``lax.scan`` over the batches of a chunk (the carry donated, as the EP chunks update in place);
    ``x`` and ``y`` hold the examples of every round, ``batch`` examples per step."""

    def __init__(self, loss, params, optimizer, x, y, chunk_batches, batch):
        self.carry = (params, optimizer.init(params))
        self.x, self.y, self.chunk_batches, self.batch = x, y, chunk_batches, batch
        self.times, self.steps = [], []

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def chunk(p, s, xs, ys):
            def body(carry, batch_xy):
                p, s = carry
                grads = jax.grad(loss)(p, *batch_xy)
                updates, s = optimizer.update(grads, s, p)
                return (optax.apply_updates(p, updates), s), None

            return jax.lax.scan(body, (p, s), (xs, ys))[0]

        self.chunk = chunk

    def arguments(self, r):
        first, last = r * self.chunk_batches * self.batch, (r + 1) * self.chunk_batches * self.batch
        return (*self.carry, self.x[first:last].reshape(self.chunk_batches, self.batch, -1),
                self.y[first:last].reshape(self.chunk_batches, self.batch))

    def compile(self):
        return compile_with_memory(self.chunk, *self.arguments(0))

    def run(self, r):
        seconds, self.carry = timed(self.chunk, *self.arguments(r))
        return seconds


def bp_case(base, x, y, chunk_batches) -> BackpropCase:
    """Backprop on the architecture of the named config ``base``: each layer clipped to the EP
    model's box (hard-sigmoid hidden units; DHN's outputs are linear, Scellier-Bengio's in [0, 1]),
    the same initialisation and squared-error cost, SGD at 0.05 (the rate does not change the
    time)."""
    config = configs.named(base, batches_per_epoch=1)
    model, cost = configs.build(config)[:2]

    def loss(p, xb, yb):
        h = xb
        for w, b, (lo, hi) in zip(p["weights"], p["biases"], model.bounds):
            h = jnp.clip(h @ w + b, lo, hi)
        return jnp.mean(jax.vmap(cost)(h, yb))

    return BackpropCase(loss, model.init(jax.random.key(0)), optax.sgd(0.05), x, y, chunk_batches, config.batch_size)


class MatmulCase:
    """Seconds of one ``(m, k) @ (k, n)`` float32 product (the input projection and the weight
    gradients' outer products), from a jitted loop of distinct products; each also pays an
    ``(m, n)`` addition into the accumulator, which makes the limit slightly conservative."""

    def __init__(self, m, k, n, repeats=100):
        self.a = jax.random.uniform(jax.random.key(0), (repeats, m, k), jnp.float32)
        self.b = jax.random.uniform(jax.random.key(1), (k, n), jnp.float32)
        self.repeats = repeats
        self.loop = jax.jit(lambda a, b: jax.lax.fori_loop(
            0, repeats, lambda i, acc: acc + a[i] @ b, jnp.zeros((m, n), jnp.float32)))

    def run(self, r):
        return timed(self.loop, self.a, self.b)[0] / self.repeats


class ProductPairCase:
    """Seconds of the two products a relaxation step makes with one interaction ``W`` of shape
    ``(n_in, n_out)`` for a batch of ``m``: ``s_in @ W`` and ``s_out @ W^T``, chained
    (``s <- (s @ W) @ W^T`` with orthonormal columns, so values stay put) with nothing else in the
    loop, with ``W`` stored either way round; the faster layout counts. This is what the arithmetic
    of a step costs when done as well as this machine does it, loop overhead included."""

    def __init__(self, m, n_in, n_out, repeats=2000):
        w, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (max(n_in, n_out), min(n_in, n_out))))
        w = w if n_in >= n_out else w.T  # (n_in, n_out) with orthonormal columns or rows
        s0 = jax.random.uniform(jax.random.key(1), (m, n_in), jnp.float32)
        self.operands = ((w.astype(jnp.float32), s0), (jnp.asarray(w.T.copy(), jnp.float32), s0))
        self.repeats = repeats
        self.loops = (
            jax.jit(lambda w, s: jax.lax.fori_loop(0, repeats, lambda i, s: (s @ w) @ w.T, s)),
            jax.jit(lambda wt, s: jax.lax.fori_loop(0, repeats, lambda i, s: (s @ wt.T) @ wt, s)),
        )

    def run(self, r):
        return min(timed(loop, *ops)[0] for loop, ops in zip(self.loops, self.operands)) / self.repeats


def limit_terms(sizes, batch):
    """The products of one EP batch of a layered net, as ``(kind, shape, count per step, count per
    batch)``: the input projection ``x @ W_1`` and ``W_1``'s outer product once per batch; for each
    interaction ``W_l`` (l >= 2) one product pair (both directions) per relaxation step and two
    outer products per update (both phases' states)."""
    terms = [("matmul", (batch, sizes[0], sizes[1]), 0, 1), ("matmul", (sizes[0], batch, sizes[1]), 0, 1)]
    for n_in, n_out in zip(sizes[1:-1], sizes[2:]):
        terms += [("pair", (batch, n_in, n_out), 1, 0), ("matmul", (n_in, batch, n_out), 0, 2)]
    return terms


def per_epoch(case, chunk_batches):
    """The timed rounds' seconds of a case, scaled to a 60,000-example epoch."""
    return [t * EPOCH_EXAMPLES / (chunk_batches * case.batch) for t in case.times[1:]]


def summarize(ep, bp, timers, compiled, chunk_batches):
    """One table row's figures for an EP case against its BP case and its arithmetic limit."""
    ep_epochs, bp_epochs = per_epoch(ep, chunk_batches), per_epoch(bp, chunk_batches)
    mean_steps = {k: statistics.mean(s[k] for s in ep.steps[1:]) for k in ep.steps[1]}
    steps = sum(mean_steps.values())
    terms = limit_terms(ep.config.sizes, ep.batch)
    batches = EPOCH_EXAMPLES // ep.batch
    limits = [batches * sum((steps * per_step + per_batch) * timers[(kind, shape)][r]
                            for kind, shape, per_step, per_batch in terms)
              for r in range(1, len(ep.times))]
    flops = sum((steps * per_step * 2 + per_batch) * 2 * m * k * n for _, (m, k, n), per_step, per_batch in terms)
    return {
        "seconds_per_epoch": statistics.median(ep_epochs),
        "compile_seconds": compiled[0][0],
        "chunk_seconds": ep.times[1:],
        "mean_steps": mean_steps,
        "bp_seconds_per_epoch": statistics.median(bp_epochs),
        "ep_over_bp": statistics.median(e / b for e, b in zip(ep_epochs, bp_epochs)),
        "limit_seconds_per_epoch": statistics.median(limits),
        "ep_over_limit": statistics.median(e / lim for e, lim in zip(ep_epochs, limits)),
        "gflop_per_epoch": flops * batches / 1e9,
        "ep_xla_mib": compiled[0][1], "bp_xla_mib": compiled[1][1],
        "batch": ep.batch, "sizes": list(ep.config.sizes),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk", type=int, default=100, help="batches per timed chunk")
    parser.add_argument("--rounds", type=int, default=21, help="timed rounds after the warm-up round")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results.json")
    args = parser.parse_args()
    if args.rounds < 1 or args.chunk < 1:
        parser.error("--rounds and --chunk must be at least 1")
    needed = (args.rounds + 1) * args.chunk * max(variant_config(n).batch_size for n in VARIANTS)
    if needed > EPOCH_EXAMPLES:
        parser.error(f"{args.rounds + 1} rounds of {args.chunk} batches need {needed} examples, MNIST has 60,000")

    x, y = load_split("mnist", "train")
    cases = {name: EPCase(variant_config(name), x, y, args.chunk) for name in VARIANTS}
    cases.update({f"bp-{base}": bp_case(base, x, y, args.chunk) for base in {b for b, _, _ in VARIANTS.values()}})
    kinds = {(kind, shape) for case in cases.values() if isinstance(case, EPCase)
             for kind, shape, _, _ in limit_terms(case.config.sizes, case.batch)}
    timers = {key: (ProductPairCase if key[0] == "pair" else MatmulCase)(*key[1]) for key in sorted(kinds)}
    compiled = {name: case.compile() for name, case in cases.items()}  # (seconds, MiB)
    timer_seconds = {key: [] for key in timers}
    for r in range(args.rounds + 1):  # round 0 warms up
        print(f"round {r}/{args.rounds}{' (warm-up)' if r == 0 else ''} ...", file=sys.stderr, flush=True)
        for case in cases.values():
            case.times.append(case.run(r))
        for key, timer in timers.items():
            timer_seconds[key].append(timer.run(r))

    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpus": os.cpu_count(), "jax": jax.__version__,
                           "backend": jax.default_backend()},
               "settings": {"chunk_batches": args.chunk, "timed_rounds": args.rounds},
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    header = ("model", "EP s/epoch", "compile s", "BP s/epoch", "EP/BP", "limit s/epoch", "EP/limit",
              "GFLOP/epoch", "EP XLA MiB", "BP XLA MiB")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, (base, _, label) in VARIANTS.items():
        row = results[name] = summarize(cases[name], cases[f"bp-{base}"], timer_seconds,
                                        (compiled[name], compiled[f"bp-{base}"]), args.chunk)
        figures = (row["seconds_per_epoch"], row["compile_seconds"], row["bp_seconds_per_epoch"], row["ep_over_bp"],
                   row["limit_seconds_per_epoch"], row["ep_over_limit"], row["gflop_per_epoch"],
                   row["ep_xla_mib"], row["bp_xla_mib"])
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in figures) + " |")
    for name in VARIANTS:
        print(f"{name}: mean relaxation steps per batch {results[name]['mean_steps']}")
    print(f"peak RSS of the process (all cases and MNIST): {results['peak_rss_mib']:.0f} MiB")
    args.output.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
