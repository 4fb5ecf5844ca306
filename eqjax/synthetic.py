"""Synthetic 8x8 digits: a tiny offline classification task for demos and tests.

Each class is a 5x7 bitmap glyph of a digit placed in an 8x8 frame; examples are made by random
shifts of up to one pixel, a random stroke intensity, pixel flips and Gaussian noise. Pure JAX, no
files: ``digits(key, n)`` gives the same data for the same key on every machine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_GLYPHS = (
    (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    ("####.", "....#", "....#", ".###.", "....#", "....#", "####."),
    ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
)

NUM_CLASSES = 10
IMAGE_SIZE = 8


def glyphs() -> np.ndarray:
    """The ten class prototypes, ``(10, 8, 8)`` float32 in {0, 1}, glyph at rows 0-6, cols 1-5."""
    frames = np.zeros((NUM_CLASSES, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for digit, rows in enumerate(_GLYPHS):
        for r, row in enumerate(rows):
            for c, char in enumerate(row):
                frames[digit, r, c + 1] = char == "#"
    return frames


def digits(key: jax.Array, num_examples: int, noise: float = 0.15, flip: float = 0.05):
    """Generate ``num_examples`` noisy digits.

    Returns ``(x, y)``: ``x`` ``(num_examples, 64)`` float32 in ``[0, 1]``, ``y`` ``(num_examples,)``
    int32 labels, balanced in expectation. ``noise`` is the Gaussian pixel noise std, ``flip`` the
    probability that a pixel is inverted.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
        raise ValueError(f"num_examples must be an int >= 0, got {num_examples!r}")
    k_label, k_shift, k_gain, k_flip, k_noise = jax.random.split(key, 5)
    labels = jax.random.randint(k_label, (num_examples,), 0, NUM_CLASSES)
    images = jnp.asarray(glyphs())[labels]
    shifts = jax.random.randint(k_shift, (num_examples, 2), -1, 2)
    shifts = shifts.at[:, 0].set(jnp.maximum(shifts[:, 0], 0))  # glyph touches row 0: shift down only
    images = jax.vmap(lambda im, s: jnp.roll(im, s, axis=(0, 1)))(images, shifts)
    images = images * jax.random.uniform(k_gain, (num_examples, 1, 1), minval=0.6, maxval=1.0)
    flips = jax.random.bernoulli(k_flip, flip, images.shape)
    images = jnp.where(flips, 1.0 - images, images)
    images = images + noise * jax.random.normal(k_noise, images.shape)
    x = jnp.clip(images, 0.0, 1.0).reshape(num_examples, IMAGE_SIZE * IMAGE_SIZE)
    return x.astype(jnp.float32), labels.astype(jnp.int32)
