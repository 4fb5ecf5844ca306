"""Relaxation solvers: find a minimum of ``F`` over the state inside a box.

Every solver subclasses :class:`Solver`, a frozen pytree dataclass: its tolerances and step sizes
are traced leaves (changing them never recompiles, ``jax.vmap`` over them works); ``max_steps``
and ``check_every`` are static. A solver says how to take one step; :func:`eqjax.loop.iterate`
owns the loop (stopping test, status, NaN-safety) for all of them.

``F`` is the total energy of a batch as a function of the batched state alone (parameters, input,
label and phase bound); see :func:`eqjax.relaxation.relax_batch`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from eqjax._checks import shown
from eqjax.equilibrium import Equilibrium
from eqjax.loop import iterate


def _is_unbounded(lo, hi) -> bool:
    """Static test: ``(lo, hi)`` are Python/NumPy values and all infinite (no clipping needed)."""
    if isinstance(lo, jax.Array) or isinstance(hi, jax.Array):
        return False
    return bool(np.all(np.isneginf(lo)) and np.all(np.isposinf(hi)))


def project(state, bounds):
    """Clip each state leaf into its ``(lo, hi)`` box, keeping the leaf's dtype (float64 NumPy
    bounds must not promote a float32 state under x64). Unbounded leaves pass through untouched,
    so complex states work for unbounded models; a complex state in a finite box raises
    ``TypeError`` (a box is not holomorphic)."""

    def clip(s, box):
        lo, hi = box
        if _is_unbounded(lo, hi):
            return s
        if jnp.iscomplexobj(s):
            raise TypeError("a complex state needs unbounded layers (clipping to a box is not "
                            "holomorphic); use a model whose bounds are (-inf, inf)")
        return jnp.clip(s, jnp.asarray(lo, s.dtype), jnp.asarray(hi, s.dtype))

    return tuple(clip(s, box) for s, box in zip(state, bounds))


def _state_gradient(F: Callable, state):
    """``dF/ds``; for complex states the holomorphic derivative (Laborieux & Zenke 2022)."""
    holomorphic = any(jnp.iscomplexobj(s) for s in jax.tree.leaves(state))
    return jax.grad(F, holomorphic=holomorphic)(state)


class Solver(struct.PyTreeNode, abc.ABC):
    """The interface every relaxation solver implements.

    Subclasses are frozen pytree dataclasses (fields are traced leaves unless declared with
    ``struct.field(pytree_node=False)``) and must define the fields

    - ``tol`` (traced): stop when every example's last tested update ``max|s_k - s_{k-1}|`` is below it;
    - ``max_steps`` (static int >= 0) and ``check_every`` (static int >= 1, how often the tolerance
      is tested; see :func:`eqjax.loop.iterate`);

    and the method :meth:`step`. :meth:`init` creates the solver's own state (momentum, history, a
    PRNG key, a temperature...), ``None`` by default. :meth:`solve` is written once, here.

    The step must treat the examples of the batch independently (as the built-in solvers do): the
    loop freezes an example that goes non-finite and relies on it not affecting the others.

    Values (``tol >= 0``, a positive step size...) are checked by :meth:`errors` where the solver is
    used (eagerly at the API boundary, inside jit with ``throw=True``), not at construction, so
    that JAX can rebuild solvers with placeholder or zero leaves (``jax.grad``, ``in_axes`` trees).
    """

    def __post_init__(self):
        fields = {f.name: f for f in dataclasses.fields(self)}
        for name in ("tol", "max_steps", "check_every"):
            if name not in fields:
                raise TypeError(f"{type(self).__name__} must define the field {name!r} (see eqjax.solvers.Solver)")
        for name in ("max_steps", "check_every"):
            if fields[name].metadata.get("pytree_node", True):
                raise TypeError(f"{type(self).__name__}.{name} decides the loop's structure: declare it static, "
                                f"with struct.field(pytree_node=False)")
        steps, every = self.max_steps, self.check_every
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"max_steps must be a non-negative int, got {steps!r}")
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"check_every must be a positive int, got {every!r}")

    def errors(self) -> dict:
        """``{message: violated}`` for the solver's traced hyperparameters (``violated`` a bool
        array): checked eagerly on concrete values and, with ``throw=True``, inside jit."""
        return {f"tol must be a non-negative number{shown(self.tol)}": ~(jnp.asarray(self.tol) >= 0)}

    def init(self, F: Callable, state0, bounds, key) -> Any:
        """The solver's own state before the first step (default ``None``). ``key`` is a PRNG key
        or ``None``."""
        return None

    @abc.abstractmethod
    def step(self, F: Callable, state, solver_state, bounds) -> tuple:
        """One update: ``(state, solver_state) -> (next_state, next_solver_state)``. ``state`` is a
        batched pytree; the result must stay inside ``bounds`` (see :func:`project`)."""

    def solve(self, F: Callable, state0, bounds, key=None) -> Equilibrium:
        """Relax from ``state0`` with :func:`eqjax.loop.iterate`."""
        return iterate(self, F, state0, bounds, key)


class GradientDescent(Solver):
    """Projected Euler steps on ``ds/dt = -dF/ds``: ``s <- clip(s - step_size * dF/ds, lo, hi)``.

    For ``step_size < 1/L`` (``L`` the Lipschitz constant of ``dF/ds``) ``F`` never increases.
    ``step_size`` and ``tol`` are traced; ``max_steps`` and ``check_every`` static. Complex states
    (a complex nudge on an unbounded model) follow the holomorphic gradient.
    """

    step_size: float = 0.5
    tol: float = 1e-4
    max_steps: int = struct.field(pytree_node=False, default=100)
    check_every: int = struct.field(pytree_node=False, default=1)

    def errors(self) -> dict:
        size = jnp.asarray(self.step_size)
        return {**super().errors(),
                f"step_size must be a positive finite number{shown(self.step_size)}":
                    ~((size > 0) & jnp.isfinite(size))}

    def step(self, F, state, solver_state, bounds):
        grad = _state_gradient(F, state)
        return project(tuple(s - self.step_size * g for s, g in zip(state, grad)), bounds), solver_state


def _layer_newton_step(F: Callable, state: tuple, layers: tuple[int, ...], bounds) -> tuple:
    """Minimise ``F`` over the given layers jointly, the others fixed, for per-layer quadratics.

    The layers must not interact with each other (e.g. all even layers). For each unit the step is
    ``s - g / h`` with ``g = dF/ds`` and ``h = d2F/ds2`` (the diagonal curvature, obtained as the
    Hessian-vector product with a vector of ones, exact when layers have no intra-layer coupling),
    then clipped to the box. For the bilinear energy with a quadratic cost this is the exact
    minimiser (Scellier et al. 2023); for a non-quadratic cost it is a diagonal Newton step.
    Curvatures that are not positive fall back to 1 (a plain ``s - dF/ds`` step).
    """

    def restricted(sub):
        full = list(state)
        for i, s in zip(layers, sub):
            full[i] = s
        return F(tuple(full))

    sub = tuple(state[i] for i in layers)
    grad, curvature = jax.jvp(jax.grad(restricted), (sub,), (jax.tree.map(jnp.ones_like, sub),))
    new_sub = project(
        tuple(s - g / jnp.where(h > 0, h, 1.0) for s, g, h in zip(sub, grad, curvature)),
        tuple(bounds[i] for i in layers),
    )
    full = list(state)
    for i, s in zip(layers, new_sub):
        full[i] = s
    return tuple(full)


class BlockCoordinate(Solver):
    """Exact block-coordinate descent: minimise the even layers given the odd ones, then the odd.

    Layers are numbered from the input (layer 0, clamped), so for ``(n_in, h, n_out)`` the output
    (layer 2) is updated first, then the hidden layer. One step is one such sweep. Exact for
    energies quadratic in each layer without intra-layer coupling (bilinear Hopfield, resistive
    networks) with a quadratic cost (Scellier et al. 2023, 2024). Real states only. ``tol`` is
    traced; ``max_steps`` and ``check_every`` static.
    """

    tol: float = 1e-4
    max_steps: int = struct.field(pytree_node=False, default=15)
    check_every: int = struct.field(pytree_node=False, default=1)

    def step(self, F, state, solver_state, bounds):
        if any(jnp.iscomplexobj(s) for s in state):
            raise TypeError("BlockCoordinate works on real states; relax complex states with GradientDescent")
        num_layers = len(state)
        even = tuple(i for i in range(num_layers) if (i + 1) % 2 == 0)
        odd = tuple(i for i in range(num_layers) if (i + 1) % 2 == 1)
        for group in (even, odd):
            if group:
                state = _layer_newton_step(F, state, group, bounds)
        return state, solver_state

