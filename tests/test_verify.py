"""eqjax.verify: comparisons against references, bias curves, Ernoult et al.'s step-by-step check,
and the precision of EP's contrast at small beta."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_problem

import eqjax
from eqjax import verify
from eqjax.estimators import BPTT, EP, Estimator, FiniteDifferences

COST = eqjax.costs.squared_error()


class FlippedLayer(Estimator):
    """A deliberately wrong estimator: EP with the sign of the last layer's weight gradient flipped."""

    beta: float = 1e-3

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        grads, aux = EP(beta=self.beta).estimate(model, cost, solver, params, x, y, state0, key)
        weights = grads["weights"][:-1] + (-grads["weights"][-1],)
        return dict(grads, weights=weights), aux


def test_compare_passes_ep_and_flags_a_wrong_estimator(tight_gd):
    model, params, x, y = random_problem(0)
    good = verify.compare(model, COST, tight_gd, params, x, y, EP(beta=1e-3), rtol=1e-4, min_cosine=0.9999)
    bad = verify.compare(model, COST, tight_gd, params, x, y, FlippedLayer(), rtol=1e-4, min_cosine=0.9999)
    assert bool(good.passed) and float(good.overall_relative_error) < 1e-5  # centered EP: O(beta^2) = 1e-6
    assert not bool(bad.passed)
    # the flipped tensor is the one singled out: cosine -1 there, 1 elsewhere
    assert float(bad.cosine["weights"][-1]) < -0.9999
    assert float(bad.cosine["weights"][0]) > 0.9999
    assert "['weights'][2]" in bad.table()


def test_finite_differences_and_bptt_agree_with_implicit_differentiation(tight_gd):
    model, params, x, y = random_problem(1, sizes=(4, 5, 3))
    fd = verify.compare(model, COST, tight_gd, params, x, y, FiniteDifferences(epsilon=1e-5))
    # central differences: O(eps^2) = 1e-10 truncation plus tol / eps = 1e-8 from the relaxations
    assert float(fd.overall_relative_error) < 1e-6, fd.table()
    bptt = verify.compare(model, COST, tight_gd, params, x, y, BPTT(num_steps=2000))
    # 2000 steps of size 0.5 converge this contraction to round-off: BPTT = implicit differentiation
    assert float(bptt.overall_relative_error) < 1e-8, bptt.table()


@pytest.mark.parametrize("variant,slope", [("positive", 1), ("negative", 1), ("centered", 2)])
def test_bias_curve_slopes_of_ep(variant, slope, tight_gd):
    model, params, x, y = random_problem(2, sizes=(5, 8, 3), bias_scale=0.5)
    curve = verify.bias_curve(model, COST, tight_gd, params, x, y, EP(variant=variant), [0.2, 0.1, 0.05, 0.025])
    # one-sided EP is biased O(beta), centered O(beta^2) (Laborieux et al. 2021); the fit over a
    # factor 8 includes the next-order term, hence 0.25
    assert abs(curve.slope - slope) < 0.25, curve
    assert np.all(curve.cosine > 0.99)


def test_fit_slope_ignores_zero_and_nonfinite_errors():
    slope, _ = verify.fit_slope([1.0, 0.5, 0.25, 0.1], [1.0, 0.25, 0.0625, np.nan])
    assert slope == pytest.approx(2.0, abs=1e-12)
    assert np.isnan(verify.fit_slope([1.0, 0.5], [0.0, np.inf])[0])


def test_ep_updates_match_bptt_gradients_step_by_step(tight_gd):
    model, params, x, y = random_problem(3, sizes=(5, 8, 3), gain=1.5)
    check = verify.gradient_descending_updates(model, COST, tight_gd, params, x, y, beta=1e-4, num_steps=10)
    # Ernoult et al. 2019: equal as beta -> 0, with an O(beta) gap (measured 7e-4 at step 9 for beta
    # 1e-4, 7e-2 for beta 1e-2)
    assert float(jnp.max(check.state_relative_error)) < 1e-3, check.state_relative_error
    assert float(jnp.max(check.param_relative_error)) < 1e-3, check.param_relative_error
    # the weight updates summed over the steps are EP's positive estimate
    total = jax.tree.map(lambda u: jnp.sum(u, axis=0), check.ep_param_updates)
    positive, _ = eqjax.gradients(model, COST, eqjax.solvers.GradientDescent(step_size=0.5, tol=0.0, max_steps=10),
                                  EP(beta=1e-4, variant="positive"), params, x, y,
                                  state0=eqjax.relax(model, COST, tight_gd, params, x).state)
    np.testing.assert_allclose(np.asarray(total["weights"][0]), np.asarray(positive["weights"][0]), rtol=1e-6, atol=1e-12)
    with pytest.raises(TypeError, match="GradientDescent"):
        verify.gradient_descending_updates(model, COST, eqjax.solvers.BlockCoordinate(), params, x, y, 1e-3, 3)


