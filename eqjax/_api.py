"""Public entry points with input validation: :func:`relax`, :func:`gradients`, :func:`evaluate`.

Each checks its arguments and then calls a jitted core:

- shapes, dtypes and structure always (they are known also under a user's ``jax.jit``);
- values (finite inputs and parameters, labels in range, ``beta`` finite and nonzero, ``tol >= 0``,
  model constraints such as non-negative conductances) eagerly whenever they are concrete;
- with ``throw=True`` the same value checks, plus "no relaxation went non-finite", inside the
  compiled program (:func:`eqjax._checks.error_if`, a host callback), so traced values are checked too;
- without it, inside a compiled program, an example whose input is not finite or whose label is
  out of range is flagged (``RESULTS.INVALID_INPUT`` / ``INVALID_LABEL`` in its status), frozen
  and left out of the gradient (:func:`~eqjax._equilibrium.screen_examples`).

The model and cost are pytrees with static structure; solver, estimator and phase are pytrees whose
numeric fields (``beta``, step sizes, tolerances) are traced, so changing them does not recompile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from eqjax._checks import check_call, check_throw, guard_equilibria, guard_inputs
from eqjax.costs import as_cost
from eqjax._equilibrium import Equilibrium, mark_examples, screen_examples
from eqjax.estimators import Estimate
from eqjax.phases import Free, as_phase
from eqjax._relaxation import relax_unchecked


def marked(estimate: Estimate, codes) -> Estimate:
    """``estimate`` with :func:`~eqjax._equilibrium.screen_examples`'s codes in every phase's status."""
    return estimate.replace(phases={name: eq.replace(status=mark_examples(eq.status, codes))
                                    for name, eq in estimate.phases.items()})


@functools.partial(jax.jit, static_argnames="throw")
def _relax(model, cost, solver, params, x, y, phase, state0, key, throw):
    if throw:
        x = guard_inputs(model, params, x, y, solver, phase)
    x, y, codes = screen_examples(model, x, y)
    equilibrium = relax_unchecked(model, cost, solver, params, x, y, phase, state0, key)
    equilibrium = equilibrium.replace(status=mark_examples(equilibrium.status, codes))
    return guard_equilibria(equilibrium, {type(phase).__name__.lower(): equilibrium.status}, throw) if throw else equilibrium


def relax(model, cost, solver, params, x, y=None, phase=None, state0=None, key=None, throw=False) -> Equilibrium:
    """Relax a batch to a minimum of the energy plus what ``phase`` adds.

    Args:
      model: an :class:`~eqjax.models.EnergyModel`. cost: a :class:`~eqjax.costs.Cost` or a
        function ``(output, label) -> scalar``.
      solver: e.g. ``GradientDescent`` or ``BlockCoordinate`` (numeric fields traced).
      params: the model's parameter pytree.
      x: ``(B, *model.input_shape)`` floating inputs. y: ``(B,)`` integer labels, or ``None``.
      phase: an :mod:`eqjax.phases` value, or a number ``beta`` for ``Nudge(beta)``; ``None``/``0``
        is the free phase.
      state0: batched start state, default ``model.init_state`` per example.
      key: PRNG key for stochastic solvers.
      throw: check values inside the compiled program too (see the module docstring);
        ``"max_steps"`` also makes a relaxation that stops at ``max_steps`` before the tolerance
        an error.
    Returns:
      a batched :class:`~eqjax.Equilibrium`; its ``status`` says per example whether it
      converged, hit ``max_steps`` or went non-finite.
    """
    cost, phase = as_cost(cost), as_phase(phase)
    check_throw(throw)
    check_call(model, params, x, y, state0, solver, phase)
    return _relax(model, cost, solver, params, x, y, phase, state0, key, throw)


def checked_estimate(estimator, model, cost, solver, params, x, y, state0, key, throw):
    """``estimator.estimate`` behind every check: shapes at trace time, concrete values eagerly,
    and with ``throw`` the traced values and the relaxations' statuses inside the program."""
    check_throw(throw)
    check_call(model, params, x, y, state0, solver, estimator)
    if throw:
        x = guard_inputs(model, params, x, y, solver, estimator)
    x, y, codes = screen_examples(model, x, y)
    grads, estimate = estimator.estimate(model, cost, solver, params, x, y, state0, key)
    if not isinstance(estimate, Estimate):
        raise TypeError(f"{type(estimator).__name__}.estimate must return (grads, eqjax.estimators.Estimate), got "
                        f"(grads, {type(estimate).__name__}); build it with Estimate.at_free_phase")
    estimate = marked(estimate, codes)
    return guard_equilibria((grads, estimate), estimate.statuses(), throw) if throw else (grads, estimate)


_estimate = jax.jit(checked_estimate, static_argnames="throw")


def gradients(model, cost, solver, estimator, params, x, y, state0=None, key=None, throw=False):
    """Estimate the gradient of the batch-mean loss at the free equilibrium.

    Returns ``(grads, estimate)``: ``grads`` has the structure of ``params`` (optax convention:
    descend it); ``estimate`` is an :class:`~eqjax.estimators.Estimate` with per-example ``loss``,
    ``accuracy``, ``prediction``, ``used`` and every phase's :class:`~eqjax.Equilibrium`
    (``estimate.free.converged``, ``estimate.free_state``...).
    Arguments as in :func:`relax`.
    """
    cost = as_cost(cost)
    if y is None:
        raise ValueError("gradients needs the labels y of the batch")
    check_call(model, params, x, y, state0, solver, estimator)
    return _estimate(estimator, model, cost, solver, params, x, y, state0, key, throw)


