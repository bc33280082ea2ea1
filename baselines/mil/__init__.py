"""Multiple-instance aggregators over cached patch features (the second stage of two-stage rows)."""

from .abmil import ABMIL
from .base import MILModel
from .pooling import MaxMIL, MeanMIL

__all__ = ["ABMIL", "MILModel", "MaxMIL", "MeanMIL"]
