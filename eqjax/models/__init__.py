"""Energy models: each is a frozen pytree dataclass exposing pure functions."""

from eqjax.models.hopfield import Hopfield, hopfield

__all__ = ["Hopfield", "hopfield"]