def test_ep_contrast_keeps_its_precision_in_float32():
    """The weight update is formed from state differences before the products (issue: the
    difference of two rounded products lost log10(1/beta) digits)."""
    model = eqjax.models.hopfield((6, 7, 5), energy="bilinear")
    params = model.init(jax.random.key(0), jnp.float32)
    keys = jax.random.split(jax.random.key(1), 4)
    x = jax.random.uniform(keys[0], (6,), jnp.float32)
    low = tuple(jax.random.uniform(k, (n,), jnp.float32) for k, n in zip(keys[1:], (7, 5)))
    high = tuple(s + jnp.float32(1e-5) * jax.random.normal(k, s.shape, jnp.float32) for k, s in zip(keys[2:], low))
    grad = lambda p, a, b, z: jax.grad(model.energy_difference)(p, a, b, z)
    as64 = lambda tree: jax.tree.map(lambda v: v.astype(jnp.float64), tree)
    exact = grad(as64(params), as64(high), as64(low), as64(x))  # same float32 inputs, float64 arithmetic
    got = grad(params, high, low, x)
    naive = jax.grad(lambda p: model.energy(p, high, x) - model.energy(p, low, x))(params)
    error = lambda g: max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                          for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(exact)))
    # factored: float32 rounding of the differences, ~1e-7 relative; naive: eps32 * |s|^2 / |ds|
    # ~ 1e-7 / 1e-5 = 1e-2 relative for the interaction weights
    assert error(got) < 1e-5
    assert error(naive) > 1e-3


def test_the_default_verdict_rejects_one_sided_ep_at_a_large_beta(tight_gd):
    model, params, x, y = random_problem(2, sizes=(5, 8, 3), bias_scale=0.5)
    biased = verify.compare(model, COST, tight_gd, params, x, y, EP(beta=0.2, variant="positive"))
    # the bias mostly rescales the gradient: the cosine alone would pass it
    assert float(biased.overall_cosine) > 0.999 and float(biased.overall_relative_error) > verify.RTOL
    assert not bool(biased.passed)
    assert bool(verify.compare(model, COST, tight_gd, params, x, y, EP(beta=1e-2)).passed)  # centered: ~1e-5


def test_units_near_a_bound_are_counted_and_reported(tight_gd):
    model, params, x, y = random_problem(3, sizes=(5, 8, 3), energy="bilinear", bias_scale=0.5)  # boxed in [0, 1]
    state = eqjax.relax(model, COST, tight_gd, params, x).state
    baseline = verify.units_near_kink(model, COST, params, x, state)
    hidden = state[0].at[0, :3].set(jnp.asarray([4e-4, 1 - 2e-4, 0.5]))  # two within 1e-3 of a bound, one not
    moved = verify.units_near_kink(model, COST, params, x, (hidden,) + tuple(state[1:]))
    was_near = [0 < float(v) < 1e-3 or 0 < 1 - float(v) < 1e-3 for v in state[0][0, :2]]
    assert moved == baseline + 2 - sum(was_near)
    report = verify.compare(model, COST, tight_gd, params, x, y, EP(beta=1e-2), kink_margin=0.6)
    assert report.units_near_kink > 0 and "at or near a bound" in report.table()  # a wide margin catches some


def test_bias_curve_warns_outside_the_asymptotic_regime(tight_gd):
    model, params, x, y = random_problem(2, sizes=(5, 8, 3), bias_scale=0.5)
    with pytest.warns(UserWarning, match="not in the asymptotic regime"):
        # at beta 1e-9 the relaxations' round-off (about tol / beta) dominates: the error grows again
        curve = verify.bias_curve(model, COST, tight_gd, params, x, y, EP(variant="centered"), [0.1, 1e-3, 1e-9])
    assert not curve.asymptotic and len(curve.local_slopes) == 2
