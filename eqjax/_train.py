"""Training: a pure optax step whose hyperparameters are arguments, and epochs/chunks as
``jax.lax.scan`` over batches held on device.

The step takes the solver and the estimator as arguments (pytrees whose numeric fields, such as
``beta``, step sizes and tolerances, are traced), and the optimizer's hyperparameters live in its
state when it is built with ``optax.inject_hyperparams``: one compiled step then serves every
value of them, and ``jax.vmap`` over them runs a sweep.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from eqjax._checks import all_finite, check_model, raise_if_concrete
from eqjax._api import checked_estimate
from eqjax.costs import as_cost
from eqjax._equilibrium import RESULTS
from eqjax.estimators import Estimate, RandomSign
from eqjax.estimators.base import add_extras, extra_values


def summarize(estimate: Estimate) -> dict:
    """Batch means of an :class:`~eqjax.estimators.Estimate`: loss (NaN when an example's free phase went
    non-finite or the example was flagged), accuracy, the fraction of examples used by the
    gradient, the fractions flagged ``invalid_input`` and ``invalid_label`` (see
    :class:`~eqjax.RESULTS`) and, per phase, the mean of the examples' step counts
    (``<phase>_steps``: when each passed its stopping test), the steps the batch ran
    (``<phase>_batch_steps``), the fractions that converged and that went non-finite, and the
    largest finite residual; plus the estimator's own ``estimate.extras`` under their names (scalars
    as they are, per-example ``(B,)`` arrays as their batch mean; see
    :class:`~eqjax.estimators.Estimator`)."""
    extras = extra_values(estimate)
    metrics = {"loss": jnp.mean(estimate.loss), "accuracy": jnp.mean(estimate.accuracy),
               "used": jnp.mean(estimate.used.astype(jnp.float32))}
    free_status = estimate.free.status
    metrics["invalid_input"] = jnp.mean((free_status == RESULTS.INVALID_INPUT).astype(jnp.float32))
    metrics["invalid_label"] = jnp.mean((free_status == RESULTS.INVALID_LABEL).astype(jnp.float32))
    for phase, equilibrium in estimate.phases.items():
        status = equilibrium.status
        finite = (status == RESULTS.CONVERGED) | (status == RESULTS.MAX_STEPS)
        steps = equilibrium.num_steps
        metrics[f"{phase}_steps"] = jnp.mean(steps.astype(jnp.float32))  # steps examples needed
        metrics[f"{phase}_batch_steps"] = jnp.max(steps).astype(jnp.float32)  # steps the batch ran
        metrics[f"{phase}_converged"] = jnp.mean(equilibrium.converged.astype(jnp.float32))
        metrics[f"{phase}_nonfinite"] = jnp.mean(equilibrium.nonfinite.astype(jnp.float32))
        metrics[f"{phase}_residual"] = jnp.max(jnp.where(finite, equilibrium.residual, 0))
    metrics = add_extras(metrics, extras, taken=("skipped",))  # apply_update adds "skipped"
    return metrics


def step_invalid(model, params, solver, estimator) -> jax.Array:
    """A bool scalar: some traced hyperparameter of ``solver`` or ``estimator`` breaks its rule
    (``beta = 0`` or not finite, ``tol < 0``, a step size that is not positive...), as their
    ``errors()`` state it, or the parameters break the model's own constraints
    (``model.parameter_errors``, e.g. a negative conductance)."""
    conditions = {**solver.errors(), **estimator.errors(), **model.parameter_errors(params)}
    violated = [jnp.any(v) for v in conditions.values()]
    return jnp.any(jnp.stack(violated)) if violated else jnp.zeros((), bool)


def train_step(model, cost, optimizer: optax.GradientTransformation, *, throw: bool = False) -> Callable:
    """A pure ``step(params, opt_state, solver, estimator, x, y, state0=None, key=None) ->
    (params, opt_state, metrics, free_state)``; jit it once for all hyperparameter values.

    ``x`` ``(B, *input_shape)``, ``y`` ``(B,)`` labels; ``state0`` a batched start state for the
    free phase or ``None`` (``model.init_state``): feeding back ``free_state`` warm-starts each batch
    from the previous one (Scellier et al. 2023), indexing a per-example store gives persistent
    particles (Scellier & Bengio 2017). ``key`` goes to stochastic solvers. ``metrics`` is
    :func:`summarize` of the estimator's :class:`~eqjax.estimators.Estimate`. Any optax
    transformation works; build it with ``optax.inject_hyperparams`` to change the learning rate in
    ``opt_state`` without a recompile.

    Shapes, dtypes and structure are checked when the step is traced, values when they are
    concrete (an un-jitted call). ``throw=True`` (static) also stops the compiled program with a
    clear message when the batch or the parameters are not finite, labels are out of range, a
    hyperparameter is invalid (``beta = 0``, ``tol < 0``...) or a relaxation went non-finite;
    ``throw="max_steps"`` also when a relaxation stopped at ``max_steps`` before its tolerance.
    Without it these are reported, not raised, and never reach the parameters:

    - examples with a non-finite input or a label out of range, and examples whose relaxation went
      non-finite, are frozen, left out of the gradient and counted in ``metrics``
      (``invalid_input``, ``invalid_label``, ``<phase>_nonfinite``), and the batch's ``loss`` is
      NaN;
    - when a traced hyperparameter of the solver, the estimator or the optimizer is invalid (a
      scalar of ``opt_state`` that is not finite, such as a NaN learning rate of
      ``optax.inject_hyperparams``), or the parameters break the model's constraints (a negative
      conductance), the step returns ``params`` and
      ``opt_state`` unchanged, ``metrics["skipped"] = 1`` and a NaN ``loss`` (so a sweep member
      with such a value is not ``ok``, and ``make train`` stops).

    Every phase of the estimator's :class:`~eqjax.estimators.Estimate` is guarded and summarized.
    """
    check_model(model)
    cost = as_cost(cost)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation (e.g. optax.sgd(0.1)), got "
                        f"{type(optimizer).__name__}")

    def step(params, opt_state, solver, estimator, x, y, state0=None, key=None):
        grads, estimate = checked_estimate(estimator, model, cost, solver, params, x, y, state0, key, throw)
        return (*apply_update(model, optimizer, params, opt_state, grads, estimate, solver, estimator),
                estimate.free_state)

    return step


def apply_update(model, optimizer, params, opt_state, grads, estimate, solver, estimator) -> tuple:
    """``(params, opt_state, metrics)`` after the optimizer's update for ``grads``, unless
    :func:`step_invalid` or a scalar of the optimizer's state before or after the update (a learning
    rate, a schedule's value) is not finite: then ``params`` and ``opt_state`` come back unchanged,
    ``metrics["skipped"]`` is 1 and the ``loss`` NaN (see :func:`train_step`).

    The update itself is not scanned: that would be one more pass over every parameter, a cost
    measurable on a small step (BENCHMARKS.md, "What the safety checks cost"). Its inputs are
    checked instead (finite examples and equilibria, finite hyperparameters), so only an overflow
    can make it non-finite; the next batch's relaxations then go non-finite and are flagged."""
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    scalars = [leaf for leaf in jax.tree.leaves((opt_state, new_opt_state)) if jnp.ndim(leaf) == 0]
    skipped = step_invalid(model, params, solver, estimator) | ~all_finite(scalars)
    keep = lambda old, new: jax.tree.map(lambda a, b: jnp.where(skipped, a, b), old, new)
    metrics = summarize(estimate)
    metrics["loss"] = jnp.where(skipped, jnp.nan, metrics["loss"])
    metrics["skipped"] = skipped.astype(jnp.float32)
    return keep(params, optax.apply_updates(params, updates)), keep(opt_state, new_opt_state), metrics


