"""Traced hyperparameters: no recompiles, and vmap over them equals a Python loop."""

import chex
import jax
import jax.numpy as jnp
import optax

import eqjax
from eqjax.estimators import EP
from eqjax.solvers import GradientDescent
from conftest import random_problem, relative_error


def test_changing_beta_step_size_and_learning_rate_does_not_recompile():
    model, params, x, y = random_problem(0, energy="bilinear", gain=0.5, bias_scale=0.5)
    cost = eqjax.costs.squared_error()
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)

    step = jax.jit(chex.assert_max_traces(n=1)(eqjax.train_step(model, cost, optimizer)))

    opt_state = optimizer.init(params)
    for beta, step_size, learning_rate in [(0.1, 0.5, 0.1), (0.3, 0.2, 0.01), (-0.2, 0.4, 1.0)]:
        opt_state.hyperparams["learning_rate"] = jnp.asarray(learning_rate)
        solver = GradientDescent(step_size=step_size, tol=1e-6, max_steps=50)
        new_params, _, metrics, _ = step(params, opt_state, solver, EP(beta=beta), x, y)
        chex.assert_tree_all_finite(new_params)
    # the public jitted entry points do not retrace for new beta values either
    before = eqjax.testing.compilations()["gradients"]
    for beta in (0.1, 0.2, 0.3):
        eqjax.gradients(model, cost, GradientDescent(0.5, tol=1e-6, max_steps=50), EP(beta=beta), params, x, y)
    assert eqjax.testing.compilations()["gradients"] - before <= 1


def test_vmap_over_beta_equals_python_loop():
    model, params, x, y = random_problem(1, energy="bilinear", gain=0.5, bias_scale=0.5, output_bias=0.5)
    cost, solver = eqjax.costs.squared_error(), GradientDescent(0.5, tol=1e-12, max_steps=5000)
    betas = jnp.array([0.05, 0.1, 0.5, -0.3])
    batched, aux = jax.vmap(
        lambda b: EP(beta=b).estimate(model, cost, solver, params, x, y)
    )(betas)
    for i, beta in enumerate(betas):
        looped, looped_aux = eqjax.gradients(model, cost, solver, EP(beta=float(beta)), params, x, y)
        # same arithmetic, batched: agreement to round-off
        assert relative_error(jax.tree.map(lambda g: g[i], batched), looped) < 1e-10
        chex.assert_trees_all_equal(aux.phases["positive"].num_steps[i], looped_aux.phases["positive"].num_steps)


def test_vmap_over_step_size_equals_python_loop():
    model, params, x, _ = random_problem(2, energy="smooth")
    cost = eqjax.costs.squared_error()
    steps = jnp.array([0.2, 0.5, 0.8])
    relax = lambda eps: eqjax.relax_unchecked(model, cost, GradientDescent(eps, tol=1e-12, max_steps=2000), params, x)
    batched = jax.vmap(relax)(steps)
    for i, eps in enumerate(steps):
        looped = eqjax.relax(model, cost, GradientDescent(float(eps), tol=1e-12, max_steps=2000), params, x)
        chex.assert_trees_all_close(jax.tree.map(lambda s: s[i], batched.state), looped.state, atol=1e-12)
        chex.assert_trees_all_equal(batched.num_steps[i], looped.num_steps)
