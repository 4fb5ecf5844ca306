"""Data-parallel training and evaluation: the examples sharded over devices, parameters replicated.

:func:`sharded_train_step` makes steps with the signature of :func:`eqjax.train_step`'s and the same
result, computed by every device of a one-axis mesh on its share of the batch: each device relaxes
its examples (its relaxation loops stop on their own, when its shard has converged), estimates the
gradient of its shard, and the shards' gradients are averaged over the devices (``psum``, weighted
by the number of examples each shard used, so that examples left out for going non-finite are left
out of the mean exactly as on one device). Every device then applies the same optimizer update to
its replica of the parameters. The same code runs on one CPU, on several forced CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``) and on one or several GPUs.

Equal to the one-device step up to float round-off when every relaxation runs a fixed number of
steps (``tol = 0``); with a tolerance, a shard may stop earlier than the whole batch would (its
examples converged), so results agree to the order of the tolerance. A PRNG key (stochastic
solvers) is folded with the shard's index, so shards draw independent noise.

:func:`sharded_error_rate` is :func:`eqjax.error_rate` with the data set's batches shared out over
the devices: each batch is relaxed whole on one device, so its figures are those of one device.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from eqjax._checks import check_model
from eqjax._distributed import put_global, to_host
from eqjax._api import check_error_rate_call, checked_estimate, counting_batches, error_counts
from eqjax.costs import as_cost
from eqjax._train import apply_update

__all__ = ["BATCH", "batch_mesh", "put_global", "shard_batch", "sharded_error_rate", "sharded_estimate",
           "sharded_train_step", "to_host"]

BATCH = "batch"  # the mesh axis the examples are sharded over


def batch_mesh(devices=None) -> Mesh:
    """A one-axis mesh (:data:`BATCH`) over ``devices`` (default: ``jax.devices()``)."""
    return Mesh(np.asarray(jax.devices() if devices is None else list(devices)), (BATCH,))


def shard_batch(tree, mesh: Mesh, axis: int = 0):
    """Place every leaf of ``tree`` with its ``axis`` (the examples; 1 for stacked batches
    ``(K, B, ...)``) split over the mesh's devices."""
    spec = PartitionSpec(*([None] * axis + [BATCH]))
    return jax.tree.map(lambda leaf: jax.device_put(leaf, NamedSharding(mesh, spec)), tree)


def per_example_extras(estimate):
    """``estimate`` with each scalar extra replaced by its mean over the shards, repeated per
    example (inside ``shard_map``: every output leaf is split over the batch)."""
    spread = lambda v: jnp.broadcast_to(jax.lax.pmean(v, BATCH), estimate.loss.shape) if jnp.ndim(v) == 0 else v
    return estimate.replace(extras={name: spread(value) for name, value in estimate.extras.items()})


def sharded_estimate(model, cost, mesh: Mesh, *, throw: bool = False) -> Callable:
    """``estimate(estimator, solver, params, x, y, state0, key) -> (grads, estimate)``: the
    estimator run per shard of the batch, gradients averaged over the shards (weighted by the
    examples each used), the :class:`~eqjax.estimators.Estimate` per example, sharded like the
    batch. A scalar extra (``Estimate.extras``) is computed by each shard on its own examples and
    comes back as the mean over the shards, repeated per example."""
    check_model(model)
    cost = as_cost(cost)

    def local(estimator, solver, params, x, y, state0, key):
        if key is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(BATCH))
        grads, estimate = checked_estimate(estimator, model, cost, solver, params, x, y, state0, key, throw)
        weight = jnp.sum(estimate.used).astype(jax.tree.leaves(grads)[0].dtype)
        total = jax.lax.psum(weight, BATCH)
        grads = jax.tree.map(lambda g: jax.lax.psum(g * weight, BATCH) / jnp.maximum(total, 1), grads)
        return grads, per_example_extras(estimate)

    def estimate(estimator, solver, params, x, y, state0=None, key=None):
        devices = mesh.devices.size
        if x.shape[0] % devices:
            raise ValueError(f"the batch of {x.shape[0]} examples does not split over {devices} devices")
        shard, everywhere = PartitionSpec(BATCH), PartitionSpec()
        mapped = jax.shard_map(local, mesh=mesh, in_specs=(everywhere, everywhere, everywhere, shard, shard,
                                                            shard, everywhere),
                               out_specs=(everywhere, shard), check_vma=False)
        return mapped(estimator, solver, params, x, y, state0, key)

    return estimate


