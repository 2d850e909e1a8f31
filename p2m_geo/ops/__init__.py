"""Geometry operations shared by the losses and the metrics: nearest-neighbour search
(:mod:`~p2m_geo.ops.knn`), chamfer distance (:mod:`~p2m_geo.ops.chamfer`) and surface
sampling (:mod:`~p2m_geo.ops.sampling`)."""

from p2m_geo.ops.chamfer import ChamferResult, chamfer_distance
from p2m_geo.ops.knn import SEARCHES, nearest_indices
from p2m_geo.ops.sampling import face_cross_products, face_normals, sample_points_on_faces

__all__ = [
    "ChamferResult",
    "chamfer_distance",
    "SEARCHES",
    "nearest_indices",
    "face_cross_products",
    "face_normals",
    "sample_points_on_faces",
]
