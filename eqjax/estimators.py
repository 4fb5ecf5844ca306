"""Gradient estimators: equilibrium propagation and the references it is checked against.

Every estimator returns ``(grads, aux)`` from ``estimator.estimate(model, cost, solver, params, x,
y, state0=None)`` on a batch (``x`` ``(B, n_in)``, ``y`` ``(B,)``):

- ``grads`` estimates ``d/dparams mean_b L_b`` with ``L_b = C(output(s0_b), y_b)`` the loss at the
  free equilibrium, in optax's convention (a gradient to descend);
- ``aux`` holds per-example ``loss``, ``accuracy`` (0/1), ``prediction`` at the free equilibrium,
  ``free_state`` (for warm starts and persistent particles) and, per phase (``"free"``,
  ``"positive"``, ``"negative"``), a dict with ``num_steps``, ``residual`` and ``converged``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree

from eqjax._checks import check_beta
from eqjax.costs import predict, total_energy
from eqjax.solvers import Equilibrium, input_drive_batch, max_abs_difference, relax_batch

EP_VARIANTS = ("positive", "negative", "centered")


def phase_summary(eq: Equilibrium) -> dict:
    """Per-example convergence diagnostics of one phase."""
    return {"num_steps": eq.num_steps, "residual": eq.residual, "converged": eq.converged}


def free_phase_aux(model, cost, free: Equilibrium, y) -> dict:
    """Loss, accuracy and prediction at the free equilibrium, plus its diagnostics."""
    outputs = jax.vmap(model.output)(free.state)
    prediction = predict(outputs)
    return {
        "loss": jax.vmap(cost)(outputs, y),
        "accuracy": (prediction == y).astype(outputs.dtype),
        "prediction": prediction,
        "free_state": free.state,
        "free": phase_summary(free),
    }


def mean_energy_difference(model, params, states_a, states_b, x) -> jax.Array:
    """Mean over the batch of ``E(params, a_b, x_b) - E(params, b_b, x_b)``, through the model's
    ``energy_difference`` when it has one (one outer product per input layer, not two)."""
    difference = getattr(model, "energy_difference", None)
    if difference is None:
        difference = lambda p, a, b, x_i: model.energy(p, a, x_i) - model.energy(p, b, x_i)
    return jnp.mean(jax.vmap(difference, in_axes=(None, 0, 0, 0))(params, states_a, states_b, x))


@struct.dataclass
class EP:
    """Equilibrium propagation (Scellier & Bengio 2017).

    ``g = (dE/dparams(s_a) - dE/dparams(s_b)) / (beta_a - beta_b)``, averaged over the batch, with

    - ``"positive"``: ``(s_a, beta_a) = (s_beta, beta)``, ``(s_b, beta_b) = (s_0, 0)``; bias O(beta);
    - ``"negative"``: ``(s_0, 0)`` and ``(s_-beta, -beta)``; bias O(beta);
    - ``"centered"``: ``(s_beta, beta)`` and ``(s_-beta, -beta)``; bias O(beta^2) (Laborieux et
      al. 2021).

    ``beta`` is traced (vmap over it works; changing it never recompiles) and may be negative (a
    random sign per batch, as Scellier & Bengio 2017 do, is ``EP(beta=sign * 0.5)``). ``variant``
    and ``warm_start`` (nudged phases start from the free equilibrium, else from zero) are static.
    ``nudged_solver`` relaxes the nudged phases (default: the free phase's solver), e.g. 4 gradient
    steps after 20 free ones as in Scellier & Bengio 2017.
    """

    beta: float = 0.1
    variant: str = struct.field(pytree_node=False, default="centered")
    warm_start: bool = struct.field(pytree_node=False, default=True)
    nudged_solver: object = None

    def __post_init__(self):
        if self.variant not in EP_VARIANTS:
            raise ValueError(f"variant must be one of {EP_VARIANTS}, got {self.variant!r}")
        if isinstance(self.beta, (int, float)):
            check_beta(self.beta)

    def estimate(self, model, cost, solver, params, x, y, state0=None):
        """Free phase from ``state0`` (zeros if ``None``), then the nudged phase(s); see the class."""
        drive = input_drive_batch(model, params, x)  # shared by all phases
        free = relax_batch(model, cost, solver, params, x, None, 0.0, state0, drive)
        start = jax.lax.stop_gradient(free.state) if self.warm_start else None
        aux = free_phase_aux(model, cost, free, y)
        beta = jnp.asarray(self.beta, x.dtype)
        nudged = solver if self.nudged_solver is None else self.nudged_solver
        if self.variant in ("positive", "centered"):
            plus = relax_batch(model, cost, nudged, params, x, y, beta, start, drive)
            aux["positive"] = phase_summary(plus)
        if self.variant in ("negative", "centered"):
            minus = relax_batch(model, cost, nudged, params, x, y, -beta, start, drive)
            aux["negative"] = phase_summary(minus)
        if self.variant == "positive":
            high, low, spread = plus.state, free.state, beta
        elif self.variant == "negative":
            high, low, spread = free.state, minus.state, beta
        else:
            high, low, spread = plus.state, minus.state, 2 * beta
        high, low = jax.lax.stop_gradient((high, low))

        def contrast(p):
            return mean_energy_difference(model, p, high, low, x) / spread

        return jax.grad(contrast)(params), aux


def _free_units(state, bounds):
    """Mask (as floats) of units strictly inside their box; units at a bound are pinned."""
    return tuple(((s > lo) & (s < hi)).astype(s.dtype) for s, (lo, hi) in zip(state, bounds))


@struct.dataclass
class ImplicitDiff:
    """Reference gradient by the implicit function theorem at the free equilibrium ``s0``.

    ``dL/dparams = -(d2E/dparams ds)^T v`` with ``H v = dC/ds``, ``H = d2E/ds2`` at ``s0``. Units
    pinned at a bound of their box do not move with the parameters, so they are removed from the
    solve (active set). ``method="dense"`` builds ``H`` per example (small nets); ``"cg"`` solves with
    Hessian-vector products by conjugate gradients (``cg_tol`` traced, ``cg_max_steps`` static).
    Assumes ``H`` is positive definite on the free units (a strict local minimum); ``aux`` carries
    ``linear_solve_residual`` (per example, relative) so a failed solve is visible.
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

    def estimate(self, model, cost, solver, params, x, y, state0=None):
        """Relax the free phase with ``solver``, then solve the adjoint system per example."""
        free = relax_batch(model, cost, solver, params, x, None, 0.0, state0)
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

        aux = free_phase_aux(model, cost, free, y)
        aux["linear_solve_residual"] = solve_residual
        return jax.grad(mixed)(params), aux


@struct.dataclass
class BPTT:
    """Reference gradient by backpropagation through ``num_steps`` unrolled solver updates.

    The free phase starts from ``state0`` (zeros by default) and applies the solver's update map
    exactly ``num_steps`` times (static; ``tol`` is ignored); ``jax.grad`` differentiates through
    it (Ernoult et al. 2019). Memory grows linearly with ``num_steps``.
    """

    num_steps: int = struct.field(pytree_node=False, default=100)

    def estimate(self, model, cost, solver, params, x, y, state0=None):
        """Unroll ``solver.update`` ``num_steps`` times per example and differentiate the loss."""
        F = total_energy(model, cost)

        def relax_one(p, x_i, s0_i):
            update = lambda s: solver.update(lambda u: F(p, u, x_i, None, 0.0), s, model.bounds)
            start = model.init_state(x_i) if s0_i is None else s0_i
            final, _ = jax.lax.scan(lambda s, _: (update(s), None), start, length=self.num_steps)
            residual = max_abs_difference(update(final), final)
            return Equilibrium(
                state=final,
                num_steps=jnp.asarray(self.num_steps, jnp.int32),
                residual=residual,
                converged=residual < solver.tol,
            )

        def loss(p):
            free = jax.vmap(relax_one, in_axes=(None, 0, 0))(p, x, state0)
            outputs = jax.vmap(model.output)(free.state)
            return jnp.mean(jax.vmap(cost)(outputs, y)), free

        grads, free = jax.grad(loss, has_aux=True)(params)
        return grads, free_phase_aux(model, cost, free, y)
