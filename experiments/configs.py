"""Named training configurations (hyperparameters from ANCHORS.md) and how to build them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import eqjax

# Each config is plain JSON-able data; `build` turns it into eqjax values.
CONFIGS = {
    # Scellier et al. 2023/2024 deep Hopfield networks: centered EP beta=0.2, block-coordinate 15/15,
    # batch 16, SGD 0.05 with 0.99 decay per epoch, gain 0.7, warm start from the previous batch.
    "dhn-1h": dict(sizes=[784, 1024, 10], energy="bilinear", gain=0.7, cost="squared_error",
                   solver="block_coordinate", tol=1e-4, free_steps=15,
                   beta=0.2, variant="centered", batch_size=16, learning_rate=0.05,
                   decay=0.99, warm_start=True, output_bounds=None),
    # Deeper nets: with gain 0.7 the 1024x1024 interaction has spectral norm above 1 at
    # initialisation and the relaxation does not converge (90% error after one epoch here); gains
    # 0.5 (2H) and 0.4 (3H) learn. ANCHORS.md gives 0.7 for DHN-1H only.
    "dhn-2h": dict(sizes=[784, 1024, 1024, 10], energy="bilinear", gain=0.5, cost="squared_error",
                   solver="block_coordinate", tol=1e-4, free_steps=15,
                   beta=0.2, variant="centered", batch_size=16, learning_rate=0.05,
                   decay=0.99, warm_start=True),
    "dhn-3h": dict(sizes=[784, 1024, 1024, 1024, 10], energy="bilinear", gain=0.4,
                   cost="squared_error", solver="block_coordinate", tol=1e-4, free_steps=15,
                   beta=0.2, variant="centered", batch_size=16,
                   learning_rate=0.05, decay=0.99, warm_start=True),
    # Scellier & Bengio 2017: hard-sigmoid Hopfield 784-500-10, cost ||o - y||^2, projected gradient
    # steps eps=0.5, 20 free / 4 nudged, beta=0.5 with a random sign per batch, rates 0.1 / 0.05,
    # batch 20, persistent per-example states; evaluated from zero with 100 steps.
    "sb-500": dict(sizes=[784, 500, 10], energy="scellier-bengio", gain=1.0,
                   cost="squared_error_full", solver="gradient_descent", step_size=0.5, tol=1e-4,
                   free_steps=20, nudged_steps=4, eval_steps=100, beta=0.5, variant="positive",
                   random_sign=True, batch_size=20, learning_rate=[0.1, 0.05], decay=1.0,
                   warm_start=False, persistent=True),
    # Deep resistive networks (Scellier et al. 2024): inputs doubled and negated times a gain,
    # ideal diodes, linear outputs, conductances kept non-negative. The optimizer (Adam 3e-3) and
    # gain 4 are ours, tuned on synthetic digits; the paper uses SGD with 0.99 decay, batch 4.
    "drn-xs": dict(family="resistive", sizes=[784, 100, 10], input_gain=4.0, cost="squared_error",
                   solver="block_coordinate", tol=1e-5, free_steps=30, beta=0.2, variant="centered",
                   batch_size=16, optimizer="adam", learning_rate=3e-3, decay=0.99, warm_start=True),
    "drn-1h": dict(family="resistive", sizes=[784, 1024, 10], input_gain=4.0, cost="squared_error",
                   solver="block_coordinate", tol=1e-5, free_steps=30, beta=0.2, variant="centered",
                   batch_size=16, optimizer="adam", learning_rate=3e-3, decay=0.99, warm_start=True),
    # A small net for quick checks and tests (runs in seconds).
    "tiny": dict(sizes=[784, 32, 10], energy="bilinear", gain=0.7, cost="squared_error",
                 solver="block_coordinate", tol=1e-4, free_steps=15, beta=0.2,
                 variant="centered", batch_size=16, learning_rate=0.05, decay=0.99,
                 warm_start=True),
}


def build(config: dict):
    """``(model, cost, solver, estimator, optimizer)`` for a config and a number of batches per
    epoch (``config["batches_per_epoch"]``, used by the per-epoch learning-rate decay)."""
    if config.get("family") == "resistive":
        model = eqjax.models.resistive(tuple(config["sizes"]), input_gain=config["input_gain"])
    else:
        bounds = config.get("output_bounds")  # e.g. [-1e30, 1e30] for linear output units
        model = eqjax.models.hopfield(tuple(config["sizes"]), energy=config["energy"], gain=config["gain"],
                                      output_bounds=None if bounds is None else tuple(bounds))
    cost = {"squared_error": eqjax.costs.squared_error(),
            "squared_error_full": eqjax.costs.squared_error(half=False),
            "cross_entropy": eqjax.costs.cross_entropy()}[config["cost"]]
    solver = make_solver(config, config["free_steps"])
    nudged = make_solver(config, config["nudged_steps"]) if "nudged_steps" in config else None
    estimator = eqjax.estimators.EP(beta=config["beta"], variant=config["variant"], nudged_solver=nudged)
    return model, cost, solver, estimator, make_optimizer(config)


def chunk_function(config: dict, model, cost, solver, estimator, optimizer):
    """The jitted :func:`eqjax.train_chunk` with the config's state options."""
    return jax.jit(eqjax.train_chunk(
        model, cost, solver, estimator, optimizer, warm_start=config.get("warm_start", False),
        persistent=config.get("persistent", False), random_sign=config.get("random_sign", False)))


def initial_state(config: dict, model, num_examples: int) -> tuple:
    """Zero carried state: one row per example for persistent particles, else one batch."""
    rows = num_examples if config.get("persistent", False) else config["batch_size"]
    return tuple(jnp.zeros((rows, n), jnp.float32) for n in model.sizes[1:])


def make_solver(config: dict, max_steps: int):
    if config["solver"] == "block_coordinate":
        return eqjax.solvers.BlockCoordinate(tol=config["tol"], max_steps=max_steps)
    return eqjax.solvers.GradientDescent(step_size=config["step_size"], tol=config["tol"], max_steps=max_steps)


def make_optimizer(config: dict) -> optax.GradientTransformation:
    """SGD with a per-epoch exponential decay; a list of rates gives one rate per layer (the biases
    of layer l use the rate of the weights below them, as in Scellier & Bengio 2017). Resistive
    networks: SGD or Adam followed by clipping the conductances at zero."""

    def sgd(rate):
        return optax.sgd(optax.exponential_decay(
            rate, transition_steps=config["batches_per_epoch"], decay_rate=config["decay"], staircase=True))

    rates = config["learning_rate"]
    if config.get("family") == "resistive":  # conductances stay non-negative after every update
        rule = optax.adam if config.get("optimizer") == "adam" else optax.sgd
        schedule = optax.exponential_decay(rates, config["batches_per_epoch"], config["decay"], staircase=True)
        return optax.chain(rule(schedule), eqjax.analog.devices.conductance_bounds(0.0))
    if not isinstance(rates, list):
        return sgd(rates)
    if len(rates) != len(config["sizes"]) - 1:
        raise ValueError(f"learning_rate needs one rate per layer ({len(config['sizes']) - 1}), got {rates}")
    layers = tuple(f"layer{i}" for i in range(len(rates)))
    return optax.multi_transform(
        {name: sgd(rate) for name, rate in zip(layers, rates)}, {"weights": layers, "biases": layers}
    )
