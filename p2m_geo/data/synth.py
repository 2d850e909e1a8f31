"""Procedural 13-class dataset in the ShapeNetP2M on-disk format (the embedded default).

Each class is a parametric family of closed meshes assembled from open3d primitives
(boxes, cylinders, cones, spheres, tori) with random proportions, normalised like
ShapeNet (bounding box centred, diagonal 1). Every view is rendered on the CPU with
open3d's ``RaycastingScene`` (Lambertian shading, transparent background, 137 x 137
RGBA like R2N2) from the R2N2 camera distribution, through exactly the camera model of
:mod:`p2m_geo.data.camera_r2n2` and :mod:`p2m_geo.camera` (f = 248, c = 111.5 on the
224 input; 248 ~ a 35 mm lens on a 32 mm sensor). GT: ~9000 area-uniform surface
samples with normals, in each view's camera frame, as ``.dat``.

Output layout (same as ShapeNetP2M)::

    OUT/<synset>/<model>/rendering/{00..}.png, {00..}.dat, rendering_metadata.txt
    OUT/train_list.txt, OUT/test_list.txt   (split by shape)

Deterministic: model ``i`` of class ``k`` draws from ``numpy.random.default_rng([seed, k, i])``,
so the bytes do not depend on the number of worker processes.
"""
from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from p2m_geo.camera import SHAPENET_CENTER, SHAPENET_FOCAL, IMAGE_SIZE
from p2m_geo.data.camera_r2n2 import R2N2_OBJECT_SCALE, view_rotation_and_position
from p2m_geo.data.dat import save_dat
from p2m_geo.data.shapenet import CATEGORY_TO_SYNSET
from p2m_geo.io_utils import atomic_path, atomic_write_bytes

__all__ = ["CATEGORIES", "SynthSpec", "build_shape", "render_view", "sample_surface", "generate_dataset", "contact_sheet"]

CATEGORIES = list(CATEGORY_TO_SYNSET)  # 13 names, ShapeNet order
RENDER_SIZE = 137
GT_POINTS = 9000


# ----------------------------------------------------------------------------- primitives
def _o3d():
    import open3d as o3d

    return o3d


def _axis_rotation(axis: str) -> np.ndarray:
    """Rotation taking open3d's primitive axis (+z) to ``axis``."""
    if axis == "z":
        return np.eye(3)
    if axis == "y":  # rotate -90 deg about x: z -> y
        return np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
    if axis == "x":  # rotate +90 deg about y: z -> x
        return np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    if axis == "-y":
        return np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    raise ValueError(axis)


def box(size: Sequence[float], center: Sequence[float]):
    mesh = _o3d().geometry.TriangleMesh.create_box(*size)
    return mesh.translate(np.asarray(center, float) - np.asarray(size, float) / 2)


def cylinder(radius: float, height: float, center: Sequence[float], axis: str = "y"):
    mesh = _o3d().geometry.TriangleMesh.create_cylinder(radius, height, resolution=20, split=1)
    return mesh.rotate(_axis_rotation(axis), center=(0, 0, 0)).translate(center)


def cone(radius: float, height: float, base_center: Sequence[float], axis: str = "y"):
    mesh = _o3d().geometry.TriangleMesh.create_cone(radius, height, resolution=20, split=1)
    return mesh.rotate(_axis_rotation(axis), center=(0, 0, 0)).translate(base_center)


def sphere(radius: float, center: Sequence[float]):
    return _o3d().geometry.TriangleMesh.create_sphere(radius, resolution=10).translate(center)


def torus(radius: float, tube: float, center: Sequence[float], axis: str = "z"):
    mesh = _o3d().geometry.TriangleMesh.create_torus(radius, tube, radial_resolution=20, tubular_resolution=10)
    return mesh.rotate(_axis_rotation(axis), center=(0, 0, 0)).translate(center)


