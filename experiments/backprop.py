"""Backprop baseline of a conv config: the feedforward CNN with the same layers, trained like EP.

    python -m experiments.backprop --model conv-fmnist --dataset fashion-mnist --epochs 3

The network is :meth:`eqjax.models.ConvHopfield.feedforward` of the config's model (each layer
computed once from the one below and clipped into its box, no feedback), trained by backprop of
the config's cost with the config's optimizer, batch size, data order, standardisation and
augmentation, so that its test error per epoch is the reference for `make train` on the same
config. Prints one line per epoch and writes them (atomically, after every epoch) to
``<runs-dir>/backprop-<model>-<dataset>-seed<seed>-<time>.json``. Accepts the training CLI's
options that make sense without relaxation (``--set``, limits, seed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common, configs, runfiles


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="conv-fmnist", help="a conv config (family 'conv')")
    parser.add_argument("--dataset", default="fashion-mnist", choices=["mnist", "fashion-mnist", "cifar10"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--test-limit", type=int)
    parser.add_argument("--data-dir")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return parser.parse_args(argv)


def epoch_function(model, cost, optimizer):
    """Jitted ``epoch(params, opt_state, xs, ys) -> (params, opt_state, mean loss)`` over batches
    ``xs`` ``(K, B, features)``, ``ys`` ``(K, B)`` as one ``lax.scan``."""
    loss = lambda p, x, y: jnp.mean(jax.vmap(cost)(model.feedforward(p, x), y))

    def body(carry, batch):
        value, grads = jax.value_and_grad(loss)(carry[0], *batch)
        updates, state = optimizer.update(grads, carry[1], carry[0])
        return (optax.apply_updates(carry[0], updates), state), value

    @jax.jit
    def epoch(params, opt_state, xs, ys):
        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xs, ys))
        return params, opt_state, jnp.mean(losses)

    return epoch


def test_error(predict, params, x, y, batch=2000) -> float:
    """Fraction of ``x`` misclassified by the jitted ``predict(params, x_batch)`` (class indices)."""
    wrong = sum(int(jnp.sum(predict(params, x[i:i + batch]) != y[i:i + batch])) for i in range(0, len(x), batch))
    return wrong / len(x)


def main(argv=None):
    args = parse_args(argv)
    if args.epochs < 1:
        raise SystemExit("--epochs must be at least 1")
    config = common.run_config(args.model, args.set, args.epochs, dataset=args.dataset, seed=args.seed,
                               train_limit=args.train_limit, test_limit=args.test_limit, validation=0)
    if config.family != "conv":
        raise SystemExit(f"--model {args.model} is not a conv config; the baseline is the feedforward CNN")
    data = common.load_data(config, args.data_dir)
    config = config.updated(batches_per_epoch=len(data["x"]) // config.batch_size)
    model, cost, _, _, optimizer = configs.build(config)
    params = model.init(jax.random.key(config.seed), jnp.float32)
    opt_state, epoch_fn = optimizer.init(params), epoch_function(model, cost, optimizer)
    predict = jax.jit(lambda p, xb: jnp.argmax(model.feedforward(p, xb), axis=-1))  # compiled once
    augment, augment_key = common.augmentation(config), jax.random.key(config.seed + 1)
    batch, batches, records = config.batch_size, config.batches_per_epoch, []
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    path = args.runs_dir / f"backprop-{args.model}-{args.dataset}-seed{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    for epoch in range(args.epochs):
        start = time.time()
        order = common.epoch_order(config.seed, epoch, len(data["x"]), batches * batch)
        xs, ys = data["x"][order].reshape(batches, batch, -1), data["y"][order].reshape(batches, batch)
        if augment is not None:
            xs = augment(xs, jax.random.fold_in(augment_key, epoch))
        params, opt_state, loss = epoch_fn(params, opt_state, xs, ys)
        loss = float(loss)
        if not np.isfinite(loss):
            raise SystemExit(f"backprop diverged in epoch {epoch + 1} (loss {loss}); {path} keeps the epochs before")
        error = test_error(predict, params, data["x_test"], data["y_test"])
        records.append({"epoch": epoch + 1, "train_loss": loss, "test_error": error, "seconds": time.time() - start})
        print(f"epoch {epoch + 1}: train loss {loss:.4f}, test error {100 * error:.2f}%, "
              f"{records[-1]['seconds']:.1f} s", flush=True)
        runfiles.atomic_write_bytes(path, json.dumps({"config": config.to_dict(), "epochs": records}, indent=2).encode())
    return records


if __name__ == "__main__":
    main()
