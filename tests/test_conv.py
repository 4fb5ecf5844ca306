"""Convolutional Hopfield networks: the energy's contract, relaxation, gradient equivalence in
float64 (centered EP vs implicit differentiation vs finite differences) and a training run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eqjax
from eqjax.estimators import EP, ImplicitDiff
from eqjax.models.conv_ops import pool
from conftest import finite_difference_gradient, relative_error

IMAGE = (8, 8, 2)  # tiny images: every check runs in seconds
CASES = {
    # max pooling, output units in the energy boxed in [0, 1], squared error (Ernoult et al. 2019)
    "max-hopfield": dict(pooling="max", readout="hopfield", cost=eqjax.costs.squared_error()),
    # max pooling, a dense hidden layer, the output removed from the energy, cross-entropy (Laborieux 2021)
    "max-projection-dense": dict(pooling="max", readout="projection", dense=(5,), cost=eqjax.costs.cross_entropy()),
    # average pooling, linear outputs in the energy, cross-entropy
    "avg-linear": dict(pooling="avg", readout="hopfield", output_bounds=(-np.inf, np.inf),
                       cost=eqjax.costs.cross_entropy()),
}


def problem(case, seed=0, batch=3, gain=1.5, bias_scale=0.5):
    """A float64 conv net on 8x8x2 images (3x3 convs with padding 1, 2x2 pooling: 4x4x3 then 2x2x4
    maps, 3 outputs), random biases so that units sit at both bounds, inputs, labels and the cost."""
    options = dict(CASES[case])
    cost = options.pop("cost")
    model = eqjax.models.conv_hopfield(IMAGE, (3, 4), kernel=3, padding=1, num_classes=3, gain=gain, **options)
    keys = jax.random.split(jax.random.key(seed), 4)
    params = model.init(keys[0], jnp.float64)
    bias_keys = jax.random.split(keys[1], len(params["biases"]))
    params["biases"] = tuple(bias_scale * jax.random.normal(k, b.shape, jnp.float64)
                             for k, b in zip(bias_keys, params["biases"]))
    x = jax.random.uniform(keys[2], (batch, int(np.prod(IMAGE))), jnp.float64)
    y = jax.random.randint(keys[3], (batch,), 0, 3)
    return model, cost, params, x, y


def random_states(model, x, seed=5):
    keys = jax.random.split(jax.random.key(seed), len(model.layer_shapes))
    return tuple(jax.random.uniform(k, (len(x), *shape), jnp.float64) for k, shape in zip(keys, model.layer_shapes))


def tight_solver(model):
    """Relaxation converged to float64 round-off. Block-coordinate never raises the energy of the
    hopfield readout (max pooling included); the projection readout couples the last hidden layer
    through ``W_o W_o^T``, and there Laborieux et al.'s fixed-point sweeps are used."""
    if model.readout == "projection":
        return eqjax.solvers.FixedPoint(tol=1e-13, max_steps=5_000)
    return eqjax.solvers.BlockCoordinate(tol=1e-13, max_steps=5_000)


def pinned_fraction(model, state):
    pinned = [(s <= lo) | (s >= hi) for s, (lo, hi) in zip(state, model.bounds)]
    return float(sum(p.sum() for p in pinned) / sum(p.size for p in pinned))


def test_shapes_and_builder_checks():
    model = eqjax.models.conv_hopfield((28, 28, 1), (32, 64), kernel=(5, 3), padding=0, dense=(100,))
    assert model.input_shape == (784,)
    assert model.layer_shapes == ((12, 12, 32), (5, 5, 64), (100,), (10,))
    assert model.weight_shapes == ((5, 5, 1, 32), (3, 3, 32, 64), (1600, 100), (100, 10))
    params = model.init(jax.random.key(0), jnp.float32)
    assert [w.shape for w in params["weights"]] == list(model.weight_shapes)
    assert [b.shape for b in params["biases"]] == [(32,), (64,), (100,), (10,)]
    bad = [
        (dict(image_shape=(8, 8)), "image_shape"), (dict(kernel=(3,)), "kernel"), (dict(pooling="median"), "pooling"),
        (dict(readout="softmax"), "readout"), (dict(kernel=9, padding=0), "empty feature map"),
        (dict(readout="projection", output_bounds=(0, 1)), "output_bounds"), (dict(channels=()), "channels"),
    ]
    for change, message in bad:
        arguments = dict(image_shape=IMAGE, channels=(3, 4), kernel=3) | change
        with pytest.raises(ValueError, match=message):
            eqjax.models.conv_hopfield(**arguments)


