"""Input validation, eager and inside jit.

Every check that needs values is written once, as a dict ``{message: violated}`` of boolean arrays
(``input_errors``, ``param_errors``, a solver's or estimator's ``errors()``, a model's
``parameter_errors``). The same conditions are

- raised eagerly as ``ValueError`` by :func:`raise_if_concrete` when the values are concrete (also
  for concrete arrays closed over inside a user's ``jax.jit``: they are evaluated with
  ``jax.ensure_compile_time_eval``, never converted from tracers);
- attached to the computation by :func:`error_if` when the caller asks for ``throw=True``: a
  jitted or vmapped program then stops with that message at run time.

Shape, dtype and structure checks need no values and always run.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from equinox.internal import unvmap_any
from jax import lax

from eqjax.models.base import EnergyModel, missing_members


def _is_concrete_numeric(leaf) -> bool:
    if isinstance(leaf, jax.core.Tracer):
        return False
    return isinstance(leaf, (int, float, complex, np.ndarray, np.generic, jax.Array))


def raise_if_concrete(values, conditions: Callable[[], dict]) -> None:
    """Raise ``ValueError`` for the first violated condition, when every leaf of ``values`` is a
    concrete number or array; do nothing for traced values (see :func:`error_if`).

    ``conditions`` is a thunk returning ``{message: violated}``; it is evaluated eagerly (with
    ``jax.ensure_compile_time_eval``), so this also works for concrete values inside a jit trace.
    """
    if not all(_is_concrete_numeric(leaf) for leaf in jax.tree.leaves(values)):
        return
    with jax.ensure_compile_time_eval():
        for message, violated in conditions().items():
            if not isinstance(violated, jax.core.Tracer) and np.any(np.asarray(violated)):
                raise ValueError(message)


def shown(value) -> str:
    """``", got <value>"`` for a concrete value, ``""`` for a tracer (its repr says nothing)."""
    return "" if isinstance(value, jax.core.Tracer) else f", got {value!r}"


def merge_conditions(*dicts) -> dict:
    """One ``{message: violated}`` dict; conditions with the same message are or-ed, never dropped."""
    merged = {}
    for conditions in dicts:
        for message, violated in conditions.items():
            merged[message] = violated if message not in merged else merged[message] | violated
    return merged


def _raise_first_violation(index, messages: tuple) -> None:
    """Host side of :func:`error_if`: raise ``ValueError`` with the message of the lowest violated
    index (``index`` is ``-1`` where nothing is violated; it has a leading axis under ``vmap``)."""
    violated = [int(i) for i in np.ravel(np.asarray(index)) if i >= 0]
    if violated:
        raise ValueError(f"eqjax: {messages[min(violated)]}")


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _checked(x, index, messages: tuple):
    """``x``, after a host callback that raises when ``index >= 0`` (anywhere in a vmapped batch).
    The callback sits in the taken branch of a ``lax.cond``, so a passing check costs one
    comparison and no host round-trip."""

    def report(tree):
        jax.debug.callback(functools.partial(_raise_first_violation, messages=messages), index)
        return tree

    return lax.cond(unvmap_any(index >= 0), report, lambda tree: tree, x)


@_checked.defjvp
def _checked_jvp(messages, primals, tangents):
    x, index = primals
    return _checked(x, index, messages), tangents[0]


def error_if(x, conditions: dict):
    """``x`` with every ``{message: violated}`` condition attached: at run time (also under
    ``jax.jit``/``jax.vmap``) a violated condition raises ``ValueError("eqjax: <message>")`` from a
    host callback, which JAX re-raises as its ``JaxRuntimeError`` (JAX writes that error's first line
    itself; the eqjax message is its last). Use the returned ``x`` so the checks stay in the program."""
    if not conditions:
        return x
    flags = jnp.stack([jnp.any(violated) for violated in conditions.values()])
    index = jnp.where(jnp.any(flags), jnp.argmax(flags), -1)
    return _checked(x, index, tuple(conditions))


def all_finite(tree) -> jax.Array:
    """Scalar bool: every leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def check_model(model) -> None:
    """``TypeError`` unless ``model`` is an :class:`~eqjax.models.EnergyModel`, naming what is missing."""
    if isinstance(model, EnergyModel):
        return
    missing = missing_members(model)
    detail = f"; it lacks {', '.join(missing)}" if missing else ""
    raise TypeError(f"model must subclass eqjax.models.EnergyModel (got {type(model).__name__}{detail}); "
                    "see docs/extending.md")


def input_errors(model, x, y=None) -> dict:
    """``{message: violated}`` for the values of a batch: finite inputs, labels in range."""
    errors = {"x contains NaN or infinite values": ~all_finite(x)}
    if y is not None:
        n = model.num_outputs
        errors[f"y holds labels outside [0, {n - 1}] (the model has {n} output units)"] = (y < 0) | (y >= n)
    return errors


def param_errors(model, params) -> dict:
    """``{message: violated}`` for parameter values: finite, and the model's own constraints."""
    return {"params contain NaN or infinite values": ~all_finite(params), **model.parameter_errors(params)}


