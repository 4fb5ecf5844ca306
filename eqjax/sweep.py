"""Hyperparameter sweeps as one compiled program: members vmapped together (or, on CPU, looped
over inside the program), sharded over devices.

A grid is a dict of equal-length 1-D arrays, one entry per member (:func:`product`, :func:`zipped`).
:func:`run` calls ``fn(hparams, *args)`` for every member, where ``hparams`` is one member's row as a
dict of traced scalars and ``args`` are shared by all members (data, keys). Inside ``fn`` build
whatever the hyperparameters decide, e.g.::

    def fn(h, xs, ys):
        params = model.init(jax.random.key(h["seed"]))
        optimizer = optax.sgd(h["learning_rate"])          # a traced rate: fine inside fn
        epoch = eqjax.train_epoch(eqjax.train_step(model, cost, optimizer))
        params, _, metrics = epoch(params, optimizer.init(params), solver, EP(beta=h["beta"]), xs, ys)
        return {"loss": metrics["loss"][-1]}

Only values can be swept this way: anything that decides shapes or control flow (layer sizes,
``max_steps``, ``check_every``, the EP variant, the cost) is static, so members that differ in it
need separate :func:`run` calls (one compile each).

How each device computes its members is :func:`run`'s ``vectorize``: all at once (one ``vmap``, the
default on accelerators), in vmapped groups, or one at a time (a loop inside the program, the
default on CPU, where it was measured fastest; see :func:`run`). A vmapped ``while_loop`` (the
relaxation) runs until its slowest member stops.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable

import jax
import numpy as np
from flax import struct
from jax.extend import core as jax_core
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from eqjax._distributed import put_global, to_host

MEMBERS = "members"  # the mesh axis the members are sharded over


def _axis(name, values) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"sweep axis {name!r} must be a non-empty list of numbers, got {values!r}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"sweep axis {name!r} must hold numbers (static choices need separate runs), got {values!r}")
    with np.errstate(over="ignore", invalid="ignore"):
        stored = array.astype(jax.dtypes.canonicalize_dtype(array.dtype))  # what a traced member sees
    if (array.dtype.kind in "iu" and not np.array_equal(stored, array)) or \
            (array.dtype.kind == "f" and np.any(np.isfinite(array) & ~np.isfinite(stored))):
        raise ValueError(f"sweep axis {name!r} holds values that {stored.dtype} cannot hold: {values!r} (they would "
                         "wrap or overflow; use smaller values or enable jax_enable_x64)")
    return array


def product(**axes) -> dict:
    """Every combination of the axes, the last axis varying fastest: ``product(beta=[0.1, 0.2],
    seed=[0, 1, 2])`` has 6 members. Returns ``{name: (members,) array}``."""
    arrays = {name: _axis(name, values) for name, values in axes.items()}
    rows = list(itertools.product(*(range(a.size) for a in arrays.values())))
    return {name: a[[row[i] for row in rows]] for i, (name, a) in enumerate(arrays.items())}


def zipped(**axes) -> dict:
    """Members taken row by row from axes of equal length: ``zipped(beta=[0.1, 0.2], seed=[0, 1])``
    has 2 members. Returns ``{name: (members,) array}``."""
    arrays = {name: _axis(name, values) for name, values in axes.items()}
    lengths = {name: a.size for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zipped axes must have equal lengths, got {lengths}")
    return arrays


def num_members(grid: dict) -> int:
    """The number of members of a grid (``ValueError`` for an empty or ragged one)."""
    lengths = {name: np.shape(values) for name, values in grid.items()}
    if not grid or len(set(lengths.values())) != 1 or len(next(iter(lengths.values()))) != 1:
        raise ValueError(f"a grid is a non-empty dict of 1-D arrays of one length, got shapes {lengths}")
    return next(iter(lengths.values()))[0]


def _all_finite_per_member(outputs) -> np.ndarray:
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(outputs)]
    finite = [np.isfinite(leaf.reshape(leaf.shape[0], -1)).all(axis=1) for leaf in leaves
              if np.issubdtype(leaf.dtype, np.inexact)]
    return np.all(finite, axis=0) if finite else np.ones(leaves[0].shape[0], bool)


@struct.dataclass
class SweepResult:
    """What :func:`run` returns (NumPy arrays on the host).

    Attributes:
      grid: ``{name: (members,) array}``, the members' hyperparameters.
      outputs: ``fn``'s outputs stacked on a leading member axis.
      ok: ``(members,)`` bool: every floating output of the member is finite. Members that are not
        ``ok`` diverged; they are reported here and skipped by :meth:`best`, and never change the
        other members' numbers (each member is its own computation).
    """

    grid: dict
    outputs: object
    ok: np.ndarray

    def member(self, index: int) -> dict:
        """Member ``index``'s hyperparameters as Python numbers."""
        return {name: values[index].item() for name, values in self.grid.items()}

    def best(self, metric, mode: str = "min") -> int:
        """The index of the ``ok`` member with the smallest (``mode="min"``) or largest (``"max"``)
        ``metric``: an output's key (a ``(members,)`` entry of a dict output) or a function of the
        outputs returning ``(members,)``. ``ValueError`` when no member is ``ok``."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        values = np.asarray(metric(self.outputs) if callable(metric) else self.outputs[metric], float)
        if values.shape != self.ok.shape:
            raise ValueError(f"metric must have one value per member {self.ok.shape}, got {values.shape}")
        usable = self.ok & np.isfinite(values)
        if not usable.any():
            raise ValueError("no member of the sweep finished with finite outputs")
        ranked = np.where(usable, values if mode == "min" else -values, np.inf)
        return int(np.argmin(ranked))


CPU_CACHE_BYTES = 8 * 2**20  # per device: the loop state of the members vmapped together on a CPU


def _subjaxprs(params: dict):
    """The jaxprs inside an equation's parameters (loop bodies, branches, called functions)."""
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax_core.Jaxpr):
                yield item


