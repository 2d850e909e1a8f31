r"""R2N2 / ShapeNetP2M view geometry: from ``rendering_metadata.txt`` rows to camera frames.

For a view with azimuth :math:`\theta`, elevation :math:`\phi` (degrees) and distance
ratio :math:`d` (the original Pixel2Mesh generation procedure):

.. math::
    \mathbf{c} = d\,(\cos\phi\cos\theta,\ \sin\phi,\ \cos\phi\sin\theta),\quad
    \mathbf{z} = \mathbf{c}/\lVert\mathbf{c}\rVert,\quad
    \mathbf{x} = \frac{(0,1,0)\times\mathbf{z}}{\lVert(0,1,0)\times\mathbf{z}\rVert},\quad
    \mathbf{y} = \mathbf{z}\times\mathbf{x},

:math:`R = [\mathbf{x};\mathbf{y};\mathbf{z}]` (rows), and object points / normals map to
the camera frame as :math:`p_{cam} = (s\,p - \mathbf{c})R^\top`, :math:`n_{cam} = n R^\top`
with the ShapeNet-to-R2N2 scale :math:`s = 0.57`. The camera then looks down
:math:`-Z` with :math:`y` up, as :mod:`p2m_geo.camera` expects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

import numpy as np

__all__ = [
    "R2N2_OBJECT_SCALE",
    "ViewParameters",
    "read_rendering_metadata",
    "view_rotation_and_position",
    "object_to_camera",
    "points_to_camera",
    "points_to_object",
]

#: Scale applied to ShapeNet object coordinates before the camera transform.
R2N2_OBJECT_SCALE = 0.57

ViewParameters = Tuple[float, float, float]  # azimuth deg, elevation deg, distance ratio


def read_rendering_metadata(path: str | os.PathLike) -> List[ViewParameters]:
    """Rows ``azimuth elevation 0 distance_ratio 25`` -> list of (azimuth, elevation, distance)."""
    views = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(values) != 5:
            raise ValueError(
                f"{path}:{number}: expected 'azimuth elevation 0 distance_ratio fov' (5 numbers), got {line.strip()!r}"
            )
        views.append((values[0], values[1], values[3]))
    return views


def view_rotation_and_position(azimuth: float, elevation: float, distance: float) -> Tuple[np.ndarray, np.ndarray]:
    """``(R [3,3], c [3])`` in float64 for one view (see the module docstring)."""
    theta, phi = np.radians(azimuth), np.radians(elevation)
    position = distance * np.array([np.cos(phi) * np.cos(theta), np.sin(phi), np.cos(phi) * np.sin(theta)])
    z_axis = position / np.linalg.norm(position)
    x_axis = np.cross([0.0, 1.0, 0.0], z_axis)
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(z_axis, x_axis)
    return np.stack([x_axis, y_axis, z_axis]), position


def points_to_camera(
    points: np.ndarray, rotation: np.ndarray, position: np.ndarray, scale: float = R2N2_OBJECT_SCALE
) -> np.ndarray:
    r"""Object frame -> camera frame, :math:`p_c = R\,(s\,p - c)`, in float64."""
    return (scale * np.asarray(points, dtype=np.float64) - position) @ rotation.T


def points_to_object(
    points_cam: np.ndarray, rotation: np.ndarray, position: np.ndarray, scale: float = R2N2_OBJECT_SCALE
) -> np.ndarray:
    r"""The inverse of :func:`points_to_camera`: :math:`p = (R^\top p_c + c) / s`."""
    return (np.asarray(points_cam, dtype=np.float64) @ rotation + position) / scale


def object_to_camera(
    points: np.ndarray, normals: np.ndarray, view: ViewParameters, scale: float = R2N2_OBJECT_SCALE
) -> Tuple[np.ndarray, np.ndarray]:
    """Object-frame points/normals ``[N,3]`` to the camera frame of ``view`` (float32)."""
    rotation, position = view_rotation_and_position(*view)
    points_cam = points_to_camera(points, rotation, position, scale)
    normals_cam = normals.astype(np.float64) @ rotation.T
    return points_cam.astype(np.float32), normals_cam.astype(np.float32)
