"""Learning rules whose second phase clamps the output layer: contrastive learning (Movellan
1991; Baldi & Pineda 1991) and coupled learning (Stern et al. 2021).

Both contrast ``dE/dparams`` at a clamped equilibrium with another equilibrium, like EP, but the
second phase holds the output layer at a value (a :class:`~eqjax.phases.Clamp` of the state's
``layer``, static, default the last) instead of nudging it with the cost. They are not gradients
of the loss in general (the clamped phase ignores the cost's shape), which
``eqjax.verify.compare`` measures; with EP's three forms they make the seven algorithms of
Scellier et al. 2023's comparative study.

The clamp target of an example with label ``y`` is ``target(y, n)`` (static callable; default the
one-hot vector, the minimiser of the squared-error cost) in the output's dtype. The clamped layer
must be the model's output layer (``model.output(state)`` is ``state[layer]``, as for layered
models), because coupled learning moves it from its free value ``o``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from eqjax._checks import shown
from eqjax.estimators.base import Estimator, check_second_steps, contrast_gradient, relax_phases
from eqjax.estimators.ep import EP_CONTRASTS, check_variant, second_phase_names
from eqjax.phases import Clamp


def one_hot_target(y: jax.Array, num_outputs: int, dtype) -> jax.Array:
    """The one-hot vectors of the labels ``y`` ``(B,)``: ``(B, num_outputs)`` in ``dtype``."""
    return jax.nn.one_hot(y, num_outputs, dtype=dtype)


def clamped_leaf(state: tuple, layer: int):
    """``state[layer]``, or a ``ValueError`` naming the layers there are (``layer`` is static)."""
    if not -len(state) <= layer < len(state):
        raise ValueError(f"layer={layer} is out of range: the model's state has {len(state)} layers "
                         f"(use -1 for the output)")
    return state[layer]


class Contrastive(Estimator):
    """Contrastive learning: ``g = mean_b [dE/dparams(s_clamped) - dE/dparams(s_0)]``.

    ``s_clamped`` minimises ``E`` with the output layer clamped to the target (the "clamped" or
    "positive" phase of contrastive Hebbian learning, Movellan 1991), ``s_0`` is the free
    equilibrium. Descending ``g`` lowers the energy of the clamped configuration relative to the
    free one. There is no nudge strength: the rule is EP's positive form with the output forced
    all the way to the target. ``warm_start`` (static): the clamped phase starts from the free
    equilibrium, with the output at the target. ``clamped_steps`` (static) is the clamped phase's
    budget (default: the solver's ``max_steps``). The estimate's ``phases["clamped"]`` is its equilibrium.
    """

    layer: int = struct.field(pytree_node=False, default=-1)
    target: Callable = struct.field(pytree_node=False, default=one_hot_target)
    warm_start: bool = struct.field(pytree_node=False, default=True)
    clamped_steps: int | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        check_second_steps(self.clamped_steps, "clamped_steps")

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        """Free phase, then the clamped phase; see the class."""

        def phases(free_state):
            output = clamped_leaf(free_state, self.layer)
            return {"clamped": Clamp(self.target(y, model.num_outputs, output.dtype), layer=self.layer)}

        estimate = relax_phases(model, cost, solver, self.clamped_steps, params, x, y, state0, key,
                                self.warm_start, phases)
        grads = contrast_gradient(model, params, estimate.phases["clamped"].state, estimate.free_state, x,
                                  jnp.ones((), x.dtype), estimate.used)
        return grads, estimate


class Coupled(Estimator):
    """Coupled learning (Stern et al. 2021), in EP's three forms (Scellier et al. 2023).

    The output layer is clamped to ``o + eta (t - o)`` ("positive") or ``o - eta (t - o)``
    ("negative"), with ``o`` the free equilibrium's output and ``t`` the target, and

    - ``"positive"``: ``g = (dE/dparams(s_+eta) - dE/dparams(s_0)) / eta``;
    - ``"negative"``: ``g = (dE/dparams(s_0) - dE/dparams(s_-eta)) / eta``;
    - ``"centered"``: ``g = (dE/dparams(s_+eta) - dE/dparams(s_-eta)) / (2 eta)``.

    Dividing by ``eta`` (Stern et al. fold it into the learning rate) makes ``g`` comparable with
    EP's for any ``eta``. ``eta`` is traced, real, finite and nonzero (usually in ``(0, 1]``;
    ``eta = 1`` positive is contrastive learning); ``variant``, ``layer``, ``target`` and
    ``warm_start`` are static, and so is ``clamped_steps``, the clamped phases' budget (default:
    the solver's ``max_steps``). The estimate's ``phases["positive"]`` / ``phases["negative"]`` are their
    equilibria.
    """

    eta: float = 0.5
    variant: str = struct.field(pytree_node=False, default="centered")
    layer: int = struct.field(pytree_node=False, default=-1)
    target: Callable = struct.field(pytree_node=False, default=one_hot_target)
    warm_start: bool = struct.field(pytree_node=False, default=True)
    clamped_steps: int | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        check_variant(self.variant)
        check_second_steps(self.clamped_steps, "clamped_steps")

    def errors(self) -> dict:
        eta = jnp.asarray(self.eta)
        return {f"eta must be a real, finite, nonzero number{shown(self.eta)}":
                jnp.iscomplexobj(eta) | ~jnp.isfinite(eta) | (eta == 0)}

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        """Free phase, then the clamped phase(s) around the free output; see the class."""

        def phases(free_state):
            output = clamped_leaf(free_state, self.layer)
            step = jnp.asarray(self.eta, output.dtype) * (self.target(y, model.num_outputs, output.dtype) - output)
            signs = {"positive": 1, "negative": -1}
            return {name: Clamp(output + signs[name] * step, layer=self.layer)
                    for name in second_phase_names(self.variant)}

        estimate = relax_phases(model, cost, solver, self.clamped_steps, params, x, y, state0, key,
                                self.warm_start, phases)
        high, low, multiple = EP_CONTRASTS[self.variant]
        grads = contrast_gradient(model, params, estimate.phases[high].state, estimate.phases[low].state, x,
                                  multiple * jnp.asarray(self.eta, x.dtype), estimate.used)
        return grads, estimate
