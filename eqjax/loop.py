"""The one loop that runs every solver: :func:`iterate` (stops at a tolerance) and :func:`unroll`
(a fixed number of steps, differentiable).

A solver (see :class:`eqjax.solvers.Solver`) supplies ``init(F, state0, bounds, key) ->
solver_state``, ``step(F, state, solver_state, bounds) -> (state, solver_state)`` and its stopping
measure ``residual(F, previous, following, solver_state, bounds) -> (B,)`` (by default the size of
the last update); the loop owns everything else: the step counting, the tolerance test every
``check_every`` steps, the per-example status and step counts, and the freezing of examples that
go non-finite.

States are batched: every leaf has the examples on its leading axis ``B``, and ``F`` is the sum of
the examples' energies (examples do not interact, so its gradient is each example's own).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from eqjax._equilibrium import Equilibrium, status_from


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


def _measurer(solver, F: Callable, bounds, state0) -> Callable:
    """``solver.residual`` as ``(previous, following, solver_state) -> (B,)``, checked (statically)
    to return one real value per example."""
    batch = jax.tree.leaves(state0)[0].shape[0]

    def measure(previous, following, solver_state):
        residual = jnp.asarray(solver.residual(F, previous, following, solver_state, bounds))
        if residual.shape != (batch,) or jnp.iscomplexobj(residual):
            raise TypeError(f"{type(solver).__name__}.residual must return one real value per example, "
                            f"shape ({batch},); got {residual.dtype}{list(residual.shape)}")
        return residual

    return measure


def _start(state0, solver_state) -> tuple:
    """The loop's carry before the first step: ``(state, solver_state, residual, frozen, steps, k)``
    with ``(B,)`` residuals (zero, in the state's real dtype: complex states have real residuals),
    nothing frozen, zero steps per example and the step count ``k = 0``."""
    first = jax.tree.leaves(state0)[0]
    batch, real = first.shape[0], jnp.real(first).dtype
    return (state0, solver_state, jnp.zeros((batch,), real), jnp.zeros((batch,), bool),
            jnp.zeros((batch,), jnp.int32), jnp.asarray(0, jnp.int32))


def _record_test(carry, following, measured, size: int, tol):
    """Book-keeping of one stopping test after a block of ``size`` steps that started at step count
    ``k`` (the previous test's count, 0 before the first) and ended at ``k + size``.

    Per example: an example whose residual ``measured`` ``(B,)`` is not finite is frozen at its state
    of the previous test (its step count stays ``k``); a frozen one keeps everything; the others take
    ``following`` and the new residual, and their step count becomes ``k + size`` unless they passed
    this test and the previous one too (then it stays where their run of passed tests began)."""
    state, solver_state, residual, frozen, steps, k = carry
    frozen_now = frozen | ~jnp.isfinite(measured)
    still_passing = (measured < tol) & (residual < tol) & (k > 0)
    steps = jnp.where(frozen | still_passing, steps, jnp.where(frozen_now, k, k + size))
    state = select_examples(frozen_now, state, following)
    residual = jnp.where(frozen, residual, measured)
    return state, solver_state, residual, frozen_now, steps, k + size


def _block(step: Callable, measure: Callable, tol, carry, size: int):
    """``size`` steps (static, >= 1), then the test: measure the last step, record it
    (:func:`_record_test`)."""
    state, solver_state = carry[:2]
    moved = state
    if size > 1:
        moved, solver_state = jax.lax.fori_loop(0, size - 1, lambda _, c: step(*c), (moved, solver_state))
    following, solver_state = step(moved, solver_state)
    measured = measure(moved, following, solver_state)
    return _record_test((carry[0], solver_state, *carry[2:]), following, measured, size, tol)


def _blocks_while_unconverged(step: Callable, measure: Callable, tol, max_steps: int, carry, size: int):
    """Blocks of ``size`` steps while a finite example's last residual is not below ``tol`` and a
    whole block still fits in ``max_steps``."""

    def unconverged(carry):
        _, _, residual, frozen, _, k = carry
        return (jnp.max(jnp.where(frozen, 0, residual)) >= tol) & (k + size <= max_steps)

    return jax.lax.while_loop(unconverged, lambda c: _block(step, measure, tol, c, size), carry)


def _no_steps(step: Callable, measure: Callable, tol, state0, solver_state) -> Equilibrium:
    """``max_steps = 0``: the start state, with the residual of the one step it would take (not
    applied) and zero steps."""
    following, solver_state = step(state0, solver_state)
    residual = measure(state0, following, solver_state)
    steps = jnp.zeros(residual.shape, jnp.int32)
    return Equilibrium(state0, steps, residual, status_from(residual, ~jnp.isfinite(residual), tol))


def iterate(solver, F: Callable, state0, bounds, key=None, max_steps: int | None = None) -> Equilibrium:
    """Run ``solver.step`` from ``state0`` until every finite example's residual at the last test
    (``solver.residual``: by default the size of the last update ``max|s_k - s_{k-1}|``) is below
    ``solver.tol``, or ``max_steps`` steps (static; default ``solver.max_steps``).

    At least one step is applied (when ``max_steps >= 1``), so a nudged phase started from the
    free equilibrium always feels its nudge. The whole batch moves together (on SIMD hardware a
    batched loop computes every example anyway): an example that passed the test keeps being
    updated until the batch stops, so the states reached depend only on the number of steps the
    batch ran, not on which examples passed when. ``max_steps`` and ``check_every`` are static;
    ``tol`` is traced (``tol = 0`` runs exactly ``max_steps``).

    Step counts are per example (``num_steps`` ``(B,)``): the step count of the test from which on
    the example passed every test, i.e. the steps it needed (when an example passes a test, fails a
    later one and passes again, the later pass counts); ``max_steps`` for an example whose last test
    failed (``MAX_STEPS``); for a ``NONFINITE`` example, the count of the test whose state it is
    frozen at. The steps the batch ran are the largest count, except when the last example still
    running went non-finite at the last test. States, residuals and statuses do not depend on
    this count.

    ``check_every`` runs the test only after every ``check_every``-th step and after the last one.
    The test is not free (a reduction over the state, a copy of the previous state, whatever the
    solver's residual costs), so testing less often is faster; the states visited do not depend on
    it, only the stopping point does (the first test every finite example passes) and the counts
    (multiples of ``check_every``, or ``max_steps``). With ``check_every >= max_steps`` exactly
    ``max_steps`` steps run and only the last is tested.

    NaN-safe: at each test, an example whose residual is not finite is frozen at its state of the
    previous test and flagged ``NONFINITE``; it leaves the stopping test, so the others run exactly
    as without it. Its later updates are still computed (the batch moves together) and discarded.

    Args:
      solver: a :class:`eqjax.solvers.Solver` (``tol``, ``max_steps``, ``check_every``, ``init``,
        ``step``, ``residual``).
      F: the batch's total energy as a function of the batched state.
      state0: batched start state.
      bounds: per state leaf ``(lo, hi)``, broadcastable against the leaf.
      key: a PRNG key handed to ``solver.init`` (``None`` for deterministic solvers).
      max_steps: this run's budget instead of the solver's own (static int >= 0), e.g. the nudged
        phases' of an estimator.
    Returns:
      an :class:`~eqjax.Equilibrium`; the state keeps ``state0``'s dtypes.
    """
    tol = solver.tol
    max_steps = solver.max_steps if max_steps is None else check_budget(max_steps, "max_steps")
    solver_state = solver.init(F, state0, bounds, key)
    step, measure = _stepper(solver, F, bounds, state0), _measurer(solver, F, bounds, state0)
    if max_steps == 0:
        return _no_steps(step, measure, tol, state0, solver_state)
    every = min(solver.check_every, max_steps)
    carry = _block(step, measure, tol, _start(state0, solver_state), every)
    if 2 * every <= max_steps:  # room for a second full block
        carry = _blocks_while_unconverged(step, measure, tol, max_steps, carry, every)
    if max_steps % every:  # one shorter block reaches max_steps exactly
        carry = _blocks_while_unconverged(step, measure, tol, max_steps, carry, max_steps % every)
    state, _, residual, frozen, steps, _ = carry
    return Equilibrium(state, steps, residual, status_from(residual, frozen, tol))


def check_budget(steps, name: str) -> int:
    """``steps`` when it is an int >= 0, else ``ValueError`` naming ``name``."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"{name} must be a non-negative int, got {steps!r}")
    return int(steps)


def unroll(solver, F: Callable, state0, bounds, num_steps: int, key=None) -> Equilibrium:
    """Exactly ``num_steps`` (static) solver steps in a ``jax.lax.scan``: reverse-differentiable
    (backpropagation through time), with memory linear in ``num_steps``. ``tol`` is ignored for
    stopping; the returned residual is ``solver.residual`` of one more step (not applied), tested
    against ``tol`` for the status (``NONFINITE`` when it is not finite; no example is frozen).
    Every example reports ``num_steps`` steps."""
    solver_state = solver.init(F, state0, bounds, key)
    step, measure = _stepper(solver, F, bounds, state0), _measurer(solver, F, bounds, state0)
    (final, solver_state), _ = jax.lax.scan(lambda c, _: (step(*c), None), (state0, solver_state), length=num_steps)
    following, solver_state = step(final, solver_state)
    residual = measure(final, following, solver_state)
    steps = jnp.full(residual.shape, num_steps, jnp.int32)
    return Equilibrium(final, steps, residual, status_from(residual, ~jnp.isfinite(residual), solver.tol))
