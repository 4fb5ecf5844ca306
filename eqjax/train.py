"""Training: a pure optax step and an epoch as ``jax.lax.scan`` over batches held on device."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

PHASES = ("free", "positive", "negative")


def summarize(aux: dict) -> dict:
    """Batch means of an estimator's ``aux``: loss, accuracy and, per phase, mean steps, the
    fraction of examples that converged and the largest residual."""
    metrics = {"loss": jnp.mean(aux["loss"]), "accuracy": jnp.mean(aux["accuracy"])}
    for phase in PHASES:
        if phase in aux:
            metrics[f"{phase}_steps"] = jnp.mean(aux[phase]["num_steps"].astype(jnp.float32))
            metrics[f"{phase}_converged"] = jnp.mean(aux[phase]["converged"].astype(jnp.float32))
            metrics[f"{phase}_residual"] = jnp.max(aux[phase]["residual"])
    return metrics


def train_step(model, cost, solver, estimator, optimizer: optax.GradientTransformation) -> Callable:
    """A pure ``step(params, opt_state, x, y) -> (params, opt_state, metrics)``; jit it.

    ``x`` ``(B, n_in)`` floats, ``y`` ``(B,)`` labels; ``metrics`` is :func:`summarize` of the
    estimator's aux. Any optax transformation works; to change the learning rate without a
    recompile, build it with ``optax.inject_hyperparams``.
    """
    warm_step = warm_start_step(model, cost, solver, estimator, optimizer)

    def step(params, opt_state, x, y):
        params, opt_state, metrics, _ = warm_step(params, opt_state, x, y, None)
        return params, opt_state, metrics

    return step


def warm_start_step(model, cost, solver, estimator, optimizer) -> Callable:
    """Like :func:`train_step`, with the free phase started from a given state:
    ``step(params, opt_state, x, y, state0) -> (params, opt_state, metrics, free_state)``.

    ``state0`` is a batched state or ``None`` (zeros). Feeding back ``free_state`` warm-starts each
    batch from the previous one (Scellier et al. 2023); indexing a per-example store gives
    persistent particles (Scellier & Bengio 2017).
    """

    def step(params, opt_state, x, y, state0):
        grads, aux = estimator.estimate(model, cost, solver, params, x, y, state0)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, summarize(aux), aux["free_state"]

    return step


def train_epoch(step: Callable) -> Callable:
    """Lift a step to ``epoch(params, opt_state, xs, ys) -> (params, opt_state, metrics)``.

    ``xs`` ``(num_batches, B, n_in)`` and ``ys`` ``(num_batches, B)`` stay on device; the loop is a
    ``jax.lax.scan``, so one compile serves every epoch. ``metrics`` are stacked per batch.
    """

    def epoch(params, opt_state, xs, ys):
        def body(carry, batch):
            params, opt_state, metrics = step(*carry, *batch)
            return (params, opt_state), metrics

        (params, opt_state), metrics = jax.lax.scan(body, (params, opt_state), (xs, ys))
        return params, opt_state, metrics

    return epoch


def train_chunk(model, cost, solver, estimator, optimizer, *, warm_start=False, persistent=False,
                random_sign=False) -> Callable:
    """A chunk of training batches as one ``jax.lax.scan``, with the state options of the papers:

    ``chunk(params, opt_state, state, xs, ys, index, keys) -> (params, opt_state, state, metrics)``
    with ``xs`` ``(K, B, n_in)``, ``ys`` ``(K, B)``, ``index`` ``(K, B)`` the examples' dataset rows
    and ``keys`` ``(K,)`` PRNG keys. ``state`` (batched per layer) is

    - with ``warm_start``: the previous batch's free state, ``(B, n_l)``; each batch's free phase
      starts from it (Scellier et al. 2023);
    - with ``persistent``: a per-example store ``(N, n_l)``, gathered and updated at ``index``
      (persistent particles, Scellier & Bengio 2017);
    - otherwise unused (free phases start from zero).

    With ``random_sign`` each batch's ``beta`` gets a random sign drawn from its key (Scellier &
    Bengio 2017). Metrics are stacked per batch. Pure; jit it.
    """
    if warm_start and persistent:
        raise ValueError("choose warm_start or persistent, not both")

    def chunk(params, opt_state, state, xs, ys, index, keys):
        def body(carry, batch):
            params, opt_state, state = carry
            x, y, idx, key = batch
            batch_estimator = estimator
            if random_sign:
                sign = jnp.where(jax.random.bernoulli(key), 1.0, -1.0)
                batch_estimator = estimator.replace(beta=sign * estimator.beta)
            step = warm_start_step(model, cost, solver, batch_estimator, optimizer)
            state0 = jax.tree.map(lambda s: s[idx], state) if persistent else (state if warm_start else None)
            params, opt_state, metrics, free = step(params, opt_state, x, y, state0)
            if persistent:
                state = jax.tree.map(lambda s, f: s.at[idx].set(f), state, free)
            elif warm_start:
                state = free
            return (params, opt_state, state), metrics

        carry, metrics = jax.lax.scan(body, (params, opt_state, state), (xs, ys, index, keys))
        return (*carry, metrics)

    return chunk
