"""Holomorphic equilibrium propagation (Laborieux & Zenke 2022, "Holomorphic equilibrium
propagation computes exact gradients through finite size oscillations", NeurIPS 2022)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from eqjax._checks import shown
from eqjax.estimators.base import Estimator, check_second_steps, contrast_gradient
from eqjax.estimators.estimate import Estimate
from eqjax.phases import Free, Nudge
from eqjax._relaxation import relax_unchecked


def check_holomorphic_model(model) -> None:
    """``ValueError`` unless every state leaf of ``model`` is unbounded (a box is not holomorphic)."""
    for index, (lo, hi) in enumerate(model.bounds):
        if not (np.all(np.isneginf(lo)) and np.all(np.isposinf(hi))):
            raise ValueError(
                f"holomorphic EP needs a model whose state is unbounded (layer {index} is boxed in "
                f"[{lo}, {hi}]; clipping to a box is not holomorphic) and whose energy is holomorphic in "
                "the state, e.g. eqjax.models.hopfield(sizes, energy='smooth')")


def nudges(beta, num_phases: int, dtype) -> jax.Array:
    """The ``num_phases`` complex nudges ``beta * exp(2 pi i k / N)``, ``k = 0..N-1``: ``(N,)``."""
    angles = 2 * math.pi * jnp.arange(num_phases) / num_phases
    return jnp.asarray(beta, dtype) * jnp.exp(1j * angles).astype(dtype)


class HolomorphicEP(Estimator):
    """EP with ``N`` complex nudges on a circle: the gradient is the first Fourier coefficient.

    With ``beta_k = beta exp(2 pi i k / N)`` and ``s_k`` the equilibrium of ``E + beta_k C``
    (complex states), ``f(b) = dE/dparams(s_b)`` is holomorphic in ``b`` and ``f'(0)`` is the loss
    gradient (the EP theorem). Cauchy's formula on the circle of radius ``beta``, discretised at the
    ``N`` points, gives

        ``g = Re (1 / (N beta)) sum_k exp(-2 pi i k / N) dE/dparams(s_k)``,

    whose error is ``O(beta^N)`` (aliasing of the ``N+1``-th Taylor term): ``N = 2`` is centered
    EP, ``N = 4`` already exact to fourth order. Since the weights sum to zero the estimate is
    formed from ``E(s_k) - E(s_0)`` (the free equilibrium ``s_0``), which keeps its precision at
    small ``beta``.

    ``beta`` (the radius: real, finite, nonzero) is traced; ``num_phases`` (``N >= 2``),
    ``warm_start`` (nudged phases start from the free equilibrium) and ``nudged_steps`` as for
    :class:`~eqjax.estimators.EP`. The ``N`` nudged phases are one vmapped relaxation.

    Which models qualify: the state must be unbounded and the energy holomorphic in it, e.g.
    ``hopfield(..., energy="smooth")`` (sigmoid activations); boxed models (bilinear and
    hard-sigmoid Hopfield, resistive networks) raise ``ValueError``. The solver must accept complex
    states (``GradientDescent``, ``Langevin``; not ``BlockCoordinate``). The estimate's
    ``phases["nudged"]`` holds the nudged phases' equilibria, batch first: ``(B, N)`` arrays.
    """

    beta: float = 0.1
    num_phases: int = struct.field(pytree_node=False, default=4)
    warm_start: bool = struct.field(pytree_node=False, default=True)
    nudged_steps: int | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        if isinstance(self.num_phases, bool) or not isinstance(self.num_phases, int) or self.num_phases < 2:
            raise ValueError(f"num_phases must be an int >= 2, got {self.num_phases!r}")
        check_second_steps(self.nudged_steps, "nudged_steps")

    def errors(self) -> dict:
        beta = jnp.asarray(self.beta)
        if jnp.iscomplexobj(beta):
            raise TypeError("HolomorphicEP's beta is the (real) radius of the circle of complex nudges")
        return {f"beta must be a finite nonzero number{shown(self.beta)}": ~jnp.isfinite(beta) | (beta == 0)}

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        """Free phase, then the ``N`` complex nudged phases (vmapped); see the class."""
        self.errors()
        check_holomorphic_model(model)
        complex_dtype = jnp.result_type(x.dtype, jnp.complex64)
        prepared = model.prepare(params, x)
        free_key, nudged_key = (None, None) if key is None else jax.random.split(key)
        free = relax_unchecked(model, cost, solver, params, x, None, Free(), state0, free_key, prepared)
        free_state = jax.lax.stop_gradient(free.state)
        start = free_state if self.warm_start else None
        betas = nudges(self.beta, self.num_phases, complex_dtype)

        def relax_nudged(beta_k, key_k):
            return relax_unchecked(model, cost, solver, params, x, y, Nudge(beta=beta_k), start, key_k, prepared,
                                   self.nudged_steps)

        if nudged_key is None:
            nudged = jax.vmap(lambda b: relax_nudged(b, None))(betas)
        else:
            nudged = jax.vmap(relax_nudged)(betas, jax.random.split(nudged_key, self.num_phases))
        used = ~(free.nonfinite | jnp.any(nudged.nonfinite, axis=0))
        scales = self.num_phases * betas  # 1 / weight of each phase
        per_phase = jax.vmap(contrast_gradient, in_axes=(None, None, 0, None, None, 0, None))(
            model, params, nudged.state, free_state, x, scales, used)
        batch_first = jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), nudged)  # (B, N, ...), like every phase
        estimate = Estimate.at_free_phase(model, cost, free, y).with_phases(used, nudged=batch_first)
        return jax.tree.map(lambda g: jnp.sum(g, axis=0), per_phase), estimate
