"""The declared interfaces: a model, a solver and an estimator written outside the package."""

from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct
from jax.flatten_util import ravel_pytree

import eqjax
from eqjax.estimators import EP, ImplicitDiff
from eqjax.solvers import BlockCoordinate, GradientDescent
from conftest import python_blocks, random_problem, relative_error

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
DOC_BLOCKS = python_blocks(DOC)  # the page's code, in order


def doc_namespace():
    """Run every python block of docs/extending.md in order in one namespace, as a reader pasting
    the page from top to bottom would; return what they define."""
    namespace = {}
    for block in DOC_BLOCKS:
        exec(block, namespace)  # noqa: S102 - the documented code, as a user would paste it
    return namespace


DOCUMENTED = doc_namespace()


def test_documented_training_snippet_ran():
    metrics = DOCUMENTED["metrics"]
    assert set(metrics) >= {"loss", "free_converged", "positive_nonfinite"}
    assert float(metrics["free_nonfinite"]) == 0.0 and np.isfinite(float(metrics["loss"]))
Lateral, HeavyBall, ClampToTarget = DOCUMENTED["Lateral"], DOCUMENTED["HeavyBall"], DOCUMENTED["ClampToTarget"]


def test_documented_model_block_is_short():
    model_block = DOC_BLOCKS[0]
    assert len(model_block.strip().splitlines()) < 30  # the promise: a whole model in < 30 lines


def test_lateral_model_from_the_docs_trains_with_ep_through_the_public_api():
    model = Lateral(sizes=(64, 32, 10))
    cost = eqjax.costs.squared_error()
    solver = GradientDescent(step_size=0.5, tol=1e-5, max_steps=200)
    x, y = eqjax.synthetic.digits(jax.random.key(0), 800)
    x_test, y_test = eqjax.synthetic.digits(jax.random.key(1), 400)
    params = model.init(jax.random.key(2), jnp.float32)
    assert np.any(np.asarray(params["L"]) != 0)  # the lateral weights take part
    optimizer = optax.sgd(0.1)
    opt_state = optimizer.init(params)
    epoch = jax.jit(eqjax.train_epoch(eqjax.train_step(model, cost, optimizer, throw=True)))
    before = float(eqjax.evaluate(model, cost, solver, params, x_test, y_test).accuracy.mean())
    for _ in range(10):
        params, opt_state, metrics = epoch(params, opt_state, solver, EP(beta=0.2), x.reshape(50, 16, 64),
                                           y.reshape(50, 16))
    aux = eqjax.evaluate(model, cost, solver, params, x_test, y_test)
    after = float(aux.accuracy.mean())
    # chance is 0.1; this net reached 0.78 after 10 epochs and 0.85 after 20 when the test was written
    assert after > 0.7 and after > before + 0.4, (before, after)
    assert float(metrics["free_converged"].mean()) > 0.95


def test_lateral_model_ep_gradient_matches_implicit_differentiation_in_float64():
    model = Lateral(sizes=(6, 7, 3))
    params = model.init(jax.random.key(0), jnp.float64)
    params["b"] = 0.5 + jax.random.normal(jax.random.key(1), (7,), jnp.float64) * 0.1  # hidden units off the box
    x = jax.random.uniform(jax.random.key(2), (4, 6), jnp.float64)
    y = jnp.array([0, 2, 1, 1])
    cost, solver = eqjax.costs.squared_error(), GradientDescent(0.5, tol=1e-13, max_steps=20_000)
    ep, _ = eqjax.gradients(model, cost, solver, EP(beta=1e-4), params, x, y)
    reference, aux = eqjax.gradients(model, cost, solver, ImplicitDiff(), params, x, y)
    assert float(aux.extras["linear_solve_residual"].max()) < 1e-10
    # centered EP's bias is O(beta^2) = 1e-8 relative; float64 relaxation round-off is far below
    assert relative_error(ep, reference) < 1e-6


def test_a_model_missing_a_required_method_gets_an_error_naming_it():
    class NoEnergy(eqjax.models.EnergyModel):
        input_shape = property(lambda self: (3,))
        num_outputs = property(lambda self: 2)
        bounds = property(lambda self: ((0.0, 1.0),))

        def init(self, key, dtype=None):
            return {}

        def init_state(self, x):
            return (jnp.zeros(2),)

        def output(self, state):
            return state[0]

    with pytest.raises(TypeError, match="abstract method 'energy'|abstract method energy"):
        NoEnergy()

    class DuckTyped:  # not an EnergyModel: refused with what it lacks
        input_shape = (3,)

        def energy(self, params, state, x):
            return 0.0

    with pytest.raises(TypeError, match=r"must subclass eqjax.models.EnergyModel.*lacks num_outputs, bounds, init, "
                                        r"init_state, output"):
        eqjax.relax(DuckTyped(), eqjax.costs.squared_error(), GradientDescent(), {}, jnp.zeros((1, 3)))


