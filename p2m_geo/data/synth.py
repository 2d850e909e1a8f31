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

Deterministic: model ``i`` of class ``k`` draws from ``numpy.random.default_rng([seed, k, i])``
(version 2 from ``[seed, k, i, 2]``), so the bytes do not depend on the number of worker processes.
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

from p2m_geo.data.camera_r2n2 import points_to_camera, points_to_object, view_rotation_and_position
from p2m_geo.data.dat import save_dat
from p2m_geo.data.shapenet import CATEGORY_TO_SYNSET
from p2m_geo.io_utils import atomic_path, atomic_write_bytes
from p2m_geo.render import RENDER_SIZE, cast_camera_rays, render_view

__all__ = [
    "CATEGORIES",
    "DATASET_VERSIONS",
    "SynthSpec",
    "build_shape",
    "build_shape_parts",
    "render_view",
    "render_view_textured",
    "lathe",
    "loft",
    "silhouette_statistics",
    "sample_surface",
    "generate_dataset",
    "contact_sheet",
]

CATEGORIES = list(CATEGORY_TO_SYNSET)  # 13 names, ShapeNet order
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
    if axis == "-z":  # rotate 180 deg about x
        return np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])
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


def _biplane(rng):
    """Two stacked straight wings joined by struts, a short fuselage with a propeller disc and
    wheels: taller for its length than :func:`_airplane` (height 0.27-0.35 of the diagonal
    against 0.16-0.23 there)."""
    length, radius = rng.uniform(0.75, 1.0), rng.uniform(0.06, 0.09)
    span, chord, thickness = rng.uniform(0.85, 1.15), rng.uniform(0.17, 0.26), rng.uniform(0.02, 0.035)
    gap, stagger = rng.uniform(0.2, 0.34), rng.uniform(0.0, 0.08)
    wing_z = length / 2 - chord / 2 - rng.uniform(0.1, 0.2)
    lower_y, upper_y = -radius * rng.uniform(0.3, 0.9), radius + gap - radius * 0.5
    nose = length / 2
    parts = [
        cylinder(radius, length, (0, 0, 0), "z"),
        cone(radius, rng.uniform(0.05, 0.1), (0, 0, nose), "z"),
        cone(radius * 0.9, rng.uniform(0.15, 0.3), (0, 0, -length / 2), "-z"),
        box((span, thickness, chord), (0, lower_y, wing_z)),
        box((span * rng.uniform(0.9, 1.05), thickness, chord), (0, upper_y, wing_z + stagger)),
        box((0.02, rng.uniform(0.1, 0.18), chord * 0.6), (0, radius + 0.05, -length / 2 + chord * 0.3)),
        box((span * rng.uniform(0.25, 0.35), 0.015, chord * 0.5), (0, 0, -length / 2 + chord * 0.25)),
        cylinder(rng.uniform(0.1, 0.16), 0.01, (0, 0, nose + 0.02), "z"),  # propeller disc
    ]
    strut_height = upper_y - lower_y
    for side in (-1, 1):  # one strut pair per side: leading and trailing edge
        for edge in (-1, 1):
            x, z = side * span * rng.uniform(0.3, 0.4), wing_z + stagger / 2 + edge * chord * 0.35
            parts.append(cylinder(0.008, strut_height, (x, (upper_y + lower_y) / 2, z), "y"))
    wheel, leg = rng.uniform(0.04, 0.06), rng.uniform(0.08, 0.14)
    for side in (-1, 1):  # landing gear under the lower wing
        parts.append(cylinder(0.01, leg, (side * 0.1, lower_y - leg / 2, wing_z + chord * 0.3), "y"))
        parts.append(cylinder(wheel, 0.03, (side * 0.1, lower_y - leg, wing_z + chord * 0.3), "x"))
    return parts


