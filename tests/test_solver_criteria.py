"""A solver owns its stopping test (``Solver.residual``), and step counts are per example."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import eqjax
from eqjax import RESULTS
from eqjax.loop import per_example_max_abs_difference, unroll
from eqjax.phases import Free
from eqjax.solvers import BlockCoordinate, GradientDescent, project

MODEL = eqjax.models.hopfield((64, 32, 10), gain=0.5)  # bilinear energy, every free unit in [0, 1]
COST = eqjax.costs.squared_error()


def problem(batch):
    """float64 parameters and digits (tests/conftest.py turns x64 on) and the free phase's ``F``."""
    params = MODEL.init(jax.random.key(0), dtype=jnp.float64)
    x = eqjax.synthetic.digits(jax.random.key(1), batch)[0].astype(jnp.float64)
    assert x.dtype == jnp.float64  # the bounds below are checked at float64 round-off
    return params, x, eqjax.total_energy(MODEL, COST, Free(), MODEL.prepare(params, x), x, None)


def natural_residual(F, state, bounds) -> jax.Array:
    """``||s - clip(s - dF/ds)||_2`` per example, ``(B,)``: how far a projected gradient step of size
    1 would move; zero exactly at a box-constrained stationary point."""
    grad = jax.grad(F)(state)
    moved = project(tuple(s - g for s, g in zip(state, grad)), bounds)
    squares = [jnp.sum(((s - m) ** 2).reshape(s.shape[0], -1), axis=1) for s, m in zip(state, moved)]
    return jnp.sqrt(sum(squares))


def distance(a, b) -> jax.Array:
    """Euclidean distance per example between two batched states, ``(B,)``."""
    return jnp.sqrt(sum(jnp.sum(((u - v) ** 2).reshape(u.shape[0], -1), axis=1) for u, v in zip(a, b)))


class StationarityTest(GradientDescent):
    """Gradient descent that stops on the distance to equilibrium, not on the size of its last step:
    its residual is :func:`natural_residual` of the state reached (one more gradient per test)."""

    def residual(self, F, previous, following, solver_state, bounds):
        return natural_residual(F, following, bounds)


def test_a_solver_with_its_own_residual_stops_closer_to_the_equilibrium_at_the_same_tol():
    params, x, F = problem(16)
    step_size, tol = 0.05, 1e-6
    reference = eqjax.relax(MODEL, COST, BlockCoordinate(tol=1e-13, max_steps=5_000), params, x)
    default = eqjax.relax(MODEL, COST, GradientDescent(step_size, tol=tol, max_steps=20_000), params, x)
    own = eqjax.relax(MODEL, COST, StationarityTest(step_size, tol=tol, max_steps=20_000), params, x)
    assert bool(reference.converged.all() & default.converged.all() & own.converged.all())
    # the loop tested and reported the solver's own residual (same arithmetic, outside the loop's
    # jit: round-off only)
    np.testing.assert_allclose(own.residual, natural_residual(F, own.state, MODEL.bounds), rtol=1e-10)
    assert float(own.residual.max()) < tol
    # The bound. For the bilinear energy in its box, dF/ds = s - (C s + c) with C the symmetric
    # coupling of the free layers (W_2 between hidden and output; the clamped input goes into c), so
    # s - r(s) = clip(C s + c) =: T(s), and clipping is non-expansive: T is a contraction with
    # factor rho = ||C||_2 = ||W_2||_2 in the Euclidean norm. With s* = T(s*):
    # ||s - s*|| <= ||s - T(s)|| + ||T(s) - T(s*)|| <= ||r(s)|| + rho ||s - s*||, so
    # ||s - s*|| <= ||r(s)|| / (1 - rho). For the stopping state and the reference alike, hence
    # ||s - s_ref|| <= (r(s) + r(s_ref)) / (1 - rho) < (tol + r(s_ref)) / (1 - rho).
    rho = float(jnp.linalg.norm(params["weights"][1], 2))
    assert rho < 0.9  # a contraction (the bound needs rho < 1; 0.877 for this seed)
    r_reference = natural_residual(F, reference.state, MODEL.bounds)
    assert float(r_reference.max()) < 1e-11  # the reference is exact to far below tol
    bound = (own.residual + r_reference) / (1 - rho)
    own_distance, default_distance = distance(own.state, reference.state), distance(default.state, reference.state)
    assert bool(jnp.all(own_distance <= bound)), (own_distance, bound)
    # The default test stops when the last step, about step_size * (1 - rho) * distance along the
    # slowest mode, is below tol: at about tol / (step_size (1 - rho)), 1 / step_size = 20 times the
    # bound above (max-abs step, Euclidean distance). Asserted with a factor 4 of margin: 5 times.
    # The batch runs until its slowest example passes and the others move on meanwhile, so it is
    # the slowest example that stops at the test's own distance: compare the largest distances.
    assert float(default_distance.max()) > 5 * tol / (1 - rho)
    # the same dynamics, only the stopping point differs: the own test ran more steps
    assert int(own.num_steps.max()) > int(default.num_steps.max())


