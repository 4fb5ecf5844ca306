"""Phases as values: what a relaxation adds to the internal energy ``E``.

A relaxation minimises ``E`` plus what its :class:`Phase` adds, inside the boxes the phase allows:

- :class:`Free`: nothing (the free phase, ``beta = 0``);
- :class:`Nudge`: ``beta * C(output(s), y)`` (EP's nudged phases; ``beta`` traced, of either
  sign, real or complex: a complex ``beta`` makes the state complex, for holomorphic EP on
  unbounded models, never silently cast to real);
- :class:`Clamp`: a state leaf held at a target (contrastive learning clamps the output to the
  label, coupled learning to ``o_free + eta (y - o_free)``; Stern et al. 2021).

Estimators compose phases; new learning rules need new phases, not new branches in the loop.
"""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


class Phase(struct.PyTreeNode, abc.ABC):
    """The interface of a phase. Every method has a neutral default; override what the phase changes."""

    def energy(self, model, cost, states, y) -> jax.Array:
        """The term added to the batch's summed energy (``states`` batched, ``y`` ``(B,)`` or ``None``)."""
        return 0.0

    def bounds(self, bounds: tuple) -> tuple:
        """The boxes the state stays in during this phase (default: the model's)."""
        return bounds

    def start(self, states):
        """The start state adapted to this phase (default unchanged)."""
        return states

    def errors(self) -> dict:
        """``{message: violated}`` for the phase's traced values (see ``eqjax._checks``)."""
        return {}


class Free(Phase):
    """The free phase: ``E`` alone."""


class Nudge(Phase):
    """``beta * sum_b C(output(s_b), y_b)``: the nudged phase of EP (Scellier & Bengio 2017).

    ``beta`` is traced (a scalar; changing it never recompiles). A complex ``beta`` promotes the
    state to the complex dtype (Laborieux & Zenke 2022's holomorphic EP); boxes then must be
    infinite (see :func:`eqjax.solvers.project`).
    """

    beta: jax.Array = 0.0

    def energy(self, model, cost, states, y):
        if y is None:
            raise ValueError("a Nudge phase needs labels y")
        costs = jax.vmap(lambda s, label: cost(model.output(s), label))(states, y)
        return self.beta * jnp.sum(costs)

    def start(self, states):
        """A complex ``beta`` makes the state complex; a real one leaves its dtype alone."""
        if not jnp.iscomplexobj(self.beta):
            return states
        return jax.tree.map(lambda s: s.astype(jnp.result_type(s, self.beta)), states)

    def errors(self):
        return {"beta must be finite": ~jnp.isfinite(jnp.asarray(self.beta))}


class Clamp(Phase):
    """State leaf ``layer`` (static, default the last) held at ``target`` (traced, the leaf's batched
    shape, e.g. ``(B, n_out)``): its box shrinks to ``[target, target]`` and it starts there, so every
    solver keeps it fixed while the other layers relax. The state is a tuple of arrays, one per
    layer (as for the built-in solvers), and ``layer`` indexes it."""

    target: jax.Array
    layer: int = struct.field(pytree_node=False, default=-1)

    def bounds(self, bounds):
        bounds = list(bounds)
        bounds[self.layer] = (self.target, self.target)
        return tuple(bounds)

    def start(self, states):
        states = list(states)
        if jnp.shape(self.target) != jnp.shape(states[self.layer]):
            raise ValueError(f"the clamp target must have the clamped layer's batched shape "
                             f"{jnp.shape(states[self.layer])}, got {jnp.shape(self.target)}")
        states[self.layer] = jnp.asarray(self.target, states[self.layer].dtype)
        return tuple(states)

    def errors(self):
        return {"the clamp target must be finite": ~jnp.all(jnp.isfinite(self.target))}


def as_phase(phase) -> Phase:
    """A :class:`Phase` as is; ``None`` or ``0`` (Python) as :class:`Free`; any other number or
    scalar array as :class:`Nudge` of that ``beta``."""
    if isinstance(phase, Phase):
        return phase
    if phase is None or (isinstance(phase, (int, float)) and not isinstance(phase, bool) and phase == 0):
        return Free()
    if not isinstance(phase, (int, float, complex, np.number, np.ndarray, jax.Array)) or jnp.ndim(phase) != 0:
        raise TypeError(f"a phase must be an eqjax.phases.Phase or a scalar beta, got {phase!r}")
    return Nudge(beta=phase)
