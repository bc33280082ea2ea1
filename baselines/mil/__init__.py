"""Multiple-instance aggregators over cached patch features (the second stage of two-stage rows)."""

from .abmil import ABMIL
from .base import MILModel
from .ilra import ILRA
from .mambamil import MambaMIL
from .pooling import MaxMIL, MeanMIL
from .transmil import TransMIL

__all__ = ["ABMIL", "ILRA", "MILModel", "MambaMIL", "MaxMIL", "MeanMIL", "TransMIL"]