def sharded_train_step(model, cost, optimizer: optax.GradientTransformation, devices=None, *,
                       throw: bool = False) -> Callable:
    """:func:`eqjax.train_step` with the batch sharded over ``devices`` (default every device):
    ``step(params, opt_state, solver, estimator, x, y, state0=None, key=None) -> (params, opt_state,
    metrics, free_state)``. The batch size must be a multiple of the number of devices. Jit it;
    lift it to epochs with :func:`eqjax.train_epoch`."""
    mesh = batch_mesh(devices)
    estimate = sharded_estimate(model, cost, mesh, throw=throw)

    def step(params, opt_state, solver, estimator, x, y, state0=None, key=None):
        grads, result = estimate(estimator, solver, params, x, y, state0, key)
        return (*apply_update(model, optimizer, params, opt_state, grads, result, solver, estimator),
                result.free_state)

    return step


def sharded_error_rate(model, cost, mesh: Mesh, *, batch_size: int = 1000, throw: bool = False) -> Callable:
    """:func:`eqjax.error_rate` with the data set's batches shared out over the mesh's devices:
    ``error_rate(solver, params, x, y, key=None) -> {"error": scalar, "converged": scalar}``,
    jitted (one compile per shapes; ``batch_size`` and ``throw`` are fixed here).

    ``x`` ``(N, ...)`` and ``y`` ``(N,)`` are cut into batches of ``batch_size`` as
    :func:`eqjax.error_rate` cuts them (the last one zero-padded), and each device relaxes a
    contiguous run of whole batches (batches of padding alone make the count a multiple of the
    devices). A batch is relaxed on one device exactly as :func:`eqjax.error_rate` relaxes it, and
    each batch's key is folded with its first index in ``x``, so the figures are those of
    :func:`eqjax.error_rate` with the same ``batch_size``, computed by every device at once. The
    mesh may span the devices of several processes (``jax.distributed``): every process then calls
    this with the same values (e.g. placed with :func:`put_global`)."""
    check_model(model)
    cost = as_cost(cost)
    devices = mesh.devices.size

    def local(solver, params, xs, ys, real, offsets, key):
        wrong, converged = error_counts(model, cost, solver, params, xs, ys, real, offsets, key, throw)
        return jax.lax.psum(wrong, BATCH), jax.lax.psum(converged, BATCH)

    @jax.jit
    def compiled(solver, params, x, y, key):
        n = x.shape[0]
        batches = math.ceil(math.ceil(n / batch_size) / devices) * devices  # whole batches, as many per device
        shard, everywhere = PartitionSpec(BATCH), PartitionSpec()
        mapped = jax.shard_map(local, mesh=mesh, in_specs=(everywhere, everywhere, shard, shard, shard, shard,
                                                            everywhere),
                               out_specs=(everywhere, everywhere), check_vma=False)
        wrong, converged = mapped(solver, params, *counting_batches(x, y, batch_size, batches), key)
        return {"error": wrong / n, "converged": converged / n}

    def error_rate(solver, params, x, y, key=None) -> dict:
        check_error_rate_call(model, solver, params, x, y, batch_size, throw)
        return compiled(solver, params, x, y, key)

    return error_rate


def __getattr__(name):
    if name == "train_step":  # the former name, taught by earlier READMEs
        import warnings

        warnings.warn("eqjax.parallel.train_step is now eqjax.parallel.sharded_train_step", DeprecationWarning,
                      stacklevel=2)
        return sharded_train_step
    raise AttributeError(f"module 'eqjax.parallel' has no attribute {name!r}")
