"""The estimator interface and the pieces every phase-contrast rule shares.

Every estimator subclasses :class:`Estimator` and returns ``(grads, estimate)`` from
``estimator.estimate(model, cost, solver, params, x, y, state0=None, key=None)`` on a batch
(``x`` ``(B, *input_shape)``, ``y`` ``(B,)``):

- ``grads`` has the structure of ``params`` and follows optax's convention: a direction to descend.
  Gradient estimators (EP, holomorphic EP, the references) estimate ``d/dparams mean_b L_b`` with
  ``L_b = C(output(s0_b), y_b)`` the loss at the free equilibrium; contrastive and coupled learning
  are not gradients of a loss in general (see :mod:`eqjax.verify` to measure how far they are);
- ``estimate`` is an :class:`~eqjax.estimators.Estimate`: per-example ``loss``, ``accuracy``,
  ``prediction`` and ``used`` (the example entered the gradient), every phase's
  :class:`~eqjax.Equilibrium` in ``phases`` (``free_state`` is the free one's state, for warm
  starts and persistent particles), and the estimator's own values for the training metrics in
  ``extras``.
"""

from __future__ import annotations

import abc
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from eqjax.estimators.estimate import Estimate
from eqjax.loop import check_budget, select_examples
from eqjax.phases import Free
from eqjax._relaxation import relax_unchecked


class Estimator(struct.PyTreeNode, abc.ABC):
    """The interface of a gradient estimator (a frozen pytree dataclass; numeric fields traced).

    ``estimate`` returns ``(grads, estimate)``, ``estimate`` an :class:`Estimate` (see
    :mod:`eqjax.estimators.base`). An estimator's own values reach the training metrics through
    ``Estimate.extras``, a dict ``{name: value}`` with each value a real scalar ``()`` or a
    per-example array ``(B,)``: :func:`eqjax.summarize` (hence ``train_step``, ``train_epoch`` and
    ``train_chunk``) reports it as ``metrics[name]``, a scalar as it is and a per-example array as
    its batch mean (the estimator decides what a non-finite example contributes, e.g.
    ``jnp.where(estimate.used, value, jnp.nan)``). A name that is a built-in metric (``loss``,
    ``accuracy``, ``used``, ``skipped``, ``free_steps``...), a value of another shape or a complex
    value is refused with an error when the step is traced. Under :mod:`eqjax.parallel` each shard
    computes its extras on its own examples, and a scalar comes back as the mean over the shards.
    """

    @abc.abstractmethod
    def estimate(self, model, cost, solver, params, x, y, state0=None, key=None) -> tuple:
        """``(grads, estimate)`` for the batch, ``estimate`` an :class:`Estimate` (see the module
        docstring)."""

    def errors(self) -> dict:
        """``{message: violated}`` for the estimator's traced hyperparameters (see ``eqjax._checks``)."""
        return {}


def extra_values(estimate: Estimate) -> dict:
    """``{name: scalar}`` from ``estimate.extras``: scalars as they are, per-example ``(B,)``
    arrays as their batch mean, ``B = estimate.loss.shape[0]``. Checked at trace time: a dict of
    real scalars or ``(B,)`` arrays under string names."""
    extras = estimate.extras
    if not isinstance(extras, dict):
        raise TypeError(f"Estimate.extras must be a dict {{name: scalar or (B,) array}}, got {type(extras).__name__}")
    batch = jnp.shape(estimate.loss)[0]
    values = {}
    for name, value in extras.items():
        value = jnp.asarray(value)
        if not isinstance(name, str):
            raise ValueError(f"Estimate.extras names must be strings, got {name!r}")
        if value.shape not in ((), (batch,)) or jnp.iscomplexobj(value):
            raise TypeError(f"Estimate.extras[{name!r}] must be a real scalar or a ({batch},) array (one value per "
                            f"example), got {value.dtype} of shape {value.shape}")
        values[name] = jnp.mean(value) if value.ndim else value
    return values


def add_extras(metrics: dict, extras: dict, taken: tuple = ()) -> dict:
    """``metrics`` with the :func:`extra_values` ``extras`` added; ``ValueError`` at trace time when
    an extra's name is already a metric or in ``taken`` (names set later, such as ``skipped``)."""
    clashes = sorted(set(extras) & (set(metrics) | set(taken)))
    if clashes:
        raise ValueError(f"Estimate.extras names {clashes} clash with built-in training metrics; rename them "
                         f"(built-in: {sorted(set(metrics) | set(taken))})")
    return {**metrics, **extras}


def contrast_gradient(model, params, high, low, x, scale, used) -> dict:
    """``d/dparams`` of ``mean_b [E(high_b) - E(low_b)] / scale`` over the examples marked ``used``
    ``(B,)``, through ``model.energy_differences`` (which may factor the difference so that it keeps
    its precision when ``high`` and ``low`` are close, see :meth:`Hopfield.energy_difference`).
    Unused examples (non-finite in some phase) are replaced by zeros before differentiating, so
    their NaNs cannot reach the gradient. ``scale`` is a traced scalar (e.g. ``beta`` or ``2 beta``);
    when it or the states are complex (holomorphic EP) the real part of the contrast is differentiated."""
    high, low = jax.lax.stop_gradient((high, low))
    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
    high, low, x = (select_examples(used, t, zeros(t)) for t in (high, low, x))
    count = jnp.maximum(jnp.sum(used), 1)

    def contrast(p):
        differences = model.energy_differences(p, high, low, x)
        return jnp.real(jnp.sum(jnp.where(used, differences, 0.0)) / (count * scale))

    return jax.grad(contrast)(params)


def relax_phases(model, cost, solver, second_steps, params, x, y, state0, key, warm_start: bool,
                 second_phases: Callable) -> Estimate:
    """The free phase, then the phases ``second_phases(free_state) -> {name: Phase}`` (they may
    depend on the free equilibrium, e.g. coupled learning's clamp target).

    The second phases start from the free equilibrium when ``warm_start`` (static), else from the
    model's start state, and are relaxed by ``solver`` with the budget ``second_steps`` (static;
    ``None``: the solver's ``max_steps``). The input field (``model.prepare``) is computed once for
    all phases.

    Returns the :class:`Estimate` of the free phase with every second phase added and ``used``
    (finite in every phase).
    """
    prepared = model.prepare(params, x)
    free = relax_unchecked(model, cost, solver, params, x, None, Free(), state0, _split(key, 0), prepared)
    start = jax.lax.stop_gradient(free.state) if warm_start else None
    equilibria = {"free": free}
    for k, (name, phase) in enumerate(second_phases(jax.lax.stop_gradient(free.state)).items(), start=1):
        equilibria[name] = relax_unchecked(model, cost, solver, params, x, y, phase, start, _split(key, k),
                                           prepared, second_steps)
    used = ~jnp.any(jnp.stack([eq.nonfinite for eq in equilibria.values()]), axis=0)
    return Estimate.at_free_phase(model, cost, free, y).with_phases(used, **equilibria)


def _split(key, index: int):
    """The ``index``-th of three keys split from ``key`` (``None`` stays ``None``)."""
    return None if key is None else jax.random.split(key, 3)[index]


def check_second_steps(steps, name: str) -> None:
    """``ValueError`` unless a second phases' budget ``steps`` is ``None`` or an int >= 0."""
    if steps is not None:
        check_budget(steps, name)