def test_unroll_reports_the_solvers_own_residual():
    params, x, F = problem(4)
    solver = StationarityTest(0.05, tol=1e-6, max_steps=0)
    start = jax.vmap(MODEL.init_state)(x)
    eq = unroll(solver, F, start, MODEL.bounds, 30)
    following, _ = solver.step(F, eq.state, None, MODEL.bounds)
    np.testing.assert_allclose(eq.residual, natural_residual(F, following, MODEL.bounds), rtol=1e-10)  # round-off
    np.testing.assert_array_equal(eq.num_steps, 30)
    np.testing.assert_array_equal(eq.status, RESULTS.MAX_STEPS)  # 30 steps of 0.05 are far from tol


def test_a_residual_must_have_one_value_per_example():
    class Scalar(GradientDescent):
        def residual(self, F, previous, following, solver_state, bounds):
            return jnp.max(super().residual(F, previous, following, solver_state, bounds))

    params, x, _ = problem(3)
    with pytest.raises(TypeError, match=r"Scalar.residual must return one real value per example, shape \(3,\)"):
        eqjax.relax(MODEL, COST, Scalar(0.1, tol=1e-6, max_steps=10), params, x)


def half_at_equilibrium(params, x):
    """Start states: the even examples at their free equilibrium (block-coordinate to 1e-13), the odd
    ones at the model's start state (zero)."""
    reference = eqjax.relax(MODEL, COST, BlockCoordinate(tol=1e-13, max_steps=5_000), params, x)
    assert bool(reference.converged.all())
    even = jnp.arange(x.shape[0]) % 2 == 0
    return eqjax.loop.select_examples(even, reference.state, jax.vmap(MODEL.init_state)(x)), even


