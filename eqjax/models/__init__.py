"""Energy models: each is a frozen pytree dataclass exposing pure functions."""

from eqjax.models.hopfield import Hopfield, hopfield
from eqjax.models.resistive import Resistive, resistive

__all__ = ["Hopfield", "Resistive", "hopfield", "resistive"]
