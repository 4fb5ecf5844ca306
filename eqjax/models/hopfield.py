"""Layered Hopfield energies (Scellier & Bengio 2017; Scellier et al. 2023, "DHN").

A network with sizes ``(n_0, n_1, ..., n_L)`` has the input ``x`` (``n_0`` units, clamped) and
``L`` layers of free units; the last one is the output. The state of one example is a tuple
``(s_1, ..., s_L)`` with ``s_l`` of shape ``(n_l,)``.

Parameters are a dict ``{"weights": (W_1, ..., W_L), "biases": (b_1, ..., b_L)}`` with
``W_l`` of shape ``(n_{l-1}, n_l)`` and ``b_l`` of shape ``(n_l,)``.

Energies (one example, ``s_0 = x``, ``rho`` applied to free units only)::

    E(s) = 1/2 sum_l ||s_l||^2 - sum_l rho(s_{l-1})^T W_l rho(s_l) - sum_l b_l . rho(s_l)

- ``"bilinear"``: ``rho(s) = s``, state boxed in ``[0, 1]`` (deep Hopfield network, Scellier et
  al. 2023). The energy is quadratic in each layer with unit self-interaction, so block-coordinate
  relaxation is exact.
- ``"scellier-bengio"``: ``rho(s) = clip(s, 0, 1)``, state boxed in ``[0, 1]`` (Scellier & Bengio
  2017). Inside the box it equals the bilinear energy.
- ``"smooth"``: ``rho = sigmoid``, unbounded state. Twice differentiable everywhere, for checking
  gradients by implicit differentiation without an active set.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import struct
from jax.custom_derivatives import SymbolicZero

from eqjax.models._layered import Layered, checked_sizes
from eqjax.models.base import default_float

ENERGIES = ("bilinear", "scellier-bengio", "smooth")
INITS = ("glorot", "kaiming")


def _identity(s):
    return s


@jax.custom_jvp
def hard_sigmoid(s):
    """``clip(s, 0, 1)`` with derivative 1 on the closed interval ``[0, 1]`` and 0 outside.

    ``jnp.clip`` splits the derivative at a bound (1/2 at ``s = 0`` or ``1``), which makes units pinned
    at a bound leave it and come back at every projected step; this one keeps them still, as in
    Scellier & Bengio 2017.
    """
    return jnp.clip(s, 0.0, 1.0)


@hard_sigmoid.defjvp
def _hard_sigmoid_jvp(primals, tangents):
    (s,), (t,) = primals, tangents
    return hard_sigmoid(s), jnp.where((s >= 0.0) & (s <= 1.0), t, jnp.zeros_like(t))


_RHO = {"bilinear": _identity, "scellier-bengio": hard_sigmoid, "smooth": jax.nn.sigmoid}
_BOUNDS = {"bilinear": (0.0, 1.0), "scellier-bengio": (0.0, 1.0), "smooth": (-math.inf, math.inf)}


class Hopfield(Layered):
    """A layered Hopfield energy model. Build it with :func:`hopfield`.

    All fields are static (they decide shapes and control flow); the model holds no arrays.
    """

    sizes: tuple[int, ...] = struct.field(pytree_node=False)
    energy_form: str = struct.field(pytree_node=False, default="bilinear")  # hopfield(energy=...)
    gain: float = struct.field(pytree_node=False, default=1.0)
    output_bounds: tuple[float, float] | None = struct.field(pytree_node=False, default=None)
    init_scheme: str = struct.field(pytree_node=False, default="glorot")

    @property
    def bounds(self) -> tuple[tuple[float, float], ...]:
        """``(lo, hi)`` box of each free layer, as Python floats (``+-inf`` when unbounded)."""
        hidden = tuple(_BOUNDS[self.energy_form] for _ in self.sizes[2:])
        output = _BOUNDS[self.energy_form] if self.output_bounds is None else self.output_bounds
        return hidden + (output,)

    def init(self, key: jax.Array, dtype=None) -> dict:
        """Uniform weights ``W_l ~ U(-a, a)`` scaled by ``gain``, zero biases; ``dtype`` defaults
        to JAX's default float (float64 under ``jax_enable_x64``).

        ``init_scheme="glorot"``: ``a = gain * sqrt(6 / (n_{l-1} + n_l))`` (Glorot & Bengio 2010).
        ``init_scheme="kaiming"``: ``a = gain / sqrt(n_{l-1})``, the scaling of Scellier et al.'s
        DHN code (2023-24), whose published gain 0.7 refers to it.
        Returns ``{"weights": (W_1, ..), "biases": (b_1, ..)}``.
        """
        dtype = default_float() if dtype is None else dtype
        keys = jax.random.split(key, len(self.sizes) - 1)
        weights, biases = [], []
        for k, n_in, n_out in zip(keys, self.sizes[:-1], self.sizes[1:]):
            if self.init_scheme == "kaiming":
                limit = self.gain / math.sqrt(n_in)
            else:
                limit = self.gain * math.sqrt(6.0 / (n_in + n_out))
            weights.append(jax.random.uniform(k, (n_in, n_out), dtype, -limit, limit))
            biases.append(jnp.zeros((n_out,), dtype))
        return {"weights": tuple(weights), "biases": tuple(biases)}

    def init_state(self, x: jax.Array) -> tuple[jax.Array, ...]:
        """All-zero state for one example ``x`` of shape ``(n_0,)``, in ``x``'s dtype."""
        return tuple(jnp.zeros((n,), x.dtype) for n in self.sizes[1:])

    def energy(self, params: dict, state: tuple, x: jax.Array) -> jax.Array:
        """Internal energy ``E(params, state, x)`` of one example; a scalar."""
        return self._energy_from_drive(params, state, x @ params["weights"][0])

    def prepare(self, params: dict, x: jax.Array) -> dict:
        """For the relaxation of the batch ``x`` ``(B, n_0)``: the input field ``x W_1`` ``(B, n_1)``
        (the largest product, independent of the state, so computed once for all steps and phases)
        and the parameters in the layout the relaxation's products prefer (see :func:`product_layout`).
        """
        return {"params": product_layout(params), "drive": input_field(x, params["weights"][0])}

    def relaxation_energy(self, prepared: dict, states: tuple, x: jax.Array) -> jax.Array:
        """The batch's summed energy from :meth:`prepare`'s input field and weight layout."""
        one = lambda state, drive: self._energy_from_drive(prepared["params"], state, drive)
        return jnp.sum(jax.vmap(one)(states, prepared["drive"]))

    def energy_difference(self, params: dict, state_a: tuple, state_b: tuple, x: jax.Array):
        """``E(params, state_a, x) - E(params, state_b, x)`` for one example, with every term
        written as a product with a difference of states.

        With ``d_l = rho(a_l) - rho(b_l)`` and ``m_l = (rho(a_l) + rho(b_l)) / 2`` (exact algebra)::

            rho(a_l) W rho(a_{l+1}) - rho(b_l) W rho(b_{l+1}) = d_l W m_{l+1} + m_l W d_{l+1}

        and the input term is ``x W_1 d_1``. The gradient w.r.t. the parameters (EP's weight
        update) is then formed from state differences taken before the products, so it keeps its
        precision when ``a`` and ``b`` are close (EP at small ``beta``); the difference of two
        separately rounded products would lose ``log10(1 / beta)`` digits. ``W_1``'s gradient is a
        single outer product of ``x`` with ``d_1``. The other weights are read in their
        :func:`product_layout`.
        """
        params = product_layout(params)
        acts_a, acts_b = self._activations(state_a), self._activations(state_b)
        deltas = tuple(a - b for a, b in zip(acts_a, acts_b))
        means = tuple((a + b) / 2 for a, b in zip(acts_a, acts_b))
        self_energy = sum(0.5 * jnp.dot(a - b, a + b) for a, b in zip(state_a, state_b))
        interaction = sum(deltas[l] @ w @ means[l + 1] + means[l] @ w @ deltas[l + 1]
                          for l, w in enumerate(_interaction_weights(params)))
        bias_energy = sum(jnp.dot(b, d) for b, d in zip(params["biases"], deltas))
        input_term = x @ params["weights"][0] @ deltas[0]
        return self_energy - interaction - bias_energy - input_term

    def _energy_from_drive(self, params: dict, state: tuple, drive: jax.Array) -> jax.Array:
        """The energy of one example given its input field ``drive = x W_1``, shape ``(n_1,)``."""
        activations = self._activations(state)
        return self._internal_energy(params, state, activations) - jnp.dot(drive, activations[0])

    def _activations(self, state: tuple) -> tuple:
        rho = _RHO[self.energy_form]
        return tuple(rho(s) for s in state)

    def _internal_energy(self, params: dict, state: tuple, activations: tuple) -> jax.Array:
        """Every term of the energy except the input interaction ``x W_1 rho(s_1)``."""
        self_energy = sum(0.5 * jnp.dot(s, s) for s in state)
        interaction = sum(
            activations[l] @ w @ activations[l + 1] for l, w in enumerate(_interaction_weights(params))
        )
        bias_energy = sum(jnp.dot(b, a) for b, a in zip(params["biases"], activations))
        return self_energy - interaction - bias_energy

    def output(self, state: tuple) -> jax.Array:
        """Output units of one example (the last layer), shape ``(n_L,)``."""
        return state[-1]


