"""Named training configurations (hyperparameters from ANCHORS.md) and how to build them."""

from __future__ import annotations

import optax

import eqjax

# Each config is plain JSON-able data; `build` turns it into eqjax values.
CONFIGS = {
    # Scellier et al. 2023/2024 deep Hopfield networks: centered EP beta=0.2, block-coordinate 15/15,
    # batch 16, SGD 0.05 with 0.99 decay per epoch, gain 0.7, warm start from the previous batch.
    "dhn-1h": dict(sizes=[784, 1024, 10], energy="bilinear", gain=0.7, cost="squared_error",
                   solver="block_coordinate", tol=1e-4, free_steps=15,
                   beta=0.2, variant="centered", batch_size=16, learning_rate=0.05,
                   decay=0.99, warm_start=True),
    "dhn-2h": dict(sizes=[784, 1024, 1024, 10], energy="bilinear", gain=0.7, cost="squared_error",
                   solver="block_coordinate", tol=1e-4, free_steps=15,
                   beta=0.2, variant="centered", batch_size=16, learning_rate=0.05,
                   decay=0.99, warm_start=True),
    "dhn-3h": dict(sizes=[784, 1024, 1024, 1024, 10], energy="bilinear", gain=0.7,
                   cost="squared_error", solver="block_coordinate", tol=1e-4, free_steps=15,
                   beta=0.2, variant="centered", batch_size=16,
                   learning_rate=0.05, decay=0.99, warm_start=True),
    # A small net for quick checks and tests (runs in seconds).
    "tiny": dict(sizes=[784, 32, 10], energy="bilinear", gain=0.7, cost="squared_error",
                 solver="block_coordinate", tol=1e-4, free_steps=15, beta=0.2,
                 variant="centered", batch_size=16, learning_rate=0.05, decay=0.99,
                 warm_start=True),
}


def build(config: dict):
    """``(model, cost, solver, estimator, optimizer)`` for a config and a number of batches per
    epoch (``config["batches_per_epoch"]``, used by the per-epoch learning-rate decay)."""
    model = eqjax.models.hopfield(tuple(config["sizes"]), energy=config["energy"], gain=config["gain"])
    cost = {"squared_error": eqjax.costs.squared_error(),
            "squared_error_full": eqjax.costs.squared_error(half=False),
            "cross_entropy": eqjax.costs.cross_entropy()}[config["cost"]]
    if config["solver"] == "block_coordinate":
        solver = eqjax.solvers.BlockCoordinate(tol=config["tol"], max_steps=config["free_steps"])
    else:
        solver = eqjax.solvers.GradientDescent(
            step_size=config["step_size"], tol=config["tol"], max_steps=config["free_steps"]
        )
    estimator = eqjax.estimators.EP(beta=config["beta"], variant=config["variant"])
    schedule = optax.exponential_decay(
        config["learning_rate"], transition_steps=config["batches_per_epoch"],
        decay_rate=config["decay"], staircase=True,
    )
    return model, cost, solver, estimator, optax.sgd(schedule)
