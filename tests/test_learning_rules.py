"""The learning rules beside EP: holomorphic EP, contrastive and coupled learning (float64)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_problem, relative_error

import eqjax
from eqjax.estimators import EP, Contrastive, Coupled, HolomorphicEP, ImplicitDiff
from eqjax.verify import bias_curve

COST = eqjax.costs.squared_error()


@pytest.mark.parametrize("num_phases", [2, 3, 4])
def test_holomorphic_ep_error_falls_like_beta_to_the_n(num_phases, tight_gd):
    model, params, x, y = random_problem(0, sizes=(5, 8, 3), gain=1.5, bias_scale=0.5)
    curve = bias_curve(model, COST, tight_gd, params, x, y, HolomorphicEP(num_phases=num_phases),
                       [0.4, 0.2, 0.1, 0.05])
    # Cauchy's formula discretised at N points aliases the (N+1)-th Taylor term: error O(beta^N).
    # The fitted slope over a factor 8 in beta lands within 0.3 of N (measured: 2.16, 2.94, 4.02 on
    # a similar net); the errors stay far above the float64 floor of the equilibria (tol 1e-13).
    assert abs(curve.slope - num_phases) < 0.3, curve
    assert np.all(np.diff(curve.relative_error) < 0), curve.relative_error


def test_holomorphic_ep_with_two_phases_is_centered_ep(tight_gd):
    model, params, x, y = random_problem(1, sizes=(5, 8, 3))
    holomorphic, aux = eqjax.gradients(model, COST, tight_gd, HolomorphicEP(beta=0.1, num_phases=2), params, x, y)
    centered, _ = eqjax.gradients(model, COST, tight_gd, EP(beta=0.1, variant="centered"), params, x, y)
    # N = 2 puts the nudges at +beta and -beta (real), the Fourier weights at +-1/(2 beta):
    # the same estimate, up to the relaxations' tolerance divided by beta
    assert relative_error(holomorphic, centered) < 1e-9
    assert aux.phases["nudged"].status.shape == (x.shape[0], 2)  # batch first, one status per phase
    assert bool(jnp.all(aux.phases["nudged"].converged))
    # an example with an infinite input, inside jit: flagged in both of its nudged phases, left out
    bad = jax.jit(lambda x: eqjax.gradients(model, COST, tight_gd, HolomorphicEP(beta=0.1, num_phases=2),
                                            params, x, y)[1])(x.at[0, 0].set(jnp.inf))
    np.testing.assert_array_equal(bad.phases["nudged"].status[0], [eqjax.RESULTS.INVALID_INPUT] * 2)
    assert bool(jnp.all(bad.phases["nudged"].converged[1:])) and not bool(bad.used[0])


def test_holomorphic_ep_refuses_boxed_models_and_real_only_solvers():
    model, params, x, y = random_problem(2, energy="bilinear")
    with pytest.raises(ValueError, match="unbounded"):
        eqjax.gradients(model, COST, eqjax.solvers.GradientDescent(), HolomorphicEP(), params, x, y)
    smooth, params, x, y = random_problem(2)
    with pytest.raises(TypeError, match="real states"):
        eqjax.gradients(smooth, COST, eqjax.solvers.BlockCoordinate(), HolomorphicEP(), params, x, y)
    with pytest.raises(ValueError, match="num_phases"):
        HolomorphicEP(num_phases=1)
    with pytest.raises(ValueError, match="beta must be a finite nonzero"):
        eqjax.gradients(smooth, COST, eqjax.solvers.GradientDescent(), HolomorphicEP(beta=0.0), params, x, y)


def test_holomorphic_ep_beta_is_traced(tight_gd):
    model, params, x, y = random_problem(3, sizes=(5, 8, 3))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def grad(beta):
        return HolomorphicEP(beta=beta, num_phases=3).estimate(model, COST, tight_gd, params, x, y)[0]

    reference, _ = ImplicitDiff().estimate(model, COST, tight_gd, params, x, y)
    errors = [relative_error(grad(beta), reference) for beta in (0.2, 0.1)]
    assert errors[1] < errors[0] / 4  # O(beta^3): halving beta divides the error by about 8


def test_coupled_learning_at_eta_one_is_contrastive_learning(tight_gd):
    model, params, x, y = random_problem(4, sizes=(5, 8, 3))
    contrastive, aux = eqjax.gradients(model, COST, tight_gd, Contrastive(), params, x, y)
    coupled, _ = eqjax.gradients(model, COST, tight_gd, Coupled(eta=1.0, variant="positive"), params, x, y)
    # o + 1 * (t - o) = t: the same clamp, the same contrast
    chex.assert_trees_all_close(coupled, contrastive, rtol=1e-12, atol=1e-14)
    clamped = aux.phases["clamped"]
    assert bool(jnp.all(clamped.converged))


def test_clamped_phase_holds_the_output_at_the_target(tight_gd):
    model, params, x, y = random_problem(5, sizes=(5, 8, 3))
    target = jax.nn.one_hot(y, 3, dtype=x.dtype)
    clamped = eqjax.relax(model, COST, tight_gd, params, x, y, eqjax.phases.Clamp(target))
    np.testing.assert_array_equal(np.asarray(clamped.state[-1]), np.asarray(target))
    # the hidden layer is at the minimum of E given the clamped output: dE/dh = 0 there
    grad = jax.vmap(jax.grad(model.energy, argnums=1), in_axes=(None, 0, 0))(params, clamped.state, x)
    assert float(jnp.max(jnp.abs(grad[0]))) < 1e-10


def test_coupled_learning_becomes_ep_like_as_eta_shrinks(tight_gd):
    model, params, x, y = random_problem(6, sizes=(5, 8, 3), bias_scale=0.5)
    centered = bias_curve(model, COST, tight_gd, params, x, y, Coupled(variant="centered"), [0.4, 0.2, 0.1],
                          field="eta")
    contrastive, _ = eqjax.gradients(model, COST, tight_gd, Contrastive(), params, x, y)
    reference, _ = eqjax.gradients(model, COST, tight_gd, ImplicitDiff(), params, x, y)
    # Coupled learning is not a gradient estimator: its bias does not vanish as eta -> 0 (it tends
    # to a clamped-output perturbation, not the cost's), but it points the right way. Measured on
    # this net: relative errors of a few percent to tens of percent, cosine > 0.9.
    assert np.all(centered.cosine > 0.9), centered
    assert relative_error(contrastive, reference) > centered.relative_error[-1]  # CL: the largest bias


def train_digits(estimator, solver, epochs=8):
    x, y = eqjax.synthetic.digits(jax.random.key(0), 480, noise=0.1, flip=0.02)
    model = eqjax.models.hopfield((64, 32, 10), energy="bilinear", gain=0.5, output_bounds=(-jnp.inf, jnp.inf))
    params = model.init(jax.random.key(2), jnp.float32)
    optimizer = optax.sgd(0.2)
    epoch = jax.jit(eqjax.train_epoch(eqjax.train_step(model, COST, optimizer)))
    opt_state, curve = optimizer.init(params), []
    for _ in range(epochs):
        params, opt_state, metrics = epoch(params, opt_state, solver, estimator, x.astype(jnp.float32).reshape(-1, 16, 64),
                                           y.reshape(-1, 16))
        curve.append(float(metrics["loss"].mean()))
    return np.array(curve)


@pytest.mark.parametrize("estimator", [Contrastive(), Coupled(eta=0.5, variant="positive"),
                                       Coupled(eta=0.5, variant="negative"), Coupled(eta=0.5, variant="centered")],
                         ids=["CL", "P-CpL", "N-CpL", "C-CpL"])
def test_contrastive_and_coupled_learning_lower_the_training_loss(estimator):
    curve = train_digits(estimator, eqjax.solvers.BlockCoordinate(tol=1e-5, max_steps=30))
    assert curve[-1] < 0.5 * curve[0], curve  # the loss at the free equilibrium halves in 8 epochs
