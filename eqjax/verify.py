"""Gradient verification as an API: how faithful is an estimator's gradient?

- :func:`compare`: one estimator against a reference (:class:`~eqjax.estimators.ImplicitDiff` by
  default, or :class:`~eqjax.estimators.BPTT` or :class:`~eqjax.estimators.FiniteDifferences`), per
  parameter tensor: relative error and cosine similarity, and a pass/fail verdict.
- :func:`bias_curve`: the relative error over a range of nudge strengths and its fitted log-log
  slope (about 1 for one-sided EP, 2 for centered EP, ``N`` for holomorphic EP with ``N`` phases;
  Laborieux et al. 2021, Laborieux & Zenke 2022).
- :func:`gradient_descending_updates`: the check of Ernoult et al. 2019 ("Updates of equilibrium
  prop match gradients of backprop through time in an RNN with static input"): step by step, EP's
  neural and weight updates during the nudged phase against BPTT's gradients.

Every function runs the estimators through :func:`eqjax.gradients` (inputs checked, one compile per
estimator structure; a new ``beta`` does not recompile). Use float64 (``jax_enable_x64``) and a
tightly converged solver: the comparison is only as good as the equilibria.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.flatten_util import ravel_pytree

from eqjax._checks import check_inputs
from eqjax._api import gradients, relax
from eqjax.costs import as_cost
from eqjax.estimators import ImplicitDiff, contrast_gradient
from eqjax.phases import Free, Nudge
from eqjax._relaxation import total_energy
from eqjax.solvers import GradientDescent


def _relative_error(estimate, reference) -> jax.Array:
    """``||estimate - reference|| / ||reference||`` over flattened arrays (0/0 -> 0)."""
    difference = jnp.linalg.norm(estimate - reference)
    return jnp.where(difference == 0, 0.0, difference / jnp.linalg.norm(reference))


def _cosine(a, b) -> jax.Array:
    """Cosine similarity of two flattened arrays (1 when both are zero)."""
    norms = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    return jnp.where(norms == 0, jnp.where(jnp.all(a == b), 1.0, 0.0), jnp.vdot(a, b) / norms)


RTOL, MIN_COSINE = 1e-3, 0.9999
"""The default verdict of :func:`compare`: relative error at most 0.1%, cosine at least 0.9999.