def _legs(rng, width: float, depth: float, height: float, thickness: float, inset: float = 0.02) -> list:
    x, z = width / 2 - thickness / 2 - inset, depth / 2 - thickness / 2 - inset
    round_legs = rng.random() < 0.4
    parts = []
    for sx in (-1, 1):
        for sz in (-1, 1):
            if round_legs:
                parts.append(cylinder(thickness / 2, height, (sx * x, height / 2, sz * z)))
            else:
                parts.append(box((thickness, height, thickness), (sx * x, height / 2, sz * z)))
    return parts


# ----------------------------------------------------------------------------- classes
def _airplane(rng):
    length, radius = rng.uniform(0.8, 1.2), rng.uniform(0.045, 0.08)
    span, chord = rng.uniform(0.7, 1.2), rng.uniform(0.12, 0.25)
    wing_z = rng.uniform(-0.1, 0.1)
    parts = [
        cylinder(radius, length, (0, 0, 0), "z"),
        cone(radius, rng.uniform(0.1, 0.2), (0, 0, length / 2), "z"),
        box((span, rng.uniform(0.015, 0.03), chord), (0, rng.uniform(-0.5, 0.2) * radius, wing_z)),
        box((0.02, rng.uniform(0.12, 0.22), chord * 0.7), (0, radius + 0.06, -length / 2 + chord * 0.4)),
        box((span * rng.uniform(0.25, 0.4), 0.015, chord * 0.5), (0, radius * 0.5, -length / 2 + chord * 0.3)),
    ]
    if rng.random() < 0.6:  # engines under the wings
        for side in (-1, 1):
            parts.append(cylinder(radius * 0.45, chord * 0.9, (side * span * 0.25, -radius, wing_z + 0.02), "z"))
    return parts


def _bench(rng):
    width, depth, height = rng.uniform(0.9, 1.4), rng.uniform(0.3, 0.45), rng.uniform(0.35, 0.5)
    thickness = rng.uniform(0.03, 0.06)
    parts = [box((width, thickness, depth), (0, height, 0))]
    if rng.random() < 0.5:
        parts += _legs(rng, width, depth, height - thickness / 2, rng.uniform(0.04, 0.07))
    else:  # two slab sides
        for side in (-1, 1):
            parts.append(box((0.05, height, depth * 0.9), (side * (width / 2 - 0.06), height / 2, 0)))
    if rng.random() < 0.6:
        back = rng.uniform(0.25, 0.4)
        parts.append(box((width, back, 0.03), (0, height + back / 2, -depth / 2 + 0.015)))
    return parts


def _cabinet(rng):
    width, height, depth = rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.3), rng.uniform(0.35, 0.6)
    parts = [box((width, height, depth), (0, height / 2 + 0.05, 0)), box((width * 0.95, 0.05, depth * 0.9), (0, 0.025, 0))]
    doors = int(rng.integers(1, 4))
    for k in range(doors):
        y = 0.05 + height * (k + 0.5) / doors
        parts.append(box((0.12, 0.03, 0.03), (0, y, depth / 2 + 0.015)))
    if rng.random() < 0.5:
        parts.append(box((width * 1.06, 0.04, depth * 1.06), (0, height + 0.07, 0)))
    return parts


def _car(rng):
    length, width, height = rng.uniform(0.9, 1.2), rng.uniform(0.4, 0.5), rng.uniform(0.16, 0.24)
    wheel = rng.uniform(0.08, 0.11)
    parts = [box((length, height, width), (0, wheel + height / 2, 0))]
    cabin = length * rng.uniform(0.4, 0.6)
    parts.append(box((cabin, height * rng.uniform(0.7, 1.0), width * 0.9),
                     (rng.uniform(-0.1, 0.05), wheel + height * 1.3, 0)))
    for sx in (-1, 1):
        for sz in (-1, 1):
            parts.append(cylinder(wheel, 0.07, (sx * length * 0.32, wheel, sz * (width / 2)), "z"))
    return parts


