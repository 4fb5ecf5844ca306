"""The declared result of an estimator (:class:`eqjax.estimators.Estimate`), its own values in the
training metrics (``Estimate.extras``), and the random sign of EP's beta as an estimator
(:class:`eqjax.estimators.RandomSign`)."""

from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

import eqjax
from eqjax.estimators import EP, Contrastive, Estimate, Estimator, RandomSign
from eqjax.solvers import GradientDescent
from conftest import python_blocks, random_problem

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
SOLVER = GradientDescent(step_size=0.5, tol=1e-10, max_steps=2_000)
COST = eqjax.costs.squared_error()


def free_energies(model, params, state, x):
    """``(B,)`` the energy of each example's free equilibrium."""
    return jax.vmap(model.energy, in_axes=(None, 0, 0))(params, state, x)


def diagnostics(model, params, x, grads, aux) -> dict:
    """A scalar and a per-example extra: the gradient's norm, the energies at the free equilibrium."""
    return {"grad_norm": optax.tree.norm(grads), "free_energy": free_energies(model, params, aux.free_state, x)}


class Reporting(Estimator):
    """``inner`` (EP) that also reports ``extras(model, params, x, grads, aux) -> dict``."""

    inner: EP
    extras: Callable = struct.field(pytree_node=False, default=diagnostics)

    def errors(self) -> dict:
        """``inner``'s."""
        return self.inner.errors()

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        """``inner``'s ``(grads, estimate)``, with ``extras`` added to the estimate."""
        grads, estimate = self.inner.estimate(model, cost, solver, params, x, y, state0, key)
        return grads, estimate.replace(extras=self.extras(model, params, x, grads, estimate))


def batches(seed=0, num_batches=3, batch=4):
    """A float64 problem and ``num_batches`` batches of it: ``model, params, xs, ys``."""
    model, params, x, y = random_problem(seed, batch=num_batches * batch)
    return model, params, x.reshape(num_batches, batch, -1), y.reshape(num_batches, batch)


def test_extras_reach_the_jitted_epoch_metrics_with_their_values():
    model, params, xs, ys = batches()
    optimizer, estimator = optax.sgd(0.1), Reporting(EP(beta=0.05))
    epoch = jax.jit(eqjax.train_epoch(eqjax.train_step(model, COST, optimizer)))
    _, _, metrics = epoch(params, optimizer.init(params), SOLVER, estimator, xs, ys)
    assert {"loss", "accuracy", "used", "free_steps", "skipped", "grad_norm", "free_energy"} <= set(metrics)
    norms, energies = [], []
    for x, y in zip(xs, ys):  # the same updates, one batch at a time outside the scan
        grads, aux = eqjax.gradients(model, COST, SOLVER, EP(beta=0.05), params, x, y)
        norms.append(optax.tree.norm(grads))
        energies.append(jnp.mean(free_energies(model, params, aux.free_state, x)))
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert metrics["grad_norm"].shape == metrics["free_energy"].shape == (3,)
    # float64, relaxed to 1e-10: jit inside and outside a scan agree to round-off
    np.testing.assert_allclose(metrics["grad_norm"], norms, rtol=1e-8)
    np.testing.assert_allclose(metrics["free_energy"], energies, rtol=1e-8)
    assert float(np.min(metrics["grad_norm"])) > 0  # a real gradient, not a vacuous zero


BUILT_IN = {"loss", "accuracy", "used", "invalid_input", "invalid_label", "free_steps", "free_batch_steps",
            "free_converged", "free_nonfinite", "free_residual"}


def extras_aux(extras, batch=4) -> Estimate:
    """The smallest estimate: a converged free phase of ``batch`` examples, with ``extras``."""
    free = eqjax.Equilibrium(state=(jnp.zeros((batch, 2)),), num_steps=jnp.full(batch, 3, jnp.int32),
                             residual=jnp.zeros(batch), status=jnp.zeros(batch, jnp.int8))
    return Estimate(loss=jnp.zeros(batch), accuracy=jnp.ones(batch), prediction=jnp.zeros(batch, jnp.int32),
                    used=jnp.ones(batch, bool), phases={"free": free}, extras=extras)


