"""Datasets and readers: ShapeNetP2M ``.dat`` files, R2N2 conversion, the procedural set."""
from p2m_geo.data.dat import DatFileError, load_dat

__all__ = ["DatFileError", "load_dat"]
