"""What every layered model shares: its ``sizes`` and their validation."""

from __future__ import annotations

import numpy as np


class Layered:
    """Mixin for models with a ``sizes = (n_in, h_1, ..., n_out)`` field."""

    sizes: tuple[int, ...]

    @property
    def num_inputs(self) -> int:
        """``n_in``: features of one input example."""
        return self.sizes[0]

    @property
    def num_outputs(self) -> int:
        """``n_out``: output units (classes)."""
        return self.sizes[-1]


def checked_sizes(sizes) -> tuple[int, ...]:
    """``sizes`` as a tuple of Python ints; ``ValueError`` unless at least two positive integers."""
    sizes = tuple(sizes)
    if len(sizes) < 2 or not all(isinstance(n, (int, np.integer)) and n > 0 for n in sizes):
        raise ValueError(f"sizes must be at least two positive integers, got {sizes!r}")
    return tuple(int(n) for n in sizes)
