"""Costs on the output units and the total energy ``F = E + beta * C``.

A cost is a frozen dataclass called as ``cost(output, label)`` on one example: ``output`` of shape
``(n_out,)`` (the model's output units), ``label`` an integer class index; it returns a scalar.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class SquaredError:
    """``C = 1/2 ||o - onehot(y)||^2`` (``half=True``) or ``||o - onehot(y)||^2`` (``half=False``,
    the form of Scellier & Bengio 2017)."""

    half: bool = struct.field(pytree_node=False, default=True)

    def __call__(self, output: jax.Array, label: jax.Array) -> jax.Array:
        target = jax.nn.one_hot(label, output.shape[-1], dtype=output.dtype)
        total = jnp.sum((output - target) ** 2)
        return 0.5 * total if self.half else total


@struct.dataclass
class CrossEntropy:
    """``C = -log softmax(o)[y]``: a softmax readout of the output units (Laborieux et al. 2021)."""

    def __call__(self, output: jax.Array, label: jax.Array) -> jax.Array:
        return -jnp.take(jax.nn.log_softmax(output), label)


def squared_error(half: bool = True) -> SquaredError:
    """Squared error to the one-hot target; ``half`` selects the factor 1/2."""
    return SquaredError(half=bool(half))


def cross_entropy() -> CrossEntropy:
    """Cross-entropy of a softmax over the output units."""
    return CrossEntropy()


def predict(output: jax.Array) -> jax.Array:
    """Predicted class: the index of the largest output unit (works on any leading batch shape)."""
    return jnp.argmax(output, axis=-1)


def total_energy(model, cost) -> Callable:
    """``F(params, state, x, y, beta) = E(params, state, x) + beta * C(output(state), y)``.

    One example. ``beta`` is a traced scalar, real or complex; ``y`` is an integer label, or
    ``None`` for the free energy alone (then ``beta`` is ignored). ``drive`` optionally passes the
    model's precomputed input field (see ``Hopfield.input_drive``) to ``model.energy``.
    """

    def F(params, state, x, y, beta, drive=None):
        energy = model.energy(params, state, x) if drive is None else model.energy(params, state, x, drive)
        if y is None:
            return energy
        return energy + beta * cost(model.output(state), y)

    return F
