"""eqjax: equilibrium propagation and energy-based learning in JAX."""

from eqjax import analog, costs, data, estimators, models, solvers, synthetic
from eqjax._checks import check_inputs, check_params
from eqjax.api import evaluate, gradients, relax
from eqjax.solvers import Equilibrium
from eqjax.train import summarize, train_chunk, train_epoch, train_step, warm_start_step

__version__ = "0.1.0"

__all__ = [
    "Equilibrium",
    "analog",
    "check_inputs",
    "check_params",
    "costs",
    "data",
    "estimators",
    "evaluate",
    "gradients",
    "models",
    "relax",
    "solvers",
    "synthetic",
    "summarize",
    "train_chunk",
    "train_epoch",
    "train_step",
    "warm_start_step",
]