def _chair(rng):
    seat, height = rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.5)
    thickness = rng.uniform(0.04, 0.07)
    parts = [box((seat, thickness, seat), (0, height, 0))]
    parts += _legs(rng, seat, seat, height - thickness / 2, rng.uniform(0.03, 0.06), inset=0.0)
    back = rng.uniform(0.35, 0.6)
    parts.append(box((seat, back, 0.04), (0, height + back / 2, -seat / 2 + 0.02)))
    if rng.random() < 0.4:
        for side in (-1, 1):
            parts.append(box((0.04, 0.04, seat * 0.9), (side * seat / 2, height + 0.2, 0)))
            parts.append(box((0.04, 0.2, 0.04), (side * seat / 2, height + 0.1, seat * 0.35)))
    return parts


def _display(rng):
    width, height, thickness = rng.uniform(0.6, 1.0), rng.uniform(0.38, 0.6), rng.uniform(0.03, 0.06)
    neck = rng.uniform(0.08, 0.2)
    return [
        box((width, height, thickness), (0, neck + height / 2, 0)),
        cylinder(0.025, neck + 0.05, (0, (neck + 0.05) / 2, -thickness), "y"),
        box((width * rng.uniform(0.3, 0.5), 0.02, rng.uniform(0.15, 0.25)), (0, 0.01, -thickness)),
    ]


def _lamp(rng):
    height, shade = rng.uniform(0.6, 1.0), rng.uniform(0.15, 0.3)
    parts = [
        cylinder(rng.uniform(0.12, 0.22), 0.04, (0, 0.02, 0), "y"),
        cylinder(rng.uniform(0.012, 0.025), height, (0, height / 2, 0), "y"),
    ]
    if rng.random() < 0.7:  # conical shade opening downwards
        parts.append(cone(shade, shade * rng.uniform(0.8, 1.3), (0, height - shade * 0.5, 0), "y"))
    else:
        parts.append(sphere(shade * 0.7, (0, height, 0)))
    return parts


def _loudspeaker(rng):
    width, height, depth = rng.uniform(0.3, 0.45), rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.4)
    parts = [box((width, height, depth), (0, height / 2, 0))]
    woofer = width * rng.uniform(0.3, 0.4)
    parts.append(cylinder(woofer, 0.03, (0, height * 0.3, depth / 2), "z"))
    parts.append(torus(woofer, 0.012, (0, height * 0.3, depth / 2 + 0.015), "z"))
    parts.append(cylinder(woofer * 0.45, 0.03, (0, height * 0.72, depth / 2), "z"))
    return parts


def _rifle(rng):
    length = rng.uniform(0.9, 1.2)
    body = length * rng.uniform(0.25, 0.35)
    parts = [
        cylinder(rng.uniform(0.012, 0.02), length * 0.5, (length * 0.25, 0.05, 0), "x"),
        box((body, rng.uniform(0.08, 0.12), 0.05), (0, 0.03, 0)),
        box((length * 0.3, rng.uniform(0.08, 0.14), 0.045), (-body / 2 - length * 0.15, 0.0, 0)),
        box((0.05, rng.uniform(0.1, 0.18), 0.035), (body * 0.2, -0.08, 0)),
    ]
    if rng.random() < 0.5:
        parts.append(cylinder(0.02, body * 0.9, (0, 0.12, 0), "x"))
    return parts


def _sofa(rng):
    width, depth, seat = rng.uniform(1.4, 2.0), rng.uniform(0.7, 0.9), rng.uniform(0.3, 0.4)
    back, arm = rng.uniform(0.35, 0.55), rng.uniform(0.12, 0.22)
    parts = [
        box((width, seat, depth), (0, seat / 2, 0)),
        box((width, back, depth * 0.25), (0, seat + back / 2, -depth * 0.375)),
    ]
    for side in (-1, 1):
        parts.append(box((arm, seat + back * 0.5, depth), (side * (width / 2 - arm / 2), (seat + back * 0.5) / 2, 0)))
    return parts


