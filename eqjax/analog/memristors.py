"""Memristor device models as optax transformations.

Chain them after an optimizer, e.g. ``optax.chain(optax.sgd(0.01), memristor(...))``: the
optimizer proposes an update ``u`` (already scaled, the amount to add to each conductance) and the
device turns it into what a crossbar can actually write. Every transformation here needs
``params`` (the current conductances) in ``update``; all parameters of the pytree are treated as
conductances in siemens (wrap with ``optax.masked`` to limit them to some leaves).

Physical picture (e.g. Burr et al. 2017; the nonlinear model of Chen et al. 2015 "NeuroSim"):

- a conductance lives in ``[g_min, g_max]`` and changes by whole programming pulses;
- a pulse's effect depends on the present conductance (nonlinear) and differs between
  potentiation and depression (asymmetric);
- each write is noisy (cycle-to-cycle), each device has its own gain (device-to-device);
- reading a conductance is noisy too: :func:`read_noise` draws the conductances one forward pass
  sees (the training step does not apply it; call it on the parameters you relax with).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _check_range(g_min, g_max):
    if not (0 <= g_min < g_max):
        raise ValueError(f"need 0 <= g_min < g_max, got g_min={g_min}, g_max={g_max}")


def _require_params(params):
    if params is None:
        raise ValueError("memristor transformations need the current conductances: pass params "
                         "to update() (optax.chain forwards them)")


def conductance_bounds(g_min: float = 0.0, g_max: float = jnp.inf) -> optax.GradientTransformation:
    """Clip the written conductance to ``[g_min, g_max]``: ``u <- clip(g + u) - g``.

    With ``g_min = 0`` conductances never go negative, whatever the estimator proposes.
    """
    _check_range(g_min, g_max)

    def update(updates, state, params=None):
        _require_params(params)
        return jax.tree.map(lambda u, g: jnp.clip(g + u, g_min, g_max) - g, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class NoiseState(NamedTuple):
    """PRNG key of :func:`write_noise` and stochastic :func:`pulse_quantization`, split at every
    update."""

    key: jax.Array


def pulse_quantization(g_min: float, g_max: float, num_levels: int, stochastic: bool = False,
                       seed: int = 0) -> optax.GradientTransformation:
    """Turn each update into a whole number of pulses of size ``(g_max - g_min) / (num_levels - 1)``
    (a device with ``num_levels`` distinguishable conductances).

    ``stochastic=False``: round to the nearest pulse; updates smaller than half a pulse are lost,
    as on hardware with deterministic programming. ``stochastic=True``: round up with probability
    equal to the fractional part (stochastic pulse programming, Gokmen & Vlasov 2016), so the
    expected update is the requested one and small updates survive on average.
    """
    _check_range(g_min, g_max)
    if int(num_levels) != num_levels or num_levels < 2:
        raise ValueError(f"num_levels must be an integer >= 2, got {num_levels}")
    step = (g_max - g_min) / (num_levels - 1)

    def init(params):
        return NoiseState(key=jax.random.key(seed)) if stochastic else optax.EmptyState()

    def update(updates, state, params=None):
        if not stochastic:
            return jax.tree.map(lambda u: jnp.round(u / step) * step, updates), state
        key, sub = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(sub, len(leaves))
        pulses = [jnp.floor(u / step + jax.random.uniform(k, u.shape, u.dtype)) * step
                  for u, k in zip(leaves, keys)]
        return jax.tree.unflatten(treedef, pulses), NoiseState(key=key)

    return optax.GradientTransformation(init, update)


def nonlinear_response(g_min: float, g_max: float, potentiation: float = 0.0,
                       depression: float = 0.0) -> optax.GradientTransformation:
    """Scale each update by the device's state-dependent pulse efficiency.

    Potentiation (``u > 0``) is damped as the conductance approaches ``g_max``:
    ``exp(-potentiation * (g - g_min) / (g_max - g_min))``; depression (``u < 0``) as it approaches
    ``g_min``: ``exp(-depression * (g_max - g) / (g_max - g_min))``. Zero coefficients give a
    linear device; different ones an asymmetric device.
    """
    _check_range(g_min, g_max)
    span = g_max - g_min

    def scale(u, g):
        up = jnp.exp(-potentiation * (g - g_min) / span)
        down = jnp.exp(-depression * (g_max - g) / span)
        return u * jnp.where(u > 0, up, down)

    def update(updates, state, params=None):
        _require_params(params)
        return jax.tree.map(scale, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def write_noise(std: float, seed: int = 0) -> optax.GradientTransformation:
    """Cycle-to-cycle write noise: ``u <- u * (1 + std * N(0, 1))``, fresh for every write."""
    if std < 0:
        raise ValueError(f"std must be non-negative, got {std}")

    def init(params):
        return NoiseState(key=jax.random.key(seed))

    def update(updates, state, params=None):
        key, sub = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(sub, len(leaves))
        noisy = [u * (1 + std * jax.random.normal(k, u.shape, u.dtype)) for u, k in zip(leaves, keys)]
        return jax.tree.unflatten(treedef, noisy), NoiseState(key=key)

    return optax.GradientTransformation(init, update)


class VariationState(NamedTuple):
    """Per-device gains of :func:`device_variation`, fixed at ``init``."""

    gains: optax.Updates


def device_variation(std: float, seed: int = 0) -> optax.GradientTransformation:
    """Device-to-device variation: each device's updates are multiplied by its own gain
    ``max(0, 1 + std * N(0, 1))``, drawn once at ``init`` and kept in the state."""
    if std < 0:
        raise ValueError(f"std must be non-negative, got {std}")

    def init(params):
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        gains = [jnp.maximum(0.0, 1 + std * jax.random.normal(k, p.shape, p.dtype))
                 for p, k in zip(leaves, keys)]
        return VariationState(gains=jax.tree.unflatten(treedef, gains))

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, a: u * a, updates, state.gains), state

    return optax.GradientTransformation(init, update)


def memristor(g_min: float, g_max: float, num_levels: int | None = None, potentiation: float = 0.0,
              depression: float = 0.0, write_std: float = 0.0, device_std: float = 0.0,
              stochastic_pulses: bool = False, seed: int = 0) -> optax.GradientTransformation:
    """A whole device model: pulses (quantization, optionally stochastic), nonlinear asymmetric
    response, device-to-device and cycle-to-cycle variation, then the conductance range. Chain it
    after an optimizer. The range must be finite with ``0 <= g_min < g_max``; ``potentiation`` and
    ``depression`` finite and ``>= 0``; the standard deviations finite and ``>= 0``."""
    numbers = dict(g_min=g_min, g_max=g_max, potentiation=potentiation, depression=depression, write_std=write_std,
                   device_std=device_std)
    for name, value in numbers.items():
        if not (np.isfinite(value) and (name == "g_max" or value >= 0)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not g_min < g_max:
        raise ValueError(f"the conductance range needs g_min < g_max, got [{g_min}, {g_max}]")
    parts = []
    if num_levels is not None:
        parts.append(pulse_quantization(g_min, g_max, num_levels, stochastic_pulses, seed + 2))
    if potentiation or depression:
        parts.append(nonlinear_response(g_min, g_max, potentiation, depression))
    if device_std:
        parts.append(device_variation(device_std, seed))
    if write_std:
        parts.append(write_noise(write_std, seed + 1))
    parts.append(conductance_bounds(g_min, g_max))
    return optax.chain(*parts)


def read_noise(params, key: jax.Array, std: float):
    """Conductances as read in one forward pass: ``g * (1 + std * N(0, 1))``, clipped at 0."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    noisy = [jnp.maximum(0.0, g * (1 + std * jax.random.normal(k, g.shape, g.dtype)))
             for g, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)