def _airplane_v3(rng):
    """Version 3's airplanes: a quarter biplanes (:func:`_biplane`), the rest :func:`_airplane`."""
    return _biplane(rng) if rng.random() < 0.25 else _airplane(rng)


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
    parts = [
        box((width, height, depth), (0, height / 2 + 0.05, 0)),
        box((width * 0.95, 0.05, depth * 0.9), (0, 0.025, 0)),
    ]
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
    parts.append(
        box((cabin, height * rng.uniform(0.7, 1.0), width * 0.9), (rng.uniform(-0.1, 0.05), wheel + height * 1.3, 0))
    )
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
    return [box((width, thickness, depth), (0, height, 0))] + _legs(
        rng, width, depth, height - thickness / 2, rng.uniform(0.04, 0.08)
    )


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


# ----------------------------------------------------------------------------- version 2 shapes
_LATHE_AXES = {
    "y": np.eye(3),
    "x": np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]]),  # y -> x
    "z": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),  # y -> z
}


def _mesh(vertices: np.ndarray, triangles: np.ndarray):
    o3d = _o3d()
    return o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.asarray(vertices, float)),
        o3d.utility.Vector3iVector(np.asarray(triangles, np.int32)),
    )


def loft(rings: np.ndarray):
    """Closed mesh through ``rings`` ``[S,K,3]`` (S cross-sections of K points each, in the
    same order), both ends capped by a fan around the ring's mean; faces oriented outwards
    (flipped if the signed volume comes out negative)."""
    rings = np.asarray(rings, float)
    sections, k = rings.shape[:2]
    index = np.arange(sections * k).reshape(sections, k)
    nxt = np.roll(index, -1, axis=1)
    lo, hi, lo_n, hi_n = index[:-1], index[1:], nxt[:-1], nxt[1:]
    triangles = [np.stack([lo, hi, lo_n], -1).reshape(-1, 3), np.stack([lo_n, hi, hi_n], -1).reshape(-1, 3)]
    vertices = [rings.reshape(-1, 3), rings[0].mean(0, keepdims=True), rings[-1].mean(0, keepdims=True)]
    first, last = sections * k, sections * k + 1
    triangles.append(np.stack([np.full(k, first), index[0], nxt[0]], -1))
    triangles.append(np.stack([np.full(k, last), nxt[-1], index[-1]], -1))
    vertices, triangles = np.concatenate(vertices), np.concatenate(triangles)
    a, b, c = (vertices[triangles[:, j]] for j in range(3))
    if np.einsum("ij,ij->i", a, np.cross(b, c)).sum() < 0:
        triangles = triangles[:, ::-1]
    return _mesh(vertices, triangles)


def lathe(
    radii: Sequence[float],
    heights: Sequence[float],
    center: Sequence[float] = (0, 0, 0),
    axis: str = "y",
    resolution: int = 24,
):
    """Closed surface of revolution: the profile ``radii[i]`` at ``heights[i]`` (increasing)
    turned about ``axis`` through ``center`` (:func:`loft` of circles)."""
    radii, heights = np.asarray(radii, float), np.asarray(heights, float)
    angles = np.linspace(0, 2 * np.pi, resolution, endpoint=False)
    rings = np.stack(
        [np.outer(radii, np.cos(angles)), np.repeat(heights[:, None], resolution, 1), np.outer(radii, np.sin(angles))],
        axis=-1,
    )
    return loft(rings @ _LATHE_AXES[axis].T + np.asarray(center, float))


def ellipsoid(radii: Sequence[float], center: Sequence[float]):
    mesh = _o3d().geometry.TriangleMesh.create_sphere(1.0, resolution=12)
    vertices = np.asarray(mesh.vertices) * np.asarray(radii, float) + np.asarray(center, float)
    return _mesh(vertices, np.asarray(mesh.triangles))


def warp(mesh, function: Callable[[np.ndarray], np.ndarray]):
    """``mesh`` with its vertices moved by ``function`` ``[V,3] -> [V,3]`` (same faces)."""
    return _mesh(function(np.asarray(mesh.vertices)), np.asarray(mesh.triangles))


