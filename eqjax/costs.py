"""Costs on the output units.

A cost is called as ``cost(output, label)`` on one example: ``output`` of shape ``(n_out,)`` (the
model's output units), ``label`` an integer class index; it returns a scalar. Built-in costs
subclass :class:`Cost` (frozen pytree dataclasses); any plain function with that signature works
too: the API wraps it with :func:`as_cost`.
"""

from __future__ import annotations

import abc
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct


class Cost(struct.PyTreeNode, abc.ABC):
    """The interface of a cost: ``__call__(output, label) -> scalar`` for one example."""

    @abc.abstractmethod
    def __call__(self, output: jax.Array, label: jax.Array) -> jax.Array:
        """The cost of one example's output units ``(n_out,)`` for an integer ``label``."""


class FunctionCost(Cost):
    """A plain function ``fn(output, label) -> scalar`` as a :class:`Cost` (``fn`` is static: a new
    function object means a new compilation)."""

    fn: Callable = struct.field(pytree_node=False)

    def __call__(self, output, label):
        return self.fn(output, label)


def as_cost(cost) -> Cost:
    """``cost`` as a :class:`Cost`: returned as is, or a callable wrapped in :class:`FunctionCost`."""
    if isinstance(cost, Cost):
        return cost
    if callable(cost):
        return FunctionCost(cost)
    raise TypeError(f"cost must be an eqjax.costs.Cost or a function (output, label) -> scalar, got {cost!r}")


class SquaredError(Cost):
    """``C = 1/2 ||o - onehot(y)||^2`` (``half=True``) or ``||o - onehot(y)||^2`` (``half=False``,
    the form of Scellier & Bengio 2017)."""

    half: bool = struct.field(pytree_node=False, default=True)

    def __call__(self, output: jax.Array, label: jax.Array) -> jax.Array:
        target = jax.nn.one_hot(label, output.shape[-1], dtype=output.dtype)
        total = jnp.sum((output - target) ** 2)
        return 0.5 * total if self.half else total


class CrossEntropy(Cost):
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
