"""Memristor device models as optax transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eqjax
from eqjax.analog import memristors


def apply(transform, params, updates_sequence):
    state = transform.init(params)
    for u in updates_sequence:
        step, state = transform.update(u, state, params)
        params = optax.apply_updates(params, step)
    return params, state


def test_bounds_hold_under_any_updates():
    params = {"g": jnp.full((1000,), 0.5)}
    rng = np.random.default_rng(0)
    updates = [{"g": jnp.asarray(rng.normal(0, 0.4, 1000))} for _ in range(50)]
    final, _ = apply(memristors.conductance_bounds(0.1, 1.0), params, updates)
    # g + (clip(g + u) - g) equals the bound up to one rounding of the addition
    assert float(final["g"].min()) >= 0.1 - 1e-12 and float(final["g"].max()) <= 1.0 + 1e-12
    final, _ = apply(memristors.conductance_bounds(), params, updates)
    assert float(final["g"].min()) >= 0.0  # never negative: g + (0 - g) is exactly 0


def test_quantized_updates_are_whole_pulses():
    transform = memristors.pulse_quantization(0.0, 1.0, num_levels=5)  # pulses of 0.25
    step, _ = transform.update({"g": jnp.array([0.1, 0.13, -0.4, 0.9])}, transform.init(None))
    np.testing.assert_allclose(step["g"], [0.0, 0.25, -0.5, 1.0])
    with pytest.raises(ValueError, match="num_levels"):
        memristors.pulse_quantization(0.0, 1.0, num_levels=1)


def test_stochastic_pulses_are_whole_and_unbiased():
    transform = memristors.pulse_quantization(0.0, 1.0, num_levels=5, stochastic=True)  # pulses of 0.25
    updates = {"g": jnp.full((100_000,), 0.1), "h": jnp.full((100_000,), -0.3)}
    step, state = transform.update(updates, transform.init(updates))
    # 0.1 is 0.4 pulse: 0 or 1 pulse, 1 with probability 0.4; -0.3 is -1.2 pulses: -2 or -1
    assert set(np.unique(np.asarray(step["g"]))) == {0.0, 0.25}
    assert set(np.unique(np.asarray(step["h"]))) == {-0.5, -0.25}
    # 100k draws: the standard error of the mean is 0.25 * sqrt(0.24 / 1e5) = 3.9e-4; 5e-3 is ~13 of them
    assert abs(float(step["g"].mean()) - 0.1) < 5e-3 and abs(float(step["h"].mean()) + 0.3) < 5e-3
    again, _ = transform.update(updates, state)
    assert not np.array_equal(again["g"], step["g"])  # fresh draws at every write


def test_nonlinear_asymmetric_response():
    transform = memristors.nonlinear_response(0.0, 1.0, potentiation=2.0, depression=0.5)
    params = {"g": jnp.array([0.0, 1.0, 0.0, 1.0])}
    step, _ = transform.update({"g": jnp.array([0.1, 0.1, -0.1, -0.1])}, transform.init(params), params)
    # potentiation: full at g_min, exp(-2) at g_max; depression: exp(-0.5) at g_min, full at g_max
    np.testing.assert_allclose(step["g"], [0.1, 0.1 * np.exp(-2), -0.1 * np.exp(-0.5), -0.1], rtol=1e-6)


def test_write_noise_statistics_and_device_gains():
    params = {"g": jnp.zeros((20_000,))}
    noise = memristors.write_noise(0.2, seed=1)
    state = noise.init(params)
    first, state = noise.update({"g": jnp.ones((20_000,))}, state, params)
    second, _ = noise.update({"g": jnp.ones((20_000,))}, state, params)
    assert float(jnp.mean(first["g"])) == pytest.approx(1.0, abs=0.01)  # 3 sigma of the mean: 0.004
    assert float(jnp.std(first["g"])) == pytest.approx(0.2, rel=0.03)
    assert not np.allclose(first["g"], second["g"])  # fresh noise every write
    variation = memristors.device_variation(0.3, seed=2)
    state = variation.init(params)
    a, state = variation.update({"g": jnp.ones((20_000,))}, state, params)
    b, _ = variation.update({"g": jnp.ones((20_000,))}, state, params)
    np.testing.assert_array_equal(a["g"], b["g"])  # a device keeps its gain
    assert float(jnp.std(a["g"])) == pytest.approx(0.3, rel=0.05)


def test_ep_training_of_a_resistive_net_through_a_memristor_model():
    x, y = eqjax.synthetic.digits(jax.random.key(0), 480, noise=0.1, flip=0.02)
    model = eqjax.models.resistive((64, 40, 10), diode="ideal", input_gain=4.0)
    cost = eqjax.costs.squared_error()
    solver = eqjax.solvers.BlockCoordinate(tol=1e-5, max_steps=20)
    params = model.init(jax.random.key(1))
    optimizer = optax.chain(optax.adam(3e-3), memristors.memristor(
        0.0, 0.2, num_levels=256, potentiation=0.5, depression=0.5, write_std=0.1, device_std=0.1))
    opt_state = optimizer.init(params)
    epoch = jax.jit(eqjax.train_epoch(eqjax.train_step(model, cost, optimizer)))
    for _ in range(15):
        params, opt_state, metrics = epoch(params, opt_state, solver, eqjax.estimators.EP(beta=0.2),
                                           x.reshape(30, 16, 64), y.reshape(30, 16))
    leaves = jax.tree.leaves(params)
    assert min(float(g.min()) for g in leaves) >= 0.0  # never negative
    assert max(float(g.max()) for g in leaves) <= 0.2 * (1 + 1e-6)  # g_max, to float32 rounding
    x_test, y_test = eqjax.synthetic.digits(jax.random.key(5), 400, noise=0.1, flip=0.02)
    accuracy = float(eqjax.evaluate(model, cost, solver, params, x_test, y_test).accuracy.mean())
    # chance is 0.1; the same net reaches about 0.78 with ideal devices (EP or implicit gradients)
    assert accuracy > 0.5, accuracy