def _wing(
    rng,
    span: float,
    chord: float,
    thickness: float,
    root: Sequence[float],
    sweep: float,
    taper: float,
    dihedral: float = 0.0,
) -> list:
    """Two tapered, swept half-wings (boxes warped so the chord shrinks and the leading edge
    moves back with the distance from the root)."""
    parts = []
    for side in (-1, 1):
        half = box((span / 2, thickness, chord), (side * span / 4, 0, 0))

        def shape(v, side=side):
            t = np.abs(v[:, 0]) / (span / 2)
            out = v.copy()
            out[:, 2] = v[:, 2] * (1 - taper * t) - sweep * t * span / 2
            out[:, 1] = v[:, 1] * (1 - 0.5 * taper * t) + dihedral * t * span / 2
            return out + np.asarray(root, float)

        parts.append(warp(half, shape))
    return parts


def _airplane_v2(rng):
    length, radius = rng.uniform(0.8, 1.2), rng.uniform(0.04, 0.08)
    t = np.array([0.0, 0.04, 0.12, 0.3, 0.7, 0.9, 1.0])
    profile = radius * np.array([0.05, 0.55, 0.9, 1.0, 1.0, 0.55, 0.15]) * rng.uniform(0.9, 1.1, size=7)
    parts = [lathe(profile, (t - 0.5) * length, axis="z", resolution=16)]
    span, chord = rng.uniform(0.7, 1.3), rng.uniform(0.12, 0.28)
    sweep, taper = rng.uniform(0.0, 0.6), rng.uniform(0.2, 0.7)
    wing_z, wing_y = rng.uniform(-0.1, 0.1), rng.uniform(-0.6, 0.5) * radius
    parts += _wing(rng, span, chord, rng.uniform(0.012, 0.03), (0, wing_y, wing_z), sweep, taper, rng.uniform(0, 0.12))
    if rng.random() < 0.2:  # biplane: a second wing above, on struts
        gap = rng.uniform(0.12, 0.2)
        parts += _wing(rng, span * rng.uniform(0.85, 1.0), chord, 0.02, (0, wing_y + gap, wing_z), 0.0, taper * 0.3)
        for side in (-1, 1):
            parts.append(box((0.015, gap, 0.015), (side * span * 0.3, wing_y + gap / 2, wing_z)))
    tail_z = -length / 2 + chord * 0.35
    parts += _wing(rng, span * rng.uniform(0.25, 0.4), chord * 0.5, 0.015, (0, radius * 0.4, tail_z), sweep * 0.8, 0.4)
    fin_sweep = rng.uniform(0.3, 1.0)
    fin = warp(
        box((0.02, rng.uniform(0.12, 0.22), chord * 0.7), (0, 0, 0)),
        lambda v: (
            v + np.stack([0 * v[:, 0], 0 * v[:, 1], -v[:, 1] * fin_sweep], 1) + np.array([0, radius + 0.07, tail_z])
        ),
    )
    parts.append(fin)
    if rng.random() < 0.6:
        for side in (-1, 1):
            parts.append(
                lathe(
                    radius * 0.45 * np.array([0.6, 1, 1, 0.7]),
                    np.array([0, 0.2, 0.8, 1]) * chord * 0.9,
                    (side * span * 0.25, wing_y - radius * 0.7, wing_z - chord * 0.4),
                    axis="z",
                    resolution=12,
                )
            )
    return parts


def _car_v2(rng):
    length, width, height = rng.uniform(0.95, 1.2), rng.uniform(0.38, 0.48), rng.uniform(0.11, 0.17)
    wheel = rng.uniform(0.06, 0.09)
    nose, tail = rng.uniform(0.1, 0.45), rng.uniform(0.0, 0.35)

    def rounded_body(v):  # lower the top edge towards the ends, narrow the roof
        u = v[:, 0] / (length / 2)
        drop = np.where(u > 0, nose, tail) * np.abs(u) ** 2
        out = v.copy()
        top = v[:, 1] > 0
        out[top, 1] -= drop[top] * height
        return out + np.array([0, wheel + height / 2, 0])

    parts = [warp(box((length, height, width), (0, 0, 0)), rounded_body)]
    cabin, cabin_h = length * rng.uniform(0.4, 0.65), height * rng.uniform(0.55, 0.9)
    slope, rng_shift = rng.uniform(0.15, 0.45), rng.uniform(-0.12, 0.05)

    def trapezoid(v):  # the roof shorter and narrower than the cabin's base
        out = v.copy()
        top = v[:, 1] > 0
        out[top, 0] *= 1 - slope
        out[top, 2] *= 0.85
        return out + np.array([rng_shift, wheel + height + cabin_h / 2 - 0.01, 0])

    parts.append(warp(box((cabin, cabin_h, width * 0.9), (0, 0, 0)), trapezoid))
    for sx in (-1, 1):
        for sz in (-1, 1):
            parts.append(cylinder(wheel, 0.07, (sx * length * rng.uniform(0.28, 0.35), wheel, sz * (width / 2)), "z"))
    return parts


