"""Equilibrium propagation with a real beta (Scellier & Bengio 2017; Laborieux et al. 2021)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from eqjax._checks import shown
from eqjax.estimators.base import Estimator, check_second_steps, contrast_gradient, relax_phases
from eqjax.phases import Nudge

# For each variant: the two phases contrasted (high, low) and the multiple of the nudge between
# them (the denominator is multiple * beta). Shared with coupled learning (eqjax.estimators.clamped).
EP_CONTRASTS = {"positive": ("positive", "free", 1), "negative": ("free", "negative", 1),
             "centered": ("positive", "negative", 2)}


def second_phase_names(variant: str) -> tuple[str, ...]:
    """The phases besides the free one that ``variant`` contrasts, in a fixed order."""
    return tuple(name for name in ("positive", "negative") if name in EP_CONTRASTS[variant][:2])


def check_variant(variant: str) -> None:
    """``ValueError`` unless ``variant`` is one of ``EP_CONTRASTS`` (static, checked at construction)."""
    if variant not in EP_CONTRASTS:
        raise ValueError(f"variant must be one of {tuple(EP_CONTRASTS)}, got {variant!r}")


class EP(Estimator):
    """Equilibrium propagation (Scellier & Bengio 2017).

    ``g = (dE/dparams(s_a) - dE/dparams(s_b)) / (beta_a - beta_b)``, averaged over the batch, with

    - ``"positive"``: ``(s_a, beta_a) = (s_beta, beta)``, ``(s_b, beta_b) = (s_0, 0)``; bias O(beta);
    - ``"negative"``: ``(s_0, 0)`` and ``(s_-beta, -beta)``; bias O(beta);
    - ``"centered"``: ``(s_beta, beta)`` and ``(s_-beta, -beta)``; bias O(beta^2) (Laborieux et
      al. 2021).

    ``s_beta`` minimises ``E + beta C`` (a :class:`~eqjax.phases.Nudge`). ``beta`` is real,
    nonzero and traced (vmap over it works; changing it never recompiles) and may be negative (a
    random sign per batch, as Scellier & Bengio 2017 do, is :class:`RandomSign`). ``variant``
    and ``warm_start`` (nudged phases start from the free equilibrium, else from the model's start
    state) are static, and so is ``nudged_steps``, the nudged phases' budget (default: the
    solver's ``max_steps``), e.g. 4 gradient steps after 20 free ones as in Scellier & Bengio 2017.
    For a complex beta use :class:`~eqjax.estimators.HolomorphicEP`.

    Examples that go non-finite in any phase are left out of the gradient (the mean is over the
    others) and reported in the estimate's ``used`` and each phase's ``status``
    (``estimate.phases`` ``"free"``, ``"positive"``, ``"negative"``).
    """

    beta: float = 0.1
    variant: str = struct.field(pytree_node=False, default="centered")
    warm_start: bool = struct.field(pytree_node=False, default=True)
    nudged_steps: int | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        check_variant(self.variant)
        check_second_steps(self.nudged_steps, "nudged_steps")

    def errors(self) -> dict:
        """``beta`` real, finite and nonzero."""
        beta = jnp.asarray(self.beta)
        if beta.ndim != 0:
            raise TypeError(f"beta must be a scalar (vmap over the estimator for several), got shape {beta.shape}")
        if jnp.iscomplexobj(beta):
            raise TypeError("EP takes a real beta; for a complex beta use eqjax.estimators.HolomorphicEP")
        return {f"beta must be a finite nonzero number for EP{shown(self.beta)}": ~jnp.isfinite(beta) | (beta == 0)}

    def phases(self) -> dict:
        """The nudged phases this variant relaxes, by name."""
        signs = {"positive": 1, "negative": -1}
        return {name: Nudge(beta=signs[name] * self.beta) for name in second_phase_names(self.variant)}

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        """Free phase from ``state0``, then the nudged phase(s); see the class."""
        self.errors()  # a complex beta raises here, also when traced
        estimate = relax_phases(model, cost, solver, self.nudged_steps, params, x, y, state0, key,
                                self.warm_start, lambda free_state: self.phases())
        high, low, multiple = EP_CONTRASTS[self.variant]
        scale = multiple * jnp.asarray(self.beta, x.dtype)
        grads = contrast_gradient(model, params, estimate.phases[high].state, estimate.phases[low].state, x, scale,
                                  estimate.used)
        return grads, estimate


class RandomSign(Estimator):
    """:class:`EP` whose ``beta`` gets a random sign at each call (Scellier & Bengio 2017: the
    sign of the nudge drawn per batch, so that the O(beta) biases of the one-sided variants cancel
    on average).

    ``estimate(..., key)`` splits ``key`` into ``(sign_key, rest)``, draws the sign from
    ``sign_key`` (+1 or -1, each with probability 1/2) and runs ``inner`` with ``sign * beta`` and
    the key ``rest`` (for stochastic solvers); the estimate is ``inner``'s. A key is required (the
    training loops take one per batch, e.g. ``train_epoch``'s ``keys``); ``train_chunk(...,
    random_sign=True)`` wraps its estimator in this. Under :mod:`eqjax.parallel` each shard gets
    its own key (folded with its index), hence its own sign. ``errors()`` are ``inner``'s.
    """

    inner: EP

    def __post_init__(self):
        if not isinstance(self.inner, EP):
            raise TypeError(f"RandomSign flips the beta of an eqjax.estimators.EP; got {type(self.inner).__name__}")

    def errors(self) -> dict:
        """``inner``'s conditions (the sign does not change them)."""
        return self.inner.errors()

    def signed(self, key) -> tuple:
        """``(inner with beta * sign, the key left for inner)``, the sign drawn from ``key``."""
        sign_key, key = jax.random.split(key)
        sign = jnp.where(jax.random.bernoulli(sign_key), 1.0, -1.0)
        return self.inner.replace(beta=sign * self.inner.beta), key

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        """``inner.estimate`` with the sign of ``beta`` drawn from ``key``; see the class."""
        if key is None:
            raise ValueError("RandomSign draws the sign of beta from the estimator's key; pass a PRNG key "
                             "(train_epoch's keys, train_chunk's keys, gradients(..., key=...))")
        estimator, key = self.signed(key)
        return estimator.estimate(model, cost, solver, params, x, y, state0, key)
