"""Fixed networks and the units they are built from."""

from fastnas.models.networks import (
    MacroLayout,
    UnitNetwork,
    UnitSpec,
    dilated_lightnet,
    layout,
    shufflenet_v1,
)
from fastnas.models.units import ShuffleUnit

__all__ = [
    "MacroLayout",
    "ShuffleUnit",
    "UnitNetwork",
    "UnitSpec",
    "dilated_lightnet",
    "layout",
    "shufflenet_v1",
]