def _chair_v2(rng):
    seat, height = rng.uniform(0.4, 0.55), rng.uniform(0.38, 0.5)
    thickness = rng.uniform(0.03, 0.07)
    parts = [box((seat, thickness, seat * rng.uniform(0.9, 1.1)), (0, height, 0))]
    leg = rng.uniform(0.02, 0.05)
    splay = rng.uniform(0.0, 0.08)
    if rng.random() < 0.2:  # swivel chair: column and star base
        parts.append(cylinder(0.03, height, (0, height / 2, 0)))
        for k in range(5):
            angle = 2 * np.pi * k / 5
            arm = box((seat * 0.5, 0.03, 0.04), (0, 0, 0))
            rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
            parts.append(warp(arm, lambda v, r=rotation: (v + np.array([seat * 0.25, 0.03, 0])) @ r.T))
    else:
        for sx in (-1, 1):
            for sz in (-1, 1):
                x, z = sx * (seat / 2 - leg), sz * (seat / 2 - leg)
                column = box((leg, height - thickness / 2, leg), (x, (height - thickness / 2) / 2, z))
                # splayed: the foot moves outwards by ``splay``
                parts.append(
                    warp(column, lambda v, sx=sx, sz=sz: v + splay * (v[:, 1:2] < 0.01) * np.array([sx, 0, sz]))
                )
    back, tilt = rng.uniform(0.35, 0.6), rng.uniform(0.0, 0.35)
    curve = rng.uniform(0.0, 0.06)
    back_mesh = box((seat, back, 0.035), (0, 0, 0))
    parts.append(
        warp(
            back_mesh,
            lambda v: np.stack(
                [
                    v[:, 0],
                    v[:, 1] + height + back / 2,
                    v[:, 2] - seat / 2 + 0.02 - tilt * (v[:, 1] + back / 2) + curve * (2 * v[:, 0] / seat) ** 2,
                ],
                1,
            ),
        )
    )
    if rng.random() < 0.35:
        for side in (-1, 1):
            parts.append(box((0.04, 0.04, seat * 0.9), (side * seat / 2, height + 0.2, 0)))
            parts.append(box((0.04, 0.2, 0.04), (side * seat / 2, height + 0.1, seat * 0.35)))
    return parts


def _lamp_v2(rng):
    height, shade = rng.uniform(0.5, 1.0), rng.uniform(0.12, 0.3)
    base = rng.uniform(0.1, 0.22)
    parts = [
        lathe(
            [base, base, base * rng.uniform(0.3, 0.9), 0.0], [0, 0.02, rng.uniform(0.04, 0.1), rng.uniform(0.1, 0.14)]
        ),
        cylinder(rng.uniform(0.01, 0.022), height, (0, height / 2, 0), "y"),
    ]
    kind = rng.random()
    top = height
    if kind < 0.6:  # shade: a frustum-like surface of revolution, open end pointing down
        bottom, upper, tall = shade, shade * rng.uniform(0.4, 0.9), shade * rng.uniform(0.7, 1.4)
        bulge = rng.uniform(0.9, 1.15)
        parts.append(
            lathe(
                [bottom, bottom * 0.98, (bottom + upper) / 2 * bulge, upper, upper * 0.95],
                np.array([0, 0.02, 0.5, 0.98, 1.0]) * tall + top - tall * 0.6,
            )
        )
    elif kind < 0.8:  # globe
        parts.append(ellipsoid((shade * 0.7,) * 3, (0, top, 0)))
    else:  # desk lamp: an arm and a cone head
        reach = rng.uniform(0.15, 0.35)
        parts.append(box((reach, 0.02, 0.02), (reach / 2, top, 0)))
        parts.append(lathe([0.0, shade * 0.35, shade * 0.6], [0, shade * 0.5, shade], (reach, top - shade * 0.9, 0)))
    return parts


