"""Mesh-quality metrics against brute-force references written here (loops, float64)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from p2m_geo.mesh import ellipsoid_hierarchy
from p2m_geo.mesh_quality import dihedral_roughness, face_adjacency, normal_consistency, self_intersecting_fraction


def segment_hits_triangle(p, q, a, b, c, eps=1e-12) -> bool:
    """Möller-Trumbore for the segment p->q against triangle abc (no coplanar handling)."""
    direction = q - p
    e1, e2 = b - a, c - a
    h = np.cross(direction, e2)
    det = e1 @ h
    if abs(det) < eps:
        return False
    s = (p - a) / det
    u = s @ h
    qv = np.cross(s, e1)
    v = direction @ qv
    t = e2 @ qv
    return 0 <= u <= 1 and 0 <= v and u + v <= 1 and 0 <= t <= 1


def brute_force_self_intersecting(vertices, faces) -> float:
    """Share of faces crossing a non-neighbouring face: every pair, every edge against the other triangle."""
    hit = np.zeros(len(faces), dtype=bool)
    for i, j in itertools.combinations(range(len(faces)), 2):
        if set(faces[i]) & set(faces[j]):
            continue  # neighbours (shared vertex) are not tested, as in open3d
        a, b = vertices[faces[i]], vertices[faces[j]]
        crossing = any(segment_hits_triangle(a[k], a[(k + 1) % 3], *b) for k in range(3)) or any(
            segment_hits_triangle(b[k], b[(k + 1) % 3], *a) for k in range(3)
        )
        if crossing:
            hit[i] = hit[j] = True
    return hit.mean()


def test_two_crossing_triangles_both_count():
    vertices = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0.5, 0.5, -1], [0.5, 0.5, 1], [1.5, 1.5, 0.2]], float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    assert brute_force_self_intersecting(vertices, faces) == 1.0
    assert self_intersecting_fraction(vertices, faces) == 1.0
    apart = vertices + np.array([0, 0, 0] * 3 + [0, 0, 5] * 3, float).reshape(6, 3)
    assert brute_force_self_intersecting(apart, faces) == 0.0 == self_intersecting_fraction(apart, faces)


def test_closed_convex_mesh_has_none():
    level = ellipsoid_hierarchy().levels[1]
    assert self_intersecting_fraction(level.pos.double().numpy(), level.face.t().numpy()) == 0.0


def test_mesh_folded_through_itself_matches_brute_force():
    level = ellipsoid_hierarchy().levels[0]  # 156 vertices, 308 faces
    vertices, faces = level.pos.double().numpy().copy(), level.face.t().numpy()
    centre = vertices.mean(0)
    # push the vertices of one side through the centre to the far side: a fold through the body
    side = vertices[:, 0] > centre[0] + 0.05
    vertices[side, 0] = 2 * centre[0] - vertices[side, 0] - 0.02
    expected = brute_force_self_intersecting(vertices, faces)
    assert 0.05 < expected < 1.0
    assert self_intersecting_fraction(vertices, faces) == pytest.approx(expected, abs=1e-12)


def test_roughness_of_a_regular_tetrahedron_is_the_normal_angle_everywhere():
    pos = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    face = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]]).t()
    adjacency = face_adjacency(face)
    assert adjacency.shape == (2, 6)
    angle = dihedral_roughness(pos, face, adjacency, torch.zeros(4, dtype=torch.long), 1)
    assert angle.item() == pytest.approx(180 - math.degrees(math.acos(1 / 3)), rel=1e-12)  # 109.47 deg


def test_roughness_matches_a_loop_over_shared_edges_per_graph():
    level = ellipsoid_hierarchy().levels[0]
    rng = np.random.default_rng(0)
    meshes = [level.pos.double().numpy() + rng.normal(size=level.pos.shape) * s for s in (0.002, 0.02)]
    faces = level.face.t().numpy()
    expected = []
    for vertices in meshes:
        normals = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        angles = []
        for f, g in itertools.combinations(range(len(faces)), 2):
            if len(set(faces[f]) & set(faces[g])) == 2:
                angles.append(math.degrees(math.acos(np.clip(normals[f] @ normals[g], -1, 1))))
        expected.append(np.mean(angles))
    pos = torch.from_numpy(np.concatenate(meshes))
    count = len(level.pos)
    face = torch.cat([level.face, level.face + count], dim=1)
    face_batch = torch.repeat_interleave(torch.arange(2), level.face.size(1))
    values = dihedral_roughness(pos, face, face_adjacency(face), face_batch, 2)
    assert values.tolist() == pytest.approx(expected, rel=1e-10)
    assert values[1] > values[0]


def test_face_adjacency_refuses_an_open_mesh():
    with pytest.raises(ValueError, match="face: expected a closed edge-manifold mesh"):
        face_adjacency(torch.tensor([[0, 1, 2], [0, 2, 3]]).t())


def test_normal_consistency_is_one_for_the_sampled_surface_and_ignores_orientation():
    from tests.test_metrics import cube_surface, unit_cube_mesh

    vertices, faces = unit_cube_mesh()
    gt, gt_normals = (torch.from_numpy(a) for a in cube_surface(np.random.default_rng(2), 8000))
    zeros = torch.zeros(8, dtype=torch.long)
    gt_batch = torch.zeros(len(gt), dtype=torch.long)
    value = normal_consistency(
        vertices, faces, zeros, gt, gt_normals, gt_batch, 1, generator=torch.Generator().manual_seed(0)
    )
    flipped = normal_consistency(
        vertices, faces.flip(0), zeros, gt, gt_normals, gt_batch, 1, generator=torch.Generator().manual_seed(0)
    )
    assert value.item() > 0.95 and flipped.item() == pytest.approx(
        value.item(), abs=0.005
    )  # other samples, same surface
    # a sphere-like mesh against the cube's normals agrees much less
    level = ellipsoid_hierarchy().levels[1]
    pos = (level.pos.double() - level.pos.double().mean(0)) / 0.5 + 0.5
    round_value = normal_consistency(
        pos,
        level.face,
        torch.zeros(len(pos), dtype=torch.long),
        gt,
        gt_normals,
        gt_batch,
        1,
        generator=torch.Generator().manual_seed(0),
    )
    assert round_value.item() < value.item() - 0.05


def test_taubin_smoothing_makes_a_rough_closed_surface_smoother_without_shrinking_it():
    """``predict --smooth``'s filter on the 2466-vertex ellipsoid with 2% radial noise: the mean
    dihedral angle falls, the mesh keeps its size (Taubin's lambda/mu steps do not shrink)."""
    from p2m_geo.mesh_quality import taubin_smooth

    level = ellipsoid_hierarchy().levels[2]
    vertices = level.pos.double().numpy()
    noise = np.random.default_rng(0).normal(0.0, 0.02, size=(len(vertices), 1))
    rough = vertices * (1.0 + noise)
    faces = level.face.t().numpy()
    smoothed = taubin_smooth(rough, faces, 10)
    face, face_batch = level.face.long(), torch.zeros(level.face.size(1), dtype=torch.long)
    adjacency = face_adjacency(face)

    def roughness(points: np.ndarray) -> float:
        return dihedral_roughness(torch.from_numpy(points), face, adjacency, face_batch, 1).item()

    assert roughness(smoothed) < 0.7 * roughness(rough)
    radius = np.linalg.norm(rough - rough.mean(0), axis=1).mean()
    assert np.linalg.norm(smoothed - smoothed.mean(0), axis=1).mean() == pytest.approx(radius, rel=0.02)
