"""Langevin (noisy, annealed relaxation) and Anderson (accelerated block-coordinate) solvers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqjax
from eqjax import RESULTS
from eqjax.estimators import EP
from eqjax.loop import max_abs_difference
from eqjax.phases import Clamp, Free, Nudge
from eqjax.solvers import Anderson, BlockCoordinate, GradientDescent, Langevin
from conftest import random_problem, relative_error

COST = eqjax.costs.squared_error()
KEY = jax.random.key(0)


# ------------------------------------------------------------------------------------- Langevin


@pytest.mark.parametrize("anneal", (1.0, 0.5))
def test_langevin_at_zero_temperature_is_gradient_descent_bit_for_bit(anneal):
    model, params, x, y = random_problem(0, energy="bilinear", gain=0.7, bias_scale=0.5, batch=8)
    gd = eqjax.relax(model, COST, GradientDescent(0.3, tol=1e-7, max_steps=1000), params, x, y, phase=0.4)
    langevin = Langevin(step_size=0.3, temperature=0.0, anneal=anneal, tol=1e-7, max_steps=1000)
    noisy = eqjax.relax(model, COST, langevin, params, x, y, phase=0.4, key=KEY)
    chex.assert_trees_all_equal(noisy.state, gd.state)
    chex.assert_trees_all_equal((noisy.num_steps, noisy.residual, noisy.status),
                                (gd.num_steps, gd.residual, gd.status))
    assert bool(gd.converged.any()) and int(gd.num_steps.max()) > 50  # the stopping test was exercised


def quadratic_chain(temperature, step_size, curvature, batch, steps, key):
    """Langevin on ``F = sum c/2 s^2`` (one unbounded leaf ``(batch, n)``) from zero."""
    F = lambda state: jnp.sum(0.5 * curvature * state[0] ** 2)
    solver = Langevin(step_size=step_size, temperature=temperature, tol=0.0, max_steps=steps)
    return eqjax.loop.iterate(solver, F, (jnp.zeros((batch, curvature.size)),), ((-jnp.inf, jnp.inf),), key)


def test_langevin_samples_the_boltzmann_distribution_of_a_quadratic():
    # s' = (1 - eps c) s + sqrt(2 eps T) xi has the stationary variance T / (c (1 - eps c / 2)):
    # the Boltzmann variance T / c up to the discretisation factor. 400 steps of contraction
    # (1 - eps c) <= 0.95 leave 0.95^800 ~ 1e-18 of the zero start.
    T, eps, batch = 0.05, 0.1, 4000
    curvature = jnp.linspace(0.5, 2.0, 8)
    eq = quadratic_chain(T, eps, curvature, batch, 400, KEY)
    samples = np.asarray(eq.state[0])
    expected = np.asarray(T / (curvature * (1 - eps * curvature / 2)))
    ratio = samples.var(axis=0) / expected
    # per unit 4000 independent samples: the variance estimate has relative std sqrt(2/4000) = 2.2%
    np.testing.assert_allclose(ratio, 1.0, atol=0.09)
    # pooled over the 8 units, 0.8%: 3% is ~4 sigma; the stiffest unit's continuous-time value
    # T / c is 11% off, so the discretisation factor is really seen
    assert abs(ratio.mean() - 1) < 0.03
    assert abs(samples[:, -1].var() * 2.0 / T - 1) > 0.05
    # zero mean within 4 standard errors
    assert np.all(np.abs(samples.mean(axis=0)) < 4 * np.sqrt(expected / batch))
    assert np.all(np.asarray(eq.status) == RESULTS.MAX_STEPS)  # noise keeps it moving: reported as such


def test_langevin_key_makes_runs_reproducible_and_noise_independent_per_example():
    model, params, x, y = random_problem(1, energy="bilinear", gain=0.7, bias_scale=0.5, batch=4)
    x = jnp.broadcast_to(x[:1], x.shape)  # four copies of one example
    solver = Langevin(step_size=0.3, temperature=0.01, tol=1e-6, max_steps=50)
    run = lambda key: eqjax.relax(model, COST, solver, params, x, key=key)
    first, again, other = run(jax.random.key(3)), run(jax.random.key(3)), run(jax.random.key(4))
    chex.assert_trees_all_equal(first.state, again.state)
    assert float(max_abs_difference(first.state, other.state)) > 1e-3
    # the same example, four independent noise paths
    hidden = np.asarray(first.state[0])
    assert min(np.abs(hidden[i] - hidden[j]).max() for i in range(4) for j in range(i)) > 1e-3
    for s, (lo, hi) in zip(first.state, model.bounds):  # projected into the box
        assert float(s.min()) >= lo and float(s.max()) <= hi
    assert np.all(np.asarray(first.status) == RESULTS.MAX_STEPS)


def test_langevin_annealed_to_zero_converges_to_the_gradient_descent_equilibrium():
    model, params, x, y = random_problem(2, energy="bilinear", gain=0.7, bias_scale=0.5, batch=8)
    annealed = Langevin(step_size=0.3, temperature=0.02, anneal=0.95, tol=1e-9, max_steps=3000)
    eq = eqjax.relax(model, COST, annealed, params, x, y, phase=0.3, key=KEY)
    gd = eqjax.relax(model, COST, GradientDescent(0.3, tol=1e-12, max_steps=5000), params, x, y, phase=0.3)
    assert bool(eq.converged.all()) and bool(gd.converged.all())
    # T_k = 0.02 * 0.95^k: by step 600 the noise is ~1e-8 and the (convex) energy's minimum is
    # reached to ~tol / (1 - contraction)
    assert float(max_abs_difference(eq.state, gd.state)) < 1e-7
    assert int(eq.num_steps.max()) > 300  # it did anneal: GD alone takes fewer steps
    assert int(gd.num_steps.max()) < int(eq.num_steps.max())


def test_langevin_needs_a_key_and_checks_its_values():
    model, params, x, _ = random_problem(0, energy="bilinear")
    with pytest.raises(ValueError, match="Langevin draws noise: it needs a PRNG key"):
        eqjax.relax(model, COST, Langevin(), params, x)
    for bad, message in [(dict(temperature=-1.0), "temperature must be a finite number >= 0"),
                         (dict(anneal=0.0), r"anneal must be in \(0, 1\]"),
                         (dict(anneal=1.5), r"anneal must be in \(0, 1\]"),
                         (dict(step_size=0.0), "step_size must be a positive finite number"),
                         (dict(temperature=float("inf")), "temperature must be")]:
        with pytest.raises(ValueError, match=message):
            eqjax.relax(model, COST, Langevin(**bad), params, x, key=KEY)
    checked = jax.jit(lambda t: eqjax.relax(model, COST, Langevin(temperature=t), params, x, key=KEY,
                                            throw=True).state)
    with pytest.raises(Exception, match="temperature must be a finite number >= 0"):
        jax.block_until_ready(checked(-0.5))


def test_vmap_over_temperature_equals_a_python_loop_and_never_recompiles():
    model, params, x, y = random_problem(3, energy="bilinear", gain=0.7, bias_scale=0.5, batch=4)

    def relax(temperature, anneal):
        solver = Langevin(step_size=0.3, temperature=temperature, anneal=anneal, tol=1e-7, max_steps=80)
        return eqjax.relax_unchecked(model, COST, solver, params, x, y, Nudge(0.2), None, KEY)

    looped_relax = jax.jit(chex.assert_max_traces(n=1)(relax))
    temperatures = jnp.array([0.0, 1e-3, 1e-2])
    batched = jax.jit(jax.vmap(relax, in_axes=(0, None)))(temperatures, 0.9)
    number = lambda v: jnp.asarray(v, temperatures.dtype)  # not weakly typed: one signature
    for i, t in enumerate(temperatures):
        looped = looped_relax(t, number(0.9))
        chex.assert_trees_all_close(jax.tree.map(lambda s: s[i], batched.state), looped.state, atol=1e-12)
        chex.assert_trees_all_equal(batched.num_steps[i], looped.num_steps)
    looped_relax(number(0.5), number(1.0))  # new values, same program (assert_max_traces)
    # and the temperature reached the program: hotter runs end farther from the T = 0 one
    spread = [float(max_abs_difference(jax.tree.map(lambda s: s[i], batched.state),
                                       jax.tree.map(lambda s: s[0], batched.state))) for i in (1, 2)]
    assert 0 < spread[0] < spread[1]


def test_langevin_noise_is_real_on_complex_states():
    # holomorphic EP: the noise perturbs the real coordinates; the imaginary parts follow the
    # (holomorphic) gradient step exactly
    model, params, x, y = random_problem(4, energy="smooth")
    F = eqjax.total_energy(model, COST, Nudge(0.1j), model.prepare(params, x), x, y)
    state = Nudge(0.1j).start(jax.vmap(model.init_state)(x))
    plain, _ = GradientDescent(step_size=0.5).step(F, state, None, model.bounds)
    solver = Langevin(step_size=0.5, temperature=0.1)
    noisy, _ = solver.step(F, state, solver.init(F, state, model.bounds, KEY), model.bounds)
    for a, b in zip(noisy, plain):
        assert jnp.iscomplexobj(a)
        np.testing.assert_array_equal(np.imag(a), np.imag(b))
        assert np.abs(np.real(a) - np.real(b)).max() > 0.05  # sqrt(2 * 0.5 * 0.1) = 0.32 per unit


def test_langevin_nan_example_leaves_the_others_untouched():
    model = eqjax.models.hopfield((64, 32, 10), gain=0.5)
    x, _ = eqjax.synthetic.digits(jax.random.key(0), 4)
    params = model.init(jax.random.key(1), jnp.float32)
    solver = Langevin(step_size=0.3, temperature=0.01, tol=0.0, max_steps=20)
    relax = jax.jit(eqjax.relax_unchecked)
    with_nan = relax(model, COST, solver, params, x.at[0, 3].set(jnp.nan), None, Free(), None, KEY)
    clean = relax(model, COST, solver, params, x, None, Free(), None, KEY)
    np.testing.assert_array_equal(with_nan.status, [RESULTS.NONFINITE] + [RESULTS.MAX_STEPS] * 3)
    chex.assert_trees_all_equal(jax.tree.map(lambda s: s[1:], with_nan.state),
                                jax.tree.map(lambda s: s[1:], clean.state))
    chex.assert_tree_all_finite(with_nan.state)


# ------------------------------------------------------------------------------------- Anderson


@pytest.mark.parametrize("gain, output_bounds", [(0.7, None), (1.0, None), (1.0, (-np.inf, np.inf)),
                                                 (1.5, None)])
def test_anderson_reaches_the_block_coordinate_equilibrium_in_fewer_sweeps(gain, output_bounds):
    # gains 1 and 1.5 make the energy non-convex in the joint state (block-coordinate still
    # descends): a residual-based safeguard wandered off there, the energy safeguard does not
    model, params, x, y = random_problem(2, sizes=(20, 30, 30, 10), energy="bilinear", gain=gain,
                                         bias_scale=0.5, batch=16, output_bounds=output_bounds)
    bc = eqjax.relax(model, COST, BlockCoordinate(tol=1e-10, max_steps=2000), params, x, y, phase=0.5)
    anderson = Anderson(tol=1e-10, max_steps=2000, regularization=1e-12)
    eq = eqjax.relax(model, COST, anderson, params, x, y, phase=0.5)
    assert bool(bc.converged.all()) and bool(eq.converged.all())
    # both stop with a block-coordinate update below 1e-10 near the same strict minimum
    assert float(max_abs_difference(bc.state, eq.state)) < 1e-8
    # measured 3.1x to 7.4x fewer sweeps on these nets (59/18, 207/34, 312/42, 106/40)
    assert float(eq.num_steps.mean()) * 2.5 < float(bc.num_steps.mean())


def test_anderson_stops_on_a_plain_update_below_tol_and_stays_in_the_box():
    model, params, x, y = random_problem(1, energy="bilinear", gain=1.0, bias_scale=1.0, batch=8)
    cost, anderson = COST, Anderson(tol=1e-6, max_steps=300)
    eq = eqjax.relax(model, cost, anderson, params, x, y, phase=0.3)
    assert bool(eq.converged.all())
    pinned = sum(float(((s == lo) | (s == hi)).mean()) for s, (lo, hi) in zip(eq.state, model.bounds))
    assert pinned > 0.2  # the box matters here
    for s, (lo, hi) in zip(eq.state, model.bounds):
        assert float(s.min()) >= lo and float(s.max()) <= hi
    # the loop stopped on a plain sweep smaller than tol: one more sweep moves less than tol too
    F = eqjax.total_energy(model, cost, Nudge(0.3), model.prepare(params, x), x, y)
    again, _ = BlockCoordinate().step(F, eq.state, None, model.bounds)
    assert float(max_abs_difference(again, eq.state)) < 1e-6
    # a clamped layer stays exactly at its target
    target = jnp.full((8, 3), 0.25)
    clamped = eqjax.relax(model, cost, anderson, params, x, y, phase=Clamp(target))
    np.testing.assert_array_equal(np.asarray(clamped.state[-1]), 0.25)
    assert bool(clamped.converged.all())


def test_anderson_never_raises_the_energy_above_the_plain_sweep():
    # the safeguard: each step's energy is at most the plain sweep's from the same state, so the
    # per-example energy never increases (bilinear energy + quadratic cost: the midpoint rule is exact)
    model, params, x, y = random_problem(5, sizes=(20, 30, 30, 10), energy="bilinear", gain=1.2,
                                         bias_scale=0.5, batch=16)
    F = eqjax.total_energy(model, COST, Nudge(0.5), model.prepare(params, x), x, y)
    per_example = jax.vmap(lambda s, x_i, y_i: model.energy(params, s, x_i) + 0.5 * COST(model.output(s), y_i))
    anderson, plain = Anderson(history=5, regularization=1e-12, tol=0.0), BlockCoordinate()

    def body(carry, _):
        state, solver_state = carry
        swept, _ = plain.step(F, state, None, model.bounds)
        state, solver_state = anderson.step(F, state, solver_state, model.bounds)
        return (state, solver_state), (per_example(state, x, y), per_example(swept, x, y), solver_state.accepted)

    state0 = jax.vmap(model.init_state)(x)
    init = anderson.init(F, state0, model.bounds, None)
    _, (energies, plain_energies, accepted) = jax.jit(lambda c: jax.lax.scan(body, c, length=40))((state0, init))
    assert np.all(np.asarray(energies - plain_energies) <= 1e-12)  # float64 round-off
    assert np.all(np.diff(np.asarray(energies), axis=0) <= 1e-12)
    assert float(accepted.mean()) > 0.5  # and it did extrapolate (measured: 74% of the steps)


def test_anderson_nan_example_is_frozen_and_the_others_run_exactly_as_without_it():
    model = eqjax.models.hopfield((64, 32, 10), gain=0.5)
    x, _ = eqjax.synthetic.digits(jax.random.key(0), 4)
    params = model.init(jax.random.key(1), jnp.float32)
    solver = Anderson(tol=1e-5, max_steps=30)
    relax = jax.jit(eqjax.relax_unchecked)
    with_nan = relax(model, COST, solver, params, x.at[0, 3].set(jnp.nan))
    without = relax(model, COST, solver, params, x[1:])
    np.testing.assert_array_equal(with_nan.status, [RESULTS.NONFINITE] + [RESULTS.CONVERGED] * 3)
    chex.assert_trees_all_equal(jax.tree.map(lambda s: s[1:], with_nan.state), without.state)
    chex.assert_trees_all_equal((with_nan.num_steps[1:], with_nan.residual[1:]),
                                (without.num_steps, without.residual))
    assert int(without.num_steps[0]) > 2
    chex.assert_tree_all_finite(with_nan.state)


def test_ep_gradient_with_anderson_matches_block_coordinate():
    model, params, x, y = random_problem(0, energy="bilinear", gain=0.7, bias_scale=0.5, batch=8,
                                         output_bounds=(-np.inf, np.inf))
    estimator = EP(beta=0.05, variant="centered")
    reference, _ = eqjax.gradients(model, COST, BlockCoordinate(tol=1e-12, max_steps=3000), estimator, params, x, y)
    grads, aux = eqjax.gradients(model, COST, Anderson(tol=1e-12, max_steps=3000, regularization=1e-12),
                                 estimator, params, x, y)
    assert all(bool(aux.phases[phase].converged.all()) for phase in ("free", "positive", "negative"))
    # both equilibria within ~1e-11 of each other; the contrast divides by 2 beta = 0.1
    assert relative_error(grads, reference) < 1e-8


def test_anderson_over_gradient_descent_and_traced_hyperparameters():
    model, params, x, y = random_problem(3, energy="smooth")
    gd = GradientDescent(step_size=0.5, tol=1e-10, max_steps=5000)
    plain = eqjax.relax(model, COST, gd, params, x, y, phase=0.2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def accelerated(mixing, regularization, step_size):
        solver = Anderson(base=gd.replace(step_size=step_size), mixing=mixing, regularization=regularization,
                          tol=1e-10, max_steps=5000)
        return eqjax.relax_unchecked(model, COST, solver, params, x, y, Nudge(0.2))

    for mixing, regularization in [(1.0, 1e-12), (0.5, 1e-8)]:
        eq = accelerated(mixing, regularization, 0.5)
        assert bool(eq.converged.all())
        assert float(max_abs_difference(eq.state, plain.state)) < 1e-8
        assert float(eq.num_steps.mean()) * 2 < float(plain.num_steps.mean())


def test_anderson_checks_its_values_and_its_base():
    model, params, x, y = random_problem(0, energy="bilinear")
    with pytest.raises(ValueError, match="history must be a positive int"):
        Anderson(history=0)
    with pytest.raises(TypeError, match="base must be an eqjax.solvers.Solver"):
        Anderson(base="block_coordinate")
    for bad, message in [(dict(mixing=0.0), r"mixing must be in \(0, 1\]"),
                         (dict(regularization=-1.0), "regularization must be a finite number >= 0"),
                         (dict(base=GradientDescent(step_size=-1.0)),
                          "Anderson's base solver: step_size must be a positive finite number")]:
        with pytest.raises(ValueError, match=message):
            eqjax.relax(model, COST, Anderson(**bad), params, x)
    smooth, p2, x2, y2 = random_problem(0, energy="smooth")
    with pytest.raises(TypeError, match="Anderson works on real states"):
        eqjax.relax(smooth, COST, Anderson(base=GradientDescent()), p2, x2, y2, phase=Nudge(0.1j))
