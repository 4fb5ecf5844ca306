"""Relaxation: monotone energy, honest residuals, block-coordinate vs gradient descent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import eqjax
from eqjax.loop import max_abs_difference
from eqjax.solvers import BlockCoordinate, FixedPoint, GradientDescent
from conftest import random_problem


def lipschitz_constant(model, params, state, x):
    """Largest Hessian eigenvalue of E in the state (constant for the bilinear energy)."""
    flat, unravel = ravel_pytree(state)
    hessian = jax.hessian(lambda f: model.energy(params, unravel(f), x))(flat)
    return float(jnp.max(jnp.abs(jnp.linalg.eigvalsh(hessian))))


@pytest.mark.parametrize("seed", (0, 1, 2))
def test_energy_never_increases_below_one_over_L(seed):
    model, params, x, _ = random_problem(seed, energy="bilinear", gain=1.0, bias_scale=0.5, batch=1)
    x = x[0]
    state = model.init_state(x)
    step = 0.99 / lipschitz_constant(model, params, state, x)
    solver = GradientDescent(step_size=step, tol=0.0, max_steps=1)
    F = lambda s: model.energy(params, s, x)

    def body(s, _):
        s, _ = solver.step(F, s, None, model.bounds)
        return s, F(s)

    _, energies = jax.lax.scan(body, state, length=200)
    energies = np.concatenate([[float(F(state))], np.asarray(energies)])
    # projected gradient descent with step < 1/L is a descent method; allow float64 round-off
    assert np.all(np.diff(energies) <= 1e-12), np.diff(energies).max()
    assert energies[-1] < energies[0] - 1e-3  # and it actually moved


@pytest.mark.parametrize("solver", [GradientDescent(0.5, tol=1e-6, max_steps=500),
                                    BlockCoordinate(tol=1e-6, max_steps=100)])
def test_residual_of_returned_state_is_below_tol(solver):
    model, params, x, y = random_problem(1, energy="bilinear", gain=0.5, bias_scale=0.5, batch=8)
    cost = eqjax.costs.squared_error()
    eq = eqjax.relax(model, cost, solver, params, x, y, phase=0.3)
    assert bool(eq.converged.all())
    for i in range(x.shape[0]):
        s = jax.tree.map(lambda a: a[i], eq.state)
        F = lambda u: model.energy(params, u, x[i]) + 0.3 * cost(model.output(u), y[i])
        again, _ = solver.step(F, s, None, model.bounds)
        recomputed = float(max_abs_difference(again, s))
        # the reported residual is the last update; both updates contract, so it bounds the next
        assert recomputed <= float(eq.residual[i]) * (1 + 1e-9) + 1e-15
        assert recomputed < 1e-6  # the solver's tol


def test_block_coordinate_reaches_the_gradient_descent_equilibrium_in_fewer_steps():
    model, params, x, y = random_problem(2, sizes=(20, 30, 30, 10), energy="bilinear", gain=0.7,
                                         bias_scale=0.5, batch=16)
    cost = eqjax.costs.squared_error()
    gd = eqjax.relax(model, cost, GradientDescent(0.5, tol=1e-10, max_steps=10_000), params, x, y, phase=0.5)
    bc = eqjax.relax(model, cost, BlockCoordinate(tol=1e-10, max_steps=1_000), params, x, y, phase=0.5)
    assert bool(gd.converged.all()) and bool(bc.converged.all())
    # both stop within 1e-10 of a fixed point of a contraction: states agree to ~1e-9
    assert float(max_abs_difference(gd.state, bc.state)) < 1e-8
    # per-sweep contraction ~||W||^2 (Gauss-Seidel) versus (1 + ||W||) / 2 for steps of 0.5
    assert float(bc.num_steps.mean()) * 3 < float(gd.num_steps.mean())


def test_fixed_point_equals_block_coordinate_where_curvatures_are_one_and_shares_its_equilibria():
    model, params, x, y = random_problem(2, sizes=(20, 30, 30, 10), energy="bilinear", gain=0.7,
                                         bias_scale=0.5, batch=16)
    cost = eqjax.costs.squared_error()
    # free phase: every layer has unit self-curvature and no intra-layer coupling, so the
    # diagonal Newton step divides by exactly 1: the same states, bit for bit
    free = [eqjax.relax(model, cost, s(tol=0.0, max_steps=7), params, x) for s in (FixedPoint, BlockCoordinate)]
    for a, b in zip(free[0].state, free[1].state):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # nudged: the squared error gives the outputs curvature 1 + beta, which only BlockCoordinate
    # divides by; both stop within 1e-10 of the same fixed point (a contraction here)
    nudged = [eqjax.relax(model, cost, s(tol=1e-10, max_steps=1_000), params, x, y, phase=0.5)
              for s in (FixedPoint, BlockCoordinate)]
    assert bool(nudged[0].converged.all()) and bool(nudged[1].converged.all())
    assert float(max_abs_difference(nudged[0].state, nudged[1].state)) < 1e-8


def test_hitting_max_steps_is_reported():
    model, params, x, _ = random_problem(0, energy="bilinear", gain=0.5)
    eq = eqjax.relax(model, eqjax.costs.squared_error(), GradientDescent(0.1, tol=1e-12, max_steps=3), params, x)
    assert np.all(np.asarray(eq.num_steps) == 3)
    zero = eqjax.relax(model, eqjax.costs.squared_error(), GradientDescent(0.1, tol=1e-12, max_steps=0), params, x)
    np.testing.assert_array_equal(np.asarray(zero.state[0]), 0.0)  # max_steps = 0: the start state
    assert not bool(eq.converged.any())
    assert bool((eq.residual >= 1e-12).all())


def test_warm_start_from_an_equilibrium_takes_one_step():
    model, params, x, _ = random_problem(0, energy="bilinear", gain=0.5, bias_scale=0.5)
    cost, solver = eqjax.costs.squared_error(), BlockCoordinate(tol=1e-8, max_steps=200)
    eq = eqjax.relax(model, cost, solver, params, x)
    again = eqjax.relax(model, cost, solver, params, x, state0=eq.state)
    assert np.all(np.asarray(again.num_steps) == 1)  # one update checks that nothing moves
    assert float(max_abs_difference(again.state, eq.state)) < 1e-8


def test_states_stay_in_their_box():
    model, params, x, y = random_problem(3, energy="scellier-bengio", gain=2.0, bias_scale=2.0)
    solver = GradientDescent(0.5, tol=1e-8, max_steps=300)
    eq = eqjax.relax(model, eqjax.costs.squared_error(), solver, params, x, y, 1.0)
    for s, (lo, hi) in zip(eq.state, model.bounds):
        assert float(s.min()) >= lo and float(s.max()) <= hi


def test_ep_nudged_phases_run_their_own_step_budget_with_the_same_solver():
    # Scellier & Bengio 2017: 20 free steps, then 4 nudged steps from the free state
    model, params, x, y = random_problem(0, energy="scellier-bengio", gain=1.0, bias_scale=0.5)
    estimator = eqjax.estimators.EP(beta=0.5, variant="positive", nudged_steps=4)
    _, aux = eqjax.gradients(model, eqjax.costs.squared_error(half=False), GradientDescent(0.5, tol=0.0, max_steps=20),
                             estimator, params, x, y)
    assert np.all(np.asarray(aux.phases["free"].num_steps) == 20)
    assert np.all(np.asarray(aux.phases["positive"].num_steps) == 4)
    assert "negative" not in aux.phases


@pytest.mark.parametrize("check_every", (2, 4, 7, 100))
def test_check_every_visits_the_same_states_and_stops_on_a_tested_update(check_every):
    model, params, x, y = random_problem(1, energy="bilinear", gain=0.5, bias_scale=0.5, batch=8)
    cost = eqjax.costs.squared_error()
    every_step = BlockCoordinate(tol=1e-6, max_steps=9)
    # exactly 9 updates either way (tol = 0): the same states, bit for bit
    fixed = [eqjax.relax(model, cost, s.replace(tol=0.0), params, x, y, phase=0.3)
             for s in (every_step, every_step.replace(check_every=check_every))]
    for a, b in zip(fixed[0].state, fixed[1].state):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.all(np.asarray(fixed[1].num_steps) == 9)
    np.testing.assert_array_equal(np.asarray(fixed[0].residual), np.asarray(fixed[1].residual))
    # with a tolerance: the batch stops at the first tested update below tol (or at max_steps), i.e.
    # the first multiple of check_every at or after the every-step stop (8 updates reach 1e-3
    # here), capped at 9; each example reports the first tested count from which it passed
    loose = BlockCoordinate(tol=1e-3, max_steps=9)
    first = eqjax.relax(model, cost, loose, params, x, y, phase=0.3)
    tested = eqjax.relax(model, cost, loose.replace(check_every=check_every), params, x, y, phase=0.3)
    every = min(check_every, 9)
    expected = min(-(-int(first.num_steps.max()) // every) * every, 9)
    assert int(first.num_steps.max()) == 8 and int(tested.num_steps.max()) == expected
    np.testing.assert_array_equal(np.asarray(tested.num_steps),
                                  np.minimum(-(-np.asarray(first.num_steps) // every) * every, 9))
    assert bool(tested.converged.all())
    reference = eqjax.relax(model, cost, loose.replace(tol=0.0, max_steps=expected), params, x, y, phase=0.3)
    for a, b in zip(tested.state, reference.state):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
