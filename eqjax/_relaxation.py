"""Relaxing a batch: the model's energy plus a phase, minimised by a solver."""

from __future__ import annotations

import jax

from eqjax._equilibrium import Equilibrium
from eqjax.loop import iterate
from eqjax.phases import Free, Phase


def total_energy(model, cost, phase: Phase, prepared, x, y):
    """``F(states)``: the batch's summed energy (from :meth:`EnergyModel.prepare`'s ``prepared``)
    plus what ``phase`` adds, as a function of the batched state."""

    def F(states):
        return model.relaxation_energy(prepared, states, x) + phase.energy(model, cost, states, y)

    return F


def relax_unchecked(model, cost, solver, params, x, y=None, phase: Phase = Free(), state0=None, key=None,
                    prepared=None, max_steps: int | None = None) -> Equilibrium:
    """Relax a batch without input checks (the jit-friendly core of :func:`eqjax.relax`).

    Shapes: ``x`` ``(B, *model.input_shape)``; ``y`` ``(B,)`` or ``None``; ``state0`` a batched state
    or ``None`` (``model.init_state`` per example), adapted by ``phase.start``; ``key`` for
    stochastic solvers; ``prepared`` the batch's ``model.prepare(params, x)`` when the caller shares
    it between phases (computed here when ``None``); ``max_steps`` (static) a budget other than the
    solver's own (see :func:`eqjax.loop.iterate`). Returns a batched :class:`Equilibrium`.
    """
    if prepared is None:
        prepared = model.prepare(params, x)
    if state0 is None:
        state0 = jax.vmap(model.init_state)(x)
    F = total_energy(model, cost, phase, prepared, x, y)
    return iterate(solver, F, phase.start(state0), phase.bounds(model.bounds), key, max_steps)
