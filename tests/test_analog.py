"""Resistive networks: equilibria against ngspice, EP against implicit differentiation, bad circuits."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eqjax
from eqjax.analog import check_circuit, read_operating_point, run_ngspice, to_spice
from eqjax.estimators import EP, ImplicitDiff
from conftest import relative_error
from test_gradients import finite_difference_gradient

if shutil.which("ngspice") is None and os.environ.get("CI"):
    raise RuntimeError("ngspice is missing in CI: the Makefile's system-packages step should install it")
needs_ngspice = pytest.mark.skipif(shutil.which("ngspice") is None, reason="ngspice not installed")

SOLVER = eqjax.solvers.BlockCoordinate(tol=1e-14, max_steps=20_000)


# A few dozen nodes each (inputs count twice); four shapes keep compilation short.
SHAPES = ((3, 8, 2), (5, 10, 4), (4, 6, 6, 3), (6, 10, 8, 4))


def random_network(seed, diode, amplifier_gain=None, shapes=SHAPES, bias="conductance"):
    """Random conductances (some absent), input and label on one of the shapes; with
    ``bias="current"``, random bias currents of either sign (about 1 A against about 1 S per node)."""
    rng = np.random.default_rng(seed)
    sizes = shapes[seed % len(shapes)]
    # large enough voltages that Shockley diodes conduct (forward drops of 0.3-0.8 V)
    model = eqjax.models.resistive(sizes, diode=diode, input_gain=8.0, bias_voltage=3.0,
                                   amplifier_gain=amplifier_gain, bias=bias)
    params = model.init(jax.random.key(seed), jnp.float64)
    if bias == "current":
        params["bias_currents"] = tuple(jnp.asarray(rng.normal(size=i.shape)) for i in params["bias_currents"])
    # some resistors absent (zero conductance), as in a sparse crossbar
    params["conductances"] = tuple(
        g * (rng.random(g.shape) > 0.2) for g in params["conductances"]
    )
    x = jnp.asarray(rng.random((1, sizes[0])))
    y = jnp.asarray(rng.integers(0, sizes[-1], size=1))
    return model, params, x, y


def spice_difference(model, params, x, y, beta):
    cost = eqjax.costs.squared_error()
    eq = eqjax.relax(model, cost, SOLVER, params, x, y if beta else None, phase=beta)
    assert bool(eq.converged.all())
    netlist = to_spice(model, jax.tree.map(np.asarray, params), np.asarray(x[0]), int(y[0]), beta)
    spice = read_operating_point(run_ngspice(netlist), model)
    return max(float(np.max(np.abs(ours[0] - theirs))) for ours, theirs in zip(eq.state, spice))


@needs_ngspice
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_linear_networks_match_ngspice(beta):
    for seed in range(20):
        model, params, x, y = random_network(seed, "none")
        check_circuit(model, jax.tree.map(np.asarray, params))
        # a linear circuit: both solve the same linear system, to round-off
        assert spice_difference(model, params, x, y, beta) < 1e-6, seed


@needs_ngspice
@pytest.mark.parametrize("diode", ["none", "shockley"])
def test_bias_current_sources_match_ngspice(diode):
    for seed in range(8):
        model, params, x, y = random_network(300 + seed, diode, bias="current")
        for beta in (0.0, 0.5):
            # same tolerances and reasons as the two tests above
            assert spice_difference(model, params, x, y, beta) < 1e-6, (seed, beta)


@needs_ngspice
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_shockley_diode_networks_match_ngspice(beta):
    conducting = 0
    for seed in range(20):
        model, params, x, y = random_network(100 + seed, "shockley")
        # Same diode model (IS=1e-14, N=1, 27 C). ngspice's k/q constants (CODATA 2014) differ from
        # ours (exact SI 2019) in the 7th digit, which moves diode voltages by ~1e-7 V.
        assert spice_difference(model, params, x, y, beta) < 1e-6, seed
        eq = eqjax.relax(model, eqjax.costs.squared_error(), SOLVER, params, x)
        conducting += sum(int(np.sum(np.abs(np.asarray(s[0])) > 0.3)) for s in eq.state[:-1])
    assert conducting > 20  # the diodes were really in forward conduction, not idle


@needs_ngspice
@pytest.mark.parametrize("diode", ["none", "shockley"])
def test_networks_with_bidirectional_amplifiers_match_ngspice(diode):
    # amplifiers between hidden layers: VCVS forward, CCCS backward (current gain = voltage gain)
    deep = tuple(shape for shape in SHAPES if len(shape) > 3)
    for seed in range(6):
        model, params, x, y = random_network(200 + seed, diode, amplifier_gain=2.5, shapes=deep)
        for beta in (0.0, 0.5):
            assert spice_difference(model, params, x, y, beta) < 1e-6, (seed, beta)


# Shockley diodes (40 s) in make test-slow; their equilibria are checked against ngspice in the
# default suite, and the ideal diodes' active set here
@pytest.mark.parametrize("diode", ["ideal", pytest.param("shockley", marks=pytest.mark.slow)])
def test_ep_matches_implicit_differentiation(diode):
    cost = eqjax.costs.squared_error()
    for seed in range(4):
        # seed 2 adds a second hidden layer behind bidirectional amplifiers; seed 3 has
        # current-source biases and the Kaiming-style initialisation of the DRN configs
        sizes, gain = ((5, 8, 3), None) if seed != 2 else ((5, 6, 6, 3), 2.0)
        options = dict(bias="current", init_scheme="kaiming") if seed == 3 else {}
        model = eqjax.models.resistive(sizes, diode=diode, input_gain=2.0, amplifier_gain=gain, **options)
        params = model.init(jax.random.key(seed), jnp.float64)
        if seed == 3:
            params["bias_currents"] = tuple(0.3 * jax.random.normal(jax.random.key(20 + l), i.shape, jnp.float64)
                                            for l, i in enumerate(params["bias_currents"]))
        x = jax.random.uniform(jax.random.key(10 + seed), (4, 5), jnp.float64)
        y = jnp.array([0, 1, 2, 1])
        implicit, _ = eqjax.gradients(model, cost, SOLVER, ImplicitDiff(), params, x, y)
        ep, _ = eqjax.gradients(model, cost, SOLVER, EP(beta=1e-3, variant="centered"), params, x, y)
        reference = finite_difference_gradient(model, cost, SOLVER, params, x, y)
        assert relative_error(implicit, reference) < 1e-5  # central differences, h = 1e-5
        assert relative_error(ep, implicit) < 1e-4  # O(beta^2) at beta = 1e-3
        if diode == "ideal":
            eq = eqjax.relax(model, cost, SOLVER, params, x)
            assert int(sum(np.sum(np.asarray(s) == 0.0) for s in eq.state[:-1])) > 0  # active set used


def test_block_coordinate_equals_gradient_descent_in_few_sweeps():
    model = eqjax.models.resistive((6, 10, 4), diode="ideal")
    params = model.init(jax.random.key(0), jnp.float64)
    x = jax.random.uniform(jax.random.key(1), (8, 6), jnp.float64)
    cost = eqjax.costs.squared_error()
    bc = eqjax.relax(model, cost, eqjax.solvers.BlockCoordinate(tol=1e-10, max_steps=500), params, x)
    gd = eqjax.relax(model, cost, eqjax.solvers.GradientDescent(0.3, tol=1e-12, max_steps=50_000), params, x)
    assert float(eqjax.loop.max_abs_difference(bc.state, gd.state)) < 1e-9
    assert int(bc.num_steps[0]) < 40 < int(gd.num_steps[0])  # exact coordinate descent


def test_invalid_circuits():
    model = eqjax.models.resistive((3, 4, 2), diode="shockley")
    params = jax.tree.map(np.asarray, model.init(jax.random.key(0), jnp.float64))
    negative = dict(params, conductances=(params["conductances"][0] * -1, params["conductances"][1]))
    with pytest.raises(ValueError, match=r"negative conductances"):
        to_spice(model, negative, np.full(3, 0.5))
    floating = dict(
        params,
        conductances=(params["conductances"][0] * 0, params["conductances"][1] * 0),
        bias_plus=tuple(np.zeros_like(b) for b in params["bias_plus"]),
        bias_minus=tuple(np.zeros_like(b) for b in params["bias_minus"]),
    )
    with pytest.raises(ValueError, match=r"floating nodes .* layer 1"):
        check_circuit(model, floating)
    with pytest.raises(ValueError, match="x must be a finite array"):
        to_spice(model, params, np.array([0.5, np.nan, 0.1]))
    with pytest.raises(ValueError, match="x contains NaN"):
        eqjax.relax(model, eqjax.costs.squared_error(), SOLVER, params, jnp.array([[0.5, jnp.nan, 0.1]]))
    with pytest.raises(ValueError, match="ideal diodes have no SPICE element"):
        to_spice(eqjax.models.resistive((3, 4, 2)), params, np.full(3, 0.5))
    with pytest.raises(ValueError, match="diode must be one of"):
        eqjax.models.resistive((3, 2), diode="zener")
    with pytest.raises(ValueError, match="bias must be one of"):
        eqjax.models.resistive((3, 2), bias="battery")
    currents = eqjax.models.resistive((3, 4, 2), diode="shockley", bias="current")
    params = jax.tree.map(np.asarray, currents.init(jax.random.key(0), jnp.float64))
    with pytest.raises(ValueError, match=r"bias_currents'\]\[1\] contains NaN"):
        check_circuit(currents, dict(params, bias_currents=(params["bias_currents"][0], np.full(2, np.nan))))
    # current sources fix no potential: without resistors to the inputs, layer 1 floats
    cut = dict(params, conductances=(params["conductances"][0] * 0, params["conductances"][1]))
    with pytest.raises(ValueError, match=r"floating nodes .* layer 1"):
        check_circuit(currents, cut)


def test_optimizer_clips_conductances_but_not_bias_currents():
    # the DRN configs' update rule: SGD, then conductances clipped at 0 through conductance_mask
    model = eqjax.models.resistive((3, 4, 2), bias="current", init_scheme="kaiming")
    params = model.init(jax.random.key(0))
    optimizer = optax.chain(
        optax.sgd(1.0),
        optax.masked(eqjax.analog.memristors.conductance_bounds(0.0), eqjax.models.conductance_mask))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 10.0), params)  # pushes everything down by 10
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)
    assert all(float(g.min()) == 0.0 for g in new["conductances"])  # clipped at exactly 0 S
    assert all(np.allclose(i, -10.0) for i in new["bias_currents"])  # currents may go negative
