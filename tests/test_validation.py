"""Bad input raises a clear error naming the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqjax
from eqjax.estimators import EP, ImplicitDiff
from eqjax.solvers import BlockCoordinate, GradientDescent

MODEL = eqjax.models.hopfield((4, 5, 3))
COST = eqjax.costs.squared_error()
SOLVER = BlockCoordinate(tol=1e-5, max_steps=20)
PARAMS = MODEL.init(jax.random.key(0))
X = jnp.full((2, 4), 0.5, jnp.float32)
Y = jnp.array([0, 2])


def grads(x=X, y=Y, params=PARAMS, estimator=EP(beta=0.1)):
    return eqjax.gradients(MODEL, COST, SOLVER, estimator, params, x, y)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=jnp.full((2, 5), 0.5)), ValueError, r"x must have shape \(batch, 4\)"),
        (dict(x=jnp.full((4,), 0.5)), ValueError, r"x must have shape"),
        (dict(x=jnp.ones((2, 4), jnp.uint8)), TypeError, "x must be a floating array"),
        (dict(x=X.at[0, 1].set(jnp.nan)), ValueError, "x contains NaN"),
        (dict(y=jnp.array([0, 3])), ValueError, r"labels outside \[0, 2\].*3 output units"),
        (dict(y=jnp.array([-1, 0])), ValueError, r"labels outside \[0, 2\]"),
        (dict(y=jnp.array([0.0, 1.0])), TypeError, "y must be an integer array"),
        (dict(y=jnp.array([0, 1, 2])), ValueError, r"y must have shape \(2,\)"),
        (dict(params={**PARAMS, "weights": (PARAMS["weights"][0] * jnp.inf, PARAMS["weights"][1])}),
         ValueError, "params contain NaN or infinite"),
        (dict(params={**PARAMS, "weights": PARAMS["weights"][:1]}), ValueError, "params do not match"),
        (dict(params={**PARAMS, "biases": (jnp.zeros(5), jnp.zeros(4))}), ValueError, "params shapes"),
    ],
)
def test_bad_batch_or_params(kwargs, error, match):
    with pytest.raises(error, match=match):
        grads(**kwargs)


@pytest.mark.parametrize("beta", [0, 0.0, float("nan")])
def test_ep_rejects_zero_or_nan_beta(beta):
    with pytest.raises(ValueError, match="beta must be a finite nonzero number"):
        grads(estimator=EP(beta=beta))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="variant must be one of"):
        EP(beta=0.1, variant="sideways")
    with pytest.raises(ValueError, match="energy must be one of"):
        eqjax.models.hopfield((4, 3), energy="quadratic")
    with pytest.raises(ValueError, match="sizes must be"):
        eqjax.models.hopfield((4,))
    with pytest.raises(ValueError, match="step_size must be a positive finite number"):
        eqjax.relax(MODEL, COST, GradientDescent(step_size=-0.1), PARAMS, X)
    with pytest.raises(ValueError, match="max_steps must be a non-negative int"):
        BlockCoordinate(max_steps=2.5)
    with pytest.raises(ValueError, match="check_every must be a positive int"):
        BlockCoordinate(check_every=0)
    with pytest.raises(ValueError, match="method must be"):
        ImplicitDiff(method="lu")
    with pytest.raises(ValueError, match="output_bounds"):
        eqjax.models.hopfield((4, 3), output_bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="init_scheme must be one of"):
        eqjax.models.hopfield((4, 3), init_scheme="he")
    with pytest.raises(ValueError, match="init_scheme must be one of"):
        eqjax.models.resistive((4, 3), init_scheme="glorot")


def test_init_schemes_have_their_documented_ranges():
    # kaiming: |W| <= gain / sqrt(fan_in); glorot: |W| <= gain * sqrt(6 / (fan_in + fan_out))
    kaiming = eqjax.models.hopfield((400, 100, 10), gain=0.7, init_scheme="kaiming").init(jax.random.key(0))
    glorot = eqjax.models.hopfield((400, 100, 10), gain=0.7).init(jax.random.key(0))
    for w, (n_in, n_out) in zip(kaiming["weights"], ((400, 100), (100, 10))):
        limit = 0.7 / n_in ** 0.5
        assert float(jnp.abs(w).max()) <= limit and float(jnp.abs(w).max()) > 0.9 * limit  # fills its range
    for w, (n_in, n_out) in zip(glorot["weights"], ((400, 100), (100, 10))):
        assert float(jnp.abs(w).max()) <= 0.7 * (6 / (n_in + n_out)) ** 0.5
    # resistive kaiming: max(0, U(-a, a)), about half the resistors absent, none negative
    g = eqjax.models.resistive((400, 100, 10), init_scheme="kaiming").init(jax.random.key(0))["conductances"][0]
    assert float(g.min()) == 0.0 and float(g.max()) <= 1 / 800 ** 0.5
    assert 0.45 < float(jnp.mean(g == 0)) < 0.55  # 80,000 draws: the fraction is 0.5 +- 0.002


def test_bad_start_state():
    with pytest.raises(ValueError, match="state0 must have the structure of the model's state with shapes"):
        eqjax.relax(MODEL, COST, SOLVER, PARAMS, X, state0=(jnp.zeros((2, 5)),))


def test_non_convergence_is_reported_not_hidden():
    _, aux = eqjax.gradients(MODEL, COST, GradientDescent(0.01, tol=1e-12, max_steps=2), EP(beta=0.1), PARAMS, X, Y)
    for phase in ("free", "positive", "negative"):
        assert not bool(np.any(aux.phases[phase].converged))
        assert np.all(np.asarray(aux.phases[phase].num_steps) == 2)