The relative error decides. A reviewer rejects a gradient that is 1% off, and the cosine hardly
sees the bias of a finite nudge: EP's bias mostly rescales the gradient, so one-sided EP at ten
times a sensible beta has a relative error of 1e-2 with ``1 - cosine`` below 1e-6. In float64 with
a tightly converged solver, centered EP at ``beta = 0.01`` and finite differences are about 1e-5
off, far inside 1e-3; pass ``rtol`` for a deliberate looser check (float32, a short relaxation)."""


class Comparison(struct.PyTreeNode):
    """The result of :func:`compare`.

    ``relative_error`` and ``cosine`` are pytrees shaped like ``params`` with one scalar per
    parameter tensor; ``overall_relative_error`` and ``overall_cosine`` are over all parameters
    flattened together; ``passed`` is ``overall_relative_error <= rtol`` and ``overall_cosine >=
    min_cosine`` (defaults :data:`RTOL`, :data:`MIN_COSINE`). ``estimate`` and ``reference`` are
    the two gradients. ``units_near_kink`` (an int; ``None`` from :func:`compare_gradients`) counts
    the free equilibrium's boxed units where a finite nudge or a finite-difference step can cross
    a kink of the box (see :func:`units_near_kink`): there any finite-``beta`` estimate may be
    legitimately off, so read a failed verdict with them in mind.
    """

    relative_error: dict
    cosine: dict
    overall_relative_error: jax.Array
    overall_cosine: jax.Array
    passed: jax.Array
    estimate: dict
    reference: dict
    units_near_kink: int | None = struct.field(pytree_node=False, default=None)

    def table(self) -> str:
        """One line per parameter tensor: its path, relative error and cosine, as Markdown."""
        paths = jax.tree_util.tree_flatten_with_path(self.relative_error)[0]
        cosines = jax.tree.leaves(self.cosine)
        lines = ["| parameter | relative error | cosine |", "|---|---|---|"]
        for (path, error), cos in zip(paths, cosines):
            lines.append(f"| {jax.tree_util.keystr(path)} | {float(error):.3g} | {float(cos):.6f} |")
        lines.append(f"| all | {float(self.overall_relative_error):.3g} | {float(self.overall_cosine):.6f} |")
        if self.units_near_kink:
            lines.append(f"\n{self.units_near_kink} units of the free equilibrium sit at or near a bound of their box "
                         "(a finite nudge can cross the kink there)")
        return "\n".join(lines)


def compare_gradients(estimate, reference, rtol: float = RTOL, min_cosine: float = MIN_COSINE) -> Comparison:
    """:class:`Comparison` of two gradient pytrees of the same structure (see :func:`compare`)."""
    flat_estimate, flat_reference = ravel_pytree(estimate)[0], ravel_pytree(reference)[0]
    error = _relative_error(flat_estimate, flat_reference)
    cosine = _cosine(flat_estimate, flat_reference)
    return Comparison(
        relative_error=jax.tree.map(lambda a, b: _relative_error(a.ravel(), b.ravel()), estimate, reference),
        cosine=jax.tree.map(lambda a, b: _cosine(a.ravel(), b.ravel()), estimate, reference),
        overall_relative_error=error, overall_cosine=cosine,
        passed=(error <= rtol) & (cosine >= min_cosine), estimate=estimate, reference=reference)


def compare(model, cost, solver, params, x, y, estimator, reference=None, *, state0=None, key=None,
            rtol: float = RTOL, min_cosine: float = MIN_COSINE, kink_margin: float = 1e-3) -> Comparison:
    """Compare ``estimator``'s gradient on the batch ``(x, y)`` with ``reference``'s.

    Args:
      model: as for :func:`eqjax.gradients`, like ``cost``, ``params``, ``x``, ``y``, ``state0``
        and ``key``.
      solver: relaxes both estimators' free phases.
      estimator: any :class:`~eqjax.estimators.Estimator`.
      reference: an estimator taken as the truth; default :class:`~eqjax.estimators.ImplicitDiff`
        (exact at a strict minimum). ``BPTT`` (through the solver's unrolled steps) and
        ``FiniteDifferences`` (central differences of the loss) are the others.
      rtol: the largest relative error that ``passed`` (see :data:`RTOL`).
      min_cosine: the smallest cosine similarity that ``passed`` (see :data:`MIN_COSINE`).
      kink_margin: the distance to a bound, and the drive, under which a boxed unit counts as
        near a kink (:func:`units_near_kink`).
    Returns:
      a :class:`Comparison` (per tensor and overall relative error ``||g - g_ref|| / ||g_ref||``,
      cosine similarity and the units near a kink; ``.table()`` prints them).
    """
    reference = ImplicitDiff() if reference is None else reference
    estimate, result = gradients(model, cost, solver, estimator, params, x, y, state0, key)
    truth, _ = gradients(model, cost, solver, reference, params, x, y, state0, key)
    near = units_near_kink(model, cost, params, x, result.free_state, kink_margin)
    return compare_gradients(estimate, truth, rtol, min_cosine).replace(units_near_kink=near)


def units_near_kink(model, cost, params, x, state, margin: float = 1e-3) -> int:
    """How many units of the batched free ``state`` sit where the box's kink is within reach: a
    finite lower or upper bound closer than ``margin`` without touching it, or touched with a drive
    ``|dE/ds|`` below ``margin`` (a small nudge pulls such a unit off the bound). The derivative of
    the equilibrium jumps there, so EP at a finite ``beta`` and finite differences average over
    two pieces (``bias_curve``'s slope flattens), while implicit differentiation takes one side."""
    prepared = model.prepare(params, x)
    drive = jax.grad(total_energy(model, cost, Free(), prepared, x, None))(state)
    count = 0
    for s, g, (lo, hi) in zip(jax.tree.leaves(state), jax.tree.leaves(drive), model.bounds):
        for bound in (lo, hi):
            distance = jnp.abs(s - jnp.asarray(bound, s.dtype))
            finite = jnp.isfinite(jnp.asarray(bound))
            near = finite & (((distance > 0) & (distance < margin)) | ((distance == 0) & (jnp.abs(g) < margin)))
            count += int(jnp.sum(near))
    return count


class BiasCurve(struct.PyTreeNode):
    """The result of :func:`bias_curve`: per nudge strength ``betas[i]`` ``(K,)`` the overall
    ``relative_error`` ``(K,)`` and ``cosine`` ``(K,)`` against the reference; ``slope`` and
    ``intercept`` of the least-squares line ``log(error) = slope * log(|beta|) + intercept``
    (over the points with a positive finite error); ``local_slopes`` ``(K - 1,)`` between
    neighbouring points, and ``asymptotic``: they all lie within 0.5 of ``slope`` (else the points
    are not in the regime where one power of ``beta`` dominates, e.g. a nudge that crosses a kink
    of the box, and ``slope`` means little; :func:`bias_curve` warns)."""

    betas: np.ndarray
    relative_error: np.ndarray
    cosine: np.ndarray
    slope: float
    intercept: float
    local_slopes: np.ndarray = struct.field(pytree_node=False, default=None)
    asymptotic: bool = struct.field(pytree_node=False, default=True)

    def plot(self, ax=None, label: str | None = None):
        """Log-log plot of the error against ``|beta|`` with the fitted line; returns the axes
        (needs matplotlib: ``pip install 'eqjax[experiments]'``)."""
        import matplotlib.pyplot as plt

        ax = plt.gca() if ax is None else ax
        b = np.abs(self.betas)
        line = ax.loglog(b, self.relative_error, "o-", label=f"{label or ''} (slope {self.slope:.2f})".strip())[0]
        ax.loglog(b, np.exp(self.intercept) * b**self.slope, ":", color=line.get_color())
        ax.set_xlabel("|beta|")
        ax.set_ylabel("relative error of the gradient")
        return ax


def fit_slope(betas, errors) -> tuple[float, float]:
    """``(slope, intercept)`` of ``log(error)`` against ``log(|beta|)`` by least squares, over the
    points with a positive finite error (NaN when fewer than two)."""
    b, e = np.abs(np.asarray(betas, float)), np.asarray(errors, float)
    keep = np.isfinite(e) & (e > 0) & (b > 0)
    if keep.sum() < 2:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(np.log(b[keep]), np.log(e[keep]), 1)
    return float(slope), float(intercept)


def bias_curve(model, cost, solver, params, x, y, estimator, betas, reference=None, *, field: str = "beta",
               state0=None, key=None) -> BiasCurve:
    """The estimator's error against ``reference`` for each value of its nudge strength.

    ``estimator.replace(**{field: beta})`` is evaluated for every ``beta`` in ``betas`` (``field``
    is ``"beta"`` for EP and holomorphic EP, ``"eta"`` for coupled learning); the field is traced, so
    the estimator compiles once. The reference (default ``ImplicitDiff()``) is computed once.
    Choose ``betas`` above the noise floor of the equilibria (about ``tol / |beta|`` relative error)
    for a clean slope.
    """
    reference = ImplicitDiff() if reference is None else reference
    truth, _ = gradients(model, cost, solver, reference, params, x, y, state0, key)
    errors, cosines = [], []
    for beta in betas:
        estimate, _ = gradients(model, cost, solver, estimator.replace(**{field: beta}), params, x, y, state0, key)
        result = compare_gradients(estimate, truth)
        errors.append(float(result.overall_relative_error))
        cosines.append(float(result.overall_cosine))
    slope, intercept = fit_slope(betas, errors)
    b, e = np.abs(np.asarray(betas, float)), np.asarray(errors)
    local = np.diff(np.log(e)) / np.diff(np.log(b))
    asymptotic = bool(np.all(np.abs(local - slope) <= 0.5))
    if not asymptotic:
        warnings.warn(f"bias_curve: the local slopes {np.round(local, 2).tolist()} disagree with the fitted slope "
                      f"{slope:.2f}; the betas are not in the asymptotic regime (a nudge may cross a bound of the box)",
                      stacklevel=2)
    return BiasCurve(np.asarray(betas, float), e, np.asarray(cosines), slope, intercept, local, asymptotic)


class UpdatesCheck(struct.PyTreeNode):
    """The result of :func:`gradient_descending_updates`, for steps ``t = 0..K-1`` of the nudged phase.

    - ``ep_state_updates``: ``-(s_{t+1} - s_t) / (step_size * beta * B)``, batched states with a
      leading ``K`` axis; ``bptt_state_gradients``: ``dL/ds_{K-t}`` of BPTT through ``K`` free steps
      from the free equilibrium (``L`` the batch-mean loss);
    - ``ep_param_updates``: ``mean_b [dE/dparams(s_{t+1}) - dE/dparams(s_t)] / beta``, params with a
      leading ``K`` axis; ``bptt_param_gradients``: ``dL/dparams_{K-t}``, the gradient w.r.t. the
      copy of the parameters used by the step that produced ``s_{K-t}``;
    - ``state_relative_error``, ``param_relative_error``: ``(K,)``, per step over the whole pytree.
    """

    ep_state_updates: tuple
    bptt_state_gradients: tuple
    ep_param_updates: dict
    bptt_param_gradients: dict
    state_relative_error: jax.Array
    param_relative_error: jax.Array

    def plot(self, axes=None):
        """Per step ``t``, the relative errors (log scale); returns the axes (needs matplotlib)."""
        import matplotlib.pyplot as plt

        ax = plt.gca() if axes is None else axes
        steps = np.arange(len(self.state_relative_error))
        ax.semilogy(steps, self.state_relative_error, "o-", label="neural updates vs dL/ds")
        ax.semilogy(steps, self.param_relative_error, "s-", label="weight updates vs dL/dparams")
        ax.set_xlabel("step t of the nudged phase (BPTT: K - t)")
        ax.set_ylabel("relative error")
        ax.legend()
        return ax


def _per_step_relative_error(a, b) -> jax.Array:
    """Relative error per index of the leading axis of two pytrees: ``(K,)``."""
    flat = lambda tree: jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree.leaves(tree)], axis=1)
    return jax.vmap(_relative_error)(flat(a), flat(b))


