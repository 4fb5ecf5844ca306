"""eqjax: equilibrium propagation and energy-based learning in JAX."""

from eqjax import analog, costs, data, estimators, loop, models, phases, solvers, sweep, synthetic
from eqjax._checks import check_inputs, check_params
from eqjax._api import error_rate, evaluate, gradients, relax
from eqjax._equilibrium import RESULTS, Equilibrium
from eqjax._relaxation import relax_unchecked, total_energy
from eqjax._train import set_hyperparams, summarize, train_chunk, train_epoch, train_step
from eqjax import images, parallel, testing, verify  # noqa: E402 (after api: they build on gradients and relax)

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
    "relax_unchecked",
    "set_hyperparams",
    "solvers",
    "synthetic",
    "testing",
    "total_energy",
    "summarize",
    "sweep",
    "train_chunk",
    "train_epoch",
    "train_step",
    "verify",
]
