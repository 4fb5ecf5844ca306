"""SPICE netlists of resistive networks and ngspice's DC operating point, for checking eqjax's
equilibria against a real circuit simulator.

Node names: ``in<k>`` (input sources), ``n<l>_<j>`` (node ``j`` of free layer ``l``, from 1),
``vbp``/``vbn`` (bias sources at ``+/-bias_voltage``), ``a_<node>`` (an amplifier's output).
Resistors of zero conductance are left out. Bias currents (``bias="current"``) become current
sources ``Ib<l>_<j>`` from ground into their node.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from eqjax._checks import check_params
from eqjax.analog.circuit import check_circuit
from eqjax.models.resistive import Resistive

DIODE_MODEL = "DEQJAX"


def _fmt(value: float) -> str:
    return f"{float(value):.17g}"


def _amplifier(lines: list, node: str, gain: float) -> str:
    """A bidirectional amplifier on ``node``: a VCVS drives ``a_<node>`` at ``gain * V(node)``, a 0 V
    source senses its output current and a CCCS draws ``gain`` times that current from ``node``.
    Returns the output node."""
    out = f"a_{node}"
    lines += [f"Eamp_{node} {out}_raw 0 {node} 0 {_fmt(gain)}", f"Vsense_{node} {out}_raw {out} DC 0",
              f"Famp_{node} {node} 0 Vsense_{node} {_fmt(gain)}"]
    return out


def _check_export(model, params, y, beta) -> None:
    """The checks of :func:`to_spice`: a resistive network SPICE can simulate, a physical nudge
    (``beta >= 0``) and one label in range."""
    if not isinstance(model, Resistive):
        raise TypeError(f"to_spice exports resistive networks (eqjax.models.resistive), got {type(model).__name__}")
    if model.diode == "ideal":
        raise ValueError("ideal diodes have no SPICE element: export a network with "
                         "diode='shockley' or diode='none'")
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite non-negative number for a physical nudging resistor, got {beta}")
    if y is not None and not (isinstance(y, (int, np.integer)) or (np.ndim(y) == 0 and
                                                                   np.issubdtype(np.asarray(y).dtype, np.integer))):
        raise TypeError(f"y must be one integer label, got {y!r}")
    if y is not None and not 0 <= int(y) < model.num_outputs:
        raise ValueError(f"y must be a label in [0, {model.num_outputs - 1}], got {y}")
    check_params(model, params)
    check_circuit(model, params)


def to_spice(model, params, x, y=None, beta: float = 0.0, title: str = "eqjax resistive network") -> str:
    """A SPICE netlist of one example's circuit, with a ``.control`` block that prints the DC
    operating point to 15 digits.

    Args:
      model: a :class:`~eqjax.models.Resistive` network with ``diode="shockley"`` or ``"none"``
        (ideal diodes have no SPICE element).
      params: its concrete parameters (checked with :func:`check_circuit`).
      x: one input, shape ``(n_in,)``.
      y: optional label to nudge towards with the squared-error cost
        ``1/2 ||V_out - onehot(y)||^2``.
      beta: the nudging strength: a resistor of conductance ``beta`` from each output node to a
        source at its target voltage, which injects the current ``-beta dC/dV``.
    """
    _check_export(model, params, y, beta)
    x = np.asarray(x, np.float64)
    if x.shape != (model.num_inputs,) or not np.all(np.isfinite(x)):
        raise ValueError(f"x must be a finite array of shape ({model.num_inputs},), got {x.shape}")
    inputs = model.input_gain * np.concatenate([x, -x])
    lines = [f"* {title}", f"Vbp vbp 0 DC {_fmt(model.bias_voltage)}",
             f"Vbn vbn 0 DC {_fmt(-model.bias_voltage)}"]
    lines += [f"Vin{k} in{k} 0 DC {_fmt(v)}" for k, v in enumerate(inputs)]
    names = [[f"in{k}" for k in range(len(inputs))]]
    names += [[f"n{l + 1}_{j}" for j in range(n)] for l, n in enumerate(model.sizes[1:])]
    for l, g in enumerate(params["conductances"]):
        sources = names[l]
        if l > 0 and model.amplifier_gain is not None:
            sources = [_amplifier(lines, node, model.amplifier_gain) for node in names[l]]
        for i, j in zip(*np.nonzero(np.asarray(g))):
            lines.append(f"R{l + 1}_{i}_{j} {sources[i]} {names[l + 1][j]} {_fmt(1.0 / g[i, j])}")
    _bias_elements(lines, params, names)
    if model.diode == "shockley":
        _diode_elements(lines, model, names)
    if y is not None and beta > 0:
        for j in range(model.num_outputs):
            lines.append(f"Vt{j} t{j} 0 DC {_fmt(1.0 if j == int(y) else 0.0)}")
            lines.append(f"Rnudge{j} {names[-1][j]} t{j} {_fmt(1.0 / beta)}")
    lines += [".options reltol=1e-12 vntol=1e-14 abstol=1e-18 gmin=1e-18 itl1=1000",
              ".control", "set numdgt=15", "op", "print all", ".endc", ".end", ""]
    return "\n".join(lines)


def _bias_elements(lines: list, params, names) -> None:
    """Append the bias current sources and the bias resistors to the rails."""
    for l, currents in enumerate(params.get("bias_currents", ())):
        for j, current in enumerate(np.asarray(currents)):  # from ground into the node
            lines.append(f"Ib{l + 1}_{j} 0 {names[l + 1][j]} DC {_fmt(current)}")
    for l, (gp, gm) in enumerate(zip(params.get("bias_plus", ()), params.get("bias_minus", ()))):
        for j, (a, b) in enumerate(zip(np.asarray(gp), np.asarray(gm))):
            if a > 0:
                lines.append(f"Rbp{l + 1}_{j} {names[l + 1][j]} vbp {_fmt(1.0 / a)}")
            if b > 0:
                lines.append(f"Rbn{l + 1}_{j} {names[l + 1][j]} vbn {_fmt(1.0 / b)}")


def _diode_elements(lines: list, model, names) -> None:
    """Append one Shockley diode per boxed unit (its sign says which bound) and the diode model."""
    for layer in range(len(model.sizes) - 1):
        for j, sign in enumerate(model.diode_signs(layer)):
            node = names[layer + 1][j]
            if sign > 0:  # holds the node at or above 0 V: anode at ground
                lines.append(f"D{layer + 1}_{j} 0 {node} {DIODE_MODEL}")
            elif sign < 0:
                lines.append(f"D{layer + 1}_{j} {node} 0 {DIODE_MODEL}")
    lines.append(f".model {DIODE_MODEL} D(IS={_fmt(model.saturation_current)} "
                 f"N={_fmt(model.emission_coefficient)})")


def run_ngspice(netlist: str, timeout: float = 60.0) -> str:
    """Run ``ngspice -b`` on a netlist and return its standard output."""
    executable = shutil.which("ngspice")
    if executable is None:
        raise FileNotFoundError("ngspice not found: install it (Debian: apt-get install ngspice)")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "circuit.cir"
        path.write_text(netlist)
        done = subprocess.run([executable, "-b", str(path)], capture_output=True, text=True,
                              timeout=timeout, cwd=folder)
    # with a .control block, batch mode exits 1 ("no simulations run") even when `op` succeeded
    if "No. of Data Rows" not in done.stdout:
        raise RuntimeError(f"ngspice failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def read_operating_point(output: str, model) -> tuple:
    """Node voltages of the free layers from ngspice's ``print all`` output, as a state tuple."""
    values = dict(
        (m.group(1).lower(), float(m.group(2)))
        for m in re.finditer(r"^\s*([\w#]+)\s*=\s*([-+0-9.eE]+)\s*$", output, re.MULTILINE)
    )
    state = []
    for l, n in enumerate(model.sizes[1:]):
        try:
            state.append(np.array([values[f"n{l + 1}_{j}"] for j in range(n)]))
        except KeyError as missing:
            raise RuntimeError(f"ngspice printed no voltage for node {missing}") from None
    return tuple(state)
