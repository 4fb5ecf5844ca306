"""Analog hardware: SPICE export of resistive networks, circuit checks, memristor device models."""

from eqjax.analog import devices
from eqjax.analog.circuit import check_circuit
from eqjax.analog.spice import read_operating_point, run_ngspice, to_spice

__all__ = ["check_circuit", "devices", "read_operating_point", "run_ngspice", "to_spice"]
