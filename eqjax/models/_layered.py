"""What every layered model shares: its ``sizes`` and their validation."""

from __future__ import annotations

import numpy as np
from flax import struct

from eqjax.models.base import EnergyModel


class Layered(EnergyModel):
    """Base of models with a static ``sizes = (n_in, h_1, ..., n_out)`` field: flat inputs of
    ``n_in`` features, one state leaf ``(n_l,)`` per free layer, the last one the output."""

    sizes: tuple[int, ...] = struct.field(pytree_node=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(n_in,)``."""
        return (self.sizes[0],)

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