def test_pooling():
    a = jnp.arange(2 * 5 * 4 * 3, dtype=jnp.float64).reshape(2, 5, 4, 3)
    np.testing.assert_array_equal(pool(a, "max", 2), a[:, 1:4:2, 1::2])  # increasing values: the last of each window
    np.testing.assert_allclose(pool(a, "avg", 2), (a[:, 0:4:2, 0::2] + a[:, 1:4:2, 1::2]) / 2)
    # ties share the derivative equally (a max over four equal values passes 1/4 to each)
    grad = jax.grad(lambda z: pool(z, "max", 2).sum())(jnp.zeros((1, 2, 2, 1)))
    np.testing.assert_array_equal(grad, 0.25)


@pytest.mark.parametrize("case", CASES)
def test_batched_energy_follows_the_model_contract(case):
    """relaxation_energy(prepare(.)) is the sum of per-example energies as a function of the states
    and of the parameters; energy_difference is E(a) - E(b), also in its parameter gradient."""
    model, _, params, x, _ = problem(case)
    a, b = random_states(model, x, 5), random_states(model, x, 6)
    # jitted: op-by-op, the Winograd passes' many small slices would compile one by one
    per_example = jax.jit(lambda p, s: jnp.sum(jax.vmap(model.energy, in_axes=(None, 0, 0))(p, s, x)))
    batched = jax.jit(lambda p, s: model.relaxation_energy(model.prepare(p, x), s, x))
    np.testing.assert_allclose(batched(params, a), per_example(params, a), rtol=1e-12)
    for argnum in (0, 1):
        got, want = jax.grad(batched, argnum)(params, a), jax.grad(per_example, argnum)(params, a)
        assert relative_error(got, want) < 1e-12
    difference = lambda p: jnp.sum(jax.vmap(model.energy_difference, in_axes=(None, 0, 0, 0))(p, a, b, x))
    assert relative_error(jax.grad(difference)(params),
                          jax.grad(lambda p: per_example(p, a) - per_example(p, b))(params)) < 1e-12


def test_projection_readout_feeds_nothing_back_at_the_free_equilibrium():
    """The output removed from the energy: o = d W_o + b_o at the free equilibrium, and the hidden
    layers of an equilibrium stay an equilibrium for any other readout parameters (the energy is not
    convex, so a relaxation may pick another one; the set of equilibria is what does not change)."""
    model, cost, params, x, _ = problem("max-projection-dense")
    eq = eqjax.relax(model, cost, tight_solver(model), params, x)
    hidden, output = eq.state[-2], eq.state[-1]
    np.testing.assert_allclose(output, hidden @ params["weights"][-1] + params["biases"][-1], atol=1e-11)
    other = dict(params, weights=params["weights"][:-1] + (3.0 * params["weights"][-1],),
                 biases=params["biases"][:-1] + (params["biases"][-1] - 1.0,))
    state = eq.state[:-1] + (hidden @ other["weights"][-1] + other["biases"][-1],)
    F = eqjax.total_energy(model, cost, eqjax.phases.Free(), model.prepare(other, x), x, None)
    assert projected_gradient(F, eq.state, model.bounds) > 1e-3  # the old output is off for the new readout
    assert projected_gradient(F, state, model.bounds) < 1e-10  # the hidden layers did not need to move