@functools.partial(jax.jit, static_argnames="throw")
def _evaluate(model, cost, solver, params, x, y, state0, key, throw):
    if throw:
        x = guard_inputs(model, params, x, y, solver)
    x, y, codes = screen_examples(model, x, y)
    free = relax_unchecked(model, cost, solver, params, x, None, Free(), state0, key)
    estimate = marked(Estimate.at_free_phase(model, cost, free, y), codes)
    return guard_equilibria(estimate, estimate.statuses(), throw) if throw else estimate


def evaluate(model, cost, solver, params, x, y, state0=None, key=None, throw=False) -> Estimate:
    """Free-phase predictions: an :class:`~eqjax.estimators.Estimate` with per-example ``loss``,
    ``accuracy``, ``prediction`` and the free phase's :class:`~eqjax.Equilibrium`. Arguments as in
    :func:`relax`."""
    cost = as_cost(cost)
    if y is None:
        raise ValueError("evaluate needs the labels y of the batch")
    check_throw(throw)
    check_call(model, params, x, y, state0, solver)
    return _evaluate(model, cost, solver, params, x, y, state0, key, throw)


def padded_batches(a: jax.Array, batch_size: int, batches: int) -> jax.Array:
    """``a`` ``(N, ...)`` zero-padded to ``batches`` whole batches: ``(batches, batch_size, ...)``."""
    pad = batches * batch_size - a.shape[0]
    return jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]).reshape((batches, batch_size) + a.shape[1:])


def counting_batches(x, y, batch_size: int, batches: int | None = None) -> tuple:
    """``(xs, ys, real, offsets)`` for :func:`error_counts`: ``x`` ``(N, ...)`` and ``y`` ``(N,)``
    cut into ``batches`` batches of ``batch_size`` (default ``ceil(N / batch_size)``; the rest
    zero-padding), ``real`` marking the examples of ``x``, ``offsets`` each batch's first index."""
    n = x.shape[0]
    batches = -(-n // batch_size) if batches is None else batches
    real = padded_batches(jnp.ones((n,), bool), batch_size, batches)
    return (padded_batches(x, batch_size, batches), padded_batches(y, batch_size, batches), real,
            jnp.arange(batches) * batch_size)


def error_counts(model, cost, solver, params, xs, ys, real, offsets, key, throw):
    """``(wrong, converged)`` (int32): how many real examples of the batches ``xs`` ``(K, B, ...)`` /
    ``ys`` ``(K, B)`` the free phase misclassifies, and how many reached the tolerance, the
    batches relaxed one after the other in a ``jax.lax.scan``. ``real`` ``(K, B)`` marks the
    examples that are not padding; ``offsets`` ``(K,)`` is each batch's first index in the whole
    data set, which ``key`` (stochastic solvers) is folded with."""

    def count(totals, batch):
        xi, yi, mask, offset = batch
        batch_key = None if key is None else jax.random.fold_in(key, offset)
        estimate = _evaluate(model, cost, solver, params, xi, yi, None, batch_key, throw)
        wrong = jnp.sum(mask & (estimate.accuracy == 0), dtype=jnp.int32)
        converged = jnp.sum(mask & estimate.free.converged, dtype=jnp.int32)
        return (totals[0] + wrong, totals[1] + converged), None

    zero = jnp.zeros((), jnp.int32)  # counts: exact in any dtype of the model
    return jax.lax.scan(count, (zero, zero), (xs, ys, real, offsets))[0]


def check_error_rate_call(model, solver, params, x, y, batch_size: int, throw):
    """The eager checks of :func:`error_rate` (and of :func:`eqjax.parallel.sharded_error_rate`)."""
    check_throw(throw)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    check_call(model, params, x, y, None, solver)
    if x.shape[0] == 0:
        raise ValueError("error_rate needs at least one example")


@functools.partial(jax.jit, static_argnames=("batch_size", "throw"))
def _error_rate(model, cost, solver, params, x, y, key, batch_size, throw):
    wrong, converged = error_counts(model, cost, solver, params, *counting_batches(x, y, batch_size), key, throw)
    return {"error": wrong / x.shape[0], "converged": converged / x.shape[0]}


def error_rate(model, cost, solver, params, x, y, key=None, *, batch_size: int = 1000, throw=False) -> dict:
    """The free phase's classification error on a data set, relaxed ``batch_size`` examples at a
    time inside one ``jax.lax.scan`` (the last batch zero-padded; padding does not count).

    Args:
      model: the energy model, like ``cost``, ``solver`` and ``params`` as in :func:`relax`
        (give the solver the evaluation's budget, e.g. ``solver.replace(max_steps=...)``).
      x: ``(N, *model.input_shape)`` inputs, on device.
      y: ``(N,)`` integer labels.
      key: PRNG key for stochastic solvers (``Langevin``), folded with each batch's first index.
      batch_size: examples relaxed together (static); a batch moves together, so its stopping
        step, and hence the predictions, depend on it slightly.
      throw: as in :func:`relax`.
    Returns:
      ``{"error": scalar, "converged": scalar}``: the fraction misclassified and the fraction whose
      free phase reached the tolerance. Examples flagged invalid (non-finite input, label out of
      range) or whose relaxation went non-finite count as misclassified. Jittable (the solver's
      numeric fields are traced), and vmappable over sweep members.
    """
    cost = as_cost(cost)
    check_error_rate_call(model, solver, params, x, y, batch_size, throw)
    return _error_rate(model, cost, solver, params, x, y, key, batch_size, throw)
