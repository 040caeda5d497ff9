"""Length units as stored in layer metadata, in nanometres (the unit precomputed layers and
their meshes and skeletons use)."""

from __future__ import annotations

__all__ = ["UNITS_NM"]

#: nanometres per unit, by the unit names voxel sizes carry
UNITS_NM = {
    "nm": 1.0, "nanometer": 1.0, "um": 1e3, "µm": 1e3, "micrometer": 1e3, "mm": 1e6,
    "millimeter": 1e6, "angstrom": 0.1, "pm": 1e-3,
}