def _input_field_product(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w


@jax.custom_batching.custom_vmap
def _batched_input_field(x, w):
    return _input_field_product(x, w)


@_batched_input_field.def_vmap
def _input_field_vmap(axis_size: int, in_batched: list, x: jax.Array, w: jax.Array):
    """Batching rule: with the weights batched (e.g. the members of a sweep, each with its own
    ``W_1``, sharing one input batch), a batched product ``x_m W_m`` over the member axis, the input
    broadcast to ``(members, B, n_0)``: every member's ``W_1`` ``(n_0, n_1)`` is read in place.
    JAX's default rule would contract the unbatched ``x`` against the stacked ``(members, n_0, n_1)``
    weights as one product ``(B, n_0) x (n_0, members * n_1)``, for which XLA:CPU first copies the
    stacked weights into that layout (``members * n_0 * n_1`` floats moved per call), which
    ``benchmarks/sweep.py`` measures as the slower of the two on a CPU."""
    x_batched, w_batched = in_batched
    if not w_batched:  # only the input is batched: one product over all rows, as jnp would do
        return _input_field_product(x, w), True
    if not x_batched:
        x = jnp.broadcast_to(x, (axis_size,) + x.shape)
    rows = x.reshape(axis_size, -1, x.shape[-1])  # (members, rows, n_0)
    return jnp.matmul(rows, w).reshape(x.shape[:-1] + w.shape[-1:]), True


@jax.custom_jvp
def input_field(x: jax.Array, w: jax.Array) -> jax.Array:
    """The input field ``x W_1``: ``x`` ``(..., n_0)``, ``w`` ``(n_0, n_1)`` -> ``(..., n_1)``.

    The same product as ``x @ w``, with a batching rule for ``jax.vmap`` over the weights (sweeps:
    the members' ``W_1`` stacked, the input shared) that keeps each member's ``W_1`` in its layout
    (see :func:`_input_field_vmap`). Differentiable in both arguments, forward and reverse mode
    (the derivative is written with plain products, so it transposes as usual).
    """
    return _batched_input_field(x, w)


@functools.partial(input_field.defjvp, symbolic_zeros=True)
def _input_field_jvp(primals, tangents):
    (x, w), (tx, tw) = primals, tangents
    out = input_field(x, w)
    parts = [_input_field_product(t, w) for t in (tx,) if not isinstance(t, SymbolicZero)]
    parts += [_input_field_product(x, t) for t in (tw,) if not isinstance(t, SymbolicZero)]
    return out, sum(parts) if parts else jnp.zeros_like(out)


def product_layout(params: dict) -> dict:
    """``params`` plus a transposed copy of each narrowing interaction weight, for speed only.

    Every ``W_l`` (``l >= 2``) with fewer outputs than inputs (``n_l < n_{l-1}``, e.g. the output
    layer) is also stored as ``W_l^T`` under ``"transposed_weights"`` (a tuple aligned with
    ``weights[1:]``, ``None`` where not transposed); the energy's terms read it from there, so both
    products of a relaxation sweep, ``s_{l-1} W_l`` and ``s_l W_l^T``, read contiguous rows.
    ``jax.lax.optimization_barrier`` keeps XLA from folding the transpose back into the products.
    The energy's value and its gradients (also w.r.t. ``W_l``, through the copy) are unchanged;
    the measured effect is in BENCHMARKS.md.
    """
    transposed = tuple(
        jax.lax.optimization_barrier(w.T) if w.shape[1] < w.shape[0] else None
        for w in params["weights"][1:]
    )
    return dict(params, transposed_weights=transposed)


def _interaction_weights(params: dict) -> tuple:
    """``(W_2, ..., W_L)``, each read from its transposed copy when :func:`product_layout` made one."""
    weights = params["weights"][1:]
    transposed = params.get("transposed_weights", (None,) * len(weights))
    return tuple(w if t is None else t.T for w, t in zip(weights, transposed))


def hopfield(
    sizes, energy: str = "bilinear", gain: float = 1.0, output_bounds=None, init_scheme: str = "glorot"
) -> Hopfield:
    """A layered Hopfield model of any depth.

    Args:
      sizes: ``(n_in, h_1, ..., n_out)``, at least two positive integers.
      energy: ``"bilinear"``, ``"scellier-bengio"`` or ``"smooth"`` (see the module docstring).
      gain: multiplies the initialisation range (DHN uses 0.7 with ``init_scheme="kaiming"``).
      output_bounds: ``(lo, hi)`` box of the output layer, overriding the energy's default; e.g.
        ``(-inf, inf)`` for linear output units (as in deep resistive networks), which keeps the
        true gradient alive for outputs that would otherwise be pinned at a bound.
      init_scheme: ``"glorot"`` or ``"kaiming"`` weight ranges (see :meth:`Hopfield.init`).
    """
    sizes = checked_sizes(sizes)
    if energy not in ENERGIES:
        raise ValueError(f"energy must be one of {ENERGIES}, got {energy!r}")
    if not gain > 0:
        raise ValueError(f"gain must be positive, got {gain!r}")
    if init_scheme not in INITS:
        raise ValueError(f"init_scheme must be one of {INITS}, got {init_scheme!r}")
    if output_bounds is not None:
        lo, hi = (float(b) for b in output_bounds)
        if not lo < hi:
            raise ValueError(f"output_bounds must be (lo, hi) with lo < hi, got {output_bounds!r}")
        output_bounds = (lo, hi)
    return Hopfield(sizes=sizes, energy_form=energy, gain=float(gain), output_bounds=output_bounds,
                    init_scheme=init_scheme)