def gradient_descending_updates(model, cost, solver, params, x, y, beta: float, num_steps: int) -> UpdatesCheck:
    """Ernoult et al. 2019's gradient-descending-updates property, measured.

    ``solver`` is a :class:`~eqjax.solvers.GradientDescent` (step ``eps``): the dynamics
    ``s_{t+1} = s_t - eps dF/ds`` derive from the primitive function ``Phi = |s|^2 / 2 - eps E``
    (Ernoult et al.'s setting). Its ``tol``/``max_steps`` must converge the free phase (the property
    assumes the free phase has reached its fixed point ``s*``). From ``s*`` the nudged phase takes
    ``num_steps`` (static, ``K``) steps with ``F = E + beta C``, and BPTT runs ``K`` free steps from
    ``s*``, with a separate copy of the parameters per step, then ``L = mean_b C(output(s_K), y)``.
    The theorem says, for every ``t < K`` as ``beta -> 0``::

        dL/ds_{K-t}      = -(s^beta_{t+1} - s^beta_t) / (eps beta B)
        dL/dparams_{K-t} = mean_b [dE/dparams(s^beta_{t+1}) - dE/dparams(s^beta_t)] / beta

    (their ``Delta^EP`` with ``beta_Ernoult = eps beta``; the second, summed over ``t``, is EP's
    positive estimate). Exact in the limit for unbounded states; units pinned at a box are not
    covered. Returns an :class:`UpdatesCheck` whose relative errors shrink like ``O(beta)``.
    """
    if not isinstance(solver, GradientDescent):
        raise TypeError("the gradient-descending-updates check needs GradientDescent dynamics "
                        f"(a primitive function), got {type(solver).__name__}")
    cost = as_cost(cost)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    check_inputs(model, x, y)
    if not (np.isfinite(beta) and beta != 0):
        raise ValueError(f"beta must be a finite nonzero number for the check (it divides by beta), got {beta!r}")
    free = relax(model, cost, solver, params, x)
    return _updates(model, cost, solver, params, x, y, jnp.asarray(beta, x.dtype), free.state, num_steps)


