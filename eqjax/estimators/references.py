"""Reference gradients EP is checked against: implicit differentiation at the free equilibrium,
backpropagation through the unrolled relaxation, and central finite differences of the loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.flatten_util import ravel_pytree

from eqjax.estimators.base import Estimator
from eqjax.estimators.estimate import Estimate
from eqjax.loop import unroll
from eqjax.phases import Free
from eqjax._relaxation import relax_unchecked, total_energy


def _free_units(state, bounds):
    """Mask (as floats) of units strictly inside their box; units at a bound are pinned."""
    return tuple(((s > lo) & (s < hi)).astype(s.dtype) for s, (lo, hi) in zip(state, bounds))


class ImplicitDiff(Estimator):
    """Reference gradient by the implicit function theorem at the free equilibrium ``s0``.

    ``dL/dparams = -(d2E/dparams ds)^T v`` with ``H v = dC/ds``, ``H = d2E/ds2`` at ``s0``. Units
    pinned at a bound of their box do not move with the parameters, so they are removed from the
    solve (active set). ``method="dense"`` builds ``H`` per example (small nets); ``"cg"`` solves with
    Hessian-vector products by conjugate gradients (``cg_tol`` traced, ``cg_max_steps`` static).
    Assumes ``H`` is positive definite on the free units (a strict local minimum); its estimate's
    ``extras`` carry ``linear_solve_residual`` (per example, relative; its batch mean reaches the
    training metrics) so a failed solve is visible.
    """

    method: str = struct.field(pytree_node=False, default="dense")
    cg_tol: float = 1e-10
    cg_max_steps: int = struct.field(pytree_node=False, default=1000)

    def __post_init__(self):
        if self.method not in ("dense", "cg"):
            raise ValueError(f"method must be 'dense' or 'cg', got {self.method!r}")

    def _adjoint(self, model, cost, params, state, x, y):
        """Solve ``H_ff v_f = dC/ds_f`` for one example; ``v = 0`` on pinned units.

        Returns ``(v, relative_residual)`` with ``relative_residual = ||A v - rhs|| / ||rhs||``.
        """
        mask = _free_units(state, model.bounds)
        dcost = jax.grad(lambda s: cost(model.output(s), y))(state)
        grad_energy = jax.grad(lambda s: model.energy(params, s, x))
        flat_mask, unravel = ravel_pytree(mask)
        flat_state, _ = ravel_pytree(state)
        rhs = flat_mask * ravel_pytree(dcost)[0]
        if self.method == "dense":
            hessian = jax.jacfwd(lambda f: ravel_pytree(grad_energy(unravel(f)))[0])(flat_state)
            system = flat_mask[:, None] * hessian * flat_mask[None, :] + jnp.diag(1 - flat_mask)
            matvec = lambda v: system @ v
            solution = jnp.linalg.solve(system, rhs)
        else:

            def matvec(v):
                hv = jax.jvp(grad_energy, (state,), (unravel(flat_mask * v),))[1]
                return flat_mask * ravel_pytree(hv)[0] + (1 - flat_mask) * v

            solution, _ = jax.scipy.sparse.linalg.cg(
                matvec, rhs, tol=self.cg_tol, maxiter=self.cg_max_steps
            )
        scale = jnp.maximum(jnp.linalg.norm(rhs), jnp.finfo(rhs.dtype).tiny)
        return unravel(solution), jnp.linalg.norm(matvec(solution) - rhs) / scale

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        """Relax the free phase with ``solver``, then solve the adjoint system per example."""
        free = relax_unchecked(model, cost, solver, params, x, None, Free(), state0, key)
        state = jax.lax.stop_gradient(free.state)
        adjoint, solve_residual = jax.vmap(self._adjoint, in_axes=(None, None, None, 0, 0, 0))(
            model, cost, params, state, x, y
        )
        adjoint = jax.lax.stop_gradient(adjoint)

        def mixed(p):
            def one(s, x_i, v):
                grad_s = jax.grad(model.energy, argnums=1)(p, s, x_i)
                return sum(jnp.vdot(g, w) for g, w in zip(grad_s, v))

            return -jnp.mean(jax.vmap(one)(state, x, adjoint))

        estimate = Estimate.at_free_phase(model, cost, free, y)
        return jax.grad(mixed)(params), estimate.replace(extras={"linear_solve_residual": solve_residual})


class BPTT(Estimator):
    """Reference gradient by backpropagation through ``num_steps`` unrolled solver updates.

    The free phase starts from ``state0`` (``model.init_state`` by default) and applies the solver's step
    exactly ``num_steps`` times (static; ``tol`` is ignored); ``jax.grad`` differentiates through
    it (Ernoult et al. 2019). Memory grows linearly with ``num_steps``.
    """

    num_steps: int = struct.field(pytree_node=False, default=100)

    def __post_init__(self):
        steps = self.num_steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {steps!r}")

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        """Unroll ``solver.step`` ``num_steps`` times and differentiate the batch-mean loss."""
        start = jax.vmap(model.init_state)(x) if state0 is None else state0

        def loss(p):
            F = total_energy(model, cost, Free(), model.prepare(p, x), x, None)
            free = unroll(solver, F, start, model.bounds, self.num_steps, key)
            outputs = jax.vmap(model.output)(free.state)
            return jnp.mean(jax.vmap(cost)(outputs, y)), free

        grads, free = jax.grad(loss, has_aux=True)(params)
        return grads, Estimate.at_free_phase(model, cost, free, y)


class FiniteDifferences(Estimator):
    """Reference gradient by central finite differences of the loss at the free equilibrium.

    ``g_i = (L(params + epsilon e_i) - L(params - epsilon e_i)) / (2 epsilon)`` for every scalar
    parameter ``i``, with ``L(p) = mean_b C(output(s0_b(p)), y_b)`` and ``s0(p)`` relaxed by the
    solver from the free equilibrium at ``params`` (so every perturbed relaxation tracks the same
    minimum). Costs ``2 P`` relaxations for ``P`` parameters, run ``chunk`` (static) at a time with
    ``jax.lax.map``: for small nets and gradient checks. Its error is ``O(epsilon^2)`` plus the
    relaxation's error divided by ``epsilon``, so use a tight ``tol`` in float64. ``epsilon`` is traced.
    """

    epsilon: float = 1e-5
    chunk: int = struct.field(pytree_node=False, default=64)

    def errors(self) -> dict:
        eps = jnp.asarray(self.epsilon)
        return {"epsilon must be a positive finite number": ~((eps > 0) & jnp.isfinite(eps))}

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        """Relax the free phase, then ``2 P`` perturbed free phases; see the class."""
        free = relax_unchecked(model, cost, solver, params, x, None, Free(), state0, key)
        start = jax.lax.stop_gradient(free.state)
        flat, unravel = ravel_pytree(params)

        def loss(flat_params):
            state = relax_unchecked(model, cost, solver, unravel(flat_params), x, None, Free(), start, key).state
            return jnp.mean(jax.vmap(cost)(jax.vmap(model.output)(state), y))

        def central(i):
            step = jnp.zeros_like(flat).at[i].set(self.epsilon)
            return (loss(flat + step) - loss(flat - step)) / (2 * self.epsilon)

        grads = jax.lax.map(central, jnp.arange(flat.size), batch_size=self.chunk)
        return unravel(grads.astype(flat.dtype)), Estimate.at_free_phase(model, cost, free, y)