def _rifle_v2(rng):
    length, tilt = rng.uniform(0.9, 1.2), rng.uniform(0.0, 0.5)
    body = length * rng.uniform(0.25, 0.35)
    drop = rng.uniform(0.02, 0.08)
    stock_len = length * rng.uniform(0.25, 0.35)
    stock = warp(
        box((stock_len, rng.uniform(0.06, 0.1), 0.045), (0, 0, 0)),
        lambda v: np.stack(
            [
                v[:, 0] - body / 2 - stock_len / 2,
                v[:, 1] * (1 + 0.8 * (0.5 - v[:, 0] / stock_len)) - drop * (0.5 - v[:, 0] / stock_len),
                v[:, 2],
            ],
            1,
        ),
    )
    parts = [
        cylinder(rng.uniform(0.01, 0.018), length * 0.5, (body / 2 + length * 0.25, 0.05, 0), "x"),
        box((body, rng.uniform(0.07, 0.11), 0.05), (0, 0.03, 0)),
        stock,
        warp(
            box((0.05, rng.uniform(0.1, 0.18), 0.035), (0, 0, 0)),
            lambda v: v + np.stack([-v[:, 1] * tilt, 0 * v[:, 1], 0 * v[:, 1]], 1) + np.array([body * 0.2, -0.08, 0]),
        ),
    ]
    if rng.random() < 0.5:
        parts.append(cylinder(0.02, body * 0.9, (0, 0.1, 0), "x"))
    return parts


def _watercraft_v2(rng):
    length, width, hull = rng.uniform(1.0, 1.4), rng.uniform(0.22, 0.4), rng.uniform(0.1, 0.2)
    bow = rng.uniform(0.2, 0.4)

    def hull_shape(v):  # pointed bow, narrower keel, sheer rising at the bow
        u = (v[:, 0] / (length / 2) + 1) / 2  # 0 stern .. 1 bow
        narrow = np.where(u > 1 - bow, np.clip((1 - u) / bow, 0.02, 1), 1.0)
        out = v.copy()
        out[:, 2] = v[:, 2] * narrow
        out[:, 1] = v[:, 1] + (v[:, 1] > 0) * 0.06 * u**2
        return out + np.array([0, hull / 2, 0])

    section = np.array([[0.5, 1], [0, 0.97], [-0.35, 0.55], [-0.5, 0], [-0.35, -0.55], [0, -0.97], [0.5, -1], [0.5, 0]])
    xs = np.linspace(-0.5, 0.5, 9) * length
    rings = np.stack(
        [np.stack([np.full(len(section), x), section[:, 0] * hull, section[:, 1] * width / 2], 1) for x in xs]
    )
    parts = [warp(loft(rings), hull_shape)]
    parts.append(
        box((length * rng.uniform(0.2, 0.4), rng.uniform(0.08, 0.2), width * 0.6), (-length * 0.1, hull + 0.07, 0))
    )
    if rng.random() < 0.6:
        mast = rng.uniform(0.4, 0.8)
        parts.append(cylinder(0.012, mast, (length * 0.1, hull + mast / 2, 0), "y"))
        if rng.random() < 0.5:  # a sail: thin triangle-ish slab
            parts.append(
                warp(
                    box((mast * 0.5, mast * 0.8, 0.01), (0, 0, 0)),
                    lambda v: np.stack(
                        [v[:, 0] * (0.5 - v[:, 1] / (mast * 0.8)) - mast * 0.15, v[:, 1] + hull + mast * 0.45, v[:, 2]],
                        1,
                    ),
                )
            )
    return parts


