"""The native PLY writer, checked by reading back with open3d and against open3d's normals."""

from __future__ import annotations

import numpy as np
import pytest

from p2m_geo.mesh import ellipsoid_hierarchy
from p2m_geo.mesh_io import ply_bytes, vertex_normals, write_mesh


@pytest.fixture(scope="module")
def deformed_mesh():
    level = ellipsoid_hierarchy().levels[1]
    rng = np.random.default_rng(0)
    vertices = level.pos.double().numpy() + rng.normal(scale=0.003, size=(level.num_nodes, 3))
    return vertices, level.face.t().numpy().astype(np.int64)


def loop_vertex_normals(vertices, faces):
    normals = np.zeros_like(vertices)
    for a, b, c in faces:
        n = np.cross(vertices[b] - vertices[a], vertices[c] - vertices[a])  # area-weighted
        for v in (a, b, c):
            normals[v] += n
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def test_vertex_normals_match_loop_and_open3d(deformed_mesh):
    o3d = pytest.importorskip("open3d")
    vertices, faces = deformed_mesh
    normals = vertex_normals(vertices, faces)
    np.testing.assert_allclose(normals, loop_vertex_normals(vertices, faces), rtol=1e-12, atol=1e-12)
    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces.astype(np.int32))
    )
    mesh.compute_vertex_normals()
    np.testing.assert_allclose(normals, np.asarray(mesh.vertex_normals), atol=1e-9)
    # an outward-oriented closed mesh: normals point away from the centre
    assert (np.sum(normals * (vertices - vertices.mean(0)), axis=1) > 0).mean() > 0.99


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".off"])
def test_written_mesh_reads_back_in_open3d(deformed_mesh, tmp_path, suffix):
    o3d = pytest.importorskip("open3d")
    vertices, faces = deformed_mesh
    path = tmp_path / f"mesh{suffix}"
    write_mesh(path, vertices, faces)
    mesh = o3d.io.read_triangle_mesh(str(path))
    # compare triangles as corner coordinates: open3d's OBJ round trip may renumber vertices
    corners = np.asarray(mesh.vertices)[np.asarray(mesh.triangles)]
    np.testing.assert_allclose(corners, vertices[faces], atol=1e-6)
    if suffix == ".ply":
        np.testing.assert_array_equal(np.asarray(mesh.triangles), faces)
        np.testing.assert_allclose(np.asarray(mesh.vertex_normals), vertex_normals(vertices, faces), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_ply_layout_and_bad_shapes(deformed_mesh):
    vertices, faces = deformed_mesh
    data = ply_bytes(vertices, faces)
    header_end = data.index(b"end_header\n") + len(b"end_header\n")
    assert f"element vertex {len(vertices)}".encode() in data[:header_end]
    assert len(data) - header_end == len(vertices) * 6 * 4 + len(faces) * (1 + 3 * 4)
    with pytest.raises(ValueError, match=r"mesh: expected vertices \[V,3\] and faces \[F,3\], got \[618, 2\]"):
        ply_bytes(vertices[:, :2], faces)


@pytest.mark.parametrize("suffix", [".obj", ".off", ".glb"])
def test_open3d_formats_are_read_back_so_a_full_disk_never_passes_as_success(tmp_path, monkeypatch, suffix):
    import open3d as o3d

    from p2m_geo.mesh import ellipsoid_hierarchy
    from p2m_geo.mesh_io import write_mesh

    level = ellipsoid_hierarchy().levels[0]
    vertices, faces = level.pos.double().numpy(), level.face.t().numpy()
    target = tmp_path / f"mesh{suffix}"
    write_mesh(target, vertices, faces)
    good = target.read_bytes()
    real_write = o3d.io.write_triangle_mesh

    def truncating_write(path, mesh, **kwargs):  # what open3d does on ENOSPC: half a file, and "success"
        real_write(path, mesh, **kwargs)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        return True

    monkeypatch.setattr(o3d.io, "write_triangle_mesh", truncating_write)
    with pytest.raises(OSError, match=r"expected .* on disk.*is the disk full"):
        write_mesh(target, vertices * 2, faces)
    assert target.read_bytes() == good and not list(tmp_path.glob(".*tmp*"))
