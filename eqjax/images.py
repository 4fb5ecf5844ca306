"""Image pipeline on device: padding, random crops, horizontal flips and per-channel normalisation.

Pure, jittable functions of batches of images ``(B, H, W, C)`` (channels last) and PRNG keys: the
augmentation runs inside a compiled training step, on the accelerator, with one key per batch and
independent draws per example. Models of :mod:`eqjax.models.conv` take images flattened row-major;
:class:`Pipeline` maps flat batches to flat batches.

References: random crops of 32x32 from the image zero-padded by 4 pixels and random horizontal
flips are the CIFAR-10 augmentation of Laborieux et al. 2021 and Scellier et al. 2023 (and of most
CIFAR-10 work since He et al. 2016); inputs are normalised per channel with the training set's mean
and standard deviation. MNIST and Fashion-MNIST are zero-padded from 28x28 to 32x32 where a
network built for 32x32 inputs is used (:func:`pad_to`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from eqjax._checks import raise_if_concrete

# Per-channel mean and standard deviation of the CIFAR-10 training images scaled to [0, 1]
# (red, green, blue), the usual normalisation constants.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def to_unit(images) -> jax.Array:
    """``uint8`` images as float32 in ``[0, 1]`` (``/ 255``)."""
    return jnp.asarray(images, jnp.float32) / 255.0


def pad_to(images: jax.Array, size: int) -> jax.Array:
    """Zero-pad ``(B, H, W, C)`` images symmetrically to ``size x size`` (``ValueError`` if larger;
    an odd difference puts the extra row and column at the bottom and right)."""
    height, width = images.shape[1:3]
    if height > size or width > size:
        raise ValueError(f"images of {height}x{width} do not fit in {size}x{size}")
    top, left = (size - height) // 2, (size - width) // 2
    return jnp.pad(images, ((0, 0), (top, size - height - top), (left, size - width - left), (0, 0)))


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """Per example, a crop of the original size from the image zero-padded by ``padding`` (static)
    pixels on every side, at an offset drawn uniformly from ``{0, ..., 2 * padding}`` in each
    direction. ``(B, H, W, C) -> (B, H, W, C)``."""
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    if padding == 0:
        return images
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)
    crop = lambda image, offset: jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))
    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Per example, a left-right flip with probability 1/2. ``(B, H, W, C) -> (B, H, W, C)``."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1], images)


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """``(images - mean) / std`` per channel (``mean``, ``std``: one value per channel, traced)."""
    mean, std = jnp.asarray(mean, images.dtype), jnp.asarray(std, images.dtype)
    return (images - mean) / std


def channel_stats(images) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``(N, H, W, C)`` images (on the host, float64)."""
    images = np.asarray(images, np.float64)
    return images.mean(axis=(0, 1, 2)), images.std(axis=(0, 1, 2))


class Pipeline(struct.PyTreeNode):
    """Flat images in, flat images out: reshape to ``image_shape``, random crop (``padding``) and
    flip (``flip``) when a key is given, then normalise by ``mean`` and ``std``.

    ``image_shape``, ``padding`` and ``flip`` are static; ``mean`` and ``std`` (one value per
    channel) are traced. ``pipeline(x)`` (no key: evaluation) only normalises;
    ``pipeline(x, key)`` augments too. ``x`` ``(B, H * W * C)`` -> ``(B, H * W * C)``.
    """

    image_shape: tuple[int, int, int] = struct.field(pytree_node=False)
    mean: jax.Array = 0.0
    std: jax.Array = 1.0
    padding: int = struct.field(pytree_node=False, default=0)
    flip: bool = struct.field(pytree_node=False, default=False)

    def errors(self) -> dict:
        """``{message: violated}``: standard deviations positive and finite."""
        std = jnp.asarray(self.std)
        return {"std must be positive and finite": ~jnp.all((std > 0) & jnp.isfinite(std))}

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        raise_if_concrete(self, self.errors)
        images = x.reshape(x.shape[0], *self.image_shape)
        if key is not None:
            crop_key, flip_key = jax.random.split(key)
            images = random_crop(crop_key, images, self.padding)
            if self.flip:
                images = random_flip(flip_key, images)
        return normalize(images, self.mean, self.std).reshape(x.shape[0], -1)


def cifar10_pipeline(augment: bool = True) -> Pipeline:
    """CIFAR-10 as in Laborieux et al. 2021: random 32x32 crops with 4 pixels of zero padding and
    random horizontal flips (``augment``), per-channel normalisation."""
    return Pipeline(image_shape=(32, 32, 3), mean=jnp.asarray(CIFAR10_MEAN), std=jnp.asarray(CIFAR10_STD),
                    padding=4 if augment else 0, flip=augment)