SHAPE_FAMILIES: Dict[str, Callable] = {
    "airplane": _airplane,
    "bench": _bench,
    "cabinet": _cabinet,
    "car": _car,
    "chair": _chair,
    "display": _display,
    "lamp": _lamp,
    "loudspeaker": _loudspeaker,
    "rifle": _rifle,
    "sofa": _sofa,
    "table": _table,
    "telephone": _telephone,
    "watercraft": _watercraft,
}


#: Version 2 replaces these families by ones with curved, tapered and thin parts.
SHAPE_FAMILIES_V2: Dict[str, Callable] = {
    **SHAPE_FAMILIES,
    "airplane": _airplane_v2,
    "car": _car_v2,
    "chair": _chair_v2,
    "lamp": _lamp_v2,
    "rifle": _rifle_v2,
    "watercraft": _watercraft_v2,
}
#: Version 3 is version 1 (the same flat-shaded families and random streams: every other class's
#: views are byte for byte version 1's) with biplanes among the airplanes.
SHAPE_FAMILIES_V3: Dict[str, Callable] = {**SHAPE_FAMILIES, "airplane": _airplane_v3}
FAMILIES_BY_VERSION: Dict[int, Dict[str, Callable]] = {1: SHAPE_FAMILIES, 2: SHAPE_FAMILIES_V2, 3: SHAPE_FAMILIES_V3}
DATASET_VERSIONS = tuple(FAMILIES_BY_VERSION)
#: versions drawn from version 1's random streams and rendered as it (one flat colour, one light)
FLAT_SHADED_VERSIONS = (1, 3)


