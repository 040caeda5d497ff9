"""Length units as stored in layer metadata, in nanometres (the unit precomputed layers and
their meshes and skeletons use)."""

from __future__ import annotations

__all__ = ["LENGTH_UNITS_NM", "UNITS_NM", "length_unit_nm"]

#: nanometres per unit, by the unit names voxel sizes carry
UNITS_NM = {
    "nm": 1.0, "nanometer": 1.0, "um": 1e3, "µm": 1e3, "micrometer": 1e3, "mm": 1e6,
    "millimeter": 1e6, "angstrom": 0.1, "pm": 1e-3,
}


#: nanometres per unit, by every spelling of a length unit stores write for their axes or
#: voxel sizes: NGFF's (OME-Zarr) names, the SI symbols and the other units the webknossos
#: package accepts, plurals and British spellings (N5, HDF5 attributes), "micron", "µ" (the
#: micro sign) and "μ" (Greek mu); reading a store, anything else is the store's to handle
LENGTH_UNITS_NM: dict[str, float] = {
    **UNITS_NM,
    "yoctometer": 1e-15, "ym": 1e-15, "zeptometer": 1e-12, "zm": 1e-12,
    "attometer": 1e-9, "am": 1e-9, "femtometer": 1e-6, "fm": 1e-6, "picometer": 1e-3,
    "angstrom": 0.1, "Å": 0.1,
    "nanometers": 1.0, "nanometre": 1.0, "nanometres": 1.0,
    "μm": 1e3, "micrometers": 1e3, "micrometre": 1e3, "micrometres": 1e3, "micron": 1e3,
    "microns": 1e3,
    "millimeters": 1e6, "millimetre": 1e6, "millimetres": 1e6,
    "centimeter": 1e7, "cm": 1e7, "decimeter": 1e8, "dm": 1e8,
    "meter": 1e9, "meters": 1e9, "metre": 1e9, "metres": 1e9, "m": 1e9,
    "hectometer": 1e11, "hm": 1e11, "kilometer": 1e12, "km": 1e12, "megameter": 1e15,
    "Mm": 1e15, "gigameter": 1e18, "Gm": 1e18, "terameter": 1e21, "Tm": 1e21,
    "petameter": 1e24, "Pm": 1e24, "exameter": 1e27, "Em": 1e27, "zettameter": 1e30,
    "Zm": 1e30, "yottameter": 1e33, "Ym": 1e33,
    "inch": 2.54e7, "in": 2.54e7, "foot": 3.048e8, "ft": 3.048e8, "yard": 9.144e8,
    "yd": 9.144e8, "mile": 1.609344e12, "mi": 1.609344e12, "parsec": 3.0856775814913673e25,
    "pc": 3.0856775814913673e25,
}


def length_unit_nm(unit: object) -> float | None:
    """Nanometres per ``unit`` (a name of :data:`LENGTH_UNITS_NM`, surrounding spaces and the
    case of a long name aside: "Micrometer"), or None when it is none of them."""
    if not isinstance(unit, str):
        return None
    name = unit.strip()
    found = LENGTH_UNITS_NM.get(name)
    if found is None and len(name) > 2:  # (not for symbols: "Mm" is a megametre, "mm" not)
        found = LENGTH_UNITS_NM.get(name.lower())
    return found
