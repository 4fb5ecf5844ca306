"""What an estimator reports about a batch besides its gradient: :class:`Estimate`."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
from flax import struct

from eqjax._equilibrium import Equilibrium
from eqjax.costs import predict

_FIELDS = ("loss", "accuracy", "prediction", "used", "extras")


@struct.dataclass
class Estimate:
    """The declared result of :meth:`Estimator.estimate <eqjax.estimators.Estimator.estimate>`
    next to the gradient (a pytree: it goes through ``jax.jit``, ``vmap`` and ``shard_map``).

    Every array has the batch ``B`` as its leading axis (a phase relaxed for several nudges, as
    :class:`~eqjax.estimators.HolomorphicEP`'s, has ``(B, N)``), so :mod:`eqjax.parallel` splits
    every leaf over the batch.

    Attributes:
      loss: ``(B,)`` the cost at the free equilibrium; NaN for an example whose free phase went
        non-finite or that was flagged invalid.
      accuracy: ``(B,)`` 1 where the prediction equals the label, 0 elsewhere (and for those
        examples).
      prediction: ``(B,)`` int, the class predicted at the free equilibrium.
      used: ``(B,)`` bool, the example entered the gradient (finite in every phase).
      phases: ``{name: Equilibrium}``, every relaxation the estimator ran, ``"free"`` first (the
        state reached, per-example ``num_steps``, ``residual`` and ``status``); EP adds
        ``"positive"`` and/or ``"negative"``, the clamping rules ``"clamped"`` or the two clamped
        phases, holomorphic EP ``"nudged"``.
      extras: ``{name: value}``, the estimator's own values for the training metrics, each a real
        scalar ``()`` or a per-example ``(B,)`` array (see :class:`~eqjax.estimators.Estimator`).
    """

    loss: jax.Array
    accuracy: jax.Array
    prediction: jax.Array
    used: jax.Array
    phases: dict
    extras: dict = struct.field(default_factory=dict)

    @classmethod
    def at_free_phase(cls, model, cost, free: Equilibrium, y) -> "Estimate":
        """The estimate of a free phase alone: loss, accuracy and prediction of ``model`` with
        ``cost`` at the batched equilibrium ``free`` for the labels ``y`` ``(B,)``; every finite
        example is ``used``. Estimators add their other phases with :meth:`with_phases`."""
        outputs = jax.vmap(model.output)(free.state)
        prediction = predict(outputs)
        loss = jax.vmap(cost)(outputs, y)
        if loss.shape != prediction.shape:
            raise TypeError(f"the cost must return one scalar per example, got shape {loss.shape[1:]} per example")
        return cls(loss=jnp.where(free.nonfinite, jnp.nan, loss),
                   accuracy=((prediction == y) & ~free.nonfinite).astype(loss.dtype),
                   prediction=prediction, used=~free.nonfinite, phases={"free": free})

    def with_phases(self, used: jax.Array, **phases: Equilibrium) -> "Estimate":
        """A copy with the relaxations ``phases`` added and ``used`` ``(B,)`` replaced."""
        return self.replace(phases={**self.phases, **phases}, used=used)

    @property
    def free(self) -> Equilibrium:
        """The free phase's :class:`~eqjax.Equilibrium`."""
        return self.phases["free"]

    @property
    def free_state(self):
        """The free equilibrium's batched state (for warm starts and persistent particles)."""
        return self.phases["free"].state

    def statuses(self) -> dict:
        """``{phase name: status}``, the :class:`~eqjax.RESULTS` codes of every phase."""
        return {name: equilibrium.status for name, equilibrium in self.phases.items()}

    def __getitem__(self, name: str):
        """Deprecated: the former dict access (``aux["loss"]``, ``aux["free"]["converged"]``); use
        the attributes (``aux.loss``, ``aux.free.converged``)."""
        warnings.warn(f'Estimate[{name!r}] is deprecated: use attributes, e.g. aux.loss, aux.free.converged, '
                      "aux.free_state", DeprecationWarning, stacklevel=2)
        if name in self.phases:
            return self.phases[name].summary()
        if name in _FIELDS or name == "free_state":
            return getattr(self, name)
        raise KeyError(name)