def build_shape_parts(
    category: str, rng: np.random.Generator, version: int = 1
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(vertices [V,3] float64, triangles [F,3] int64, part of each face [F] int64)`` of one
    instance, normalised like ShapeNet (bounding box centred at the origin, diagonal 1)."""
    if category not in SHAPE_FAMILIES:
        raise ValueError(f"category: expected one of {', '.join(CATEGORIES)}, got {category!r}")
    families = FAMILIES_BY_VERSION[version]
    vertices, triangles, face_part, offset = [], [], [], 0
    for index, part in enumerate(families[category](rng)):
        v = np.asarray(part.vertices, dtype=np.float64)
        vertices.append(v)
        triangles.append(np.asarray(part.triangles, dtype=np.int64) + offset)
        face_part.append(np.full(len(triangles[-1]), index, dtype=np.int64))
        offset += len(v)
    vertices, triangles = np.concatenate(vertices), np.concatenate(triangles)
    low, high = vertices.min(0), vertices.max(0)
    vertices = (vertices - (low + high) / 2) / np.linalg.norm(high - low)
    return vertices, triangles, np.concatenate(face_part)


def build_shape(category: str, rng: np.random.Generator, version: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """``(vertices [V,3] float64, triangles [F,3] int64)``: :func:`build_shape_parts` without parts."""
    vertices, triangles, _ = build_shape_parts(category, rng, version)
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


def render_view_textured(
    vertices_cam: np.ndarray,
    triangles: np.ndarray,
    face_material: np.ndarray,
    materials: Sequence,
    lighting,
    to_object: Callable[[np.ndarray], np.ndarray],
    size: int = RENDER_SIZE,
    supersample: int = 2,
) -> np.ndarray:
    """Textured Blinn-Phong RGBA render ``[size,size,4]`` uint8 (dataset version 2).

    Like :func:`render_view`, but each face takes ``materials[face_material[f]]``
    (:class:`p2m_geo.data.appearance.Material`), whose pattern is evaluated at the hit point
    mapped back to the object frame by ``to_object``, lit by ``lighting``
    (:func:`p2m_geo.data.appearance.shade`).
    """
    from p2m_geo.data.appearance import mix, shade

    fine = size * supersample
    hits = cast_camera_rays(vertices_cam, triangles, fine)
    index, normals, view, points_cam = hits.index, hits.normals, hits.view, hits.points
    material_of_hit = np.asarray(face_material)[hits.faces]
    albedo = np.empty((len(index), 3), dtype=np.float64)
    for m in np.unique(material_of_hit):
        chosen = material_of_hit == m
        albedo[chosen] = mix(materials[m], to_object(points_cam[chosen].astype(np.float64)))
    colour = shade(albedo, normals.astype(np.float64), -view.astype(np.float64), lighting)
    # Box-filter the supersampled hits into output pixels (sums over hits only).
    pixel = (index // fine // supersample) * size + (index % fine) // supersample
    coverage = np.bincount(pixel, minlength=size * size).astype(np.float64)
    sums = np.stack([np.bincount(pixel, weights=colour[:, k], minlength=size * size) for k in range(3)], 1)
    image = np.empty((size * size, 4), dtype=np.uint8)
    covered = coverage[:, None] > 0
    image[:, :3] = np.where(covered, sums / np.maximum(coverage, 1)[:, None] * 255 + 0.5, 255).astype(np.uint8)
    image[:, 3] = (coverage / supersample**2 * 255 + 0.5).astype(np.uint8)
    return image.reshape(size, size, 4)


@dataclass(frozen=True)
class SynthSpec:
    """What to generate: ``per_class`` shapes x ``views`` renderings for each class, the last
    ``test_fraction`` of them for testing, and ``extra_train`` more training shapes per class
    after them (indices ``per_class ..``): more training data with the same test views."""

    per_class: int = 24
    views: int = 4
    seed: int = 0
    test_fraction: float = 0.2
    categories: Tuple[str, ...] = tuple(CATEGORIES)
    #: 1: flat-shaded single-colour primitives (the original embedded set); 2: curved/tapered
    #: shapes, per-part palette colours and procedural textures, random Blinn-Phong lighting; 3: version
    #: 1 with a quarter of the airplanes biplanes (the other classes' views are version 1's)
    version: int = 1
    extra_train: int = 0

    @property
    def shapes_per_class(self) -> int:
        """Shapes generated per class: ``per_class`` (training and test) + ``extra_train``."""
        return self.per_class + self.extra_train

    @property
    def num_views(self) -> int:
        """Views the spec generates: every class's :attr:`shapes_per_class` x ``views``."""
        return len(self.categories) * self.shapes_per_class * self.views

    def __post_init__(self) -> None:
        if self.version not in DATASET_VERSIONS:
            raise ValueError(f"version: expected one of {', '.join(map(str, DATASET_VERSIONS))}, got {self.version!r}")
        if self.per_class < 2:
            raise ValueError(f"per_class: expected at least 2 (one train and one test shape), got {self.per_class}")
        if self.extra_train < 0:
            raise ValueError(f"extra_train: expected an integer >= 0, got {self.extra_train!r}")
        if not 1 <= self.views <= 24:
            raise ValueError(f"views: expected 1 to 24, got {self.views}")
        unknown = [c for c in self.categories if c not in SHAPE_FAMILIES]
        if unknown:
            raise ValueError(f"categories: expected names from {', '.join(CATEGORIES)}, got {unknown[0]!r}")


def _model_id(seed: int, category: str, index: int, version: int = 1) -> str:
    tag = "" if version == 1 else f"v{version}/"
    return hashlib.sha1(f"p2m-geo-synth/{tag}{seed}/{category}/{index}".encode()).hexdigest()[:32]


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    import colorsys

    hue, saturation, value = rng.random(), rng.uniform(0.2, 0.7), rng.uniform(0.45, 0.85)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value))


