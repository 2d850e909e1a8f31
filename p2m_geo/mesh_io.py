"""Mesh files: a dependency-free binary PLY writer (the ``predict`` default) and open3d for
the other formats (imported only when one is asked for: it costs ~1 s to import)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Union

import numpy as np

from p2m_geo.io_utils import atomic_path

__all__ = ["vertex_normals", "ply_bytes", "write_mesh"]


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    r"""Area-weighted unit vertex normals (as open3d's ``compute_vertex_normals``): the
    normalised sum of the cross products of the faces around each vertex.

    .. math::
        \mathbf{n}_v = \operatorname{normalize}\Big(\sum_{f = (\mathbf{a},\mathbf{b},\mathbf{c}) \ni v}
        (\mathbf{b}-\mathbf{a})\times(\mathbf{c}-\mathbf{a})\Big)

    Shapes: ``vertices`` :math:`(V, 3)`, ``faces`` :math:`(F, 3)` -> :math:`(V, 3)`.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    face_normals = np.cross(b - a, c - a)  # length = 2 x area
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-30)


def ply_bytes(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """Binary little-endian PLY: float32 ``x y z nx ny nz`` per vertex, int32 triangles."""
    vertices = np.asarray(vertices)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(
            f"mesh: expected vertices [V,3] and faces [F,3], got {list(vertices.shape)} and {list(faces.shape)}"
        )
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment p2m-geo\n"
        f"element vertex {len(vertices)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property float nx\nproperty float ny\nproperty float nz\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    vertex_rows = np.concatenate([vertices, vertex_normals(vertices, faces)], axis=1).astype("<f4")
    face_rows = np.empty(len(faces), dtype=[("count", "u1"), ("index", "<i4", (3,))])
    face_rows["count"] = 3
    face_rows["index"] = faces
    return header.encode("ascii") + vertex_rows.tobytes() + face_rows.tobytes()


def write_mesh(path: Union[str, os.PathLike], vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write a triangle mesh with vertex normals, atomically; the format follows the extension
    (``.ply`` natively; ``.obj``, ``.off``, ``.glb`` through open3d)."""
    path = Path(path)
    vertices, faces = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    if path.suffix.lower() == ".ply":
        with atomic_path(path) as tmp:
            tmp.write_bytes(ply_bytes(vertices, faces))
        return
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces.astype(np.int32))
    )
    mesh.compute_vertex_normals()
    # open3d's own console warnings (e.g. about a truncated file it reads back) stay quiet: the
    # outcome is checked here and reported in one line
    with atomic_path(path) as tmp, o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        if not o3d.io.write_triangle_mesh(str(tmp), mesh, write_vertex_normals=True):
            raise OSError(f"{path}: open3d could not write the mesh")
        # open3d reports success even when the disk filled up mid-write: check what is on disk
        _check_written(path, tmp, len(vertices), len(faces))


def _check_written(path: Path, tmp: Path, vertex_count: int, face_count: int) -> None:
    """A ``.glb`` must be as long as its header says; other formats are read back and counted."""
    if path.suffix.lower() == ".glb":
        data = tmp.read_bytes()
        declared = int.from_bytes(data[8:12], "little") if len(data) >= 12 and data[:4] == b"glTF" else -1
        if declared != len(data):
            raise OSError(
                errno.ENOSPC,
                f"{path}: expected a complete .glb ({declared} bytes by its header), got "
                f"{len(data)} bytes on disk (is the disk full?); nothing was replaced",
            )
        return
    import open3d as o3d

    written = o3d.io.read_triangle_mesh(str(tmp))
    if len(written.vertices) != vertex_count or len(written.triangles) != face_count:
        raise OSError(
            errno.ENOSPC,
            f"{path}: expected {vertex_count} vertices and {face_count} faces on disk, "
            f"got {len(written.vertices)} and {len(written.triangles)} (is the disk full?); "
            "nothing was replaced",
        )
