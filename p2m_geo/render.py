"""CPU previews of predicted meshes (open3d raycasting, imported lazily)."""
from __future__ import annotations

import numpy as np

__all__ = ["render_mesh_views", "side_by_side"]

PREVIEW_COLOUR = np.array([0.55, 0.65, 0.85])


def _rotate_about_centre(vertices: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate camera-frame vertices about the vertical (y) axis through their centroid."""
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    centre = vertices.mean(0)
    return (vertices - centre) @ rotation.T + centre


def render_mesh_views(vertices: np.ndarray, faces: np.ndarray, size: int = 224) -> list:
    """RGBA renders ``[size,size,4]`` of a camera-frame mesh: from the input camera and turned 90 deg.

    Args:
        vertices: ``[V,3]`` in the camera frame; faces: ``[F,3]``.
    """
    from p2m_geo.data.synth import render_view

    return [render_view(_rotate_about_centre(vertices, angle), faces, PREVIEW_COLOUR, size=size) for angle in (0.0, 90.0)]


def side_by_side(rows: list) -> np.ndarray:
    """Stack rows of RGB/RGBA uint8 tiles (same height) into one RGB image on white."""
    from p2m_geo.data.images import rgba_to_rgb_on_white

    def rgb(tile: np.ndarray) -> np.ndarray:
        if tile.shape[-1] == 4:
            return (rgba_to_rgb_on_white(tile) * 255 + 0.5).astype(np.uint8)
        return tile

    return np.concatenate([np.concatenate([rgb(t) for t in row], axis=1) for row in rows], axis=0)
