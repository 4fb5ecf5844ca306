"""`make bench`: EP training speed against backprop and against the machine's arithmetic limit.

Measured side by side in one run, each case in its own subprocess (so peak memory is per case):

- EP training of DHN-1H (784-1024-10, batch 16, centered EP, block-coordinate at most 15/15/15
  steps, stopping at the tolerance; and again with exactly 15/15/15) and of the Scellier-Bengio
  784-500-10 net (batch 20, gradient descent 20/4), exactly as `make train` runs them
  (`eqjax.train_chunk` under `jax.jit`, MNIST on device), from initialisation: seconds per
  60,000-example epoch, the median of several timed chunks after a compile (compile time reported
  separately);
- plain backprop on the same architectures (feedforward MLP, hard-sigmoid hidden units, same
  cost, batch and SGD) trained the same way: seconds per epoch and the EP/BP ratio;
- the arithmetic limit: the matrix products one EP batch needs (input projection once per batch,
  the relaxation products for the measured mean number of steps per phase, one outer product per
  layer and phase pair for the weight update), each timed alone at its shape on this machine; our
  epoch time as a multiple of the summed limit;
- peak resident memory of each case's process.

Prints a table and writes benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

EPOCH_EXAMPLES = 60_000
# EP variants timed: a named config of experiments/configs.py with overrides. "dhn-1h" stops each
# phase at its tolerance (as `make train` does); "dhn-1h-fixed" runs exactly 15 + 15 + 15 steps
# (tol = 0), the worst case and the setting the published DHN-1H uses.
VARIANTS = {  # name: (config, overrides, table label)
    "dhn-1h": ("dhn-1h", {}, "DHN-1H 784-1024-10, phases stop at tol"),
    "dhn-1h-fixed": ("dhn-1h", {"tol": 0.0}, "DHN-1H, exactly 15/15/15 steps"),
    "sb-500": ("sb-500", {}, "Scellier-Bengio 784-500-10"),
}
CASES = (*VARIANTS, "bp-dhn-1h", "bp-sb-500", *(f"matmul-{name}" for name in VARIANTS))


def variant_config(name):
    """``(base config name, config dict)`` of an EP variant, with ``batches_per_epoch`` set."""
    import configs

    base, overrides, _ = VARIANTS[name]
    config = dict(configs.CONFIGS[base], **overrides)
    return base, dict(config, batches_per_epoch=EPOCH_EXAMPLES // config["batch_size"])


def mnist_on_device():
    import jax.numpy as jnp

    import eqjax

    images, labels = eqjax.data.load("mnist", "train")
    return jnp.asarray(images.reshape(len(images), -1), jnp.float32) / 255.0, jnp.asarray(labels)


def timed(fn, *args):
    import jax

    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def chunk_plan(batch, chunk_batches, repeats):
    """Disjoint chunks of consecutive batches: (first compile chunk, then `repeats` timed ones)."""
    return [(i * chunk_batches * batch, (i + 1) * chunk_batches * batch) for i in range(repeats + 1)]


def bench_ep(name, chunk_batches, repeats):
    import jax
    import jax.numpy as jnp

    import configs

    x, y = mnist_on_device()
    config = variant_config(name)[1]
    model, cost, solver, estimator, optimizer = configs.build(config)
    batch = config["batch_size"]
    chunk = configs.chunk_function(config, model, cost, solver, estimator, optimizer)
    params = model.init(jax.random.key(0))
    opt_state = optimizer.init(params)
    state = configs.initial_state(config, model, len(x))
    times, steps = [], []
    for first, last in chunk_plan(batch, chunk_batches, repeats):
        index = jnp.arange(first, last).reshape(chunk_batches, batch)
        keys = jax.random.split(jax.random.key(first), chunk_batches)
        seconds, (params, opt_state, state, metrics) = timed(
            chunk, params, opt_state, state, x[index], y[index], index, keys)
        times.append(seconds)
        steps.append({k: float(jnp.mean(v)) for k, v in metrics.items() if k.endswith("_steps")})
    median = statistics.median(times[1:])
    return {
        "seconds_per_epoch": median * EPOCH_EXAMPLES / (chunk_batches * batch),
        "compile_seconds": times[0] - median,
        "chunk_seconds": times[1:],
        "mean_steps": {k: statistics.mean(s[k] for s in steps[1:]) for k in steps[1]},
        "batch": batch,
        "sizes": config["sizes"],
    }


def bench_bp(name, chunk_batches, repeats):
    """Backprop on the same architecture: each layer clipped to the EP model's box (hard-sigmoid
    hidden units; DHN's outputs are linear, Scellier-Bengio's in [0, 1]), the same initialisation
    and squared-error cost, SGD, one lax.scan per chunk."""
    import jax
    import jax.numpy as jnp
    import optax

    import configs

    config = configs.CONFIGS[name]
    x, y = mnist_on_device()
    model, cost = configs.build(dict(config, batches_per_epoch=1))[:2]
    params = model.init(jax.random.key(0))
    optimizer = optax.sgd(0.05)
    opt_state = optimizer.init(params)
    batch = config["batch_size"]

    def loss(p, xb, yb):
        h = xb
        for w, b, (lo, hi) in zip(p["weights"], p["biases"], model.bounds):
            h = jnp.clip(h @ w + b, lo, hi)
        return jnp.mean(jax.vmap(cost)(h, yb))

    @jax.jit
    def chunk(p, s, xs, ys):
        def body(carry, batch_xy):
            p, s = carry
            value, grads = jax.value_and_grad(loss)(p, *batch_xy)
            updates, s = optimizer.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), value

        return jax.lax.scan(body, (p, s), (xs, ys))

    times = []
    for first, last in chunk_plan(batch, chunk_batches, repeats):
        xs = x[first:last].reshape(chunk_batches, batch, -1)
        ys = y[first:last].reshape(chunk_batches, batch)
        seconds, ((params, opt_state), _) = timed(chunk, params, opt_state, xs, ys)
        times.append(seconds)
    median = statistics.median(times[1:])
    return {"seconds_per_epoch": median * EPOCH_EXAMPLES / (chunk_batches * batch),
            "compile_seconds": times[0] - median, "chunk_seconds": times[1:]}


def matmul_seconds(m, k, n, repeats=400):
    """Seconds for one (m, k) @ (k, n) float32 product, from a jitted loop of distinct products."""
    import jax
    import jax.numpy as jnp

    a = jax.random.uniform(jax.random.key(0), (repeats, m, k), jnp.float32)
    b = jax.random.uniform(jax.random.key(1), (k, n), jnp.float32)

    @jax.jit
    def loop(a, b):
        return jax.lax.fori_loop(0, repeats, lambda i, acc: acc + a[i] @ b, jnp.zeros((m, n), jnp.float32))

    jax.block_until_ready(loop(a, b))
    return statistics.median(timed(loop, a, b)[0] for _ in range(5)) / repeats


def products_per_batch(sizes, batch, steps):
    """Matrix products of one EP batch for a layered net: ((m, k, n), count) pairs.

    Input projection x @ W_1 once; per relaxation step, every interaction W_l (l >= 2) is used in
    both directions (s_{l-1} @ W_l and s_l @ W_l^T); per weight update, one outer product for W_1
    (x^T times the difference of states) and two for each W_l, l >= 2 (both phases' states).
    ``steps`` is the total number of relaxation steps of all phases.
    """
    products = [((batch, sizes[0], sizes[1]), 1), ((sizes[0], batch, sizes[1]), 1)]
    for n_in, n_out in zip(sizes[1:-1], sizes[2:]):
        products += [((batch, n_in, n_out), steps), ((batch, n_out, n_in), steps),
                     ((n_in, batch, n_out), 2)]
    return products


def bench_matmul(name, ep_result):
    config = variant_config(name)[1]
    steps = sum(ep_result["mean_steps"].values())
    products = products_per_batch(config["sizes"], config["batch_size"], steps)
    per_batch = sum(count * matmul_seconds(*shape) for shape, count in products)
    flops = sum(count * 2 * m * k * n for (m, k, n), count in products)
    batches = EPOCH_EXAMPLES // config["batch_size"]
    return {"limit_seconds_per_epoch": per_batch * batches, "gflop_per_epoch": flops * batches / 1e9,
            "products": [[list(shape), count] for shape, count in products]}


def run_case(case, args, ep_results):
    if case.startswith("matmul-"):
        result = bench_matmul(case[len("matmul-"):], ep_results[case[len("matmul-"):]])
    elif case.startswith("bp-"):
        result = bench_bp(case[len("bp-"):], args.chunk, args.repeats)
    else:
        result = bench_ep(case, args.chunk, args.repeats)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk", type=int, default=250, help="batches per timed chunk")
    parser.add_argument("--repeats", type=int, default=5, help="timed chunks after the compile")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--ep-results", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results.json")
    args = parser.parse_args()
    if args.case:
        ep_results = json.loads(args.ep_results) if args.ep_results else {}
        print(json.dumps(run_case(args.case, args, ep_results)))
        return

    import jax

    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpus": __import__("os").cpu_count(), "jax": jax.__version__,
                           "backend": jax.default_backend()},
               "settings": {"chunk_batches": args.chunk, "timed_chunks": args.repeats}}
    for case in CASES:
        command = [sys.executable, __file__, "--case", case, "--chunk", str(args.chunk),
                   "--repeats", str(args.repeats), "--ep-results",
                   json.dumps({k: v for k, v in results.items() if k in VARIANTS})]
        print(f"running {case} ...", flush=True)
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[case] = json.loads(out.strip().splitlines()[-1])

    rows = []
    for name, (base, _, label) in VARIANTS.items():
        ep, bp, limit = results[name], results[f"bp-{base}"], results[f"matmul-{name}"]
        ratios = {"ep_over_bp": ep["seconds_per_epoch"] / bp["seconds_per_epoch"],
                  "ep_over_limit": ep["seconds_per_epoch"] / limit["limit_seconds_per_epoch"]}
        results[name].update(ratios)
        rows.append((label, ep["seconds_per_epoch"], ep["compile_seconds"], bp["seconds_per_epoch"],
                     ratios["ep_over_bp"], limit["limit_seconds_per_epoch"], ratios["ep_over_limit"],
                     limit["gflop_per_epoch"], ep["peak_rss_mib"], bp["peak_rss_mib"]))
    header = ("model", "EP s/epoch", "compile s", "BP s/epoch", "EP/BP", "limit s/epoch", "EP/limit",
              "GFLOP/epoch", "EP peak MiB", "BP peak MiB")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |")
    for name in VARIANTS:
        print(f"{name}: mean relaxation steps per batch {results[name]['mean_steps']}")
    args.output.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