def loop_state_bytes(jaxpr) -> int:
    """The bytes of the largest loop state (the outputs of a ``while``/``scan``: a member's
    parameters, optimizer state and relaxation state while it trains) in a jaxpr and the jaxprs
    inside it."""
    largest = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("while", "scan"):
            largest = max(largest, sum(v.aval.size * v.aval.dtype.itemsize for v in eqn.outvars))
        for inner in _subjaxprs(eqn.params):
            largest = max(largest, loop_state_bytes(inner))
    return largest


def _group_size(vectorize: int | None, devices, fn: Callable, grid: dict, args: tuple, per_device: int) -> int | None:
    """``vectorize`` as :func:`run` documents it, resolved (``None``: all members at once).

    Default on accelerators: all at once. On CPU devices: all at once when the loop state of one
    member (:func:`loop_state_bytes` of ``fn`` traced for the first member) times the members per
    device fits in :data:`CPU_CACHE_BYTES`, so that vmapping merges small products without
    streaming the members' weights from memory; else one at a time."""
    if vectorize is not None:
        return vectorize
    if not all(device.platform == "cpu" for device in devices):
        return None
    first = {name: values[0] for name, values in grid.items()}
    leaves, structure = jax.tree.flatten((first, args))
    dtype = lambda leaf: leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
    shapes = tuple(jax.ShapeDtypeStruct(np.shape(leaf), dtype(leaf)) for leaf in leaves)
    return None if _member_bytes(fn, structure, shapes) * per_device <= CPU_CACHE_BYTES else 1


@functools.lru_cache(maxsize=32)
def _member_bytes(fn: Callable, structure, shapes: tuple) -> int:
    """:func:`loop_state_bytes` of ``fn`` traced (abstractly) for one member; cached like
    :func:`_program`, so a function is sized once per shapes."""
    first, args = jax.tree.unflatten(structure, shapes)
    return loop_state_bytes(jax.make_jaxpr(fn)(first, *args).jaxpr)


@functools.lru_cache(maxsize=32)
def _program(fn: Callable, num_args: int, mesh: Mesh, vectorize: int | None):
    """The jitted sweep program for ``fn``: each device maps over its share of the members,
    ``vectorize`` at a time (``None``: all at once). Cached, so that later :func:`run` calls with the
    same function reuse the compiled program (jit's own cache sees the same function object)."""

    def local(rows, *shared):
        member = lambda h: fn(h, *shared)
        if vectorize is None or vectorize >= num_members(rows):  # this device's members, static
            return jax.vmap(member)(rows)
        if vectorize == 1:  # a plain loop: each member computed exactly as a single run is
            return jax.lax.map(member, rows)
        return jax.lax.map(member, rows, batch_size=vectorize)  # a loop over vmapped groups

    spec, everywhere = PartitionSpec(MEMBERS), PartitionSpec()
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec,) + (everywhere,) * num_args, out_specs=spec,
                                 check_vma=False))