def set_hyperparams(opt_state, **values):
    """A copy of an ``optax.inject_hyperparams`` optimizer state with new hyperparameter values
    (e.g. ``learning_rate=0.02``), each cast to the dtype already stored, so a jitted step that
    takes the state does not recompile (a Python float would arrive weakly typed: a new signature)."""
    stored = getattr(opt_state, "hyperparams", None)
    if not isinstance(stored, dict):
        raise TypeError("set_hyperparams needs the state of an optax.inject_hyperparams optimizer")
    unknown = sorted(set(values) - set(stored))
    if unknown:
        raise KeyError(f"the optimizer has no hyperparameters {unknown}; it has {sorted(stored)}")
    updated = {name: jnp.asarray(value, jnp.result_type(stored[name])) for name, value in values.items()}
    raise_if_concrete(updated, lambda: {f"{name} must be finite, got {value}": ~jnp.all(jnp.isfinite(value))
                                        for name, value in updated.items()})
    return opt_state._replace(hyperparams={**stored, **updated})


def train_epoch(step: Callable) -> Callable:
    """Lift a :func:`train_step` to ``epoch(params, opt_state, solver, estimator, xs, ys, keys=None)
    -> (params, opt_state, metrics)``.

    ``xs`` ``(num_batches, B, *input_shape)`` and ``ys`` ``(num_batches, B)`` stay on device; the loop
    is a ``jax.lax.scan``, so one compile serves every epoch. Each batch starts from the model's
    start state. ``keys`` ``(num_batches,)``: one PRNG key per batch for stochastic solvers.
    ``metrics`` are stacked per batch.
    """

    def epoch(params, opt_state, solver, estimator, xs, ys, keys=None):
        if xs.shape[0] != ys.shape[0] or (keys is not None and keys.shape[0] != xs.shape[0]):
            raise ValueError(f"xs, ys (and keys) must hold the same number of batches, got {xs.shape[0]}, "
                             f"{ys.shape[0]}" + ("" if keys is None else f", {keys.shape[0]}"))

        def body(carry, batch):
            x, y, key = batch
            params, opt_state, metrics, _ = step(*carry, solver, estimator, x, y, None, key)
            return (params, opt_state), metrics

        (params, opt_state), metrics = jax.lax.scan(body, (params, opt_state), (xs, ys, keys))
        return params, opt_state, metrics

    return epoch


