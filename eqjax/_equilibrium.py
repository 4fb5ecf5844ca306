"""What a relaxation returns: the state reached and, per example, how the relaxation ended."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


class RESULTS:
    """Per-example outcome codes of a relaxation (``int8``), in the manner of optimistix's ``RESULTS``.

    - ``CONVERGED`` (0): the solver's residual at the last test (by default the last tested
      update, see :meth:`eqjax.solvers.Solver.residual`) was smaller than ``tol``;
    - ``MAX_STEPS`` (1): ``max_steps`` updates ran without reaching ``tol`` (with ``tol = 0``, a
      fixed-step run, every example ends here);
    - ``NONFINITE`` (2): the example's state or update became NaN or infinite (an input or parameter
      that is not finite, or a diverging step size). Its state is frozen at its last finite tested
      value and it no longer takes part in the stopping test, so the other examples of the batch run
      exactly as they would without it;
    - ``INVALID_INPUT`` (3): the example's input holds a NaN or an infinity;
    - ``INVALID_LABEL`` (4): its label is outside ``[0, num_outputs)``.

    The last two are set by the entry points (``relax``, ``gradients``, ``evaluate``,
    ``train_step``) before relaxing, also inside ``jax.jit`` (see :func:`screen_examples`): such an
    example is frozen at its start state, left out of every gradient and counted in the metrics,
    and the rest of the batch runs exactly as without it.
    """

    CONVERGED = 0
    MAX_STEPS = 1
    NONFINITE = 2
    INVALID_INPUT = 3
    INVALID_LABEL = 4


@struct.dataclass
class Equilibrium:
    """The result of a relaxation of a batch (leading axis ``B`` on every array).

    Attributes:
      state: the state reached (the model's state pytree, batched).
      num_steps: ``(B,)`` int32, the steps each example needed: the step count of the test from
        which on it passed every stopping test (``CONVERGED``); the steps the batch ran
        (``max_steps``) for an example whose last test failed (``MAX_STEPS``); the count of the
        test whose state it is frozen at for ``NONFINITE`` ones (0 for examples flagged before
        relaxing). The batch moves together, so an example that converged early keeps being
        updated until the batch stops: ``state`` is that of the steps the batch ran, which is
        ``num_steps.max()`` unless the last example still running went non-finite at the last test
        (see :func:`eqjax.loop.iterate`).
      residual: ``(B,)`` the solver's residual at the last test (:meth:`eqjax.solvers.Solver.residual`;
        by default the last tested update's size ``max|s_k - s_{k-1}|`` per example; for a
        contractive update ``T`` it bounds the returned state's own ``max|T(s) - s|``). NaN or inf
        for ``NONFINITE`` examples.
      status: ``(B,)`` int8 codes of :class:`RESULTS`.
    """

    state: object
    num_steps: jax.Array
    residual: jax.Array
    status: jax.Array

    @property
    def converged(self) -> jax.Array:
        """``(B,)`` bool: the example reached the tolerance."""
        return self.status == RESULTS.CONVERGED

    @property
    def nonfinite(self) -> jax.Array:
        """``(B,)`` bool: the example went NaN or infinite and was frozen."""
        return self.status == RESULTS.NONFINITE

    def summary(self) -> dict:
        """Per-example diagnostics as a dict: ``num_steps``, ``residual``, ``status``, ``converged``."""
        return {"num_steps": self.num_steps, "residual": self.residual, "status": self.status,
                "converged": self.converged}


def status_from(residual: jax.Array, frozen: jax.Array, tol) -> jax.Array:
    """``RESULTS`` codes from the residuals of the last test ``(B,)`` and the frozen mask ``(B,)``."""
    code = jnp.where(residual < tol, RESULTS.CONVERGED, RESULTS.MAX_STEPS)
    return jnp.where(frozen, RESULTS.NONFINITE, code).astype(jnp.int8)


def screen_examples(model, x, y):
    """Flag the examples of a batch that cannot be trained on, inside jit: ``(x, y, codes)``.

    ``codes`` ``(B,)`` int8 is ``INVALID_INPUT`` where a row of ``x`` ``(B, *input_shape)`` is not
    finite, ``INVALID_LABEL`` where ``y`` ``(B,)`` (or ``None``) is outside ``[0,
    model.num_outputs)``, ``0`` elsewhere. The flagged rows of ``x`` are returned as NaN, so the
    relaxation loop freezes them (``NONFINITE``) and every estimator leaves them out of its
    gradient, whatever the model does with an infinity (a box can clip it to a finite state while
    the weight update multiplies it by zero); their labels are returned as 0. Use
    :func:`mark_examples` to put the codes back in place of ``NONFINITE``.
    """
    batch = x.shape[0]
    bad_input = ~jnp.all(jnp.isfinite(x.reshape(batch, -1)), axis=1)
    codes = jnp.where(bad_input, RESULTS.INVALID_INPUT, 0)
    if y is not None:
        bad_label = (y < 0) | (y >= model.num_outputs)
        codes = jnp.where(bad_input, codes, jnp.where(bad_label, RESULTS.INVALID_LABEL, 0))
        y = jnp.where(bad_label, 0, y).astype(y.dtype)
    flagged = (codes > 0).reshape((batch,) + (1,) * (x.ndim - 1))
    return jnp.where(flagged, jnp.asarray(jnp.nan, x.dtype), x), y, codes.astype(jnp.int8)


def mark_examples(status: jax.Array, codes: jax.Array) -> jax.Array:
    """``status`` ``(B,)`` (or ``(B, ...)``, several relaxations per example) with
    :func:`screen_examples`'s nonzero ``codes`` ``(B,)`` in place."""
    codes = codes.reshape(codes.shape + (1,) * (status.ndim - 1))
    return jnp.where(codes > 0, codes, status).astype(status.dtype)
