"""Analog hardware: SPICE export of resistive networks, circuit checks, memristor device models."""

import warnings

from eqjax.analog import memristors
from eqjax.analog.circuit import check_circuit
from eqjax.analog.spice import read_operating_point, run_ngspice, to_spice

__all__ = ["check_circuit", "memristors", "read_operating_point", "run_ngspice", "to_spice"]


def __getattr__(name):
    if name == "devices":  # the module's former name (devices meant memristors, not JAX devices)
        warnings.warn("eqjax.analog.memristors is now eqjax.analog.memristors", DeprecationWarning, stacklevel=2)
        return memristors
    raise AttributeError(f"module 'eqjax.analog' has no attribute {name!r}")
