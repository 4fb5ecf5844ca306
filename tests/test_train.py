"""Training on synthetic 8x8 digits with optax.sgd: EP learns, and tracks the true gradient."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import eqjax
from eqjax.estimators import EP, ImplicitDiff

BATCH = 16


def digits(dtype):
    x, y = eqjax.synthetic.digits(jax.random.key(0), 800, noise=0.1, flip=0.02)
    x_test, y_test = eqjax.synthetic.digits(jax.random.key(1), 400, noise=0.1, flip=0.02)
    return x.astype(dtype), y, x_test.astype(dtype), y_test


def demo_model():
    # linear output units keep the true gradient alive for outputs that a [0, 1] box would pin at 0
    return eqjax.models.hopfield((64, 64, 10), energy="bilinear", gain=0.5, output_bounds=(-jnp.inf, jnp.inf))


def train(estimator, solver, dtype, epochs=20, learning_rate=0.05):
    """Returns the per-epoch mean training loss and the final test accuracy."""
    x, y, x_test, y_test = digits(dtype)
    model, cost = demo_model(), eqjax.costs.squared_error()
    params = model.init(jax.random.key(2), dtype=dtype)
    optimizer = optax.sgd(learning_rate)
    opt_state = optimizer.init(params)
    epoch = jax.jit(eqjax.train_epoch(eqjax.train_step(model, cost, optimizer)))
    xs, ys = x.reshape(-1, BATCH, 64), y.reshape(-1, BATCH)
    curve = []
    for _ in range(epochs):
        params, opt_state, metrics = epoch(params, opt_state, solver, estimator, xs, ys)
        curve.append(float(metrics["loss"].mean()))
    accuracy = float(eqjax.evaluate(model, cost, solver, params, x_test, y_test).accuracy.mean())
    return np.array(curve), accuracy, metrics


def test_centered_ep_trains_the_demo_in_float32():
    solver = eqjax.solvers.BlockCoordinate(tol=1e-5, max_steps=30)
    curve, accuracy, metrics = train(EP(beta=0.2, variant="centered"), solver, jnp.float32)
    assert accuracy > 0.90  # held-out synthetic digits; chance is 0.10
    assert curve[-1] < 0.5 * curve[0]
    assert float(metrics["free_converged"].mean()) > 0.9  # relaxation diagnostics are reported


def test_ep_and_implicit_diff_give_the_same_learning_curve_at_small_beta():
    solver = eqjax.solvers.BlockCoordinate(tol=1e-10, max_steps=200)
    ep_curve, ep_accuracy, _ = train(EP(beta=1e-3, variant="centered"), solver, jnp.float64)
    id_curve, id_accuracy, _ = train(ImplicitDiff(), solver, jnp.float64)
    assert ep_accuracy > 0.90 and id_accuracy > 0.90
    # per-step gradients differ by O(beta^2) ~ 1e-6 relative; 1000 SGD steps compound it to ~1e-4
    np.testing.assert_allclose(ep_curve, id_curve, atol=1e-3)
    assert abs(ep_accuracy - id_accuracy) <= 0.02  # at most 8 of 400 test digits


def test_epoch_scan_equals_a_loop_of_steps():
    x, y, _, _ = digits(jnp.float32)
    model, cost = demo_model(), eqjax.costs.squared_error()
    solver, estimator = eqjax.solvers.BlockCoordinate(tol=1e-5, max_steps=30), EP(beta=0.2)
    optimizer = optax.sgd(0.05)
    params = model.init(jax.random.key(3))
    step = eqjax.train_step(model, cost, optimizer)
    xs, ys = x[:64].reshape(4, BATCH, 64), y[:64].reshape(4, BATCH)
    scanned, _, metrics = jax.jit(eqjax.train_epoch(step))(params, optimizer.init(params), solver, estimator, xs, ys)
    looped, opt_state = params, optimizer.init(params)
    for i in range(4):
        looped, opt_state, _, _ = jax.jit(step)(looped, opt_state, solver, estimator, xs[i], ys[i])
    chex.assert_trees_all_close(scanned, looped, atol=1e-6)  # float32 round-off, fused vs unfused
    assert metrics["loss"].shape == (4,)
    assert set(metrics) >= {"loss", "accuracy", "free_steps", "positive_converged", "negative_residual"}


def test_second_epoch_does_not_recompile():
    x, y, _, _ = digits(jnp.float32)
    model, cost = demo_model(), eqjax.costs.squared_error()
    optimizer = optax.sgd(optax.exponential_decay(0.05, 10, 0.99))
    chunk = jax.jit(chex.assert_max_traces(n=1)(eqjax.train_chunk(model, cost, optimizer, warm_start=True)))
    solver, estimator = eqjax.solvers.BlockCoordinate(tol=1e-4, max_steps=15), EP(beta=0.2)
    params = model.init(jax.random.key(4))
    opt_state = optimizer.init(params)
    state = tuple(jnp.zeros((BATCH, n)) for n in model.sizes[1:])
    for epoch in range(2):  # a new data order each epoch, same shapes: one trace, one compile
        order = jax.random.permutation(jax.random.key(epoch), 160).reshape(10, BATCH)
        keys = jax.random.split(jax.random.key(epoch), 10)
        params, opt_state, state, metrics = chunk(params, opt_state, state, solver, estimator, x[order], y[order], order, keys)
    assert chunk._cache_size() == 1
    chex.assert_tree_all_finite(params)