def generate_model(out_root: str, spec: SynthSpec, category: str, index: int) -> List[str]:
    """Build, render and write one shape with all its views; returns its file-list lines."""
    from PIL import Image

    from p2m_geo.data.appearance import part_materials, random_lighting

    flat_shaded = spec.version in FLAT_SHADED_VERSIONS
    if flat_shaded:
        rng = np.random.default_rng([spec.seed, CATEGORIES.index(category), index])
    else:  # a separate stream: version 1's bytes stay as they were
        rng = np.random.default_rng([spec.seed, CATEGORIES.index(category), index, spec.version])
    vertices, triangles, face_part = build_shape_parts(category, rng, spec.version)
    points, normals = sample_surface(vertices, triangles, GT_POINTS, rng)
    if flat_shaded:
        colour = _random_colour(rng)
    else:
        materials = part_materials(rng, int(face_part.max()) + 1)
    synset, model = CATEGORY_TO_SYNSET[category], _model_id(spec.seed, category, index, spec.version)
    folder = Path(out_root) / synset / model / "rendering"
    folder.mkdir(parents=True, exist_ok=True)
    metadata, lines = [], []
    for view in range(spec.views):
        azimuth, elevation, distance = rng.uniform(0, 360), rng.uniform(25, 30), rng.uniform(0.65, 0.95)
        rotation, position = view_rotation_and_position(azimuth, elevation, distance)
        to_camera = functools.partial(points_to_camera, rotation=rotation, position=position)
        if flat_shaded:
            image = render_view(to_camera(vertices), triangles, colour)
        else:
            to_object = functools.partial(points_to_object, rotation=rotation, position=position)
            image = render_view_textured(
                to_camera(vertices), triangles, face_part, materials, random_lighting(rng), to_object
            )
        with atomic_path(folder / f"{view:02d}.png") as tmp:
            Image.fromarray(image, "RGBA").save(tmp, format="PNG")
        save_dat(folder / f"{view:02d}.dat", np.concatenate([to_camera(points), normals @ rotation.T], axis=1))
        metadata.append(f"{azimuth:.6f} {elevation:.6f} 0 {distance:.6f} 25")
        lines.append(f"Data/ShapeNetP2M/{synset}/{model}/rendering/{view:02d}.dat")
    atomic_write_bytes(folder / "rendering_metadata.txt", ("\n".join(metadata) + "\n").encode())
    return lines


def _generate_model_job(job):
    return job[2], job[3], generate_model(*job)


def generate_dataset(
    out_root: os.PathLike, spec: SynthSpec, workers: int = 1, progress: Optional[Callable[[int], None]] = None
) -> Dict[str, int]:
    """Generate the dataset under ``out_root``; returns ``{'train': views, 'test': views}``.

    ``progress(n)`` is called with the number of views finished after each shape.
    The list files are written last, so a folder with both lists is complete.
    """
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    shapes = spec.shapes_per_class
    jobs = [(str(out_root), spec, category, index) for category in spec.categories for index in range(shapes)]
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
        for index in range(shapes):
            is_test = spec.per_class - test_count <= index < spec.per_class
            (test if is_test else train).extend(results[(category, index)])
    atomic_write_bytes(out_root / "train_list.txt", ("\n".join(train) + "\n").encode())
    atomic_write_bytes(out_root / "test_list.txt", ("\n".join(test) + "\n").encode())
    return {"train": len(train), "test": len(test)}


def silhouette_statistics(paths: Sequence[os.PathLike]) -> Dict[str, np.ndarray]:
    """Per image (RGBA PNGs): ``area`` = fraction of pixels with alpha > 127, and ``extent`` =
    the longer side of the silhouette's bounding box as a fraction of the image side."""
    from PIL import Image

    areas, extents = [], []
    for path in paths:
        with Image.open(path) as image:
            alpha = np.asarray(image.convert("RGBA"))[..., 3] > 127
        rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
        areas.append(alpha.mean())
        extent = 0.0 if len(rows) == 0 else max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / alpha.shape[0]
        extents.append(extent)
    return {"area": np.array(areas), "extent": np.array(extents)}


def contact_sheet(root: os.PathLike, out_png: os.PathLike, columns: int = 8, file_list: str = "train_list.txt") -> Path:
    """A PNG with one row per class: the first ``columns`` views of the list, on white."""
    from PIL import Image, ImageDraw

    from p2m_geo.data.images import rgba_to_rgb_on_white, to_uint8
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
            tile = Image.fromarray(to_uint8(rgba_to_rgb_on_white(rgba)))
            sheet.paste(tile, (label_width + column * cell, row * cell))
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        sheet.save(tmp, format="PNG")
    return out_png