def projected_gradient(F, state, bounds):
    """``max |s - clip(s - dF/ds)|``: zero exactly at a point satisfying the box's KKT conditions."""
    grad = jax.grad(F)(state)
    moved = eqjax.solvers.project(tuple(s - g for s, g in zip(state, grad)), bounds)
    return max(float(jnp.max(jnp.abs(m - s))) for m, s in zip(moved, state))


def test_block_coordinate_with_max_pooling_never_raises_the_energy_and_reaches_an_equilibrium():
    """With max pooling a half-sweep is the concave-convex step (s_k . maxpool(W * s_{k-1}) is convex
    in s_{k-1} for s_k >= 0): the energy never increases, and the sweeps stop at a KKT point."""
    model, cost, params, x, _ = problem("max-hopfield", gain=3.0)  # strong coupling: many sweeps
    F = eqjax.total_energy(model, cost, eqjax.phases.Free(), model.prepare(params, x), x, None)
    step = jax.jit(lambda s: eqjax.solvers.BlockCoordinate().step(F, s, None, model.bounds)[0])
    state, energies = jax.vmap(model.init_state)(x), []
    for _ in range(300):
        state = step(state)
        energies.append(float(F(state)))
    rises = np.diff(energies)
    assert rises.max() <= 1e-12 * abs(energies[0])  # monotone up to float64 round-off
    assert projected_gradient(F, state, model.bounds) < 1e-9
    assert 0.05 < pinned_fraction(model, state) < 0.95  # the boxes are active


def test_block_coordinate_with_average_pooling_is_an_exact_block_minimum():
    """Average pooling keeps the energy quadratic in each layer with no intra-layer coupling: after
    one half-sweep over the even layers, they satisfy their own KKT conditions exactly."""
    model, cost, params, x, _ = problem("avg-linear")
    F = eqjax.total_energy(model, cost, eqjax.phases.Free(), model.prepare(params, x), x, None)
    state = random_states(model, x)
    even = (1,)  # layer 2 (layers are numbered from the input, layer 0)
    after = eqjax.solvers._layer_step(F, state, even, model.bounds, newton=True)
    restricted = lambda s1: F(tuple(s1 if i == 1 else s for i, s in enumerate(after)))
    assert projected_gradient(lambda s: restricted(s[0]), (after[1],), (model.bounds[1],)) < 1e-12


@pytest.mark.parametrize("case", CASES)
def test_centered_ep_matches_implicit_differentiation_and_finite_differences(case):
    model, cost, params, x, y = problem(case)
    solver = tight_solver(model)
    free = eqjax.relax(model, cost, solver, params, x)
    assert bool(free.converged.all())
    assert pinned_fraction(model, free.state) > 0.1  # the active set is exercised
    implicit, aux = eqjax.gradients(model, cost, solver, ImplicitDiff(), params, x, y)
    assert float(aux.extras["linear_solve_residual"].max()) < 1e-10
    reference = finite_difference_gradient(model, cost, solver, params, x, y)
    # central differences with h = 1e-5: truncation ~h^2, round-off ~1e-16 / h (no kink of the max
    # pooling or of the boxes lies within h of these random parameters)
    assert relative_error(implicit, reference) < 1e-5
    # centered EP's bias is O(beta^2): 1e-6 relative at beta = 1e-3 (measured 1e-7 to 1e-6); a unit
    # that a nudge of 1e-3 un-pins would show as a jump far above this
    ep, _ = eqjax.gradients(model, cost, solver, EP(beta=1e-3, variant="centered"), params, x, y)
    assert relative_error(ep, implicit) < 1e-5
    # and the O(beta^2) law: ten times the nudge, about a hundred times the error
    coarse, _ = eqjax.gradients(model, cost, solver, EP(beta=1e-2, variant="centered"), params, x, y)
    assert relative_error(coarse, implicit) > 10 * relative_error(ep, implicit)


