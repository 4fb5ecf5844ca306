"""Validity checks of a resistive network's parameters as a physical circuit."""

from __future__ import annotations

import numpy as np


def check_circuit(model, params) -> None:
    """Raise ``ValueError`` when the circuit cannot be built or has no unique operating point.

    - every conductance must be finite and non-negative (a resistor cannot have negative
      conductance);
    - every free node must have a path of positive conductances to a voltage source (an input or
      a bias source); a floating node's potential is undetermined;
    - bias currents (``bias="current"``) must be finite.
    ``params`` must be concrete (NumPy-convertible) arrays.
    """
    for name in model.conductance_keys:
        for layer, g in enumerate(params[name]):
            g = np.asarray(g)
            if not np.all(np.isfinite(g)):
                raise ValueError(f"params['{name}'][{layer}] contains NaN or infinite conductances")
            if np.any(g < 0):
                raise ValueError(
                    f"params['{name}'][{layer}] has negative conductances (min {g.min():.3g} S); "
                    "clip them to be non-negative (see eqjax.analog.memristors.conductance_bounds)"
                )
    for layer, current in enumerate(params.get("bias_currents", ())):
        if not np.all(np.isfinite(np.asarray(current))):
            raise ValueError(f"params['bias_currents'][{layer}] contains NaN or infinite currents")
    # propagate "connected to a source" through the layers until nothing changes
    layers = [np.asarray(g) > 0 for g in params["conductances"]]
    if model.bias == "conductance":
        connected = [
            (np.asarray(gp) > 0) | (np.asarray(gm) > 0)
            for gp, gm in zip(params["bias_plus"], params["bias_minus"])
        ]
    else:  # current sources fix no potential
        connected = [np.zeros(g.shape[1], bool) for g in layers]
    connected[0] = connected[0] | layers[0].any(axis=0)  # edges to the input sources
    changed = True
    while changed:
        changed = False
        for l in range(1, len(layers)):
            down = connected[l] | (layers[l] & connected[l - 1][:, None]).any(axis=0)
            up = connected[l - 1] | (layers[l] & connected[l][None, :]).any(axis=1)
            if (down != connected[l]).any() or (up != connected[l - 1]).any():
                connected[l], connected[l - 1], changed = down, up, True
    for l, ok in enumerate(connected):
        if not ok.all():
            raise ValueError(
                f"floating nodes with no conductive path to a source in layer {l + 1}: "
                f"{np.flatnonzero(~ok).tolist()[:10]}"
            )
