"""Relaxation solvers: find a minimum of ``F`` over the state inside a box.

Every solver subclasses :class:`Solver`, a frozen pytree dataclass: its tolerances and step sizes
are traced leaves (changing them never recompiles, ``jax.vmap`` over them works); ``max_steps``
and ``check_every`` are static. A solver says how to take one step and, if it likes, what its
stopping test measures (:meth:`Solver.residual`); :func:`eqjax.loop.iterate` owns the loop (step
counting, when to test, status, NaN-safety) for all of them.

``F`` is the total energy of a batch as a function of the batched state alone (parameters, input,
label and phase bound); see :func:`eqjax.relax_unchecked`.
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
from eqjax.loop import check_budget, per_example_max_abs_difference


def _is_unbounded(lo, hi) -> bool:
    """Static test: ``(lo, hi)`` are Python/NumPy values and all infinite (no clipping needed)."""
    if isinstance(lo, jax.Array) or isinstance(hi, jax.Array):
        return False
    return bool(np.all(np.isneginf(lo)) and np.all(np.isposinf(hi)))


def project(state, bounds):
    """Clip each state leaf (``state`` a tuple of arrays, one per layer, aligned with the tuple
    ``bounds``) into its ``(lo, hi)`` box, keeping the leaf's dtype (float64 NumPy
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
    ``struct.field(pytree_node=False)``) that define the method :meth:`step`. Every solver has,
    declared here once and given by keyword only:

    - ``tol`` (traced, default ``1e-4``): the stopping test's tolerance; the loop stops when every
      example's :meth:`residual` at the last test is below it (by default the last tested update
      ``max|s_k - s_{k-1}|``);
    - the budget of :func:`eqjax.loop.iterate`, which owns the loop: ``max_steps`` (static int >=
      0; default the class's ``default_max_steps``, 100 here) and ``check_every`` (static int >= 1,
      default 1: how often the tolerance is tested). An estimator's second phases may run another
      budget (e.g. ``EP(nudged_steps=...)``) with the same solver.

    :meth:`init` creates the solver's own state (momentum, history, a PRNG key, a temperature...),
    ``None`` by default; :meth:`residual` is the stopping test's measure, the size of the last
    update by default. :func:`eqjax.loop.iterate` runs it.

    The step must treat the examples of the batch independently (as the built-in solvers do): the
    loop freezes an example that goes non-finite and relies on it not affecting the others.

    Values (``tol >= 0``, a positive step size...) are checked by :meth:`errors` where the solver is
    used (eagerly at the API boundary, inside jit with ``throw=True``), not at construction, so
    that JAX can rebuild solvers with placeholder or zero leaves (``jax.grad``, ``in_axes`` trees).
    """

    tol: float = struct.field(default=1e-4, kw_only=True)
    max_steps: int | None = struct.field(pytree_node=False, default=None, kw_only=True)
    check_every: int = struct.field(pytree_node=False, default=1, kw_only=True)
    default_max_steps = 100  # a class attribute, not a field: the budget when max_steps is not given
    # (each solver sets its own; a subclass may also redeclare the three fields, as long as
    # max_steps and check_every stay static)

    def __post_init__(self):
        if self.max_steps is None:
            object.__setattr__(self, "max_steps", type(self).default_max_steps)
        fields = {f.name: f for f in dataclasses.fields(self)}
        for name in ("max_steps", "check_every"):
            if fields[name].metadata.get("pytree_node", True):
                raise TypeError(f"{type(self).__name__}.{name} decides the loop's structure: declare it static, "
                                f"with struct.field(pytree_node=False)")
        check_budget(self.max_steps, "max_steps")
        every = self.check_every
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

    def residual(self, F: Callable, previous, following, solver_state, bounds) -> jax.Array:
        """What the stopping test measures, per example: ``(B,)`` real; the loop stops when it is
        below ``tol`` for every finite example.

        The loop calls it after every ``check_every``-th step and after the last one, with the
        batched states before (``previous``) and after (``following``) that step, the solver state
        after it and the bounds (those :meth:`step` got). The default is the size of the step,
        ``max|following - previous|`` per example over all leaves and units: a small step means
        equilibrium only as far as the step is a fair measure of the distance to it (a small step
        size makes small steps far from it). Override it to stop on another criterion, e.g. a
        distance to equilibrium such as the projected gradient's norm, or a criterion of your
        own step's internals carried in ``solver_state``.

        It must treat examples independently and be NaN or infinite for an example whose
        ``following`` state is not finite: the loop freezes an example whose residual is not
        finite. The loop keeps everything else: the step counting, when to test (``check_every``),
        the freezing of non-finite examples, the status (``residual < tol``) and the per-example
        step counts; the residual it reports in :class:`~eqjax.Equilibrium` is this one.

        Args:
          F: the batch's total energy as a function of the batched state.
          previous: the batched state before the step (every leaf ``(B, ...)``).
          following: the batched state after it, the one the loop keeps.
          solver_state: the solver's own state after the step.
          bounds: per state leaf ``(lo, hi)``.
        Returns:
          ``(B,)`` real, one value per example.
        """
        return per_example_max_abs_difference(following, previous)


class GradientDescent(Solver):
    """Projected Euler steps on ``ds/dt = -dF/ds``: ``s <- clip(s - step_size * dF/ds, lo, hi)``.

    For ``step_size < 1/L`` (``L`` the Lipschitz constant of ``dF/ds``) ``F`` never increases.
    ``step_size`` and ``tol`` are traced; ``max_steps`` and ``check_every`` static. Complex states
    (a complex nudge on an unbounded model) follow the holomorphic gradient.
    """

    step_size: float = 0.5
    default_max_steps = 100

    def errors(self) -> dict:
        size = jnp.asarray(self.step_size)
        return {**super().errors(),
                f"step_size must be a positive finite number{shown(self.step_size)}":
                    ~((size > 0) & jnp.isfinite(size))}

    def step(self, F, state, solver_state, bounds):
        grad = _state_gradient(F, state)
        return project(tuple(s - self.step_size * g for s, g in zip(state, grad)), bounds), solver_state


def _layer_step(F: Callable, state: tuple, layers: tuple[int, ...], bounds, newton: bool) -> tuple:
    """Update the given layers jointly, the others fixed: ``s - g / h`` per unit, clipped to the box.

    ``g = dF/ds``. With ``newton`` (static) ``h`` is the diagonal curvature ``d2F/ds2``, obtained as
    the Hessian-vector product with a vector of ones: exact when the layers interact neither with
    each other (e.g. all even layers) nor within themselves, and then, for the bilinear energy with
    a quadratic cost, the step is the exact block minimiser (Scellier et al. 2023); for a
    non-quadratic cost it is a diagonal Newton step. Curvatures that are not positive fall back to
    1. Without ``newton``, ``h = 1``: the fixed-point update ``s <- clip(s - dF/ds)``.
    """

    def restricted(sub):
        full = list(state)
        for i, s in zip(layers, sub):
            full[i] = s
        return F(tuple(full))

    sub = tuple(state[i] for i in layers)
    if newton:
        grad, curvature = jax.jvp(jax.grad(restricted), (sub,), (jax.tree.map(jnp.ones_like, sub),))
        steps = tuple(g / jnp.where(h > 0, h, 1.0) for g, h in zip(grad, curvature))
    else:
        steps = jax.grad(restricted)(sub)
    new_sub = project(tuple(s - d for s, d in zip(sub, steps)), tuple(bounds[i] for i in layers))
    full = list(state)
    for i, s in zip(layers, new_sub):
        full[i] = s
    return tuple(full)


def _even_odd_sweep(F: Callable, state: tuple, bounds, newton: bool) -> tuple:
    """One sweep: :func:`_layer_step` on the even layers, then on the odd ones (layers numbered
    from the clamped input, layer 0, so the state's leaf ``i`` is layer ``i + 1``). Real states only."""
    if any(jnp.iscomplexobj(s) for s in state):
        raise TypeError("even/odd sweeps work on real states; relax complex states with GradientDescent")
    num_layers = len(state)
    even = tuple(i for i in range(num_layers) if (i + 1) % 2 == 0)
    odd = tuple(i for i in range(num_layers) if (i + 1) % 2 == 1)
    for group in (even, odd):
        if group:
            state = _layer_step(F, state, group, bounds, newton)
    return state


class BlockCoordinate(Solver):
    """Exact block-coordinate descent: minimise the even layers given the odd ones, then the odd.

    Layers are numbered from the input (layer 0, clamped), so for ``(n_in, h, n_out)`` the output
    (layer 2) is updated first, then the hidden layer. One step is one such sweep. Exact for
    energies quadratic in each layer without intra-layer coupling (bilinear Hopfield, resistive
    networks) with a quadratic cost (Scellier et al. 2023, 2024). Real states only. ``tol`` is
    traced; ``max_steps`` and ``check_every`` static.
    """

    default_max_steps = 15

    def step(self, F, state, solver_state, bounds):
        return _even_odd_sweep(F, state, bounds, newton=True), solver_state


class FixedPoint(Solver):
    """Even/odd fixed-point sweeps ``s <- clip(s - dF/ds)``, even layers then odd (Laborieux et
    al. 2021's asynchronous dynamics ``s <- sigma(dPhi/ds)`` for energies ``E = 1/2 ||s||^2 - Phi``).

    For energies with unit self-curvature and no intra-layer coupling (bilinear Hopfield nets,
    :class:`~eqjax.models.ConvHopfield` with the hopfield readout) a free-phase sweep equals
    :class:`BlockCoordinate`'s, and so does a nudged one with the cross-entropy (its Hessian's rows
    sum to zero); with the squared error :class:`BlockCoordinate` divides the outputs' step by
    ``1 + beta``. They differ where a layer is coupled within itself: with the projection readout
    of :class:`~eqjax.models.ConvHopfield`, the last hidden layer ``d`` updates as ``clip(field +
    (o - z) W_o^T)`` (``z = d W_o + b_o`` of the previous sweep), Laborieux et al.'s dynamics: in
    the free phase ``o = z`` and the readout does not act on the network; in a nudged phase
    ``o - z = -beta dC/do`` nudges ``d``. (:class:`BlockCoordinate` divides there by the Hessian's
    row sums ``1 + (W_o W_o^T 1)_i``, which are not the diagonal curvature.) A fixed point of the
    sweep is a stationary point of ``F`` in the box whatever the coupling; the energy need not
    decrease at every step. Real states only. ``tol`` is traced; ``max_steps`` and
    ``check_every`` static.
    """

    default_max_steps = 15

    def step(self, F, state, solver_state, bounds):
        return _even_odd_sweep(F, state, bounds, newton=False), solver_state


class Langevin(Solver):
    """Noisy projected gradient steps (overdamped Langevin dynamics, Euler-Maruyama):

    ``s <- clip(s - step_size * dF/ds + sqrt(2 * step_size * T_k) * xi, lo, hi)``,
    ``T_k = temperature * anneal**k`` at step ``k = 0, 1, ...``, ``xi`` standard normal, drawn
    independently per unit and per example.

    For a small step size and a fixed ``T`` the states sample ``p(s) ~ exp(-F(s) / T)`` (Roberts &
    Tweedie 1996) away from the box's faces (clipping puts the mass that would leave the box on its
    faces); on ``F = c/2 s^2`` without a box the chain's stationary variance is exactly
    ``T / (c (1 - step_size c / 2))``. With ``anneal < 1`` the temperature decays geometrically
    (simulated annealing, Kirkpatrick et al. 1983), for Ising-like annealing and noise-robustness
    studies of EP. At ``temperature = 0`` every step equals :class:`GradientDescent`'s.

    The PRNG key is a required argument of :meth:`init` (``eqjax.relax(..., key=key)``, or the
    key a training step receives); the solver state carries ``(key, k)`` through the loop, so a
    run is reproducible from its key and the states visited do not depend on ``check_every``.

    Complex states (a complex nudge on an unbounded model, holomorphic EP) follow the holomorphic
    gradient as in :class:`GradientDescent`, and the noise is real: it perturbs the physical
    (real) coordinates of the state, not the imaginary parts that holomorphic EP adds.

    Convergence is reported as for every solver: at ``T_k > 0`` a step rarely moves less than
    ``tol``, so runs usually end with ``RESULTS.MAX_STEPS``; with annealing they can converge.
    ``step_size``, ``temperature``, ``anneal`` and ``tol`` are traced (vmap over them, no
    recompiles); ``max_steps`` and ``check_every`` static.
    """

    step_size: float = 0.5
    temperature: float = 1e-3
    anneal: float = 1.0
    default_max_steps = 100

    def errors(self) -> dict:
        size, temperature, anneal = (jnp.asarray(v) for v in (self.step_size, self.temperature, self.anneal))
        return {**super().errors(),
                f"step_size must be a positive finite number{shown(self.step_size)}":
                    ~((size > 0) & jnp.isfinite(size)),
                f"temperature must be a finite number >= 0{shown(self.temperature)}":
                    ~((temperature >= 0) & jnp.isfinite(temperature)),
                f"anneal must be in (0, 1]{shown(self.anneal)}": ~((anneal > 0) & (anneal <= 1))}

    def init(self, F, state0, bounds, key):
        """``(key, k)``: the PRNG key the noise is drawn from and the step counter (int32, 0)."""
        if key is None:
            raise ValueError("Langevin draws noise: it needs a PRNG key (pass key=jax.random.key(...) to "
                             "eqjax.relax / eqjax.gradients / a training step)")
        return key, jnp.zeros((), jnp.int32)

    def temperature_at(self, k) -> jax.Array:
        """``T_k = temperature * anneal**k`` for the step index ``k`` (traced)."""
        return self.temperature * jnp.power(self.anneal, jnp.asarray(k, jnp.result_type(float)))

    def step(self, F, state, solver_state, bounds):
        key, k = solver_state
        key, draw = jax.random.split(key)
        grad = _state_gradient(F, state)
        drift = tuple(s - self.step_size * g for s, g in zip(state, grad))
        scale = jnp.sqrt(2 * self.step_size * self.temperature_at(k))
        noise_keys = jax.random.split(draw, len(drift))
        noisy = tuple(
            d + (scale * jax.random.normal(nk, d.shape, jnp.real(d).dtype)).astype(d.dtype)
            for d, nk in zip(drift, noise_keys)
        )
        return project(noisy, bounds), (key, k + 1)


def _rows(tree) -> list:
    """Each leaf of a batched pytree as ``(B, n_leaf)`` (a reshape, no copy)."""
    return [s.reshape(s.shape[0], -1) for s in jax.tree.leaves(tree)]


class AndersonState(struct.PyTreeNode):
    """Anderson's carried state (``B`` examples, ``m = history``; per state leaf ``l`` its
    ``n_l`` units per example, so the lists below have one array per leaf).

    Attributes:
      base: the base solver's own state.
      dg, df: ``[(B, m, n_l)]`` rings of the last ``m`` differences ``dx + mixing * df``, with
        ``dx = x_{i+1} - x_i`` the iterates' and ``df = f_{i+1} - f_i`` their residuals' (``f = G(x)
        - x``); ``position`` is the ring column written next.
      gram: ``(B, m, m)`` the inner products ``df_i . df_j`` over all leaves (one row updated per step).
      count: ``(B,)`` int32, how many of the newest columns are valid (0 after a restart).
      position: int32 scalar, the ring column written next (shared: all examples append together).
      x, f: ``[(B, n_l)]`` the previous iterate and its residual.
      started: bool scalar, ``x, f`` hold an iterate (false before the first step).
      accepted: ``(B,)`` bool, the last step took the extrapolation (diagnostics).
    """

    base: Any
    dg: list
    df: list
    gram: jax.Array
    count: jax.Array
    position: jax.Array
    x: list
    f: list
    started: jax.Array
    accepted: jax.Array


def _solve_positive_definite(matrix: jax.Array, rhs: jax.Array) -> jax.Array:
    """``matrix^{-1} rhs`` for a batch of small symmetric positive definite systems, ``(B, m, m)``
    and ``(B, m)``: Gauss-Jordan elimination without pivoting (stable for such matrices), one
    fused update of the augmented ``(B, m, m + 1)`` matrix per pivot, unrolled over the static
    ``m`` (for ``m <= 10`` a batched LAPACK call costs more than the arithmetic)."""
    m = matrix.shape[-1]
    augmented = jnp.concatenate([matrix, rhs[:, :, None]], axis=2)
    for k in range(m):
        pivot_row = augmented[:, k, :] / augmented[:, k, k][:, None]
        eliminated = augmented - augmented[:, :, k][:, :, None] * pivot_row[:, None, :]
        augmented = jnp.where((jnp.arange(m) == k)[None, :, None], pivot_row[:, None, :], eliminated)
    return augmented[:, :, m]


class Anderson(Solver):
    """Anderson acceleration (type II, Walker & Ni 2011) of another solver's update map, with an
    energy safeguard.

    The base solver's step ``G`` (by default a :class:`BlockCoordinate` sweep) is a fixed-point
    map whose fixed point is the equilibrium. Per example, with the residual ``f_k = G(x_k) - x_k``
    and the last ``m`` differences ``dX`` (of iterates) and ``dF`` (of residuals), both ``(n, m)``:

    ``gamma = argmin |f_k - dF gamma|^2 + lam |gamma|^2``, with ``lam = regularization *
    mean(diag(dF^T dF))`` (a ridge relative to the columns' scale), and the extrapolation

    ``a_k = clip(x_k + mixing * f_k - (dX + mixing * dF) gamma, lo, hi)``

    (``mixing = 1``: ``G(x_k) - dG gamma``). Each example solves its own ``m x m`` system:
    examples never interact, so the loop's freezing of non-finite examples works as for any solver.

    Safeguard (per example): the extrapolation is taken only when its energy is not above the
    plain update's, ``F(a_k) <= F(G(x_k))``; otherwise the step is the plain update ``G(x_k)``.
    The energy difference is ``dF/ds((a_k + G(x_k)) / 2) . (a_k - G(x_k))`` (the midpoint rule:
    exact for energies quadratic in the state, such as the bilinear Hopfield energy with a
    quadratic cost; accurate to third order otherwise), one more gradient of ``F`` per step.
    So every step lowers the energy at least as much as the base map from the same state does:
    for a base map that descends ``F`` (block-coordinate descent, small gradient steps) the
    relaxation converges like it or faster, never wandering off (a residual-based test does not
    guarantee this on non-convex energies). A rejected extrapolation clears the example's history.

    Stopping means the same as for the base map: when ``max|f_k| < tol``, or when the
    extrapolation would move less than ``tol`` (``max`` over the units), the plain update
    ``G(x_k)`` is taken. So a step smaller than ``tol``, which stops the loop, is always a plain
    step with ``max|G(x_k) - x_k| < tol``, the test :class:`BlockCoordinate` passes.

    One step is one base step (e.g. one sweep) plus one gradient of ``F`` and ``O(m n)`` per example.
    ``base`` is a pytree field (its traced leaves stay traced); its ``tol``, ``max_steps``,
    ``check_every`` and ``residual`` are ignored (Anderson's own count the steps; its residual is the
    default, the last step's size, which the safeguard's stopping rule above is written for).
    ``history`` is static (>= 1); ``mixing`` (in (0, 1]), ``regularization`` (>= 0) and ``tol`` are
    traced. Real states only (the safeguard compares real energies; relax complex states with
    :class:`GradientDescent`).
    """

    base: Solver = BlockCoordinate()
    history: int = struct.field(pytree_node=False, default=5)
    mixing: float = 1.0
    regularization: float = 1e-6
    default_max_steps = 15

    def __post_init__(self):
        super().__post_init__()
        m = self.history
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise ValueError(f"history must be a positive int, got {m!r}")
        if not isinstance(self.base, Solver):
            raise TypeError(f"base must be an eqjax.solvers.Solver, got {type(self.base).__name__}")

    def errors(self) -> dict:
        mixing, reg = jnp.asarray(self.mixing), jnp.asarray(self.regularization)
        own = {**super().errors(),
               f"mixing must be in (0, 1]{shown(self.mixing)}": ~((mixing > 0) & (mixing <= 1)),
               f"regularization must be a finite number >= 0{shown(self.regularization)}":
                   ~((reg >= 0) & jnp.isfinite(reg))}
        base = {f"Anderson's base solver: {message}": violated
                for message, violated in self.base.errors().items()}
        return {**own, **base}

    def init(self, F, state0, bounds, key) -> AndersonState:
        """Empty history; the base solver's state from its own ``init`` (``key`` passed on)."""
        if any(jnp.iscomplexobj(s) for s in jax.tree.leaves(state0)):
            raise TypeError("Anderson works on real states (its safeguard compares energies); relax complex "
                            "states with GradientDescent")
        flat, m = _rows(state0), self.history
        batch, dtype = flat[0].shape[0], flat[0].dtype
        ring = [jnp.zeros((batch, m, u.shape[1]), u.dtype) for u in flat]
        return AndersonState(base=self.base.init(F, state0, bounds, key), dg=ring, df=ring,
                             gram=jnp.zeros((batch, m, m), dtype), count=jnp.zeros((batch,), jnp.int32),
                             position=jnp.zeros((), jnp.int32), x=flat, f=[jnp.zeros_like(u) for u in flat],
                             started=jnp.zeros((), bool), accepted=jnp.zeros((batch,), bool))

    def coefficients(self, gram: jax.Array, valid: jax.Array, rhs: jax.Array) -> jax.Array:
        """``gamma`` ``(B, m)``: the ridge least-squares coefficients from the Gram matrix
        ``dF^T dF`` ``(B, m, m)`` and ``dF^T f`` ``(B, m)`` over the ``valid`` columns ``(B, m)``;
        zero on the others."""
        m = self.history
        diagonal = jnp.diagonal(gram, axis1=1, axis2=2)
        count = jnp.sum(valid, axis=1)
        scale = jnp.sum(jnp.where(valid, diagonal, 0), axis=1) / jnp.maximum(count, 1)
        ridge = self.regularization * scale + jnp.finfo(gram.dtype).tiny
        system = jnp.where(valid[:, :, None] & valid[:, None, :], gram, 0)
        system = system + jnp.where(valid, ridge[:, None], 1.0)[:, :, None] * jnp.eye(m, dtype=gram.dtype)
        return jnp.where(valid, _solve_positive_definite(system, jnp.where(valid, rhs, 0)), 0)

    def step(self, F, state, solver_state: AndersonState, bounds):
        previous, m, p = solver_state, self.history, solver_state.position
        g_state, base_state = self.base.step(F, state, previous.base, bounds)
        leaves, treedef = jax.tree.flatten(state)
        x = _rows(state)
        g = [u.astype(v.dtype) for u, v in zip(_rows(g_state), x)]
        f = [u - v for u, v in zip(g, x)]
        # The newest secant pair (x_prev -> x) goes into ring column p (a placeholder at the first
        # step). Contractions are einsums: XLA's CPU dot kernels beat broadcast-multiply-reduce here.
        dot = lambda ring, vectors: sum(jnp.einsum("bin,bn->bi", r, v) for r, v in zip(ring, vectors))
        newest = [u - v for u, v in zip(f, previous.f)]
        dg = [jax.lax.dynamic_update_index_in_dim(r, u - v + self.mixing * w, p, axis=1)
              for r, u, v, w in zip(previous.dg, x, previous.x, newest)]
        df = [jax.lax.dynamic_update_index_in_dim(r, u, p, axis=1) for r, u in zip(previous.df, newest)]
        row = dot(df, newest)  # (B, m): df_j . df_p
        is_p = jnp.arange(m) == p
        gram = jnp.where(is_p[None, :, None], row[:, None, :], previous.gram)
        gram = jnp.where(is_p[None, None, :], row[:, :, None], gram)
        count = jnp.where(previous.started, jnp.minimum(previous.count + 1, m), 0)
        valid = jnp.mod(p - jnp.arange(m), m)[None, :] < count[:, None]  # the newest `count` columns
        gamma = self.coefficients(gram, valid, dot(df, f))
        combined = [u - (1 - self.mixing) * v - jnp.einsum("bi,bin->bn", gamma, r) for u, v, r in zip(g, f, dg)]
        a_state = project(jax.tree.unflatten(treedef, [c.reshape(l.shape) for c, l in zip(combined, leaves)]),
                          bounds)
        a = _rows(a_state)
        # safeguard: F(a) - F(g) per example by the midpoint rule
        midpoint = jax.tree.map(lambda u, v: (u + v) / 2, a_state, g_state)
        slope = _rows(_state_gradient(F, midpoint))
        rise = sum(jnp.sum(d * (u - v), axis=1) for d, u, v in zip(slope, a, g))
        largest = lambda vectors: jnp.max(jnp.stack([jnp.max(jnp.abs(v), axis=1) for v in vectors]), axis=0)
        move = largest([u - v for u, v in zip(a, x)])
        accept = ((count > 0) & (rise <= 0) & jnp.all(jnp.isfinite(gamma), axis=1)
                  & (largest(f) >= self.tol) & (move >= self.tol))
        new = AndersonState(base=base_state, dg=dg, df=df, gram=gram,
                            count=jnp.where(accept | (count == 0), count, 0), position=jnp.mod(p + 1, m),
                            x=x, f=f, started=jnp.ones((), bool), accepted=accept)
        chosen = [jnp.where(accept[:, None], u, v).reshape(l.shape) for u, v, l in zip(a, g, leaves)]
        return jax.tree.unflatten(treedef, chosen), new
