"""Gradient estimators and learning rules behind one interface, :class:`Estimator`.

| estimator | rule | bias of ``g`` against the loss gradient |
|---|---|---|
| :class:`EP` | equilibrium propagation, positive / negative / centered | ``O(beta)`` / ``O(beta)`` / ``O(beta^2)`` |
| :class:`RandomSign` | EP, the sign of ``beta`` drawn from the key per call | EP's; one-sided ones cancel on average |
| :class:`HolomorphicEP` | ``N`` complex nudges, first Fourier coefficient | ``O(beta^N)`` |
| :class:`Contrastive` | output clamped to the target | not a gradient in general |
| :class:`Coupled` | output clamped to ``o + eta (t - o)``, three forms | not a gradient in general |
| :class:`ImplicitDiff` | implicit function theorem at the free equilibrium | exact at a strict minimum |
| :class:`BPTT` | backpropagation through the unrolled relaxation | exact for the unrolled map |
| :class:`FiniteDifferences` | central differences of the loss | ``O(epsilon^2)`` |

See :mod:`eqjax.estimators.base` for the ``estimate`` contract (and :class:`Estimate`, the
declared result next to the gradient, whose ``extras`` are an estimator's own training metrics)
and :mod:`eqjax.verify` to measure any estimator against a reference.
"""

from eqjax.estimators.base import Estimator, contrast_gradient, relax_phases
from eqjax.estimators.estimate import Estimate
from eqjax.estimators.clamped import Contrastive, Coupled, one_hot_target
from eqjax.estimators.ep import EP, EP_CONTRASTS, RandomSign
from eqjax.estimators.holomorphic import HolomorphicEP, check_holomorphic_model
from eqjax.estimators.references import BPTT, FiniteDifferences, ImplicitDiff

__all__ = ["BPTT", "EP", "EP_CONTRASTS", "Contrastive", "Coupled", "Estimate", "Estimator", "FiniteDifferences",
           "HolomorphicEP", "ImplicitDiff", "RandomSign", "check_holomorphic_model", "contrast_gradient",
           "one_hot_target", "relax_phases"]
