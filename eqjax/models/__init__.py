"""Energy models: each is a frozen pytree dataclass exposing pure functions."""

from eqjax.models.hopfield import Hopfield, hopfield
from eqjax.models.resistive import Resistive, conductance_mask, resistive

__all__ = ["Hopfield", "Resistive", "conductance_mask", "hopfield", "resistive"]