def _table(rng):
    width, depth, height = rng.uniform(0.9, 1.6), rng.uniform(0.6, 1.0), rng.uniform(0.65, 0.8)
    thickness = rng.uniform(0.03, 0.06)
    if rng.random() < 0.3:  # round pedestal table
        radius = rng.uniform(0.4, 0.6)
        return [
            cylinder(radius, thickness, (0, height, 0), "y"),
            cylinder(0.05, height, (0, height / 2, 0), "y"),
            cylinder(radius * 0.5, 0.04, (0, 0.02, 0), "y"),
        ]
    return [box((width, thickness, depth), (0, height, 0))] + _legs(rng, width, depth, height - thickness / 2, rng.uniform(0.04, 0.08))


def _telephone(rng):
    width, height, thickness = rng.uniform(0.45, 0.55), rng.uniform(0.9, 1.0), rng.uniform(0.05, 0.1)
    parts = [
        box((width, height, thickness), (0, 0, 0)),
        box((width * 0.88, height * 0.78, 0.01), (0, height * 0.03, thickness / 2 + 0.005)),
        cylinder(0.04, 0.02, (width * 0.25, height * 0.38, -thickness / 2 - 0.01), "z"),
    ]
    if rng.random() < 0.4:  # keypad phone: button grid
        for i in range(3):
            for j in range(3):
                parts.append(box((0.08, 0.05, 0.02), ((i - 1) * 0.13, -height * 0.3 + j * 0.08, thickness / 2 + 0.01)))
    return parts


def _watercraft(rng):
    length, width, hull = rng.uniform(1.0, 1.4), rng.uniform(0.25, 0.4), rng.uniform(0.12, 0.2)
    parts = [
        box((length, hull, width), (0, hull / 2, 0)),
        cone(width / 2, rng.uniform(0.2, 0.35), (length / 2, hull / 2, 0), "x"),
        box((length * rng.uniform(0.2, 0.4), rng.uniform(0.1, 0.2), width * 0.7), (-length * 0.1, hull + 0.07, 0)),
    ]
    if rng.random() < 0.6:
        mast = rng.uniform(0.4, 0.8)
        parts.append(cylinder(0.015, mast, (length * 0.1, hull + mast / 2, 0), "y"))
    return parts


SHAPE_FAMILIES: Dict[str, Callable] = {
    "airplane": _airplane, "bench": _bench, "cabinet": _cabinet, "car": _car, "chair": _chair,
    "display": _display, "lamp": _lamp, "loudspeaker": _loudspeaker, "rifle": _rifle, "sofa": _sofa,
    "table": _table, "telephone": _telephone, "watercraft": _watercraft,
}


def build_shape(category: str, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """``(vertices [V,3] float64, triangles [F,3] int64)`` of one instance, normalised like
    ShapeNet (bounding box centred at the origin, diagonal 1)."""
    if category not in SHAPE_FAMILIES:
        raise ValueError(f"category: expected one of {', '.join(CATEGORIES)}, got {category!r}")
    vertices, triangles, offset = [], [], 0
    for part in SHAPE_FAMILIES[category](rng):
        v = np.asarray(part.vertices, dtype=np.float64)
        vertices.append(v)
        triangles.append(np.asarray(part.triangles, dtype=np.int64) + offset)
        offset += len(v)
    vertices, triangles = np.concatenate(vertices), np.concatenate(triangles)
    low, high = vertices.min(0), vertices.max(0)
    vertices = (vertices - (low + high) / 2) / np.linalg.norm(high - low)
    return vertices, triangles


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, count: int, rng: np.random.Generator):
    """``count`` area-uniform surface samples and their face normals (float64 ``[count,3]`` each)."""
    a, b, c = (vertices[triangles[:, k]] for k in range(3))
    cross = np.cross(b - a, c - a)
    area = np.linalg.norm(cross, axis=1)
    faces = rng.choice(len(triangles), size=count, p=area / area.sum())
    r1, r2 = rng.random(count), rng.random(count)
    s = np.sqrt(r1)
    points = (1 - s)[:, None] * a[faces] + (s * (1 - r2))[:, None] * b[faces] + (s * r2)[:, None] * c[faces]
    normals = cross[faces] / np.maximum(area[faces], 1e-20)[:, None]
    return points, normals


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