@functools.partial(jax.jit, static_argnames="num_steps")
def _updates(model, cost, solver, params, x, y, beta, free_state, num_steps: int) -> UpdatesCheck:
    bounds = model.bounds
    step = lambda F, s: solver.step(F, s, None, bounds)[0]

    def energy(p, phase):
        return total_energy(model, cost, phase, model.prepare(p, x), x, y)

    # The nudged trajectory s^beta_0 = s*, ..., s^beta_K.
    nudge = energy(params, Nudge(beta=beta))
    trajectory = [free_state]
    for _ in range(num_steps):
        trajectory.append(step(nudge, trajectory[-1]))
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *trajectory)  # (K+1, B, ...)
    before = jax.tree.map(lambda s: s[:-1], stacked)
    after = jax.tree.map(lambda s: s[1:], stacked)
    batch = x.shape[0]
    scale = solver.step_size * beta * batch
    ep_states = jax.tree.map(lambda a, b: -(a - b) / scale, after, before)
    used = jnp.ones((batch,), bool)
    ep_params = jax.vmap(contrast_gradient, in_axes=(None, None, 0, 0, None, None, None))(
        model, params, after, before, x, beta, used)

    # BPTT from s* with one parameter copy and one additive state probe per step.
    copies = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_steps,) + p.shape), params)
    probes = jax.tree.map(lambda s: jnp.zeros((num_steps + 1,) + s.shape, s.dtype), free_state)

    def loss(copies, probes):
        s = jax.tree.map(lambda a, d: a + d[0], free_state, probes)
        for j in range(num_steps):
            p_j = jax.tree.map(lambda c: c[j], copies)
            s = step(energy(p_j, Free()), s)
            s = jax.tree.map(lambda a, d: a + d[j + 1], s, probes)
        return jnp.mean(jax.vmap(cost)(jax.vmap(model.output)(s), y))

    param_grads, state_grads = jax.grad(loss, argnums=(0, 1))(copies, probes)
    # Step t of the nudged phase matches index K - t (states) and K - t - 1 (the copy producing s_{K-t}).
    bptt_states = jax.tree.map(lambda g: g[::-1][:num_steps], state_grads)
    bptt_params = jax.tree.map(lambda g: g[::-1], param_grads)
    return UpdatesCheck(ep_states, bptt_states, ep_params, bptt_params,
                        _per_step_relative_error(ep_states, bptt_states),
                        _per_step_relative_error(ep_params, bptt_params))
