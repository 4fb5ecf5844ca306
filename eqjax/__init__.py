"""eqjax: equilibrium propagation and energy-based learning in JAX."""

from eqjax import analog, costs, data, estimators, loop, models, phases, solvers, sweep, synthetic
from eqjax._checks import check_inputs, check_params
from eqjax.api import error_rate, evaluate, gradients, relax
from eqjax.equilibrium import RESULTS, Equilibrium
from eqjax.relaxation import relax_batch
from eqjax.train import set_hyperparams, summarize, train_chunk, train_epoch, train_step
from eqjax import images, parallel, verify  # noqa: E402 (after api: they build on gradients and relax)

__version__ = "0.1.0"

__all__ = [
    "RESULTS",
    "Equilibrium",
    "analog",
    "check_inputs",
    "check_params",
    "costs",
    "data",
    "error_rate",
    "estimators",
    "evaluate",
    "gradients",
    "images",
    "loop",
    "models",
    "parallel",
    "phases",
    "relax",
    "relax_batch",
    "set_hyperparams",
    "solvers",
    "synthetic",
    "summarize",
    "sweep",
    "train_chunk",
    "train_epoch",
    "train_step",
    "verify",
]
