"""Datasets and readers: ShapeNetP2M ``.dat`` files, images, R2N2 conversion, the procedural set.

open3d is imported lazily (only by the procedural generator), so reading data and
training work where open3d is not installed.
"""

from p2m_geo.data.dat import DatFileError, load_dat, save_dat
from p2m_geo.data.images import ImageFileError, load_image
from p2m_geo.data.shapenet import (
    CATEGORY_TO_SYNSET,
    SYNSET_TO_CATEGORY,
    FileListError,
    SampleBatch,
    ShapeNetP2M,
    collate_samples,
    read_file_list,
)

__all__ = [
    "DatFileError",
    "load_dat",
    "save_dat",
    "ImageFileError",
    "load_image",
    "CATEGORY_TO_SYNSET",
    "SYNSET_TO_CATEGORY",
    "FileListError",
    "SampleBatch",
    "ShapeNetP2M",
    "collate_samples",
    "read_file_list",
]