_LIGHT = (np.array([-0.4, 0.6, 0.7]) / np.linalg.norm([-0.4, 0.6, 0.7])).astype(np.float32)


def render_view(vertices_cam: np.ndarray, triangles: np.ndarray, colour: np.ndarray, size: int = RENDER_SIZE,
                supersample: int = 2) -> np.ndarray:
    """Lambertian RGBA render ``[size,size,4]`` uint8 of a camera-frame mesh.

    The background is transparent. Each pixel averages ``supersample`` x ``supersample``
    rays, so alpha is the covered fraction (anti-aliased, like the R2N2 renderings)
    and colour is the mean over the covering rays.
    """
    o3d = _o3d()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices_cam.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32)))
    fine = size * supersample
    rays, unit = _ray_bundle(fine)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    index = np.flatnonzero(np.isfinite(hit["t_hit"].numpy()))
    normals = hit["primitive_normals"].numpy()[index]
    view = unit[index]
    cos_view = (normals * view).sum(1)
    normals = np.where((cos_view > 0)[:, None], -normals, normals)  # two-sided: face the viewer
    shade = 0.25 + 0.5 * np.clip(normals @ _LIGHT, 0, 1) + 0.3 * np.abs(cos_view)
    rgb = np.zeros((fine * fine, 4), dtype=np.float32)
    rgb[index, :3] = np.clip(colour.astype(np.float32)[None, :] * shade[:, None], 0, 1)
    rgb[index, 3] = 1.0
    pooled = rgb.reshape(size, supersample, size, supersample, 4).sum(axis=(1, 3))
    coverage = pooled[..., 3:]
    image = np.empty((size, size, 4), dtype=np.uint8)
    image[..., :3] = np.where(coverage > 0, pooled[..., :3] / np.maximum(coverage, 1) * 255 + 0.5, 255).astype(np.uint8)
    image[..., 3] = (coverage[..., 0] / supersample**2 * 255 + 0.5).astype(np.uint8)
    return image


@dataclass(frozen=True)
class SynthSpec:
    """What to generate: ``per_class`` shapes x ``views`` renderings for each class."""

    per_class: int = 24
    views: int = 4
    seed: int = 0
    test_fraction: float = 0.2
    categories: Tuple[str, ...] = tuple(CATEGORIES)

    def __post_init__(self) -> None:
        if self.per_class < 2:
            raise ValueError(f"per_class: expected at least 2 (one train and one test shape), got {self.per_class}")
        if not 1 <= self.views <= 24:
            raise ValueError(f"views: expected 1 to 24, got {self.views}")
        unknown = [c for c in self.categories if c not in SHAPE_FAMILIES]
        if unknown:
            raise ValueError(f"categories: expected names from {', '.join(CATEGORIES)}, got {unknown[0]!r}")


def _model_id(seed: int, category: str, index: int) -> str:
    return hashlib.sha1(f"p2m-geo-synth/{seed}/{category}/{index}".encode()).hexdigest()[:32]


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    import colorsys

    hue, saturation, value = rng.random(), rng.uniform(0.2, 0.7), rng.uniform(0.45, 0.85)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value))


