"""Arrays across the processes of ``jax.distributed``: placing the same values on every process's
devices, and gathering a value that spans them. Exported by :mod:`eqjax.parallel`; used there, by
:mod:`eqjax.sweep` and by the training program."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding


def put_global(tree, sharding: NamedSharding):
    """Every leaf of ``tree`` placed with ``sharding``, whose devices may belong to several
    processes (``jax.distributed``): each process gives its own copy of the same values and places
    the parts its devices hold. With one process, ``jax.device_put``. PRNG key arrays keep their
    implementation."""
    def put(leaf):
        if jax.process_count() == 1:
            return jax.device_put(leaf, sharding)
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(leaf)), impl=jax.random.key_impl(leaf))
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def to_host(tree):
    """Every leaf of ``tree`` as a NumPy array holding its whole value. With several processes the
    leaves may span devices of other processes: every process must then call this at the same
    point (it gathers the parts with a collective)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)
