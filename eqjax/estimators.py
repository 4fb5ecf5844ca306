"""Gradient estimators: equilibrium propagation and the references it is checked against.

Every estimator subclasses :class:`Estimator` and returns ``(grads, aux)`` from
``estimator.estimate(model, cost, solver, params, x, y, state0=None, key=None)`` on a batch
(``x`` ``(B, *input_shape)``, ``y`` ``(B,)``):

- ``grads`` estimates ``d/dparams mean_b L_b`` with ``L_b = C(output(s0_b), y_b)`` the loss at the
  free equilibrium, in optax's convention (a gradient to descend);
- ``aux`` holds per-example ``loss`` (NaN for examples whose free phase went non-finite),
  ``accuracy`` (0/1; 0 for non-finite examples), ``prediction`` at the free equilibrium, ``free_state`` (for warm starts and
  persistent particles), ``used`` (the example entered the gradient) and, per phase (``"free"``,
  ``"positive"``, ``"negative"``), :meth:`Equilibrium.summary` (``num_steps``, ``residual``,
  ``status``, ``converged``).
"""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree

from eqjax._checks import merge_conditions, shown
from eqjax.costs import predict
from eqjax.equilibrium import Equilibrium
from eqjax.loop import select_examples, unroll
from eqjax.phases import Free, Nudge
from eqjax.relaxation import relax_batch, total_energy


class Estimator(struct.PyTreeNode, abc.ABC):
    """The interface of a gradient estimator (a frozen pytree dataclass; numeric fields traced)."""

    @abc.abstractmethod
    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None) -> tuple:
        """``(grads, aux)`` for the batch (see the module docstring)."""

    def errors(self) -> dict:
        """``{message: violated}`` for the estimator's traced hyperparameters (see ``eqjax._checks``)."""
        return {}


def free_phase_aux(model, cost, free: Equilibrium, y) -> dict:
    """Loss, accuracy and prediction at the free equilibrium, plus its diagnostics."""
    outputs = jax.vmap(model.output)(free.state)
    prediction = predict(outputs)
    loss = jax.vmap(cost)(outputs, y)
    return {
        "loss": jnp.where(free.nonfinite, jnp.nan, loss),
        "accuracy": ((prediction == y) & ~free.nonfinite).astype(loss.dtype),  # non-finite: wrong
        "prediction": prediction,
        "free_state": free.state,
        "free": free.summary(),
    }


def contrast_gradient(model, params, high, low, x, scale, used) -> dict:
    """``d/dparams`` of ``mean_b [E(high_b) - E(low_b)] / scale`` over the examples marked ``used``
    ``(B,)``, through ``model.energy_difference``. Unused examples (non-finite in some phase) are
    replaced by zeros before differentiating, so their NaNs cannot reach the gradient."""
    high, low = jax.lax.stop_gradient((high, low))
    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
    high, low, x = (select_examples(used, t, zeros(t)) for t in (high, low, x))
    count = jnp.maximum(jnp.sum(used), 1)

    def contrast(p):
        differences = jax.vmap(model.energy_difference, in_axes=(None, 0, 0, 0))(p, high, low, x)
        return jnp.sum(jnp.where(used, differences, 0.0)) / (count * scale)

    return jax.grad(contrast)(params)


# Which two phases EP contrasts, and the beta-multiple between them.
EP_CONTRASTS = {"positive": ("positive", "free", 1), "negative": ("free", "negative", 1),
                "centered": ("positive", "negative", 2)}


