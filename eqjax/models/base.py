"""The interface every energy model implements: :class:`EnergyModel`.

A model is a value: a frozen pytree dataclass (subclassing :class:`EnergyModel` makes the subclass
one; declare structure such as layer sizes with ``struct.field(pytree_node=False)``) whose methods
are pure functions of one example. Batching is ``jax.vmap``, done by the library.

Required (abstract; a subclass missing one cannot be instantiated, and the error names it):
``input_shape``, ``num_outputs``, ``bounds``, ``init``, ``init_state``, ``energy``, ``output``.

Optional, with defaults: ``prepare`` + ``relaxation_energy`` (per-batch precomputation for the
relaxation loop), ``energy_difference`` and its batched form ``energy_differences`` (EP's weight
update), ``parameter_errors`` (constraints checked at the API boundary).
"""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
from flax import struct

REQUIRED = ("input_shape", "num_outputs", "bounds", "init", "init_state", "energy", "output")


def default_float():
    """JAX's default floating dtype: float64 when ``jax_enable_x64`` is on, else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def missing_members(obj) -> list[str]:
    """The names of :data:`REQUIRED` members that ``obj`` lacks."""
    return [name for name in REQUIRED if not hasattr(obj, name)]


class EnergyModel(struct.PyTreeNode, abc.ABC):
    """An energy ``E(params, state, x)`` over a state ``s`` (a pytree of arrays), an input ``x``
    (clamped) and parameters.

    Sign conventions: the relaxation minimises ``E + beta * C(output(s), y)``; EP's gradient is
    ``(dE/dparams(s_beta) - dE/dparams(s_0)) / beta`` (see ``docs/architecture.md``).

    The state is boxed per leaf by ``bounds``; for the built-in solvers it is a tuple of arrays, one
    per layer, and :class:`~eqjax.solvers.BlockCoordinate` updates even then odd leaves.
    """

    # --- required -------------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example (``x`` of a batch is ``(B, *input_shape)``)."""

    @property
    @abc.abstractmethod
    def num_outputs(self) -> int:
        """Number of output units (classes); labels lie in ``[0, num_outputs)``."""

    @property
    @abc.abstractmethod
    def bounds(self) -> tuple:
        """Per state leaf, a ``(lo, hi)`` box (Python floats or NumPy arrays broadcastable to the
        leaf; ``(-inf, inf)`` for unbounded units)."""

    @abc.abstractmethod
    def init(self, key: jax.Array, dtype=None):
        """Random parameters (a pytree). ``dtype`` defaults to :func:`default_float`."""

    @abc.abstractmethod
    def init_state(self, x: jax.Array):
        """Start state for one example ``x`` of shape ``input_shape``, in ``x``'s dtype."""

    @abc.abstractmethod
    def energy(self, params, state, x: jax.Array) -> jax.Array:
        """Internal energy of one example, a real scalar, differentiable in ``params`` and ``state``."""

    @abc.abstractmethod
    def output(self, state) -> jax.Array:
        """Output units of one example, shape ``(num_outputs,)``; the cost sees these."""

    # --- optional -------------------------------------------------------------------------------

    def prepare(self, params, x: jax.Array):
        """Per-batch precomputation for relaxation (``x`` is the batch ``(B, *input_shape)``).

        Whatever is returned is handed to :meth:`relaxation_energy` at every step of every phase of
        this batch, so work that does not depend on the state (an input projection, a weight
        layout the products prefer) is done once. Default: ``params`` unchanged.
        """
        return params

    def relaxation_energy(self, prepared, states, x: jax.Array) -> jax.Array:
        """The summed energy of a batch of states, from :meth:`prepare`'s result.

        Contract: ``relaxation_energy(prepare(params, x), states, x)`` equals
        ``sum_b energy(params, states_b, x_b)`` as a function of ``states`` and of ``params`` (so
        that backpropagation through a relaxation stays right). Default: exactly that sum.
        """
        return jnp.sum(jax.vmap(self.energy, in_axes=(None, 0, 0))(prepared, states, x))

    def energy_difference(self, params, state_a, state_b, x: jax.Array) -> jax.Array:
        """``E(params, state_a, x) - E(params, state_b, x)`` for one example; EP differentiates it
        w.r.t. ``params``. Override when a factored form is cheaper."""
        return self.energy(params, state_a, x) - self.energy(params, state_b, x)

    def energy_differences(self, params, states_a, states_b, x: jax.Array) -> jax.Array:
        """:meth:`energy_difference` of a batch, ``(B,)`` (``states_a``, ``states_b`` batched, ``x``
        ``(B, *input_shape)``); EP differentiates its sum. Default: ``vmap`` of
        :meth:`energy_difference`. Override when the batched form is cheaper to differentiate (a
        convolution's kernel gradient summed over the batch is one convolution; per example under
        ``vmap`` it is one per example)."""
        return jax.vmap(self.energy_difference, in_axes=(None, 0, 0, 0))(params, states_a, states_b, x)

    def parameter_errors(self, params) -> dict:
        """``{message: violated}`` (boolean arrays) for constraints the parameters must meet, e.g.
        non-negative conductances; checked eagerly on concrete values and under ``throw=True``.
        Default: none (finiteness is always checked)."""
        return {}
