"""What a relaxation returns: the state reached and, per example, how the relaxation ended."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


class RESULTS:
    """Per-example outcome codes of a relaxation (``int8``), in the manner of optimistix's ``RESULTS``.

    - ``CONVERGED`` (0): the last tested update was smaller than ``tol``;
    - ``MAX_STEPS`` (1): ``max_steps`` updates ran without reaching ``tol`` (with ``tol = 0``, a
      fixed-step run, every example ends here);
    - ``NONFINITE`` (2): the example's state or update became NaN or infinite (an input or parameter
      that is not finite, or a diverging step size). Its state is frozen at its last finite tested
      value and it no longer takes part in the stopping test, so the other examples of the batch run
      exactly as they would without it.
    """

    CONVERGED = 0
    MAX_STEPS = 1
    NONFINITE = 2


@struct.dataclass
class Equilibrium:
    """The result of a relaxation of a batch (leading axis ``B`` on every array).

    Attributes:
      state: the state reached (the model's state pytree, batched).
      num_steps: ``(B,)`` int32, updates applied to each example (its last finite one for
        ``NONFINITE`` examples).
      residual: ``(B,)`` the last tested update's size ``max|s_k - s_{k-1}|`` per example; for a
        contractive update ``T`` it bounds the returned state's own ``max|T(s) - s|``. NaN or inf
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
    """``RESULTS`` codes from the last tested update sizes ``(B,)`` and the frozen mask ``(B,)``."""
    code = jnp.where(residual < tol, RESULTS.CONVERGED, RESULTS.MAX_STEPS)
    return jnp.where(frozen, RESULTS.NONFINITE, code).astype(jnp.int8)
