"""Input validation at the API boundary.

Checks that need values (finiteness, label range, ``beta != 0``) run only on concrete arrays; under
``jax.jit`` or ``jax.vmap`` they are skipped and the caller validates the data once up front with
:func:`check_inputs` and :func:`check_params` (``eqjax.check_inputs``, ``eqjax.check_params``), as
the training script does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(value) -> bool:
    """True when ``value`` holds actual numbers (not a tracer inside jit/vmap/grad)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def _all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


def check_inputs(model, x, y=None) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``x`` or ``y`` when a batch does not fit ``model``.

    ``x``: floating array ``(batch, n_in)``, finite. ``y``: integer array ``(batch,)`` with labels in
    ``[0, n_out)``.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"x must be an array of shape (batch, {model.num_inputs}), got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"x must be a floating array (e.g. images scaled to [0, 1]), got dtype {x.dtype}"
        )
    if x.ndim != 2 or x.shape[1] != model.num_inputs:
        raise ValueError(
            f"x must have shape (batch, {model.num_inputs}) for this model, got {tuple(x.shape)}"
        )
    if is_concrete(x) and not _all_finite(x):
        raise ValueError("x contains NaN or infinite values")
    if y is None:
        return
    if not hasattr(y, "dtype") or not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(
            f"y must be an integer array of class labels, got {getattr(y, 'dtype', type(y).__name__)}"
        )
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    if is_concrete(y) and y.size:
        lo, hi = int(jnp.min(y)), int(jnp.max(y))
        if lo < 0 or hi >= model.num_outputs:
            raise ValueError(
                f"y holds labels in [{lo}, {hi}] but the model has {model.num_outputs} output units "
                f"(labels must lie in [0, {model.num_outputs - 1}])"
            )


def check_params(model, params) -> None:
    """Raise when ``params`` does not have the structure and shapes of ``model.init`` or is not finite."""
    expected = jax.eval_shape(model.init, jax.random.key(0))
    if jax.tree.structure(params) != jax.tree.structure(expected):
        raise ValueError(
            f"params do not match the model's structure: expected {jax.tree.structure(expected)}, "
            f"got {jax.tree.structure(params)}"
        )
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(
                f"params shapes do not match the model sizes {model.sizes}: "
                f"expected {[tuple(l.shape) for l in jax.tree.leaves(expected)]}, "
                f"got {[tuple(l.shape) for l in jax.tree.leaves(params)]}"
            )
    if is_concrete(params) and not _all_finite(params):
        raise ValueError("params contain NaN or infinite values")


def check_state(model, state, batch: int, name: str = "state0") -> None:
    """Raise when a batched start state does not have the per-layer shapes ``(batch, n_l)``."""
    want = [(batch, n) for n in model.sizes[1:]]
    got = [tuple(np.shape(s)) for s in jax.tree.leaves(state)]
    if got != want:
        raise ValueError(f"{name} must be a tuple of arrays with shapes {want}, got {got}")


def check_beta(beta, name: str = "beta") -> None:
    """EP needs a nonzero nudging strength (the estimate divides by it)."""
    if is_concrete(beta):
        value = np.asarray(beta)
        if value.ndim == 0 and (value == 0 or not np.isfinite(value)):
            raise ValueError(f"{name} must be a finite nonzero number for EP, got {beta!r}")
