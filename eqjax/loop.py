"""The one loop that runs every solver: :func:`iterate` (stops at a tolerance) and :func:`unroll`
(a fixed number of steps, differentiable).

A solver (see :class:`eqjax.solvers.Solver`) supplies ``init(F, state0, bounds, key) ->
solver_state`` and ``step(F, state, solver_state, bounds) -> (state, solver_state)``; the loop
owns everything else: the step counting, the tolerance test every ``check_every`` steps, the
per-example status and the freezing of examples that go non-finite.

States are batched: every leaf has the examples on its leading axis ``B``, and ``F`` is the sum of
the examples' energies (examples do not interact, so its gradient is each example's own).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from eqjax.equilibrium import Equilibrium, status_from


def max_abs_difference(a, b) -> jax.Array:
    """``max |a - b|`` over all leaves of two pytrees of the same structure."""
    diffs = jax.tree.map(lambda u, v: jnp.max(jnp.abs(u - v)), a, b)
    return jnp.max(jnp.stack(jax.tree.leaves(diffs)))


def per_example_max_abs_difference(a, b) -> jax.Array:
    """``max |a - b|`` per example (leading axis) over all leaves of two batched pytrees: ``(B,)``."""
    diffs = jax.tree.map(lambda u, v: jnp.max(jnp.abs(u - v).reshape(u.shape[0], -1), axis=1), a, b)
    return jnp.max(jnp.stack(jax.tree.leaves(diffs)), axis=0)


def select_examples(mask: jax.Array, on_true, on_false):
    """Per example (leading axis), ``on_true`` where ``mask`` ``(B,)`` holds, else ``on_false``."""
    pick = lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)
    return jax.tree.map(pick, on_true, on_false)


def _stepper(solver, F: Callable, bounds, state0) -> Callable:
    """``solver.step`` with the state kept in ``state0``'s dtypes (float64 parameters must not turn
    a float32 state into a float64 one halfway through a loop)."""
    dtypes = jax.tree.map(lambda s: s.dtype, state0)

    def step(state, solver_state):
        state, solver_state = solver.step(F, state, solver_state, bounds)
        return jax.tree.map(lambda s, d: s.astype(d), state, dtypes), solver_state

    return step


def iterate(solver, F: Callable, state0, bounds, key=None) -> Equilibrium:
    """Run ``solver.step`` from ``state0`` until every finite example's last tested update
    ``max|s_k - s_{k-1}|`` is below ``solver.tol``, or ``solver.max_steps`` steps.

    At least one step is applied (when ``max_steps >= 1``), so a nudged phase started from the
    free equilibrium always feels its nudge. The whole batch moves together (on SIMD hardware a
    batched loop computes every example anyway), so finite examples share the batch's step count.
    ``max_steps`` and ``check_every`` are static; ``tol`` is traced (``tol = 0`` runs exactly
    ``max_steps``).

    ``check_every`` measures the update size only after every ``check_every``-th step and after the
    last one. The test is not free (a reduction over the state and a copy of the previous state),
    so testing less often is faster; the states visited do not depend on it, only the stopping
    point does: the first tested update below ``tol``. With ``check_every >= max_steps`` exactly
    ``max_steps`` steps run and only the last is measured.

    NaN-safe: at each test, an example whose update is not finite is frozen at its state of the
    previous test and flagged ``NONFINITE``; it leaves the stopping test, so the others run exactly
    as without it. Its later updates are still computed (the batch moves together) and discarded.

    Args:
      solver: a :class:`eqjax.solvers.Solver` (``tol``, ``max_steps``, ``check_every``, ``init``, ``step``).
      F: the batch's total energy as a function of the batched state.
      state0: batched start state.
      bounds: per state leaf ``(lo, hi)``, broadcastable against the leaf.
      key: a PRNG key handed to ``solver.init`` (``None`` for deterministic solvers).
    Returns:
      an :class:`~eqjax.equilibrium.Equilibrium`; the state keeps ``state0``'s dtypes.
    """
    tol, max_steps = solver.tol, solver.max_steps
    solver_state = solver.init(F, state0, bounds, key)
    step = _stepper(solver, F, bounds, state0)
    if max_steps == 0:
        following, _ = step(state0, solver_state)
        residual = per_example_max_abs_difference(following, state0)
        frozen = ~jnp.isfinite(residual)
        steps = jnp.zeros(residual.shape, jnp.int32)
        return Equilibrium(state0, steps, residual, status_from(residual, frozen, tol))
    every = min(solver.check_every, max_steps)

    def block(carry, size):
        """``size`` steps (static, >= 1), then the test: measure the last step, freeze non-finite."""
        state, solver_state, residual, frozen, steps, k = carry
        moved = state
        if size > 1:
            moved, solver_state = jax.lax.fori_loop(0, size - 1, lambda _, c: step(*c), (moved, solver_state))
        following, solver_state = step(moved, solver_state)
        measured = per_example_max_abs_difference(following, moved)
        frozen_now = frozen | ~jnp.isfinite(measured)
        state = select_examples(frozen_now, state, following)
        residual = jnp.where(frozen, residual, measured)
        steps = jnp.where(frozen_now, steps, k + size)
        return state, solver_state, residual, frozen_now, steps, k + size

    def blocks_while_unconverged(carry, size):
        def cond(carry):
            _, _, residual, frozen, _, k = carry
            return (jnp.max(jnp.where(frozen, 0, residual)) >= tol) & (k + size <= max_steps)

        return jax.lax.while_loop(cond, lambda c: block(c, size), carry)

    first = jax.tree.leaves(state0)[0]
    batch, real = first.shape[0], jnp.real(first).dtype  # residuals are real also for complex states
    carry = (state0, solver_state, jnp.zeros((batch,), real), jnp.zeros((batch,), bool),
             jnp.zeros((batch,), jnp.int32), jnp.asarray(0, jnp.int32))
    carry = block(carry, every)
    if 2 * every <= max_steps:  # room for a second full block
        carry = blocks_while_unconverged(carry, every)
    if max_steps % every:  # one shorter block reaches max_steps exactly
        carry = blocks_while_unconverged(carry, max_steps % every)
    state, _, residual, frozen, steps, _ = carry
    return Equilibrium(state, steps, residual, status_from(residual, frozen, tol))


def unroll(solver, F: Callable, state0, bounds, num_steps: int, key=None) -> Equilibrium:
    """Exactly ``num_steps`` (static) solver steps in a ``jax.lax.scan``: reverse-differentiable
    (backpropagation through time), with memory linear in ``num_steps``. ``tol`` is ignored for
    stopping; the returned residual is the size of one more step, tested against ``tol`` for the
    status (``NONFINITE`` when it is not finite; no example is frozen)."""
    solver_state = solver.init(F, state0, bounds, key)
    step = _stepper(solver, F, bounds, state0)
    (final, solver_state), _ = jax.lax.scan(lambda c, _: (step(*c), None), (state0, solver_state), length=num_steps)
    following, _ = step(final, solver_state)
    residual = per_example_max_abs_difference(following, final)
    steps = jnp.full(residual.shape, num_steps, jnp.int32)
    return Equilibrium(final, steps, residual, status_from(residual, ~jnp.isfinite(residual), solver.tol))
