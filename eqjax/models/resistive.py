"""Nonlinear resistive networks: deep resistive networks (DRN) of Scellier et al. 2024.

The state is the vector of node potentials (volts) of the free nodes, layer by layer; the energy
is the co-content of the circuit, which Kirchhoff's laws minimise (Kendall et al. 2020):

    E(V) = 1/2 sum_l sum_ij G_l[i, j] (V_{l-1, i} - V_{l, j})^2                      (resistors)
         + 1/2 sum_l sum_j [g+_{l,j} (V_{l,j} - V_b)^2 + g-_{l,j} (V_{l,j} + V_b)^2]   (bias sources)
         + sum_j D(V_j)                                                         (Shockley diodes)

with conductances ``G_l >= 0`` (siemens). The bias term above is ``bias="conductance"`` (each node
tied through two resistors to sources at ``+V_b`` and ``-V_b``); ``bias="current"`` replaces it by
a current source ``I_{l,j}`` (amperes, either sign) into each node, the energy term
``- sum_l I_l . V_l`` (as in Scellier et al. 2024's code).

Layer 0 holds voltage sources at ``input_gain * x`` and ``-input_gain * x`` (inputs duplicated and
negated). Each hidden layer has diode units: the first half cannot go below 0 V (a diode from the
node to ground, cathode at the node), the second half cannot go above 0 V (anode at the node). With
``diode="ideal"`` they are bounds of the state box; with ``diode="shockley"`` their co-content
``D`` (below) is added and the state is unbounded. The output layer is linear. The energy is
quadratic in each layer with no intra-layer coupling, so
:class:`~eqjax.solvers.BlockCoordinate` is exact coordinate descent for ideal diodes: each node
settles at the conductance-weighted average of its neighbours, clipped by its diode.

Bidirectional amplifiers (``amplifier_gain = A``) sit between free layers: the resistors from
layer ``l`` to ``l + 1`` see ``A V_l`` (forward voltage gain) and the amplifier draws ``A`` times its
output current from ``V_l`` (backward current gain), so the circuit still minimises the energy with
``V_{l-1, i}`` replaced by ``A V_{l-1, i}`` in those terms (Scellier et al. 2024).

Shockley diode ``I(V) = I_s (exp(V / (n V_T)) - 1)`` (current from anode to cathode for the
voltage ``V`` across it) has co-content ``D(V) = I_s (n V_T (exp(V / (n V_T)) - 1) - V)``.

Parameters: ``{"conductances": (G_1, .., G_L), "bias_plus": (g+_1, ..), "bias_minus": (g-_1, ..)}``
(``bias="conductance"``) or ``{"conductances": (G_1, ..), "bias_currents": (I_1, ..)}``
(``bias="current"``), with ``G_1`` of shape ``(2 n_in, n_1)``. Conductances must stay
non-negative (see :mod:`eqjax.analog.memristors` for updates that guarantee it); currents need not.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from eqjax.models._layered import Layered, checked_sizes
from eqjax.models.base import default_float

BOLTZMANN = 1.380649e-23  # J/K
ELEMENTARY_CHARGE = 1.602176634e-19  # C
SPICE_TEMPERATURE = 300.15  # K: SPICE's default TNOM of 27 degrees Celsius
DIODES = ("ideal", "shockley", "none")
BIASES = ("conductance", "current")
INITS = ("uniform", "kaiming")
THERMAL_VOLTAGE = BOLTZMANN * SPICE_TEMPERATURE / ELEMENTARY_CHARGE  # about 25.865 mV


class Resistive(Layered):
    """A layered resistive network with diode units. Build it with :func:`resistive`; all fields
    are static."""

    sizes: tuple[int, ...] = struct.field(pytree_node=False)
    input_gain: float = struct.field(pytree_node=False, default=1.0)
    bias_voltage: float = struct.field(pytree_node=False, default=1.0)
    diode: str = struct.field(pytree_node=False, default="ideal")
    saturation_current: float = struct.field(pytree_node=False, default=1e-14)
    emission_coefficient: float = struct.field(pytree_node=False, default=1.0)
    init_scale: float = struct.field(pytree_node=False, default=1.0)
    amplifier_gain: float | None = struct.field(pytree_node=False, default=None)
    bias: str = struct.field(pytree_node=False, default="conductance")
    init_scheme: str = struct.field(pytree_node=False, default="uniform")

    @property
    def conductance_keys(self) -> tuple[str, ...]:
        """The parameter entries that are conductances (must stay non-negative)."""
        return ("conductances", "bias_plus", "bias_minus") if self.bias == "conductance" else ("conductances",)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Node counts per layer, the input layer doubled: ``(2 n_in, n_1, ..., n_out)``."""
        return (2 * self.sizes[0],) + self.sizes[1:]

    def diode_signs(self, layer: int) -> np.ndarray:
        """Per node of free layer ``layer`` (0-based): +1 for units held at or above 0 V, -1 for
        units held at or below 0 V, 0 for linear units (the output layer)."""
        n = self.sizes[layer + 1]
        if layer == len(self.sizes) - 2 or self.diode == "none":
            return np.zeros(n, np.int8)
        return np.where(np.arange(n) < (n + 1) // 2, 1, -1).astype(np.int8)

    @property
    def bounds(self) -> tuple:
        """Per free layer, ``(lo, hi)`` arrays: ideal diodes as bounds, else unbounded."""
        result = []
        for layer in range(len(self.sizes) - 1):
            signs = self.diode_signs(layer)
            if self.diode != "ideal":
                signs = np.zeros_like(signs)
            lo = np.where(signs > 0, 0.0, -np.inf)
            hi = np.where(signs < 0, 0.0, np.inf)
            result.append((lo, hi))
        return tuple(result)

    def parameter_errors(self, params: dict) -> dict:
        """Conductances must be non-negative (a resistor cannot have negative conductance)."""
        negative = jnp.stack([jnp.any(g < 0) for k in self.conductance_keys for g in params[k]])
        return {f"negative conductances in params[{list(self.conductance_keys)}]: a resistive network "
                "needs conductances >= 0 (clip them, e.g. with eqjax.analog.memristors.conductance_bounds)":
                jnp.any(negative)}

    def init(self, key: jax.Array, dtype=None) -> dict:
        """Random non-negative conductances for the layer from ``n_in`` nodes:

        - ``init_scheme="uniform"``: ``G ~ U(0, 2 a)`` with ``a = init_scale / n_in`` (a node then
          sees a total input conductance of about ``init_scale``);
        - ``init_scheme="kaiming"``: ``G = max(0, U(-a, a))`` with ``a = init_scale / sqrt(n_in)``
          (half the resistors absent), the initialisation of Scellier et al. 2024's code.

        Bias conductances ``U(0, 2 init_scale / n_in)``; bias currents zero. ``dtype`` defaults to
        JAX's default float.
        """
        dtype = default_float() if dtype is None else dtype
        keys = jax.random.split(key, 3 * (len(self.sizes) - 1))
        params = {name: [] for name in self.conductance_keys}
        if self.bias == "current":
            params["bias_currents"] = []
        for l, (n_in, n_out) in enumerate(zip(self.layer_sizes[:-1], self.layer_sizes[1:])):
            k_g, k_p, k_m = keys[3 * l : 3 * l + 3]
            scale = 2 * self.init_scale / n_in
            if self.init_scheme == "kaiming":
                a = self.init_scale / math.sqrt(n_in)
                g = jnp.maximum(jax.random.uniform(k_g, (n_in, n_out), dtype, -a, a), 0.0)
            else:
                g = jax.random.uniform(k_g, (n_in, n_out), dtype, 0, scale)
            params["conductances"].append(g)
            if self.bias == "current":
                params["bias_currents"].append(jnp.zeros((n_out,), dtype))
            else:
                params["bias_plus"].append(jax.random.uniform(k_p, (n_out,), dtype, 0, scale))
                params["bias_minus"].append(jax.random.uniform(k_m, (n_out,), dtype, 0, scale))
        return {k: tuple(v) for k, v in params.items()}

    def init_state(self, x: jax.Array) -> tuple:
        """All free nodes at 0 V, in ``x``'s dtype."""
        return tuple(jnp.zeros((n,), x.dtype) for n in self.sizes[1:])

    def input_voltages(self, x: jax.Array) -> jax.Array:
        """Voltages of the input sources: ``(input_gain * x, -input_gain * x)``, shape ``(2 n_in,)``."""
        return self.input_gain * jnp.concatenate([x, -x])

    def energy(self, params: dict, state: tuple, x: jax.Array) -> jax.Array:
        """Co-content (power/2 of the resistors plus diode co-contents) of one example; a scalar."""
        voltages = (self.input_voltages(x),) + tuple(state)
        total = 0.0
        for l, g in enumerate(params["conductances"]):
            a, b = voltages[l], voltages[l + 1]
            if l > 0 and self.amplifier_gain is not None:
                a = self.amplifier_gain * a  # the resistors see the amplifier's output
            total += 0.5 * (jnp.dot(a * a, g.sum(axis=1)) + jnp.dot(b * b, g.sum(axis=0))) - a @ g @ b
        if self.bias == "current":
            total -= sum(jnp.dot(i, v) for i, v in zip(params["bias_currents"], state))
        else:
            vb = self.bias_voltage
            for v, gp, gm in zip(state, params["bias_plus"], params["bias_minus"]):
                total += 0.5 * (jnp.dot(gp, (v - vb) ** 2) + jnp.dot(gm, (v + vb) ** 2))
        if self.diode == "shockley":
            for layer, v in enumerate(state):
                signs = jnp.asarray(self.diode_signs(layer), v.dtype)
                total += jnp.sum(jnp.where(signs != 0, self._diode_cocontent(-signs * v), 0.0))
        return total

    def _diode_cocontent(self, v):
        """Co-content of a Shockley diode with ``v`` across it (anode minus cathode)."""
        scale = self.emission_coefficient * THERMAL_VOLTAGE
        return self.saturation_current * (scale * jnp.expm1(v / scale) - v)

    def output(self, state: tuple) -> jax.Array:
        """Output node voltages of one example, shape ``(n_out,)``."""
        return state[-1]


def conductance_mask(params: dict) -> dict:
    """``params``' structure with ``True`` on conductances and ``False`` on bias currents: the
    ``mask`` for ``optax.masked`` so that device models and clipping touch conductances only."""
    return {name: jax.tree.map(lambda _: name != "bias_currents", value) for name, value in params.items()}


def resistive(
    sizes,
    input_gain: float = 1.0,
    bias_voltage: float = 1.0,
    diode: str = "ideal",
    saturation_current: float = 1e-14,
    emission_coefficient: float = 1.0,
    init_scale: float = 1.0,
    amplifier_gain: float | None = None,
    bias: str = "conductance",
    init_scheme: str = "uniform",
) -> Resistive:
    """A deep resistive network (Scellier et al. 2024).

    Args:
      sizes: ``(n_in, h_1, ..., n_out)``; the circuit has ``2 n_in`` input sources.
      input_gain: volts per unit of input (inputs are duplicated and negated).
      bias_voltage: the two bias sources sit at ``+bias_voltage`` and ``-bias_voltage``.
      diode: ``"ideal"`` (bounds at 0 V), ``"shockley"`` (exponential diodes, SPICE's model
        ``D(IS=saturation_current, N=emission_coefficient)`` at 27 degrees Celsius) or ``"none"``
        (a linear network).
      init_scale: scale of the initial conductances (see :meth:`Resistive.init`).
      amplifier_gain: gain of bidirectional amplifiers between free layers (``None``: none).
      bias: ``"conductance"`` (resistors to the bias sources) or ``"current"`` (a current source
        into each free node).
      init_scheme: ``"uniform"`` or ``"kaiming"`` (see :meth:`Resistive.init`).
    """
    sizes = checked_sizes(sizes)
    if diode not in DIODES:
        raise ValueError(f"diode must be one of {DIODES}, got {diode!r}")
    if bias not in BIASES:
        raise ValueError(f"bias must be one of {BIASES}, got {bias!r}")
    if init_scheme not in INITS:
        raise ValueError(f"init_scheme must be one of {INITS}, got {init_scheme!r}")
    for name, value in (("input_gain", input_gain), ("saturation_current", saturation_current),
                        ("emission_coefficient", emission_coefficient), ("init_scale", init_scale),
                        ("amplifier_gain", 1.0 if amplifier_gain is None else amplifier_gain)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    return Resistive(
        sizes=sizes, input_gain=float(input_gain),
        bias_voltage=float(bias_voltage), diode=diode, saturation_current=float(saturation_current),
        emission_coefficient=float(emission_coefficient), init_scale=float(init_scale),
        amplifier_gain=None if amplifier_gain is None else float(amplifier_gain),
        bias=bias, init_scheme=init_scheme,
    )