class EP(Estimator):
    """Equilibrium propagation (Scellier & Bengio 2017).

    ``g = (dE/dparams(s_a) - dE/dparams(s_b)) / (beta_a - beta_b)``, averaged over the batch, with

    - ``"positive"``: ``(s_a, beta_a) = (s_beta, beta)``, ``(s_b, beta_b) = (s_0, 0)``; bias O(beta);
    - ``"negative"``: ``(s_0, 0)`` and ``(s_-beta, -beta)``; bias O(beta);
    - ``"centered"``: ``(s_beta, beta)`` and ``(s_-beta, -beta)``; bias O(beta^2) (Laborieux et
      al. 2021).

    The nudged phases are :class:`~eqjax.phases.Nudge` values. ``beta`` is real, nonzero and
    traced (vmap over it works; changing it never recompiles) and may be negative (a random sign
    per batch, as Scellier & Bengio 2017 do, is ``EP(beta=sign * 0.5)``). ``variant`` and
    ``warm_start`` (nudged phases start from the free equilibrium, else from the model's start
    state) are static. ``nudged_solver`` relaxes the nudged phases (default: the free phase's
    solver), e.g. 4 gradient steps after 20 free ones as in Scellier & Bengio 2017.

    Examples that go non-finite in any phase are left out of the gradient (the mean is over the
    others) and reported in ``aux["used"]`` and each phase's ``status``.
    """

    beta: float = 0.1
    variant: str = struct.field(pytree_node=False, default="centered")
    warm_start: bool = struct.field(pytree_node=False, default=True)
    nudged_solver: object = None

    def __post_init__(self):
        if self.variant not in EP_CONTRASTS:
            raise ValueError(f"variant must be one of {tuple(EP_CONTRASTS)}, got {self.variant!r}")

    def errors(self) -> dict:
        """``beta`` real, finite and nonzero, and the nudged solver's own conditions."""
        beta = jnp.asarray(self.beta)
        if jnp.iscomplexobj(beta):
            raise TypeError("EP takes a real beta; a complex beta is holomorphic EP (complex phases "
                            "are eqjax.phases.Nudge values with a complex beta)")
        own = {f"beta must be a finite nonzero number for EP{shown(self.beta)}": ~jnp.isfinite(beta) | (beta == 0)}
        nudged = {} if self.nudged_solver is None else self.nudged_solver.errors()
        return merge_conditions(own, nudged)

    def phases(self) -> dict:
        """The nudged phases this variant relaxes, by name."""
        names = {name for name in EP_CONTRASTS[self.variant][:2] if name != "free"}
        candidates = {"positive": Nudge(beta=self.beta), "negative": Nudge(beta=-self.beta)}
        return {name: phase for name, phase in candidates.items() if name in names}

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        """Free phase from ``state0``, then the nudged phase(s); see the class."""
        self.errors()  # a complex beta raises here, also when traced
        prepared = model.prepare(params, x)  # shared by all phases
        keys = (None,) * 3 if key is None else tuple(jax.random.split(key, 3))
        free = relax_batch(model, cost, solver, params, x, None, Free(), state0, keys[0], prepared)
        aux = free_phase_aux(model, cost, free, y)
        start = jax.lax.stop_gradient(free.state) if self.warm_start else None
        nudged_solver = solver if self.nudged_solver is None else self.nudged_solver
        equilibria = {"free": free}
        for k, (name, phase) in enumerate(self.phases().items(), start=1):
            equilibria[name] = relax_batch(model, cost, nudged_solver, params, x, y, phase, start, keys[k], prepared)
            aux[name] = equilibria[name].summary()
        used = ~jnp.any(jnp.stack([eq.nonfinite for eq in equilibria.values()]), axis=0)
        aux["used"] = used
        high, low, multiple = EP_CONTRASTS[self.variant]
        scale = multiple * jnp.asarray(self.beta, x.dtype)
        grads = contrast_gradient(model, params, equilibria[high].state, equilibria[low].state, x, scale, used)
        return grads, aux


def _free_units(state, bounds):
    """Mask (as floats) of units strictly inside their box; units at a bound are pinned."""
    return tuple(((s > lo) & (s < hi)).astype(s.dtype) for s, (lo, hi) in zip(state, bounds))


class ImplicitDiff(Estimator):
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

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        """Relax the free phase with ``solver``, then solve the adjoint system per example."""
        free = relax_batch(model, cost, solver, params, x, None, Free(), state0, key)
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


class BPTT(Estimator):
    """Reference gradient by backpropagation through ``num_steps`` unrolled solver updates.

    The free phase starts from ``state0`` (``model.init_state`` by default) and applies the solver's step
    exactly ``num_steps`` times (static; ``tol`` is ignored); ``jax.grad`` differentiates through
    it (Ernoult et al. 2019). Memory grows linearly with ``num_steps``.
    """

    num_steps: int = struct.field(pytree_node=False, default=100)

    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None):
        """Unroll ``solver.step`` ``num_steps`` times and differentiate the batch-mean loss."""
        start = jax.vmap(model.init_state)(x) if state0 is None else state0

        def loss(p):
            F = total_energy(model, cost, Free(), model.prepare(p, x), x, None)
            free = unroll(solver, F, start, model.bounds, self.num_steps, key)
            outputs = jax.vmap(model.output)(free.state)
            return jnp.mean(jax.vmap(cost)(outputs, y)), free

        grads, free = jax.grad(loss, has_aux=True)(params)
        return grads, free_phase_aux(model, cost, free, y)
