"""Public entry points with input validation: :func:`relax`, :func:`gradients`, :func:`evaluate`.

Each checks its arguments and then calls a jitted core:

- shapes, dtypes and structure always (they are known also under a user's ``jax.jit``);
- values (finite inputs and parameters, labels in range, ``beta`` finite and nonzero, ``tol >= 0``,
  model constraints such as non-negative conductances) eagerly whenever they are concrete;
- with ``throw=True`` the same value checks, plus "no relaxation went non-finite", inside the
  compiled program (:func:`eqjax._checks.error_if`, a host callback), so traced values are checked too;
- without it, inside a compiled program, an example whose input is not finite or whose label is
  out of range is flagged (``RESULTS.INVALID_INPUT`` / ``INVALID_LABEL`` in its status), frozen
  and left out of the gradient (:func:`~eqjax.equilibrium.screen_examples`).

The model and cost are pytrees with static structure; solver, estimator and phase are pytrees whose
numeric fields (``beta``, step sizes, tolerances) are traced, so changing them does not recompile.
"""

from __future__ import annotations

import functools

import jax

from eqjax._checks import check_call, check_throw, guard_equilibria, guard_inputs, statuses
from eqjax.costs import as_cost
from eqjax.equilibrium import Equilibrium, mark_examples, screen_examples
from eqjax.estimators import free_phase_aux
from eqjax.phases import Free, as_phase
from eqjax.relaxation import relax_batch


def marked(aux: dict, codes) -> dict:
    """An estimator's ``aux`` with :func:`~eqjax.equilibrium.screen_examples`'s codes in every phase's status."""
    phases = statuses(aux)
    return {name: ({**value, "status": mark_examples(phases[name], codes)} if name in phases else value)
            for name, value in aux.items()}


@functools.partial(jax.jit, static_argnames="throw")
def _relax(model, cost, solver, params, x, y, phase, state0, key, throw):
    if throw:
        x = guard_inputs(model, params, x, y, solver, phase)
    x, y, codes = screen_examples(model, x, y)
    equilibrium = relax_batch(model, cost, solver, params, x, y, phase, state0, key)
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
      a batched :class:`~eqjax.equilibrium.Equilibrium`; its ``status`` says per example whether it
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
    grads, aux = estimator.estimate(model, cost, solver, params, x, y, state0, key)
    aux = marked(aux, codes)
    return guard_equilibria((grads, aux), statuses(aux), throw) if throw else (grads, aux)


_estimate = jax.jit(checked_estimate, static_argnames="throw")


def gradients(model, cost, solver, estimator, params, x, y, state0=None, key=None, throw=False):
    """Estimate the gradient of the batch-mean loss at the free equilibrium.

    Returns ``(grads, aux)``: ``grads`` has the structure of ``params`` (optax convention: descend
    it); ``aux`` carries per-example ``loss``, ``accuracy``, ``prediction``, ``free_state`` and per
    phase ``num_steps``/``residual``/``status``/``converged`` (see :mod:`eqjax.estimators`).
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
    free = relax_batch(model, cost, solver, params, x, None, Free(), state0, key)
    aux = marked(free_phase_aux(model, cost, free, y), codes)
    return guard_equilibria(aux, statuses(aux), throw) if throw else aux


def evaluate(model, cost, solver, params, x, y, state0=None, key=None, throw=False) -> dict:
    """Free-phase predictions: per-example ``loss``, ``accuracy``, ``prediction`` and diagnostics.
    Arguments as in :func:`relax`."""
    cost = as_cost(cost)
    if y is None:
        raise ValueError("evaluate needs the labels y of the batch")
    check_throw(throw)
    check_call(model, params, x, y, state0, solver)
    return _evaluate(model, cost, solver, params, x, y, state0, key, throw)