def check_inputs(model, x, y=None) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``x`` or ``y`` when a batch does not fit ``model``.

    ``x``: floating array ``(batch, *model.input_shape)``, finite. ``y``: integer array ``(batch,)``
    with labels in ``[0, model.num_outputs)``. Value checks run when the arrays are concrete.
    """
    check_model(model)
    shape = tuple(model.input_shape)
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"x must be an array of shape (batch, {', '.join(map(str, shape))}), got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating array (e.g. images scaled to [0, 1]), got dtype {x.dtype}")
    if x.ndim != 1 + len(shape) or tuple(x.shape[1:]) != shape:
        raise ValueError(f"x must have shape (batch, {', '.join(map(str, shape))}) for this model, "
                         f"got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x holds no examples (a batch of size 0)")
    if y is not None:
        if not hasattr(y, "dtype") or not jnp.issubdtype(y.dtype, jnp.integer):
            raise TypeError(f"y must be an integer array of class labels, got {getattr(y, 'dtype', type(y).__name__)}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    raise_if_concrete((x, y), lambda: input_errors(model, x, y))


def check_params(model, params) -> None:
    """Raise when ``params`` does not have the structure and shapes of ``model.init``, is not
    finite, or breaks the model's constraints (e.g. negative conductances)."""
    expected = jax.eval_shape(model.init, jax.random.key(0))
    if jax.tree.structure(params) != jax.tree.structure(expected):
        raise ValueError(f"params do not match the model's structure: expected {jax.tree.structure(expected)}, "
                         f"got {jax.tree.structure(params)}")
    got = [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(params)]
    want = [tuple(leaf.shape) for leaf in jax.tree.leaves(expected)]
    if got != want:
        raise ValueError(f"params shapes do not match the model: expected {want}, got {got}")
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"params{jax.tree_util.keystr(path)} must be a real floating array, got dtype "
                            f"{jnp.result_type(leaf)} (build parameters with model.init)")
    raise_if_concrete(params, lambda: param_errors(model, params))


def check_state(model, state, x, name: str = "state0") -> None:
    """Raise when a batched start state does not have the shapes of ``model.init_state`` per example."""
    expected = jax.eval_shape(jax.vmap(model.init_state), x)
    want = [tuple(leaf.shape) for leaf in jax.tree.leaves(expected)]
    got = [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(state)]
    if jax.tree.structure(state) != jax.tree.structure(expected) or got != want:
        raise ValueError(f"{name} must have the structure of the model's state with shapes {want}, got {got}")
    if not all(jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) for leaf in jax.tree.leaves(state)):
        raise TypeError(f"{name} must be floating arrays, got dtypes "
                        f"{[str(jnp.result_type(leaf)) for leaf in jax.tree.leaves(state)]}")


def guard_inputs(model, params, x, y, *parts):
    """``x`` carrying (:func:`error_if`) every value check of the batch, the parameters and the
    ``parts`` (solvers, estimators, phases: anything with ``errors()``); for ``throw=True``."""
    conditions = merge_conditions(input_errors(model, x, y), param_errors(model, params),
                                  *(part.errors() for part in parts))
    return error_if(x, conditions)


def check_call(model, params, x, y, state0, *parts) -> None:
    """Every check of an entry point: shapes, dtypes and structure always (also at trace time
    under jit), values when concrete; ``parts`` (solvers, estimators, phases) check their own."""
    from eqjax.estimators import Estimator
    from eqjax.phases import Phase
    from eqjax.solvers import Solver

    if parts and not isinstance(parts[0], Solver):
        raise TypeError(f"the solver must be an eqjax.solvers.Solver, got {type(parts[0]).__name__}")
    for part in parts[1:]:
        if not isinstance(part, (Estimator, Phase)):
            raise TypeError(f"expected an eqjax.estimators.Estimator (or a phase for relax), got {type(part).__name__}")
    check_inputs(model, x, y)
    check_params(model, params)
    if state0 is not None:
        check_state(model, state0, x)
    for part in parts:
        raise_if_concrete(part, part.errors)


def check_throw(throw) -> None:
    """``ValueError`` unless ``throw`` is ``False``, ``True`` or ``"max_steps"`` (static)."""
    if not (throw is False or throw is True or throw == "max_steps"):
        raise ValueError(f"throw must be False, True or 'max_steps', got {throw!r}")


def guard_equilibria(tree, equilibria: dict, throw=True):
    """``tree`` carrying an error for any example that went non-finite in one of the named
    relaxations (``{phase name: status array}``), and with ``throw="max_steps"`` also for any that
    stopped at ``max_steps`` before the tolerance; for ``throw=True`` / ``"max_steps"``."""
    from eqjax._equilibrium import RESULTS

    conditions = {f"the relaxation of the {name} phase went NaN or infinite for some examples (a diverging "
                  "step size, or non-finite inputs or parameters)": status == RESULTS.NONFINITE
                  for name, status in equilibria.items()}
    if throw == "max_steps":
        conditions.update({f"the relaxation of the {name} phase hit max_steps before the tolerance for some "
                           "examples (raise max_steps or tol, or pass throw=True to accept it)": status == RESULTS.MAX_STEPS
                           for name, status in equilibria.items()})
    return error_if(tree, conditions)
