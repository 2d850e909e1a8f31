"""CPU raycast rendering (open3d, imported lazily): the procedural renderings and the previews
of predicted meshes."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from p2m_geo.camera import IMAGE_SIZE, SHAPENET_CENTER, SHAPENET_FOCAL

__all__ = [
    "RayHits",
    "cast_camera_rays",
    "RENDER_SIZE",
    "pixel_rays",
    "render_view",
    "render_mesh_views",
    "side_by_side",
    "preview_row",
    "write_preview_png",
]

PREVIEW_COLOUR = np.array([0.55, 0.65, 0.85])
RENDER_SIZE = 137  #: side of the R2N2 renderings


def _o3d():
    import open3d as o3d

    return o3d


def pixel_rays(size: int = RENDER_SIZE) -> np.ndarray:
    """Camera-frame ray directions ``[size*size,3]`` through pixel centres of a ``size`` image
    that covers the 224 network input (same convention as :func:`p2m_geo.camera.project`)."""
    centres = (np.arange(size) + 0.5) * IMAGE_SIZE / size - 0.5
    u, v = np.meshgrid(centres, centres)
    dx = (u - SHAPENET_CENTER) / SHAPENET_FOCAL
    dy = -(v - SHAPENET_CENTER) / SHAPENET_FOCAL
    return np.stack([dx, dy, -np.ones_like(dx)], axis=-1).reshape(-1, 3)


@functools.lru_cache(maxsize=4)
def _ray_bundle(size: int):
    """Rays (origin at the camera) as float32 ``[size*size,6]`` and their unit directions."""
    directions = pixel_rays(size)
    rays = np.concatenate([np.zeros_like(directions), directions], axis=1).astype(np.float32)
    unit = (directions / np.linalg.norm(directions, axis=1, keepdims=True)).astype(np.float32)
    return rays, unit


@dataclass(frozen=True)
class RayHits:
    """The rays of a ``fine x fine`` grid that hit the mesh: their flat pixel ``index [H]``,
    the hit surfaces' ``normals [H,3]`` turned towards the camera (two-sided), the unit
    ``view`` directions ``[H,3]`` (camera to surface), hit ``points`` ``[H,3]`` (camera frame)
    and ``faces [H]``."""

    fine: int
    index: np.ndarray
    normals: np.ndarray
    view: np.ndarray
    points: np.ndarray
    faces: np.ndarray
    cos_view: np.ndarray  #: cosine between the surface's original normal and the view ray


def cast_camera_rays(vertices_cam: np.ndarray, triangles: np.ndarray, fine: int) -> RayHits:
    """Cast the rays through the pixel centres of a ``fine`` x ``fine`` image (covering the 224
    network input, :func:`pixel_rays`) at a camera-frame mesh (open3d ``RaycastingScene``)."""
    o3d = _o3d()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices_cam.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32)))
    rays, unit = _ray_bundle(fine)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t_hit = hit["t_hit"].numpy()
    index = np.flatnonzero(np.isfinite(t_hit))
    normals = hit["primitive_normals"].numpy()[index]
    view = unit[index]
    cos_view = (normals * view).sum(1)
    normals = np.where((cos_view > 0)[:, None], -normals, normals)  # two-sided: face the viewer
    points = rays[index, 3:] * t_hit[index, None]
    faces = hit["primitive_ids"].numpy()[index].astype(np.int64)
    return RayHits(fine, index, normals, view, points, faces, cos_view)


_LIGHT = (np.array([-0.4, 0.6, 0.7]) / np.linalg.norm([-0.4, 0.6, 0.7])).astype(np.float32)


def render_view(
    vertices_cam: np.ndarray, triangles: np.ndarray, colour: np.ndarray, size: int = RENDER_SIZE, supersample: int = 2
) -> np.ndarray:
    """Lambertian RGBA render ``[size,size,4]`` uint8 of a camera-frame mesh.

    The background is transparent. Each pixel averages ``supersample`` x ``supersample``
    rays, so alpha is the covered fraction (anti-aliased, like the R2N2 renderings)
    and colour is the mean over the covering rays.
    """
    fine = size * supersample
    hits = cast_camera_rays(vertices_cam, triangles, fine)
    index = hits.index
    shade = 0.25 + 0.5 * np.clip(hits.normals @ _LIGHT, 0, 1) + 0.3 * np.abs(hits.cos_view)
    rgb = np.zeros((fine * fine, 4), dtype=np.float32)
    rgb[index, :3] = np.clip(colour.astype(np.float32)[None, :] * shade[:, None], 0, 1)
    rgb[index, 3] = 1.0
    pooled = rgb.reshape(size, supersample, size, supersample, 4).sum(axis=(1, 3))
    coverage = pooled[..., 3:]
    image = np.empty((size, size, 4), dtype=np.uint8)
    image[..., :3] = np.where(coverage > 0, pooled[..., :3] / np.maximum(coverage, 1) * 255 + 0.5, 255).astype(np.uint8)
    image[..., 3] = (coverage[..., 0] / supersample**2 * 255 + 0.5).astype(np.uint8)
    return image


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
    return [
        render_view(_rotate_about_centre(vertices, angle), faces, PREVIEW_COLOUR, size=size) for angle in (0.0, 90.0)
    ]


def side_by_side(rows: list) -> np.ndarray:
    """Stack rows of RGB/RGBA uint8 tiles (same height) into one RGB image on white."""
    from p2m_geo.data.images import rgba_to_rgb_on_white, to_uint8

    def rgb(tile: np.ndarray) -> np.ndarray:
        if tile.shape[-1] == 4:
            return to_uint8(rgba_to_rgb_on_white(tile))
        return tile

    return np.concatenate([np.concatenate([rgb(t) for t in row], axis=1) for row in rows], axis=0)


def preview_row(image, vertices: np.ndarray, faces: np.ndarray) -> list:
    """One preview row: the input image (``[3,H,W]`` tensor in [0, 1]) | the mesh from the input
    camera | the mesh turned 90 deg. Used by training previews and ``predict --preview``."""
    from p2m_geo.data.images import to_uint8

    rgb = to_uint8(image.detach().permute(1, 2, 0).cpu().numpy())
    return [rgb] + render_mesh_views(vertices, faces)


def write_preview_png(rows: list, path) -> None:
    """Write :func:`side_by_side` of ``rows`` as a PNG, atomically."""
    from PIL import Image

    from p2m_geo.io_utils import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(side_by_side(rows)).save(tmp, format="PNG")