def test_examples_report_the_steps_they_needed_and_the_batch_moves_as_before():
    params, x, _ = problem(8)
    start, even = half_at_equilibrium(params, x)
    solver = GradientDescent(0.2, tol=1e-8, max_steps=5_000)
    eq = eqjax.relax(MODEL, COST, solver, params, x, state0=start)
    assert bool(eq.converged.all())
    steps = np.asarray(eq.num_steps)
    # one step from an equilibrium (exact to ~1e-12) moves less than tol; the others need many, not all
    # the same
    np.testing.assert_array_equal(steps[np.asarray(even)], 1)
    odd = steps[~np.asarray(even)]
    assert odd.min() > 50 and len(set(odd.tolist())) > 1, steps
    # Invariant: the batch moves together, so its states (and last residuals) are those of the steps
    # it ran, K = the most any example needed, bit for bit: what the loop returned before step
    # counts were per example (which reported K for every example). tol = 0 runs exactly K steps.
    batch_steps = int(steps.max())
    fixed = eqjax.relax(MODEL, COST, solver.replace(tol=0.0, max_steps=batch_steps), params, x, state0=start)
    chex.assert_trees_all_equal((eq.state, eq.residual), (fixed.state, fixed.residual))
    np.testing.assert_array_equal(fixed.num_steps, batch_steps)
    # the default residual is still the last update, bit for bit
    before = eqjax.relax(MODEL, COST, solver.replace(tol=0.0, max_steps=batch_steps - 1), params, x, state0=start)
    np.testing.assert_array_equal(eq.residual, per_example_max_abs_difference(eq.state, before.state))
    # a count is what the example needs alone: relaxed as a batch of one, it stops there (its state
    # then differs from the batch's, which kept moving; a batch of one is other arithmetic anyway)
    for i in range(x.shape[0]):
        alone = eqjax.relax(MODEL, COST, solver, params, x[i:i + 1], state0=jax.tree.map(lambda s: s[i:i + 1], start))
        assert int(alone.num_steps[0]) == steps[i], (i, int(alone.num_steps[0]), steps[i])


def test_counts_with_check_every_and_max_steps():
    params, x, _ = problem(8)
    start, even = half_at_equilibrium(params, x)
    solver = GradientDescent(0.2, tol=1e-8, max_steps=30, check_every=7)
    eq = eqjax.relax(MODEL, COST, solver, params, x, state0=start)
    # first test after 7 steps: the examples at equilibrium pass it; the others run out of steps and
    # report the steps the batch ran (30, the last, shorter block)
    np.testing.assert_array_equal(eq.num_steps, np.where(even, 7, 30))
    np.testing.assert_array_equal(eq.status, np.where(even, RESULTS.CONVERGED, RESULTS.MAX_STEPS))
    fixed = eqjax.relax(MODEL, COST, solver.replace(tol=0.0), params, x, state0=start)
    chex.assert_trees_all_equal((eq.state, eq.residual), (fixed.state, fixed.residual))


class PoisonFirst(GradientDescent):
    """Gradient descent whose example 0 turns NaN at step ``at + 1`` (a divergence mid-run)."""

    at: int = struct.field(pytree_node=False, default=10)

    def init(self, F, state0, bounds, key):
        return jnp.zeros((), jnp.int32)

    def step(self, F, state, k, bounds):
        state, _ = super().step(F, state, None, bounds)
        poison = (jnp.arange(state[0].shape[0]) == 0) & (k == self.at)
        return tuple(jnp.where(poison[:, None], jnp.nan, s) for s in state), k + 1


def test_a_nonfinite_example_reports_the_steps_it_is_frozen_at():
    params, x, _ = problem(4)
    start, _ = half_at_equilibrium(params, x)  # examples 0 and 2 at equilibrium: they pass the first test
    plain = eqjax.relax_unchecked(MODEL, COST, GradientDescent(0.2, tol=1e-8, max_steps=5_000), params, x, state0=start)
    poisoned = eqjax.relax_unchecked(MODEL, COST, PoisonFirst(0.2, tol=1e-8, max_steps=5_000), params, x, state0=start)
    np.testing.assert_array_equal(poisoned.status, [RESULTS.NONFINITE] + [RESULTS.CONVERGED] * 3)
    # example 0 passed every test from step 1 on, went NaN at step 11 and is frozen at the state of
    # the test of step 10: its count is 10, as before counts were per example
    assert int(plain.num_steps[0]) == 1 and int(poisoned.num_steps[0]) == 10
    # the others, bit for bit as without the poison (the batch's length is theirs)
    rest = lambda tree: jax.tree.map(lambda s: s[1:], tree)
    chex.assert_trees_all_equal(rest(poisoned.state), rest(plain.state))
    chex.assert_trees_all_equal(poisoned.num_steps[1:], plain.num_steps[1:])
    assert int(plain.num_steps.max()) > 10
    chex.assert_tree_all_finite(poisoned.state)