def generate_model(out_root: str, spec: SynthSpec, category: str, index: int) -> List[str]:
    """Build, render and write one shape with all its views; returns its file-list lines."""
    from PIL import Image

    rng = np.random.default_rng([spec.seed, CATEGORIES.index(category), index])
    vertices, triangles = build_shape(category, rng)
    points, normals = sample_surface(vertices, triangles, GT_POINTS, rng)
    colour = _random_colour(rng)
    synset, model = CATEGORY_TO_SYNSET[category], _model_id(spec.seed, category, index)
    folder = Path(out_root) / synset / model / "rendering"
    folder.mkdir(parents=True, exist_ok=True)
    metadata, lines = [], []
    for view in range(spec.views):
        azimuth, elevation, distance = rng.uniform(0, 360), rng.uniform(25, 30), rng.uniform(0.65, 0.95)
        rotation, position = view_rotation_and_position(azimuth, elevation, distance)
        to_camera = lambda p: (R2N2_OBJECT_SCALE * p - position) @ rotation.T  # noqa: E731
        image = render_view(to_camera(vertices), triangles, colour)
        with atomic_path(folder / f"{view:02d}.png") as tmp:
            Image.fromarray(image, "RGBA").save(tmp, format="PNG")
        save_dat(folder / f"{view:02d}.dat", np.concatenate([to_camera(points), normals @ rotation.T], axis=1))
        metadata.append(f"{azimuth:.6f} {elevation:.6f} 0 {distance:.6f} 25")
        lines.append(f"Data/ShapeNetP2M/{synset}/{model}/rendering/{view:02d}.dat")
    atomic_write_bytes(folder / "rendering_metadata.txt", ("\n".join(metadata) + "\n").encode())
    return lines


def _generate_model_job(job):
    return job[2], job[3], generate_model(*job)


def generate_dataset(out_root: os.PathLike, spec: SynthSpec, workers: int = 1,
                     progress: Optional[Callable[[int], None]] = None) -> Dict[str, int]:
    """Generate the dataset under ``out_root``; returns ``{'train': views, 'test': views}``.

    ``progress(n)`` is called with the number of views finished after each shape.
    The list files are written last, so a folder with both lists is complete.
    """
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out_root), spec, category, index) for category in spec.categories for index in range(spec.per_class)]
    results: Dict[Tuple[str, int], List[str]] = {}
    if workers > 1:
        context = multiprocessing.get_context("spawn")  # open3d/embree threads do not survive fork
        with context.Pool(workers) as pool:
            for category, index, lines in pool.imap_unordered(_generate_model_job, jobs):
                results[(category, index)] = lines
                if progress:
                    progress(len(lines))
    else:
        for job in jobs:
            category, index, lines = _generate_model_job(job)
            results[(category, index)] = lines
            if progress:
                progress(len(lines))
    test_count = max(1, int(round(spec.test_fraction * spec.per_class)))
    train, test = [], []
    for category in spec.categories:
        for index in range(spec.per_class):
            (test if index >= spec.per_class - test_count else train).extend(results[(category, index)])
    atomic_write_bytes(out_root / "train_list.txt", ("\n".join(train) + "\n").encode())
    atomic_write_bytes(out_root / "test_list.txt", ("\n".join(test) + "\n").encode())
    return {"train": len(train), "test": len(test)}


def contact_sheet(root: os.PathLike, out_png: os.PathLike, columns: int = 8, file_list: str = "train_list.txt") -> Path:
    """A PNG with one row per class: the first ``columns`` views of the list, on white."""
    from PIL import Image, ImageDraw

    from p2m_geo.data.images import rgba_to_rgb_on_white
    from p2m_geo.data.shapenet import read_file_list

    root = Path(root)
    refs = read_file_list(root / file_list)
    by_class: Dict[str, list] = {}
    for ref in refs:
        by_class.setdefault(ref.category, []).append(ref)
    label_width, cell = 110, RENDER_SIZE
    sheet = Image.new("RGB", (label_width + columns * cell, len(by_class) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (category, class_refs) in enumerate(sorted(by_class.items())):
        draw.text((6, row * cell + cell // 2 - 6), category, fill="black")
        for column, ref in enumerate(class_refs[:columns]):
            rgba = np.asarray(Image.open(root / ref.relative_dat.replace(".dat", ".png")).convert("RGBA"))
            tile = Image.fromarray((rgba_to_rgb_on_white(rgba) * 255 + 0.5).astype(np.uint8))
            sheet.paste(tile, (label_width + column * cell, row * cell))
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        sheet.save(tmp, format="PNG")
    return out_png