def test_summarize_reports_scalars_as_they_are_and_per_example_values_as_their_mean():
    metrics = eqjax.summarize(extras_aux({"scale": jnp.asarray(2.5), "margin": jnp.array([1.0, 2.0, 3.0, 6.0])}))
    assert float(metrics["scale"]) == 2.5 and float(metrics["margin"]) == 3.0
    assert set(metrics) == BUILT_IN | {"scale", "margin"}
    assert set(eqjax.summarize(extras_aux({}))) == BUILT_IN
    assert float(metrics["free_steps"]) == 3.0 and float(metrics["used"]) == 1.0


@pytest.mark.parametrize("name", ["loss", "accuracy", "skipped"])
def test_an_extra_named_like_a_built_in_metric_is_refused(name):
    with pytest.raises(ValueError, match=f"'{name}'.*clash with built-in training metrics"):
        eqjax.summarize(extras_aux({name: jnp.zeros(())}))


@pytest.mark.parametrize("extras, error, match", [
    ({3: jnp.zeros(4)}, ValueError, "must be strings"),
    ({"per_unit": jnp.zeros((4, 2))}, TypeError, r"a \(4,\) array"),
    ({"wrong_batch": jnp.zeros(5)}, TypeError, r"a \(4,\) array"),
    ({"phase": jnp.zeros((), jnp.complex64)}, TypeError, "real scalar"),
    ([("a", 1.0)], TypeError, "must be a dict"),
])
def test_malformed_extras_are_refused(extras, error, match):
    with pytest.raises(error, match=match):
        eqjax.summarize(extras_aux(extras))


def test_a_clash_with_a_phase_metric_is_refused_when_the_step_is_traced():
    model, params, xs, ys = batches(num_batches=1)
    optimizer = optax.sgd(0.1)
    clashing = Reporting(EP(beta=0.05), extras=lambda model, params, x, grads, aux: {"positive_steps": jnp.zeros(())})
    step = jax.jit(eqjax.train_step(model, COST, optimizer))
    with pytest.raises(ValueError, match="'positive_steps'.*clash"):  # at trace time: nothing runs
        jax.eval_shape(step, params, optimizer.init(params), SOLVER, clashing, xs[0], ys[0])


def drawn_sign(key) -> tuple:
    """``(sign, rest)``: the sign :class:`RandomSign` draws from ``key`` and the key it leaves for EP."""
    sign_key, rest = jax.random.split(key)
    return (1.0 if bool(jax.random.bernoulli(sign_key)) else -1.0), rest


def test_random_sign_is_ep_with_the_sign_drawn_from_the_key():
    model, params, x, y = random_problem(1)
    signs = set()
    for seed in range(4):
        key = jax.random.key(seed)
        sign, rest = drawn_sign(key)
        signs.add(sign)
        grads, aux = eqjax.gradients(model, COST, SOLVER, RandomSign(EP(beta=0.1, variant="positive")), params, x, y,
                                     key=key)
        expected, _ = eqjax.gradients(model, COST, SOLVER, EP(beta=sign * 0.1, variant="positive"), params, x, y,
                                      key=rest)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), grads, expected)  # same program
        assert set(aux.phases) == {"free", "positive"} and aux.used.shape == (x.shape[0],)
    assert signs == {1.0, -1.0}  # both signs among these keys: the comparison covers each