@pytest.mark.slow  # 14 s
def test_centered_ep_trains_a_conv_net_on_synthetic_digits():
    """EP in float32 with the settings of the conv-fmnist config (max pooling, the output read out
    of the energy, cross-entropy, centered beta = 0.5, fixed-point 20 / 10 sweeps, Adam) on 8x8
    synthetic digits: five epochs of 32 batches take held-out accuracy from chance (0.1) to above
    0.7 (measured 0.83)."""
    x, y = eqjax.synthetic.digits(jax.random.key(0), 1024, noise=0.1, flip=0.02)
    x_test, y_test = eqjax.synthetic.digits(jax.random.key(1), 400, noise=0.1, flip=0.02)
    model = eqjax.models.conv_hopfield((8, 8, 1), (8, 16), kernel=3, padding=1, readout="projection")
    cost, solver = eqjax.costs.cross_entropy(), eqjax.solvers.FixedPoint(tol=1e-4, max_steps=20, check_every=5)
    estimator = EP(beta=0.5, variant="centered", nudged_steps=10)
    optimizer = optax.adam(2e-3)
    params = model.init(jax.random.key(1), jnp.float32)
    epoch = jax.jit(eqjax.train_epoch(eqjax.train_step(model, cost, optimizer)))
    opt_state, errors = optimizer.init(params), []
    for _ in range(5):
        params, opt_state, metrics = epoch(params, opt_state, solver, estimator, x.reshape(32, 32, 64),
                                           y.reshape(32, 32))
        errors.append(1 - float(metrics["accuracy"].mean()))
    assert errors[-1] < 0.5 * errors[0], errors
    accuracy = eqjax.evaluate(model, cost, solver.replace(max_steps=40), params, x_test, y_test).accuracy
    assert float(accuracy.mean()) > 0.7


@pytest.mark.slow
def test_conv_bench_runs_every_case_and_writes_its_figures(tmp_path):
    from benchmarks import conv as bench

    results = bench.main(["--chunk", "1", "--rounds", "1", "--output", str(tmp_path / "conv.json")])
    assert set(results) >= {"ep", "ep-fixed", "bptt", "feedforward"}
    assert all(results[name]["seconds_per_epoch"] > 0 for name in ("ep", "bptt", "feedforward"))
    assert results["ep-fixed"]["mean_steps"]["free_steps"] == 15  # tol = 0 runs every sweep


@pytest.mark.parametrize("kernel, padding, complex_input", [(3, 1, False), (5, 0, False), (5, 2, True)])
def test_parameter_gradient_convolution_equals_jax_transpose(kernel, padding, complex_input):
    # conv_for_parameter_gradients computes the kernel cotangent as its own convolution (fast in
    # loops on a CPU); values and the input cotangent must equal JAX's rule, for real and complex
    # inputs (holomorphic EP relaxes complex states; the kernel stays real)
    from eqjax.models.conv_ops import conv, conv_for_parameter_gradients

    keys = jax.random.split(jax.random.key(0), 4)
    a = jax.random.normal(keys[0], (3, 9, 8, 2), jnp.float64)
    if complex_input:
        a = a + 1j * jax.random.normal(keys[1], a.shape, jnp.float64)
    w = jax.random.normal(keys[2], (kernel, kernel, 2, 4), jnp.float64)
    g = jax.random.normal(keys[3], conv(a, w, padding).shape, jnp.float64)
    loss = lambda f: lambda a_, w_: jnp.sum(jnp.real(f(a_, w_, padding) * g))
    expected, fast = jax.grad(loss(conv), (0, 1))(a, w), jax.grad(loss(conv_for_parameter_gradients), (0, 1))(a, w)
    np.testing.assert_allclose(conv_for_parameter_gradients(a, w, padding), conv(a, w, padding), rtol=1e-12)
    for e, f in zip(expected, fast):
        assert f.dtype == e.dtype
        np.testing.assert_allclose(f, e, rtol=1e-10, atol=1e-10)  # float64: round-off only
