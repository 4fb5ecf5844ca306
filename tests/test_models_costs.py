"""Energies and costs against hand-written NumPy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqjax
from eqjax.models.hopfield import product_layout
from conftest import random_problem


def numpy_energy(params, state, x, rho):
    layers = [np.asarray(x)] + [rho(np.asarray(s)) for s in state]
    e = sum(0.5 * np.sum(np.asarray(s) ** 2) for s in state)
    for l, (w, b) in enumerate(zip(params["weights"], params["biases"])):
        e -= layers[l] @ np.asarray(w) @ layers[l + 1] + np.asarray(b) @ layers[l + 1]
    return e


RHOS = {
    "bilinear": lambda s: s,
    "scellier-bengio": lambda s: np.clip(s, 0, 1),
    "smooth": lambda s: 1 / (1 + np.exp(-s)),
}


@pytest.mark.parametrize("energy", RHOS)
def test_energy_formula(energy):
    model, params, x, _ = random_problem(0, energy=energy)
    state = tuple(jax.random.uniform(jax.random.key(i), (n,), jnp.float64, -0.5, 1.5)
                  for i, n in enumerate(model.sizes[1:]))
    expected = numpy_energy(params, state, x[0], RHOS[energy])
    assert float(model.energy(params, state, x[0])) == pytest.approx(expected, rel=1e-12)


def test_product_layout_keeps_the_energy_and_transposes_only_narrowing_weights():
    # sizes (6, 7, 5, 3): W_2 (7, 5) and W_3 (5, 3) narrow, so both get a transposed copy; (4, 6, 6)
    # has a square W_2, which keeps its layout
    model, params, x, _ = random_problem(2, energy="bilinear")
    loop_params = product_layout(params)
    assert [t.shape for t in loop_params["transposed_weights"]] == [(5, 7), (3, 5)]
    square = eqjax.models.hopfield((4, 6, 6))
    assert product_layout(square.init(jax.random.key(0)))["transposed_weights"] == (None,)
    state = tuple(jax.random.uniform(jax.random.key(i), (n,), jnp.float64) for i, n in enumerate(model.sizes[1:]))
    # the same sums in another order: equal to float64 round-off
    assert float(model.energy(loop_params, state, x[0])) == pytest.approx(
        float(model.energy(params, state, x[0])), rel=1e-12)
    grads = jax.grad(model.energy, argnums=1)(loop_params, state, x[0])
    for a, b in zip(grads, jax.grad(model.energy, argnums=1)(params, state, x[0])):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("energy", RHOS)
def test_energy_difference_and_its_parameter_gradient_match_two_energies(energy):
    # EP's weight update differentiates energy_difference (factored input term, narrowing weights
    # read through their transposed copies); it must equal E(a) - E(b) and its gradient
    model, params, x, _ = random_problem(3, energy=energy)
    a, b = (tuple(jax.random.uniform(jax.random.key(k + i), (n,), jnp.float64, -0.5, 1.5)
                  for i, n in enumerate(model.sizes[1:])) for k in (0, 10))
    two = lambda p: model.energy(p, a, x[0]) - model.energy(p, b, x[0])
    one = lambda p: model.energy_difference(p, a, b, x[0])
    assert float(one(params)) == pytest.approx(float(two(params)), rel=1e-12)
    for g, h in zip(jax.tree.leaves(jax.grad(one)(params)), jax.tree.leaves(jax.grad(two)(params))):
        np.testing.assert_allclose(g, h, rtol=1e-12, atol=1e-12)  # the same sums, reordered


def test_scellier_bengio_equals_bilinear_inside_the_box():
    model, params, x, _ = random_problem(1, energy="scellier-bengio")
    bilinear = eqjax.models.hopfield(model.sizes, energy="bilinear")
    state = tuple(jax.random.uniform(jax.random.key(i), (n,), jnp.float64) for i, n in enumerate(model.sizes[1:]))
    assert float(model.energy(params, state, x[0])) == pytest.approx(float(bilinear.energy(params, state, x[0])), rel=1e-12)


def test_scellier_bengio_state_gradient_at_the_bounds():
    # units exactly at 0 or 1 must feel the full drive (rho' = 1 on [0, 1]); with jnp.clip's split
    # derivative (1/2) a unit pinned at 1 would step off the bound and back at every iteration
    model, params, x, _ = random_problem(4, energy="scellier-bengio", bias_scale=3.0)
    bilinear = eqjax.models.hopfield(model.sizes, energy="bilinear")
    state = tuple(jnp.asarray(np.arange(n) % 3 / 2.0) for n in model.sizes[1:])  # values 0, 0.5, 1
    grad_sb = jax.grad(model.energy, argnums=1)(params, state, x[0])
    grad_bilinear = jax.grad(bilinear.energy, argnums=1)(params, state, x[0])
    for a, b in zip(grad_sb, grad_bilinear):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    solver = eqjax.solvers.GradientDescent(0.5, tol=1e-10, max_steps=1000)
    eq = eqjax.relax(model, eqjax.costs.squared_error(), solver, params, x)
    assert bool(eq.converged.all())  # no oscillation at the bounds


def test_init_shapes_scale_and_bounds():
    model = eqjax.models.hopfield((784, 500, 10), energy="scellier-bengio", gain=0.7)
    params = model.init(jax.random.key(0))
    assert [w.shape for w in params["weights"]] == [(784, 500), (500, 10)]
    assert [b.shape for b in params["biases"]] == [(500,), (10,)]
    limit = 0.7 * np.sqrt(6 / (784 + 500))
    w = np.asarray(params["weights"][0])
    assert w.max() <= limit and w.min() >= -limit
    assert w.std() == pytest.approx(limit / np.sqrt(3), rel=0.01)  # uniform(-a, a) has std a/sqrt(3)
    assert params["weights"][0].dtype == jnp.float64  # JAX's default float: the tests enable x64
    assert model.init(jax.random.key(0), jnp.float32)["weights"][0].dtype == jnp.float32
    assert model.bounds == ((0.0, 1.0), (0.0, 1.0))
    assert eqjax.models.hopfield((3, 2), energy="smooth").bounds == ((-np.inf, np.inf),)
    assert eqjax.models.hopfield((3, 4, 2), output_bounds=(-1, 2)).bounds == ((0.0, 1.0), (-1.0, 2.0))


def test_costs():
    o = jnp.array([0.2, 0.9, -0.1])
    assert float(eqjax.costs.squared_error()(o, 1)) == pytest.approx(0.5 * (0.04 + 0.01 + 0.01))
    assert float(eqjax.costs.squared_error(half=False)(o, 1)) == pytest.approx(0.06)
    log_softmax = np.asarray(o) - np.log(np.sum(np.exp(np.asarray(o))))
    assert float(eqjax.costs.cross_entropy()(o, 2)) == pytest.approx(-log_softmax[2], rel=1e-6)


def test_phases_add_their_terms_to_the_batch_energy():
    model, params, x, y = random_problem(2, energy="bilinear")
    cost = eqjax.costs.squared_error()
    states = tuple(jax.random.uniform(jax.random.key(i), (x.shape[0], n), jnp.float64)
                   for i, n in enumerate(model.sizes[1:]))
    energies = jax.vmap(model.energy, in_axes=(None, 0, 0))(params, states, x)
    costs = jax.vmap(lambda s, label: cost(model.output(s), label))(states, y)
    F = lambda phase: eqjax.total_energy(model, cost, phase, model.prepare(params, x), x, y)(states)
    # the prepared (input field, transposed weights) batch energy is the sum of the examples' energies
    assert float(F(eqjax.phases.Free())) == pytest.approx(float(energies.sum()), rel=1e-12)
    assert float(F(eqjax.phases.Nudge(0.3))) == pytest.approx(float(energies.sum() + 0.3 * costs.sum()), rel=1e-12)
    beta = 0.1 * jnp.exp(1j * jnp.pi / 3)  # complex beta stays complex
    assert complex(F(eqjax.phases.Nudge(beta))) == pytest.approx(complex(energies.sum() + beta * costs.sum()), rel=1e-12)


def test_synthetic_digits_are_deterministic_and_balanced():
    x, y = eqjax.synthetic.digits(jax.random.key(0), 2000)
    x2, y2 = eqjax.synthetic.digits(jax.random.key(0), 2000)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x2))
    assert x.shape == (2000, 64) and x.dtype == jnp.float32 and y.dtype == jnp.int32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    counts = np.bincount(np.asarray(y), minlength=10)
    assert counts.min() > 150  # 200 expected per class
