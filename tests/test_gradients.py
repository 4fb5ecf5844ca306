"""Gradient equivalence in float64: finite differences, implicit differentiation, BPTT and EP."""

import numpy as np
import pytest

import eqjax
from eqjax.estimators import BPTT, EP, ImplicitDiff
from conftest import finite_difference_gradient, random_problem, relative_error

SEEDS = (0, 1, 2)
BETAS = (1e-1, 1e-2, 1e-3)
# With units pinned at a bound, beta = 0.1 already un-pins some of them (the nudged active set
# differs from the free one), which is outside the asymptotic regime; fit one decade lower there.
BOXED_BETAS = (1e-2, 1e-3, 1e-4)


def pinned_fraction(model, cost, solver, params, x):
    eq = eqjax.relax(model, cost, solver, params, x)
    pinned = [(s <= lo) | (s >= hi) for s, (lo, hi) in zip(eq.state, model.bounds)]
    return float(sum(p.sum() for p in pinned) / sum(p.size for p in pinned))


# Smooth energy (no bounds); bilinear energy with hidden and output units pinned at 0 and 1 (active
# set; output biases shifted so that outputs are not all pinned); bilinear with linear outputs.
CASES = {
    "smooth": dict(energy="smooth", gain=1.0, bias_scale=1.0),
    "bilinear-pinned": dict(energy="bilinear", gain=0.5, bias_scale=0.5, output_bias=0.5),
    "bilinear-linear-output": dict(
        energy="bilinear", gain=0.5, bias_scale=0.8, output_bounds=(-np.inf, np.inf)
    ),
}


def solver_for(case, tight_gd, tight_bc):
    return tight_gd if case == "smooth" else tight_bc


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", SEEDS)
def test_implicit_matches_finite_differences(case, seed, tight_gd, tight_bc):
    model, params, x, y = random_problem(seed, **CASES[case])
    cost, solver = eqjax.costs.squared_error(), solver_for(case, tight_gd, tight_bc)
    if case != "smooth":
        assert pinned_fraction(model, cost, solver, params, x) > 0.1  # the active set is exercised
    reference = finite_difference_gradient(model, cost, solver, params, x, y)
    implicit, aux = eqjax.gradients(model, cost, solver, ImplicitDiff(), params, x, y)
    assert bool(aux.phases["free"].converged.all())
    # central differences with h=1e-5 have truncation error ~h^2 and round-off ~1e-16/h
    assert relative_error(implicit, reference) < 1e-5


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", SEEDS)
def test_bptt_long_unroll_matches_implicit(case, seed, tight_gd, tight_bc):
    model, params, x, y = random_problem(seed, **CASES[case])
    cost, solver = eqjax.costs.squared_error(), solver_for(case, tight_gd, tight_bc)
    implicit, _ = eqjax.gradients(model, cost, solver, ImplicitDiff(), params, x, y)
    bptt, aux = eqjax.gradients(model, cost, solver, BPTT(num_steps=400), params, x, y)
    assert bool(aux.phases["free"].converged.all())  # 400 steps reach the equilibrium
    # the unrolled Jacobian converges to the implicit one geometrically with the unroll length
    assert relative_error(bptt, implicit) < 1e-4


def test_cg_matches_dense_solve(tight_gd):
    model, params, x, y = random_problem(3, **CASES["smooth"])
    cost = eqjax.costs.squared_error()
    dense, _ = eqjax.gradients(model, cost, tight_gd, ImplicitDiff("dense"), params, x, y)
    cg, aux = eqjax.gradients(model, cost, tight_gd, ImplicitDiff("cg", cg_tol=1e-12), params, x, y)
    assert relative_error(cg, dense) < 1e-9  # both exact up to the CG tolerance
    assert float(aux.extras["linear_solve_residual"].max()) < 1e-11  # reported per example


def ep_errors(model, cost, solver, params, x, y, variant, betas):
    implicit, _ = eqjax.gradients(model, cost, solver, ImplicitDiff(), params, x, y)
    return np.array([
        relative_error(eqjax.gradients(model, cost, solver, EP(beta=b, variant=variant), params, x, y)[0], implicit)
        for b in betas
    ])


def fitted_order(betas, errors):
    return np.polyfit(np.log10(betas), np.log10(errors), 1)[0]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", SEEDS)
def test_ep_bias_order_in_beta(case, seed, tight_gd, tight_bc):
    model, params, x, y = random_problem(seed, **CASES[case])
    cost, solver = eqjax.costs.squared_error(), solver_for(case, tight_gd, tight_bc)
    betas = BETAS if case == "smooth" else BOXED_BETAS
    for variant in ("positive", "negative"):
        errors = ep_errors(model, cost, solver, params, x, y, variant, betas)
        assert 0.85 < fitted_order(betas, errors) < 1.15, (variant, errors)  # bias O(beta)
    centered = ep_errors(model, cost, solver, params, x, y, "centered", betas)
    assert 1.85 < fitted_order(betas, centered) < 2.15, centered  # symmetric: bias O(beta^2)
    assert centered[betas.index(1e-3)] < 1e-4  # centered EP at beta = 1e-3


@pytest.mark.parametrize("seed", SEEDS)
def test_ep_with_cross_entropy(seed, tight_gd):
    model, params, x, y = random_problem(seed, **CASES["smooth"])
    cost = eqjax.costs.cross_entropy()
    reference = finite_difference_gradient(model, cost, tight_gd, params, x, y)
    implicit, _ = eqjax.gradients(model, cost, tight_gd, ImplicitDiff(), params, x, y)
    ep, _ = eqjax.gradients(model, cost, tight_gd, EP(beta=1e-3, variant="centered"), params, x, y)
    assert relative_error(implicit, reference) < 1e-5  # as for squared error
    assert relative_error(ep, implicit) < 1e-4  # O(beta^2) bias at beta = 1e-3


def test_gradient_descent_on_bilinear_gives_the_same_gradient(tight_gd, tight_bc):
    model, params, x, y = random_problem(4, **CASES["bilinear-pinned"])
    cost = eqjax.costs.squared_error(half=False)
    via_bc, _ = eqjax.gradients(model, cost, tight_bc, EP(beta=1e-3), params, x, y)
    via_gd, _ = eqjax.gradients(model, cost, tight_gd, EP(beta=1e-3), params, x, y)
    # both solvers reach the same equilibria to 1e-13; EP divides that by beta
    assert relative_error(via_gd, via_bc) < 1e-8
