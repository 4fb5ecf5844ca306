"""Data splits as the experiments use them: images flattened and scaled to [0, 1], on device."""

from __future__ import annotations

import jax.numpy as jnp

import eqjax


def load_split(dataset: str, split: str, limit: int | None = None, data_dir=None):
    """``(x, y)``: the first ``limit`` examples (all when ``None``) of a split of ``dataset``, ``x``
    float32 ``(n, pixels)`` in [0, 1], ``y`` integer labels ``(n,)``."""
    images, labels = eqjax.data.load(dataset, split, data_dir=data_dir)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return jnp.asarray(images.reshape(len(images), -1), jnp.float32) / 255.0, jnp.asarray(labels)
