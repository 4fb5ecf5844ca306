"""Energy models: each is a frozen pytree dataclass subclassing :class:`EnergyModel`."""

from eqjax.models.base import EnergyModel
from eqjax.models.conv import ConvHopfield, conv_hopfield
from eqjax.models.hopfield import ENERGIES, Hopfield, hopfield
from eqjax.models.resistive import Resistive, conductance_mask, resistive

__all__ = ["ENERGIES", "ConvHopfield", "EnergyModel", "Hopfield", "Resistive", "conductance_mask", "conv_hopfield", "hopfield", "resistive"]
