"""Failures speak: each case that used to pass silently now raises a clear error or is flagged."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eqjax
from eqjax import RESULTS
from eqjax.estimators import EP
from eqjax.phases import Nudge
from eqjax.solvers import BlockCoordinate, GradientDescent
from conftest import random_problem

MODEL = eqjax.models.hopfield((64, 32, 10), gain=0.5)
COST = eqjax.costs.squared_error()
SOLVER = BlockCoordinate(tol=1e-5, max_steps=30)
X, Y = eqjax.synthetic.digits(jax.random.key(0), 4)
PARAMS = MODEL.init(jax.random.key(1), jnp.float32)
RELAX = jax.jit(eqjax.relax_unchecked)  # the jitted core: no eager checks, so the loop sees the NaN


def test_a_nan_example_is_frozen_and_the_others_converge_exactly_as_without_it():
    bad = X.at[0, 3].set(jnp.nan)
    with_nan = RELAX(MODEL, COST, SOLVER, PARAMS, bad)
    without = RELAX(MODEL, COST, SOLVER, PARAMS, X[1:])
    np.testing.assert_array_equal(with_nan.status, [RESULTS.NONFINITE] + [RESULTS.CONVERGED] * 3)
    # bit for bit: same states, steps and residuals for the three finite examples
    chex.assert_trees_all_equal(jax.tree.map(lambda s: s[1:], with_nan.state), without.state)
    chex.assert_trees_all_equal(with_nan.num_steps[1:], without.num_steps)
    chex.assert_trees_all_equal(with_nan.residual[1:], without.residual)
    assert int(without.num_steps[0]) > 1  # they really relaxed (the old loop stopped after 1 step)
    chex.assert_tree_all_finite(with_nan.state)  # frozen at its last finite state: safe to warm-start from


def test_jitted_train_step_with_a_nan_example_keeps_params_finite_and_reports_it():
    optimizer = optax.sgd(0.1)
    step = jax.jit(eqjax.train_step(MODEL, COST, optimizer))
    opt_state = optimizer.init(PARAMS)
    bad = X.at[0, 3].set(jnp.nan)
    params, _, metrics, free_state = step(PARAMS, opt_state, SOLVER, EP(beta=0.2), bad, Y)
    clean, _, _, _ = step(PARAMS, opt_state, SOLVER, EP(beta=0.2), X[1:], Y[1:])
    chex.assert_tree_all_finite((params, free_state))
    # the gradient is the mean over the three finite examples: the same update as without the NaN one
    chex.assert_trees_all_close(params, clean, atol=1e-6)  # float32, one batch fewer in the mean
    assert np.isnan(float(metrics["loss"]))  # the batch's loss says something is wrong
    assert float(metrics["invalid_input"]) == 0.25 and float(metrics["used"]) == 0.75


def test_diverging_relaxation_is_flagged_nonfinite_not_max_steps():
    model, params, x, _ = random_problem(0, sizes=(6, 20, 20, 3), energy="smooth", gain=3.0)
    diverging = eqjax.relax(model, COST, GradientDescent(step_size=50.0, tol=1e-8, max_steps=2000), params, x)
    assert np.all(np.asarray(diverging.status) == RESULTS.NONFINITE)
    chex.assert_tree_all_finite(diverging.state)
    short = eqjax.relax(model, COST, GradientDescent(step_size=0.1, tol=1e-12, max_steps=3), params, x)
    assert np.all(np.asarray(short.status) == RESULTS.MAX_STEPS)
    with pytest.raises(Exception, match="went NaN or infinite"):
        eqjax.relax(model, COST, GradientDescent(step_size=50.0, tol=1e-8, max_steps=2000), params, x, throw=True)


@pytest.mark.parametrize("beta", [jnp.asarray(0.0), np.float32(0), 0, float("nan"), jnp.asarray(jnp.inf)])
def test_zero_or_nonfinite_beta_is_refused_in_any_type(beta):
    with pytest.raises(ValueError, match="beta must be a finite nonzero number"):
        eqjax.gradients(MODEL, COST, SOLVER, EP(beta=beta), PARAMS, X, Y)
    step = eqjax.train_step(MODEL, COST, optax.sgd(0.1))  # an un-jitted step checks concrete values too
    with pytest.raises(ValueError, match="beta must be a finite nonzero number"):
        step(PARAMS, optax.sgd(0.1).init(PARAMS), SOLVER, EP(beta=beta), X, Y)


def test_bad_phase_solver_and_parameter_values_are_refused():
    with pytest.raises(ValueError, match="beta must be finite"):
        eqjax.relax(MODEL, COST, SOLVER, PARAMS, X, Y, phase=float("nan"))
    for bad in (-1.0, jnp.asarray(-1.0), float("nan")):
        with pytest.raises(ValueError, match="tol must be a non-negative number"):
            eqjax.relax(MODEL, COST, BlockCoordinate(tol=bad), PARAMS, X)
    with pytest.raises(ValueError, match="step_size must be a positive finite number"):
        eqjax.relax(MODEL, COST, GradientDescent(step_size=jnp.asarray(jnp.inf)), PARAMS, X)
    with pytest.raises(ValueError, match="nudged_steps must be a non-negative int, got -1"):
        EP(beta=0.1, nudged_steps=-1)
    nan_params = jax.tree.map(lambda p: p.at[0].set(jnp.nan), PARAMS)
    with pytest.raises(ValueError, match="params contain NaN or infinite values"):
        eqjax.relax(MODEL, COST, SOLVER, nan_params, X)
    with pytest.raises(TypeError, match="EP takes a real beta"):
        eqjax.gradients(MODEL, COST, SOLVER, EP(beta=0.1j), PARAMS, X, Y)


def test_negative_conductances_are_refused():
    model = eqjax.models.resistive((64, 20, 10))
    params = model.init(jax.random.key(0), jnp.float32)
    negative = dict(params, conductances=(params["conductances"][0].at[0, 0].set(-0.1),) + params["conductances"][1:])
    with pytest.raises(ValueError, match="negative conductances"):
        eqjax.relax(model, COST, SOLVER, negative, X)
    # traced, inside a jitted training step: only throw=True can see it
    step = jax.jit(eqjax.train_step(model, COST, optax.sgd(0.01), throw=True))
    with pytest.raises(Exception, match="negative conductances"):
        jax.block_until_ready(step(negative, optax.sgd(0.01).init(negative), SOLVER, EP(beta=0.2), X, Y))


@pytest.mark.parametrize("label", [10, -1])
def test_labels_out_of_range_raise_inside_jit_with_throw(label):
    optimizer = optax.sgd(0.1)
    opt_state = optimizer.init(PARAMS)
    y = Y.at[1].set(label)
    checked = jax.jit(eqjax.train_step(MODEL, COST, optimizer, throw=True))
    with pytest.raises(Exception, match=r"y holds labels outside \[0, 9\]"):
        jax.block_until_ready(checked(PARAMS, opt_state, SOLVER, EP(beta=0.2), X, y))
    params, *_ = checked(PARAMS, opt_state, SOLVER, EP(beta=0.2), X, Y)  # good labels pass
    chex.assert_tree_all_finite(params)
    with pytest.raises(ValueError, match=r"y holds labels outside \[0, 9\]"):  # eager entry points check anyway
        eqjax.gradients(MODEL, COST, SOLVER, EP(beta=0.2), PARAMS, X, y)


def test_throw_inside_a_plain_jit_says_eqjax_s_message_in_its_own_voice():
    # JAX writes the first line of any error raised in a host callback ("INTERNAL: CpuCallback
    # error calling callback: ..."); eqjax's ValueError is the error's last line, and there is no
    # advice about another library's jit
    checked = jax.jit(eqjax.train_step(MODEL, COST, optax.sgd(0.1), throw=True))
    with pytest.raises(Exception) as caught:
        jax.block_until_ready(checked(PARAMS, optax.sgd(0.1).init(PARAMS), SOLVER, EP(beta=0.2), X, Y.at[1].set(10)))
    lines = str(caught.value).strip().splitlines()
    assert lines[-1] == "ValueError: eqjax: y holds labels outside [0, 9] (the model has 10 output units)", lines[-1]
    assert "filter_jit" not in str(caught.value)
    # vmapped over a traced beta: one bad member stops the program with the same message
    members = jax.vmap(lambda beta: checked(PARAMS, optax.sgd(0.1).init(PARAMS), SOLVER, EP(beta=beta), X, Y)[0])
    with pytest.raises(Exception, match="eqjax: beta must be a finite nonzero"):
        jax.block_until_ready(members(jnp.array([0.2, 0.0])))
    jax.block_until_ready(members(jnp.array([0.2, -0.2])))  # good members: no error


def test_throw_checks_traced_hyperparameters_and_inputs():
    optimizer = optax.sgd(0.1)
    opt_state = optimizer.init(PARAMS)
    checked = jax.jit(eqjax.train_step(MODEL, COST, optimizer, throw=True))
    # a traced beta of 0 (e.g. from a sweep) cannot be seen when EP is built, only in the program
    with_beta = jax.jit(lambda beta: checked(PARAMS, opt_state, SOLVER, EP(beta=beta), X, Y)[0])
    with pytest.raises(Exception, match="beta must be a finite nonzero"):
        jax.block_until_ready(with_beta(0.0))
    cases = [
        (dict(x=X.at[2, 0].set(jnp.inf)), "x contains NaN or infinite values"),
        (dict(params=jax.tree.map(lambda p: p * jnp.nan, PARAMS)), "params contain NaN"),
    ]
    for overrides, message in cases:
        args = dict(params=PARAMS, opt_state=opt_state, solver=SOLVER, estimator=EP(beta=0.2), x=X, y=Y)
        args.update(overrides)
        with pytest.raises(Exception, match=message):
            jax.block_until_ready(checked(**args))
    # a traced tolerance of -1 (e.g. from a sweep) is caught in the compiled relaxation too
    relax_in_jit = jax.jit(lambda tol: eqjax.relax(MODEL, COST, SOLVER.replace(tol=tol), PARAMS, X, throw=True).state)
    with pytest.raises(Exception, match="tol must be a non-negative number"):
        jax.block_until_ready(relax_in_jit(-1.0))


def test_relax_inside_a_users_jit_closing_over_concrete_params():
    # the eager finiteness checks evaluate closed-over concrete values without tracer conversion
    @jax.jit
    def free_outputs(x):
        return eqjax.relax(MODEL, COST, SOLVER, PARAMS, x).state[-1]

    assert free_outputs(X).shape == (4, 10)
    nan_params = jax.tree.map(lambda p: p * jnp.nan, PARAMS)
    with pytest.raises(ValueError, match="params contain NaN"):
        jax.jit(lambda x: eqjax.relax(MODEL, COST, SOLVER, nan_params, x).state)(X)


def test_complex_beta_is_kept_complex_not_cast():
    model, params, x, y = random_problem(4, energy="smooth")
    solver = GradientDescent(step_size=0.5, tol=1e-13, max_steps=20_000)
    b = 1e-3
    eq = eqjax.relax(model, COST, solver, params, x, y, phase=Nudge(1j * b))
    assert all(jnp.iscomplexobj(s) for s in eq.state) and bool(eq.converged.all())
    plus, minus = (eqjax.relax(model, COST, solver, params, x, y, phase=beta) for beta in (b, -b))
    free = eqjax.relax(model, COST, solver, params, x)
    # holomorphic response: s(i b) = s0 + i b ds/dbeta - b^2/2 d2s/dbeta2 + ...
    for s, p, m, f in zip(eq.state, plus.state, minus.state, free.state):
        np.testing.assert_allclose(np.imag(s), (p - m) / 2, atol=1e-8)  # b^3/3 d3s/dbeta3 ~ 1e-9 apart
        np.testing.assert_allclose(np.real(s), f, atol=1e-5)  # O(b^2) apart
    boxed, p2, x2, y2 = random_problem(4, energy="bilinear")
    with pytest.raises(TypeError, match="complex state needs unbounded layers"):
        eqjax.relax(boxed, COST, solver, p2, x2, y2, phase=Nudge(1j * b))
    with pytest.raises(TypeError, match="even/odd sweeps work on real states"):
        eqjax.relax(model, COST, BlockCoordinate(), params, x, y, phase=Nudge(1j * b))


def test_four_beta_learning_rate_pairs_compile_the_training_step_once():
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    step = jax.jit(chex.assert_max_traces(n=1)(eqjax.train_step(MODEL, COST, optimizer)))
    opt_state = optimizer.init(PARAMS)
    results = []
    for beta, learning_rate in [(0.1, 0.01), (0.2, 0.05), (-0.3, 0.1), (0.5, 0.2)]:
        opt_state = eqjax.set_hyperparams(opt_state, learning_rate=learning_rate)
        params, _, _, _ = step(PARAMS, opt_state, SOLVER, EP(beta=beta), X, Y)
        results.append(params)
    assert step._cache_size() == 1
    with pytest.raises(KeyError, match=r"no hyperparameters \['momentum'\]"):
        eqjax.set_hyperparams(opt_state, momentum=0.9)
    # and the values did reach the step: four different updates
    moved = [float(eqjax.loop.max_abs_difference(p, PARAMS)) for p in results]
    assert len(set(moved)) == 4 and min(moved) > 0


def test_jax_can_rebuild_solvers_and_estimators_with_any_leaves():
    # jax.grad, in_axes trees and optax masks rebuild pytrees with zeros, ints or bools as leaves:
    # value checks belong where the objects are used, never in their constructors
    assert float(jax.grad(lambda est: 0.0 * est.beta)(EP(beta=0.2)).beta) == 0.0
    assert float(jax.grad(lambda s: -s.step_size)(GradientDescent()).step_size) == -1.0
    in_axes = jax.tree.map(lambda _: 0, EP(beta=0.2))
    betas = jax.vmap(lambda est: est.beta, in_axes=(in_axes,))(EP(beta=jnp.array([0.1, 0.2])))
    np.testing.assert_allclose(betas, [0.1, 0.2])
    jax.tree.map(lambda _: False, GradientDescent())


def test_train_step_checks_shapes_at_trace_time_and_labels_must_be_flat():
    optimizer = optax.sgd(0.1)
    step = jax.jit(eqjax.train_step(MODEL, COST, optimizer))
    with pytest.raises(ValueError, match=r"y must have shape \(4,\)"):
        step(PARAMS, optimizer.init(PARAMS), SOLVER, EP(beta=0.2), X, Y[:, None])
    with pytest.raises(TypeError, match="y must be an integer array"):
        step(PARAMS, optimizer.init(PARAMS), SOLVER, EP(beta=0.2), X, Y.astype(jnp.float32))


def test_clamp_target_must_fit_the_layer():
    with pytest.raises(ValueError, match="clamp target must have the clamped layer's batched shape"):
        eqjax.relax(MODEL, COST, SOLVER, PARAMS, X, phase=eqjax.phases.Clamp(jnp.zeros((3, 10))))
    with pytest.raises(TypeError):
        eqjax.phases.Clamp()  # the target is required


# --- inside jax.jit, without throw: bad examples and bad hyperparameters never reach the parameters

STEP = jax.jit(eqjax.train_step(MODEL, COST, optax.sgd(0.1)))
PARAMS64 = MODEL.init(jax.random.key(1), jnp.float64)
X64, Y8 = eqjax.synthetic.digits(jax.random.key(2), 8)
X64 = X64.astype(jnp.float64)


@pytest.mark.parametrize("corrupt, code", [
    (lambda x, y: (x.at[3, 0].set(jnp.inf), y), RESULTS.INVALID_INPUT),
    (lambda x, y: (x.at[3, 0].set(-jnp.inf), y), RESULTS.INVALID_INPUT),
    (lambda x, y: (x.at[3, 5].set(jnp.nan), y), RESULTS.INVALID_INPUT),
    (lambda x, y: (x, y.at[3].set(10)), RESULTS.INVALID_LABEL),
    (lambda x, y: (x, y.at[3].set(-1)), RESULTS.INVALID_LABEL),
])
def test_a_bad_example_is_flagged_and_left_out_of_the_update_inside_jit(corrupt, code):
    opt_state = optax.sgd(0.1).init(PARAMS64)
    x, y = corrupt(X64, Y8)
    params, _, metrics, free_state = STEP(PARAMS64, opt_state, SOLVER, EP(beta=0.2), x, y)
    keep = np.arange(8) != 3
    clean, _, _, clean_free = STEP(PARAMS64, opt_state, SOLVER, EP(beta=0.2), X64[keep], Y8[keep])
    # the mean over 7 examples, summed with one zero row more: XLA's dot associates a sum of 8 terms
    # differently from one of 7, so the two agree to float64 round-off (measured: 7e-18 at most),
    # not bit for bit; the relaxed states of the other examples are bit for bit
    chex.assert_trees_all_close(params, clean, rtol=1e-14, atol=1e-15)
    chex.assert_trees_all_equal(jax.tree.map(lambda s: s[keep], free_state), clean_free)  # relaxed bit for bit
    chex.assert_tree_all_finite((params, free_state))
    name = "invalid_input" if code == RESULTS.INVALID_INPUT else "invalid_label"
    assert float(metrics[name]) == 1 / 8 and float(metrics["used"]) == 7 / 8
    assert float(metrics["free_nonfinite"]) == 0.0  # a bad example is not a failed relaxation
    assert np.isnan(float(metrics["loss"])) and float(metrics["skipped"]) == 0.0


def test_gradients_and_evaluate_report_the_code_of_a_bad_example_inside_jit():
    x, y = X64.at[1, 0].set(jnp.inf), Y8.at[5].set(1000)
    _, aux = jax.jit(lambda x, y: eqjax.gradients(MODEL, COST, SOLVER, EP(beta=0.2), PARAMS64, x, y))(x, y)
    expected = np.full(8, RESULTS.CONVERGED)
    expected[1], expected[5] = RESULTS.INVALID_INPUT, RESULTS.INVALID_LABEL
    for phase in ("free", "positive", "negative"):
        np.testing.assert_array_equal(aux.phases[phase].status, expected)
    np.testing.assert_array_equal(aux.used, expected == RESULTS.CONVERGED)
    evaluated = jax.jit(lambda x, y: eqjax.evaluate(MODEL, COST, SOLVER, PARAMS64, x, y))(x, y)
    np.testing.assert_array_equal(evaluated.free.status, expected)
    relaxed = jax.jit(lambda x: eqjax.relax(MODEL, COST, SOLVER, PARAMS64, x))(x)
    assert int(relaxed.status[1]) == RESULTS.INVALID_INPUT


def test_an_invalid_traced_hyperparameter_leaves_the_parameters_unchanged():
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    opt_state = optimizer.init(PARAMS64)
    step = jax.jit(eqjax.train_step(MODEL, COST, optimizer))
    vmapped = jax.vmap(step, in_axes=(None, None, None, EP(beta=0), None, None))
    params, states, metrics, _ = vmapped(PARAMS64, opt_state, SOLVER, EP(beta=jnp.asarray([0.2, 0.0, jnp.nan])),
                                         X64, Y8)
    member = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
    for i in (1, 2):  # beta = 0 and beta = NaN: nothing applied, flagged, NaN loss
        chex.assert_trees_all_equal(member(params, i), PARAMS64)
        chex.assert_trees_all_equal(member(states, i), opt_state)
        assert float(metrics["skipped"][i]) == 1.0 and np.isnan(float(metrics["loss"][i]))
    assert float(metrics["skipped"][0]) == 0.0 and np.isfinite(float(metrics["loss"][0]))
    assert not np.allclose(np.asarray(member(params, 0)["weights"][0]), np.asarray(PARAMS64["weights"][0]))
    # a NaN learning rate that arrives traced (set_hyperparams refuses a concrete one): not applied
    nan_rate = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": jnp.asarray(jnp.nan)})
    params, _, metrics, _ = step(PARAMS64, nan_rate, SOLVER, EP(beta=0.2), X64, Y8)
    chex.assert_trees_all_equal(params, PARAMS64)
    assert float(metrics["skipped"]) == 1.0


def test_a_sweep_member_with_beta_zero_is_not_ok():
    def member(h, x, y):
        step = eqjax.train_step(MODEL, COST, optax.sgd(0.1))
        params, _, metrics, _ = step(PARAMS64, optax.sgd(0.1).init(PARAMS64), SOLVER, EP(beta=h["beta"]), x, y)
        return {"loss": metrics["loss"], "w": params["weights"][0]}

    result = eqjax.sweep.run(member, eqjax.sweep.product(beta=[0.2, 0.0]), X64, Y8)
    np.testing.assert_array_equal(result.ok, [True, False])
    chex.assert_trees_all_equal(result.outputs["w"][1], PARAMS64["weights"][0])


# --- bad arguments give an error that names the problem, not a crash from deep inside JAX

def _circuit():
    model = eqjax.models.resistive((4, 3, 2), diode="shockley")
    return model, model.init(jax.random.key(0)), np.ones(4)


def _in_32_bits(fn, **kwargs):
    with jax.enable_x64(False):  # JAX's default dtypes, as users have them (these tests run in float64)
        return fn(**kwargs)


def _bad_calls():
    from eqjax.estimators import BPTT, Contrastive

    as_dtype = lambda dtype: jax.tree.map(lambda a: a.astype(dtype), PARAMS)
    step = eqjax.train_step(MODEL, COST, optax.sgd(0.1))
    return {
        "empty batch": (lambda: eqjax.gradients(MODEL, COST, SOLVER, EP(0.2), PARAMS, X[:0], Y[:0]), "no examples"),
        "no labels, gradients": (lambda: eqjax.gradients(MODEL, COST, SOLVER, EP(0.2), PARAMS, X, None), "needs the labels"),
        "no labels, evaluate": (lambda: eqjax.evaluate(MODEL, COST, SOLVER, PARAMS, X, None), "needs the labels"),
        "int32 params": (lambda: eqjax.gradients(MODEL, COST, SOLVER, EP(0.2), as_dtype(jnp.int32), X, Y),
                         "must be a real floating array"),
        "complex params": (lambda: eqjax.gradients(MODEL, COST, SOLVER, EP(0.2), as_dtype(jnp.complex64), X, Y),
                           "must be a real floating array"),
        "vector beta": (lambda: eqjax.gradients(MODEL, COST, SOLVER, EP(jnp.ones(3)), PARAMS, X, Y), "beta must be a scalar"),
        "clamped layer out of range": (lambda: eqjax.gradients(MODEL, COST, SOLVER, Contrastive(layer=5), PARAMS, X, Y),
                                       "layer=5 is out of range"),
        "negative BPTT steps": (lambda: BPTT(num_steps=-1), "num_steps must be a positive int"),
        "a solver as estimator": (lambda: eqjax.gradients(MODEL, COST, SOLVER, SOLVER, PARAMS, X, Y),
                                  "expected an eqjax.estimators.Estimator"),
        "an optax transform as estimator": (lambda: eqjax.gradients(MODEL, COST, SOLVER, optax.sgd(0.1), PARAMS, X, Y),
                                            "expected an eqjax.estimators.Estimator"),
        "an estimator as solver": (lambda: eqjax.gradients(MODEL, COST, EP(0.2), EP(0.2), PARAMS, X, Y),
                                   "the solver must be an eqjax.solvers.Solver"),
        "vector-valued cost": (lambda: eqjax.gradients(MODEL, lambda o, y: o, SOLVER, EP(0.2), PARAMS, X, Y),
                               "one scalar per example"),
        "int32 state0": (lambda: eqjax.gradients(MODEL, COST, SOLVER, EP(0.2), PARAMS, X, Y,
                                                 state0=(jnp.zeros((4, 32), jnp.int32), jnp.zeros((4, 10), jnp.int32))),
                         "state0 must be floating arrays"),
        "no optimizer": (lambda: eqjax.train_step(MODEL, COST, None), "optimizer must be an optax.GradientTransformation"),
        "batch counts differ": (lambda: eqjax.train_epoch(step)(PARAMS, optax.sgd(0.1).init(PARAMS), SOLVER, EP(0.2),
                                                                X.reshape(2, 2, 64), Y.reshape(4, 1)),
                                "same number of batches"),
        "negative crop padding": (lambda: eqjax.images.random_crop(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), -2),
                                  "padding must be an int >= 0"),
        "negative example count": (lambda: eqjax.synthetic.digits(jax.random.key(0), -1), "num_examples must be an int >= 0"),
        "a seed int32 cannot hold": (lambda: _in_32_bits(eqjax.sweep.product, seed=[1, 2**32 + 1]), "int32 cannot hold"),
        "a beta float32 cannot hold": (lambda: _in_32_bits(eqjax.sweep.product, beta=[0.1, 1e300]), "float32 cannot hold"),
        "a zero standard deviation": (lambda: eqjax.images.Pipeline(image_shape=(2, 2, 1), std=0.0)(jnp.ones((1, 4))),
                                      "std must be positive"),
        "to_spice with a label out of range": (lambda: eqjax.analog.to_spice(*_circuit(), y=5, beta=0.1), "y must be a label"),
        "to_spice with a fractional label": (lambda: eqjax.analog.to_spice(*_circuit(), y=0.7, beta=0.1),
                                             "one integer label"),
        "to_spice with a NaN beta": (lambda: eqjax.analog.to_spice(*_circuit(), y=1, beta=float("nan")),
                                     "beta must be a finite non-negative"),
        "to_spice of a Hopfield net": (lambda: eqjax.analog.to_spice(MODEL, PARAMS, X[0]), "exports resistive networks"),
        "a memristor with an infinite range": (lambda: eqjax.analog.memristors.memristor(0.0, float("inf")),
                                               "g_max must be a finite number"),
        "a memristor with NaN write noise": (lambda: eqjax.analog.memristors.memristor(0.0, 1.0, write_std=float("nan")),
                                             "write_std must be a finite number"),
        "a memristor with negative potentiation": (lambda: eqjax.analog.memristors.memristor(0.0, 1.0, potentiation=-0.5),
                                                   "potentiation must be a finite number"),
        "the updates check at beta 0": (lambda: eqjax.verify.gradient_descending_updates(
            MODEL, COST, GradientDescent(), PARAMS, X, Y, beta=0.0, num_steps=3), "beta must be a finite nonzero"),
        "the updates check with a label out of range": (lambda: eqjax.verify.gradient_descending_updates(
            MODEL, COST, GradientDescent(), PARAMS, X, Y.at[0].set(10), beta=0.1, num_steps=3), "labels outside"),
        "a NaN learning rate": (lambda: eqjax.set_hyperparams(
            optax.inject_hyperparams(optax.sgd)(learning_rate=0.1).init(PARAMS), learning_rate=float("nan")),
            "learning_rate must be finite"),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_arguments_get_a_clear_error(case):
    call, message = _bad_calls()[case]
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_throw_max_steps_makes_an_unconverged_relaxation_an_error():
    short = BlockCoordinate(tol=1e-12, max_steps=2)
    assert np.all(np.asarray(eqjax.relax(MODEL, COST, short, PARAMS, X, throw=True).status) == RESULTS.MAX_STEPS)
    with pytest.raises(Exception, match="hit max_steps before the tolerance"):
        jax.block_until_ready(eqjax.relax(MODEL, COST, short, PARAMS, X, throw="max_steps"))
    step = jax.jit(eqjax.train_step(MODEL, COST, optax.sgd(0.1), throw="max_steps"))
    with pytest.raises(Exception, match="hit max_steps before the tolerance"):
        jax.block_until_ready(step(PARAMS, optax.sgd(0.1).init(PARAMS), short, EP(0.2), X, Y))
    jax.block_until_ready(step(PARAMS, optax.sgd(0.1).init(PARAMS), SOLVER, EP(0.2), X, Y))  # converged: no error
    with pytest.raises(ValueError, match="throw must be False, True or 'max_steps'"):
        eqjax.relax(MODEL, COST, short, PARAMS, X, throw="always")


def test_parameters_that_break_the_model_constraints_are_not_trained_on_inside_jit():
    model = eqjax.models.resistive((6, 5, 3))
    params = model.init(jax.random.key(0), jnp.float64)
    params["conductances"] = (params["conductances"][0].at[0, 0].set(-1.0),) + tuple(params["conductances"][1:])
    x, y = jax.random.uniform(jax.random.key(1), (4, 6), jnp.float64), jnp.asarray([0, 1, 2, 0])
    step = jax.jit(eqjax.train_step(model, COST, optax.sgd(0.01)))
    new, _, metrics, _ = step(params, optax.sgd(0.01).init(params), BlockCoordinate(max_steps=10), EP(0.5), x, y)
    chex.assert_trees_all_equal(new, params)  # a negative conductance: no update, the step says why it stopped
    assert float(metrics["skipped"]) == 1.0 and np.isnan(float(metrics["loss"]))