def train_chunk(model, cost, optimizer, *, warm_start=False, persistent=False, random_sign=False,
                throw=False, step: Callable | None = None) -> Callable:
    """A chunk of training batches as one ``jax.lax.scan``, with the state options of the papers:

    ``chunk(params, opt_state, state, solver, estimator, xs, ys, index, keys) -> (params,
    opt_state, state, metrics)`` with ``xs`` ``(K, B, *input_shape)``, ``ys`` ``(K, B)``, ``index``
    ``(K, B)`` the examples' dataset rows and ``keys`` ``(K,)`` PRNG keys (one per batch, handed to
    the step). ``state`` (batched) is

    - with ``warm_start``: the previous batch's free state; each batch's free phase starts from it
      (Scellier et al. 2023);
    - with ``persistent``: a per-example store ``(N, ...)``, gathered and updated at ``index``
      (persistent particles, Scellier & Bengio 2017);
    - otherwise unused (free phases start from the model's start state).

    The carried state stays finite: a non-finite example's free state is its last finite tested
    value (see :func:`eqjax.loop.iterate`). ``random_sign`` wraps the
    :class:`~eqjax.estimators.EP` estimator in :class:`~eqjax.estimators.RandomSign`: each batch's
    ``beta`` gets a random sign drawn from the batch's key (Scellier & Bengio 2017). Metrics are
    stacked per batch. Pure; jit it.

    ``step`` is the per-batch update, :func:`train_step` ``(model, cost, optimizer, throw=throw)``
    by default; :func:`eqjax.parallel.sharded_train_step` shards every batch over devices.
    """
    if warm_start and persistent:
        raise ValueError("choose warm_start or persistent, not both")
    step = train_step(model, cost, optimizer, throw=throw) if step is None else step

    def chunk(params, opt_state, state, solver, estimator, xs, ys, index, keys):
        estimator = RandomSign(estimator) if random_sign else estimator  # TypeError unless EP

        def body(carry, batch):
            params, opt_state, state = carry
            x, y, idx, key = batch
            state0 = jax.tree.map(lambda s: s[idx], state) if persistent else (state if warm_start else None)
            params, opt_state, metrics, free = step(params, opt_state, solver, estimator, x, y, state0, key)
            if persistent:
                state = jax.tree.map(lambda s, f: s.at[idx].set(f), state, free)
            elif warm_start:
                state = free
            return (params, opt_state, state), metrics

        carry, metrics = jax.lax.scan(body, (params, opt_state, state), (xs, ys, index, keys))
        return (*carry, metrics)

    return chunk