def run(fn: Callable, grid: dict, *args, devices=None, members_per_call: int | None = None,
        vectorize: int | None = None, on_call: Callable | None = None) -> SweepResult:
    """Run ``fn(hparams, *args)`` for every member of ``grid`` as one compiled program.

    Args:
      fn: a pure function of one member's ``hparams`` (a dict of traced scalars, one per grid
        axis, with the grid's dtypes) and the shared ``args``; returns a pytree of arrays.
      grid: ``{name: (members,) array}``, e.g. from :func:`product`.
      args: shared by every member (not vmapped), placed replicated on every device once.
      devices: the devices the member axis is sharded over (default: ``jax.devices()``, every
        device of every process). With several processes (``jax.distributed.initialize``) every
        process must call ``run`` with the same arguments; each gets the full result.
      members_per_call: at most this many members per compiled call (rounded up to a multiple of
        the device count), to bound memory; default all members in one call. The last call is
        padded with copies of the last member, whose outputs are dropped.
      vectorize: how many members each device computes at once with ``jax.vmap``; its members are
        walked through in groups of this size by ``jax.lax.map`` (``1``: a loop, no ``vmap``; at
        least the members per device: one ``vmap`` of all). Default ``None``: all at once on
        accelerators; on CPU devices all at once when the members' loop state (parameters,
        optimizer and relaxation state: :func:`loop_state_bytes`) fits in
        :data:`CPU_CACHE_BYTES` per device, else one at a time. On CPU a vmapped group streams
        every member's weights through memory at each batch (16 DHN-1H members: 51 MB of
        ``W_1``, beyond the caches) while a loop keeps one member's in cache; small members gain
        from vmapping their small products (BENCHMARKS.md, "Sweeps"). Smaller groups also bound
        memory.
      on_call: called on the host after each call as ``on_call(members, outputs)`` with the call's
        member indices ``(n,)`` and their outputs (e.g. to report progress or save results as they
        come, so that a killed sweep can skip finished members).
    Returns:
      a :class:`SweepResult`. ``fn`` is traced and compiled once, at its first ``run`` with these
      devices, ``vectorize``, shapes and call size; later calls reuse the program. With the
      default ``vectorize`` on CPU devices it is traced once more, the first time, to size a
      member.
    """
    count = num_members(grid)
    grid = {name: np.asarray(values, jax.dtypes.canonicalize_dtype(np.asarray(values).dtype))
            for name, values in grid.items()}
    devices = list(jax.devices() if devices is None else devices)
    mesh = Mesh(np.asarray(devices), (MEMBERS,))
    per_call = count if members_per_call is None else int(members_per_call)
    if per_call < 1:
        raise ValueError(f"members_per_call must be a positive int, got {members_per_call!r}")
    per_call = math.ceil(min(per_call, count) / len(devices)) * len(devices)
    spread, replicated = NamedSharding(mesh, PartitionSpec(MEMBERS)), NamedSharding(mesh, PartitionSpec())
    shared = put_global(args, replicated)
    if vectorize is not None and (isinstance(vectorize, bool) or not isinstance(vectorize, int) or vectorize < 1):
        raise ValueError(f"vectorize must be a positive int or None, got {vectorize!r}")
    compiled = _program(fn, len(args), mesh, _group_size(vectorize, devices, fn, grid, args, per_call // len(devices)))
    pieces = []
    for start in range(0, count, per_call):
        rows = np.minimum(np.arange(start, start + per_call), count - 1)  # pad with the last member
        chunk = {name: jax.make_array_from_callback((per_call,), spread, lambda index, v=values[rows]: v[index])
                 for name, values in grid.items()}
        outputs = to_host(compiled(chunk, *shared))
        kept = min(per_call, count - start)
        pieces.append(jax.tree.map(lambda leaf: leaf[:kept], outputs))
        if on_call is not None:
            on_call(np.arange(start, start + kept), pieces[-1])
    outputs = jax.tree.map(lambda *leaves: np.concatenate(leaves), *pieces)
    return SweepResult(grid=grid, outputs=outputs, ok=_all_finite_per_member(outputs))