def test_train_chunk_random_sign_draws_each_batch_sign_from_its_key():
    model, params, xs, ys = batches(seed=2, num_batches=4)
    optimizer, ep = optax.sgd(0.1), EP(beta=0.1, variant="positive")
    keys = jax.random.split(jax.random.key(7), 4)
    index, state = jnp.arange(16).reshape(4, 4), None
    chunk = jax.jit(eqjax.train_chunk(model, COST, optimizer, random_sign=True))
    got, _, _, metrics = chunk(params, optimizer.init(params), state, SOLVER, ep, xs, ys, index, keys)
    step = jax.jit(eqjax.train_step(model, COST, optimizer))
    opt_state, expected, signs = optimizer.init(params), params, []
    for x, y, key in zip(xs, ys, keys):  # the loop train_chunk ran before RandomSign, written out
        sign, rest = drawn_sign(key)
        signs.append(sign)
        expected, opt_state, _, _ = step(expected, opt_state, SOLVER, ep.replace(beta=sign * 0.1), x, y, None, rest)
    assert set(signs) == {1.0, -1.0}
    # float64: the same updates inside and outside a scan agree to round-off
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), got, expected)
    assert float(metrics["skipped"].max()) == 0


def test_random_sign_needs_ep_a_key_and_checks_beta():
    with pytest.raises(TypeError, match="flips the beta of an eqjax.estimators.EP; got Contrastive"):
        RandomSign(Contrastive())
    model, params, x, y = random_problem(0)
    with pytest.raises(ValueError, match="pass a PRNG key"):
        eqjax.gradients(model, COST, SOLVER, RandomSign(EP(beta=0.1)), params, x, y)
    with pytest.raises(ValueError, match="beta must be a finite nonzero number"):  # errors() are EP's
        eqjax.gradients(model, COST, SOLVER, RandomSign(EP(beta=0.0)), params, x, y, key=jax.random.key(0))
    chunk = eqjax.train_chunk(model, COST, optax.sgd(0.1), random_sign=True)
    with pytest.raises(TypeError, match="got Coupled"):
        chunk(params, None, None, SOLVER, eqjax.estimators.Coupled(), x[None], y[None], jnp.zeros((1, 4), int),
              jax.random.split(jax.random.key(0), 1))


def test_the_documented_wrapper_reports_its_gradient_norm():
    (block,) = [b for b in python_blocks(DOC) if "class WithGradNorm" in b]
    namespace = {}
    exec("import jax, jax.numpy as jnp, eqjax, optax\n" + block, namespace)  # noqa: S102 - as printed
    model, params, xs, ys = batches(num_batches=1)
    optimizer = optax.sgd(0.1)
    step = jax.jit(eqjax.train_step(model, COST, optimizer))
    estimator = namespace["WithGradNorm"](EP(beta=0.2))
    _, _, metrics, _ = step(params, optimizer.init(params), SOLVER, estimator, xs[0], ys[0])
    grads, _ = eqjax.gradients(model, COST, SOLVER, EP(beta=0.2), params, xs[0], ys[0])
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-8)  # float64 round-off


def test_an_estimator_returning_anything_but_an_estimate_is_refused_with_its_name():
    class DictReturning(Estimator):
        def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
            grads, estimate = EP(beta=0.05).estimate(model, cost, solver, params, x, y, state0, key)
            return grads, {"loss": estimate.loss}

    model, params, x, y = random_problem(0)
    with pytest.raises(TypeError, match=r"DictReturning.estimate must return \(grads, eqjax.estimators.Estimate\)"):
        eqjax.gradients(model, COST, SOLVER, DictReturning(), params, x, y)


def test_the_former_dict_access_the_readme_taught_still_works_with_a_deprecation_warning():
    model, params, x, y = random_problem(0)
    _, aux = eqjax.gradients(model, COST, SOLVER, EP(beta=0.05), params, x, y)
    with pytest.warns(DeprecationWarning, match="aux.free.converged"):
        converged = aux["free"]["converged"]
    np.testing.assert_array_equal(converged, aux.free.converged)
    with pytest.warns(DeprecationWarning):
        np.testing.assert_array_equal(aux["loss"], aux.loss)