def test_heavy_ball_solver_with_state_plugs_into_the_loop():
    model, params, x, y = random_problem(0, energy="bilinear", gain=0.5, bias_scale=0.5, batch=8)
    cost = eqjax.costs.squared_error()
    reference = eqjax.relax(model, cost, BlockCoordinate(tol=1e-13, max_steps=5_000), params, x, y, phase=0.3)
    heavy = eqjax.relax(model, cost, HeavyBall(step_size=0.2, momentum=0.5, tol=1e-12, max_steps=20_000),
                        params, x, y, phase=0.3)
    plain = eqjax.relax(model, cost, HeavyBall(step_size=0.2, momentum=0.0, tol=1e-12, max_steps=20_000),
                        params, x, y, phase=0.3)
    assert bool(heavy.converged.all()) and bool(plain.converged.all())
    # the same minimum (a strongly convex box-constrained problem) to ~tol / (1 - contraction)
    chex.assert_trees_all_close(heavy.state, reference.state, atol=1e-9)
    # the carried velocity is what makes it faster than plain gradient steps of the same size
    assert float(heavy.num_steps.max()) < 0.7 * float(plain.num_steps.max())
    # and it drives EP like any built-in solver (its momentum traced: a new value does not recompile)
    for momentum in (0.3, 0.6):
        grads, aux = eqjax.gradients(model, cost, HeavyBall(momentum=momentum, tol=1e-10, max_steps=5_000),
                                     EP(beta=0.01), params, x, y)
        assert bool(aux.phases["positive"].converged.all())
    assert eqjax.testing.compilations()["gradients"] >= 1


def test_a_solver_gets_the_key():
    class Jitter(eqjax.solvers.Solver):  # gradient steps plus noise from a key it carries
        default_max_steps = 5

        def init(self, F, state, bounds, key):
            return key

        def step(self, F, state, key, bounds):
            key, sub = jax.random.split(key)
            noise = jax.random.normal(sub, state[0].shape, state[0].dtype)
            grad = jax.grad(F)(state)
            moved = tuple(s - 0.1 * g for s, g in zip(state, grad))
            return eqjax.solvers.project((moved[0] + 0.01 * noise,) + moved[1:], bounds), key

    model, params, x, _ = random_problem(1, energy="smooth")
    cost = eqjax.costs.squared_error()
    a, b, c = (eqjax.relax(model, cost, Jitter(tol=0.0), params, x, key=jax.random.key(k)) for k in (0, 0, 1))
    chex.assert_trees_all_equal(a.state, b.state)
    assert float(eqjax.loop.max_abs_difference(a.state, c.state)) > 1e-4


def test_contrastive_estimator_from_clamped_phases():
    # contrastive learning (output clamped to the target) from the documented estimator: for a
    # bilinear net the clamp pins the output exactly and the gradient is a descent direction
    model, params, x, y = random_problem(2, energy="bilinear", gain=0.5, bias_scale=0.5,
                                         output_bounds=(-np.inf, np.inf))
    cost, solver = eqjax.costs.squared_error(), BlockCoordinate(tol=1e-12, max_steps=2_000)
    target = jax.nn.one_hot(y, 3, dtype=x.dtype)
    clamped = eqjax.relax(model, cost, solver, params, x, y, eqjax.phases.Clamp(target))
    np.testing.assert_array_equal(np.asarray(clamped.state[-1]), np.asarray(target))
    grads, aux = eqjax.gradients(model, cost, solver, ClampToTarget(), params, x, y)
    reference, _ = eqjax.gradients(model, cost, solver, ImplicitDiff(), params, x, y)
    flat = lambda t: ravel_pytree(t)[0]
    assert float(flat(grads) @ flat(reference)) > 0  # a descent direction of the true loss
    library, _ = eqjax.gradients(model, cost, solver, eqjax.estimators.Contrastive(), params, x, y)
    chex.assert_trees_all_close(grads, library, rtol=1e-10)  # the documented rule is the library's


def test_plain_function_cost_works_everywhere():
    model, params, x, y = random_problem(3, energy="bilinear", gain=0.5)
    solver = BlockCoordinate(tol=1e-10, max_steps=500)

    def half_squares(output, label):
        return 0.5 * jnp.sum((output - jax.nn.one_hot(label, output.shape[-1], dtype=output.dtype)) ** 2)

    builtin = eqjax.costs.squared_error()
    for fn in (lambda c: eqjax.relax(model, c, solver, params, x, y, phase=0.2).state,
               lambda c: eqjax.gradients(model, c, solver, EP(beta=0.1), params, x, y)[0],
               lambda c: eqjax.evaluate(model, c, solver, params, x, y).loss):
        chex.assert_trees_all_close(fn(half_squares), fn(builtin), rtol=1e-12)  # the same arithmetic
