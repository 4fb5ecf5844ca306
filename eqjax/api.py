"""Public entry points with input validation: :func:`relax`, :func:`gradients`, :func:`evaluate`.

Each checks its arguments (shapes, dtypes, label range, finiteness, when the values are concrete)
and then calls a jitted core. The model and cost are static; solver and estimator are pytrees whose
numeric fields (``beta``, step sizes, tolerances) are traced, so changing them does not recompile.
"""

from __future__ import annotations

import jax

from eqjax._checks import check_inputs, check_params, check_state
from eqjax.estimators import free_phase_aux
from eqjax.solvers import Equilibrium, relax_batch

_relax = jax.jit(relax_batch)


@jax.jit
def _estimate(estimator, model, cost, solver, params, x, y, state0):
    return estimator.estimate(model, cost, solver, params, x, y, state0)


def _check(model, params, x, y, state0):
    check_inputs(model, x, y)
    check_params(model, params)
    if state0 is not None:
        check_state(model, state0, x.shape[0])


def relax(model, cost, solver, params, x, y=None, beta=0.0, state0=None) -> Equilibrium:
    """Relax a batch to a minimum of ``F = E + beta * C``.

    Args:
      model, cost: static model and cost values.
      solver: e.g. ``GradientDescent`` or ``BlockCoordinate`` (numeric fields traced).
      params: the model's parameter pytree.
      x: ``(B, n_in)`` floating inputs. y: ``(B,)`` integer labels, or ``None`` for the free phase.
      beta: nudging strength (traced scalar); ignored when ``y`` is ``None``.
      state0: batched start state (tuple of ``(B, n_l)``), default all zeros.
    Returns:
      a batched :class:`~eqjax.solvers.Equilibrium`.
    """
    _check(model, params, x, y, state0)
    return _relax(model, cost, solver, params, x, y, beta, state0)


def gradients(model, cost, solver, estimator, params, x, y, state0=None):
    """Estimate the gradient of the batch-mean loss at the free equilibrium.

    Returns ``(grads, aux)``: ``grads`` has the structure of ``params`` (optax convention: descend
    it); ``aux`` carries per-example ``loss``, ``accuracy``, ``prediction``, ``free_state`` and per
    phase ``num_steps``/``residual``/``converged`` (see :mod:`eqjax.estimators`).
    """
    _check(model, params, x, y, state0)
    return _estimate(estimator, model, cost, solver, params, x, y, state0)


@jax.jit
def _evaluate(model, cost, solver, params, x, y, state0):
    free = relax_batch(model, cost, solver, params, x, None, 0.0, state0)
    return free_phase_aux(model, cost, free, y)


def evaluate(model, cost, solver, params, x, y, state0=None) -> dict:
    """Free-phase predictions: per-example ``loss``, ``accuracy``, ``prediction`` and diagnostics."""
    _check(model, params, x, y, state0)
    return _evaluate(model, cost, solver, params, x, y, state0)
