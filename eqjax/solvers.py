"""Relaxation solvers: find a minimum of ``F`` over the state inside a box.

A solver is a frozen dataclass. Its tolerances and step sizes are traced pytree leaves (changing them
never recompiles, ``jax.vmap`` over them works); ``max_steps`` and ``check_every`` (how often the
tolerance is tested) are static. ``solver.update(F, s, bounds)`` applies one iteration of its map
``T``; :func:`iterate` is the single loop owner that runs ``T`` in a ``jax.lax.while_loop`` until
``max|T(s) - s| < tol`` or ``max_steps`` is reached.

``F`` is a function of the state alone (parameters, input, label and ``beta`` bound). The update
maps work on one example or on a batch (leading axis) alike; :func:`relax_batch` relaxes a whole
batch in one loop with ``F`` the sum of the examples' energies (examples do not interact, so its
gradient is each example's own).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from eqjax.costs import total_energy


@struct.dataclass
class Equilibrium:
    """The result of a relaxation (batched when returned by :func:`eqjax.relax`).

    Attributes:
      state: the state ``s`` returned (tuple of per-layer arrays).
      num_steps: number of updates applied to reach ``s`` (int32; the batch's count).
      residual: the last update's size ``max|s_k - s_{k-1}|`` per example; for a contractive
        update ``T`` it bounds the returned state's own ``max|T(s) - s|``.
      converged: ``residual < tol``; ``False`` means ``max_steps`` was hit first.
    """

    state: tuple
    num_steps: jax.Array
    residual: jax.Array
    converged: jax.Array


def project(state: tuple, bounds) -> tuple:
    """Clip each layer into its ``(lo, hi)`` box, keeping the state's dtype (bounds given as
    float64 NumPy arrays must not promote a float32 state when x64 is enabled)."""
    return tuple(jnp.clip(s, jnp.asarray(lo, s.dtype), jnp.asarray(hi, s.dtype)) for s, (lo, hi) in zip(state, bounds))


def max_abs_difference(a, b) -> jax.Array:
    """``max |a - b|`` over all leaves of two pytrees of the same structure."""
    diffs = jax.tree.map(lambda u, v: jnp.max(jnp.abs(u - v)), a, b)
    return jnp.max(jnp.stack(jax.tree.leaves(diffs)))


def per_example_max_abs_difference(a, b) -> jax.Array:
    """``max |a - b|`` per example (leading axis) over all leaves of two batched pytrees."""
    diffs = jax.tree.map(lambda u, v: jnp.max(jnp.abs(u - v).reshape(u.shape[0], -1), axis=1), a, b)
    return jnp.max(jnp.stack(jax.tree.leaves(diffs)), axis=0)


def iterate(update: Callable, state0: tuple, tol, max_steps: int, check_every: int = 1) -> Equilibrium:
    """Run ``s <- update(s)`` on a batched state until every example's last update
    ``max|s_k - s_{k-1}|`` is below ``tol``, or ``max_steps`` updates.

    At least one update is applied (when ``max_steps >= 1``), so a nudged phase started from the
    free equilibrium always feels its nudge. The whole batch moves together (on SIMD hardware a
    batched loop computes every example anyway; freezing converged ones would only add selects),
    so ``num_steps`` is the batch's count. ``max_steps`` is static; ``tol`` is traced (``tol = 0``
    runs exactly ``max_steps``).

    ``check_every`` (static) measures the update size and tests it only after every
    ``check_every``-th update and after the last one; the updates in between skip the test. The
    test is not free: on a 2-core CPU the reduction over the state, and the copy of the previous
    state that it needs, cost about a quarter of a DHN-1H block-coordinate sweep. With
    ``check_every >= max_steps`` the loop runs exactly ``max_steps`` updates and measures only the
    last one (the papers' fixed-step setting, at its lowest cost). The states visited do not
    depend on ``check_every``; only the stopping point does: the first tested update below
    ``tol`` (for a contractive update, at most ``check_every - 1`` updates after the first update
    below ``tol``).
    """
    if max_steps == 0:
        residual = per_example_max_abs_difference(update(state0), state0)
        steps = jnp.zeros(residual.shape, jnp.int32)
        return Equilibrium(state=state0, num_steps=steps, residual=residual, converged=residual < tol)
    every = min(check_every, max_steps)

    def block(state, size):
        """``size`` updates (static, >= 1); the size of the last one per example."""
        if size > 1:
            state = jax.lax.fori_loop(0, size - 1, lambda _, s: update(s), state)
        following = update(state)
        return following, per_example_max_abs_difference(following, state)

    def blocks_while_unconverged(carry, size):
        def cond(carry):
            _, residual, k = carry
            return (jnp.max(residual) >= tol) & (k + size <= max_steps)

        def body(carry):
            state, _, k = carry
            return (*block(state, size), k + size)

        return jax.lax.while_loop(cond, body, carry)

    carry = (*block(state0, every), jnp.asarray(every, jnp.int32))
    if 2 * every <= max_steps:  # room for a second full block
        carry = blocks_while_unconverged(carry, every)
    if max_steps % every:  # one shorter block reaches max_steps exactly
        carry = blocks_while_unconverged(carry, max_steps % every)
    state, residual, steps = carry
    return Equilibrium(
        state=state,
        num_steps=jnp.broadcast_to(steps, residual.shape),
        residual=residual,
        converged=residual < tol,
    )


def _check_step_counts(max_steps, check_every):
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"max_steps must be a non-negative int, got {max_steps!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be a positive int, got {check_every!r}")


def _is_concrete_number(value) -> bool:
    return isinstance(value, (int, float))


@struct.dataclass
class GradientDescent:
    """Projected Euler steps on ``ds/dt = -dF/ds``: ``s <- clip(s - step_size * dF/ds, lo, hi)``.

    For ``step_size < 1/L`` (``L`` the Lipschitz constant of ``dF/ds``) ``F`` never increases.
    ``step_size`` and ``tol`` are traced; ``max_steps`` and ``check_every`` (how often the
    tolerance is tested, see :func:`iterate`) are static.
    """

    step_size: float = 0.5
    tol: float = 1e-4
    max_steps: int = struct.field(pytree_node=False, default=100)
    check_every: int = struct.field(pytree_node=False, default=1)

    def __post_init__(self):
        _check_step_counts(self.max_steps, self.check_every)
        if _is_concrete_number(self.step_size) and not self.step_size > 0:
            raise ValueError(f"step_size must be positive, got {self.step_size!r}")

    def update(self, F: Callable, state: tuple, bounds) -> tuple:
        """One projected gradient step on ``F`` (any state pytree, one example or a batch)."""
        grad = jax.grad(F)(state)
        return project(tuple(s - self.step_size * g for s, g in zip(state, grad)), bounds)

    def solve(self, F: Callable, state0: tuple, bounds) -> Equilibrium:
        """Iterate :meth:`update` from ``state0`` (see :func:`iterate`)."""
        return iterate(lambda s: self.update(F, s, bounds), state0, self.tol, self.max_steps, self.check_every)


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


@struct.dataclass
class BlockCoordinate:
    """Exact block-coordinate descent: minimise the even layers given the odd ones, then the odd.

    Layers are numbered from the input (layer 0, clamped), so for ``(n_in, h, n_out)`` the output
    (layer 2) is updated first, then the hidden layer. One step is one such sweep. Exact for
    energies quadratic in each layer without intra-layer coupling (bilinear Hopfield, resistive
    networks) with a quadratic cost (Scellier et al. 2023, 2024). ``tol`` is traced; ``max_steps``
    and ``check_every`` (how often the tolerance is tested, see :func:`iterate`) are static.
    """

    tol: float = 1e-4
    max_steps: int = struct.field(pytree_node=False, default=15)
    check_every: int = struct.field(pytree_node=False, default=1)

    def __post_init__(self):
        _check_step_counts(self.max_steps, self.check_every)

    def update(self, F: Callable, state: tuple, bounds) -> tuple:
        """One sweep: the even layers, then the odd layers, each minimised exactly."""
        num_layers = len(state)
        even = tuple(i for i in range(num_layers) if (i + 1) % 2 == 0)
        odd = tuple(i for i in range(num_layers) if (i + 1) % 2 == 1)
        for group in (even, odd):
            if group:
                state = _layer_newton_step(F, state, group, bounds)
        return state

    def solve(self, F: Callable, state0: tuple, bounds) -> Equilibrium:
        """Iterate :meth:`update` from ``state0`` (see :func:`iterate`)."""
        return iterate(lambda s: self.update(F, s, bounds), state0, self.tol, self.max_steps, self.check_every)


def input_drive_batch(model, params, x):
    """The model's input field for a batch, ``(B, n_1)``, or ``None`` if the model has none.

    Relaxations of the same batch (free and nudged phases) share it: the input projection, the
    largest product of a layered net, is then computed once per batch.
    """
    input_drive = getattr(model, "input_drive", None)
    return None if input_drive is None else jax.vmap(input_drive, in_axes=(None, 0))(params, x)


def relax_batch(model, cost, solver, params, x, y, beta, state0=None, drive=None) -> Equilibrium:
    """Relax a batch without input checks (the jit-friendly core of :func:`eqjax.relax`).

    Shapes: ``x`` ``(B, n_in)``; ``y`` ``(B,)`` or ``None``; ``beta`` a scalar; ``state0`` a batched
    state or ``None`` (all-zero start); ``drive`` the batch's :func:`input_drive_batch` (computed
    here, outside the loop, when ``None``). The batch relaxes in one loop (see :func:`iterate`).
    Models may lay their parameters out for the loop with a ``product_layout(params)`` method
    (same energy, faster products; see ``Hopfield.product_layout``).
    Returns a batched :class:`Equilibrium`.
    """
    F = total_energy(model, cost)
    if drive is None:
        drive = input_drive_batch(model, params, x)
    if state0 is None:
        state0 = jax.vmap(model.init_state)(x)
    product_layout = getattr(model, "product_layout", None)
    if product_layout is not None:
        params = product_layout(params)

    def batch_energy(states):
        one = lambda s, x_i, y_i, d_i: F(params, s, x_i, y_i, beta, d_i)
        return jnp.sum(jax.vmap(one)(states, x, y, drive))

    return solver.solve(batch_energy, state0, model.bounds)
