r"""What a user sees when opening a predicted mesh, as numbers (Mesh R-CNN reports the first
beside Chamfer and F1; the other two catch crumpled, folded surfaces that point metrics miss):

- **normal consistency** (:func:`normal_consistency`): mean absolute cosine between the
  face normal at points sampled on the predicted surface and the GT normal of their
  nearest GT point, averaged with the reverse direction (1 is best);
- **self-intersecting faces** (:func:`self_intersecting_fraction`): the share of faces
  that cross another face of the same mesh (0 is best);
- **roughness** (:func:`dihedral_roughness`): the mean angle in degrees between the
  normals of faces that share an edge (0 for a plane; a smooth closed surface of 4928
  faces has a few degrees).
"""

from __future__ import annotations

import importlib.util
from typing import Dict, Optional

import numpy as np
import torch
from torch import Tensor
from torch_geometric.utils import scatter

from p2m_geo.mesh import graph_mesh
from p2m_geo.ops.sampling import face_normals, sample_points_on_faces

__all__ = [
    "face_normals",
    "face_adjacency",
    "dihedral_roughness",
    "normal_consistency",
    "self_intersecting_fraction",
    "mesh_quality",
    "taubin_smooth",
    "smooth_batch",
    "QUALITY_KEYS",
]

#: metric names :func:`mesh_quality` returns
QUALITY_KEYS = ("normal_consistency", "self_intersecting", "roughness")
NORMAL_SAMPLES = 10000


def face_adjacency(face: Tensor) -> Tensor:
    """Pairs of faces that share an edge, ``[2, A]`` (each pair once), for a closed
    edge-manifold mesh (every undirected edge in exactly two faces)."""
    edges = torch.cat([face[[0, 1]], face[[1, 2]], face[[2, 0]]], dim=1)  # [2, 3F], directed
    owner = torch.arange(face.size(1), device=face.device).repeat(3)
    low, high = edges.min(0).values, edges.max(0).values
    key = low * (int(face.max()) + 1) + high
    order = torch.argsort(key, stable=True)
    key, owner = key[order], owner[order]
    counts = torch.unique_consecutive(key, return_counts=True)[1]
    if not bool((counts == 2).all()):
        raise ValueError(
            "face: expected a closed edge-manifold mesh (every edge in two faces), "
            f"got edges in {int(counts.min())} to {int(counts.max())} faces"
        )
    return owner.view(-1, 2).t()


def dihedral_roughness(pos: Tensor, face: Tensor, adjacency: Tensor, face_batch: Tensor, num_graphs: int) -> Tensor:
    r"""Per-graph mean angle (degrees) between the normals of adjacent faces,
    :math:`\frac{1}{|A_b|}\sum_{(f,g)\in A_b}\arccos\langle n_f, n_g\rangle`.

    Args:
        adjacency: ``[2, A]`` from :func:`face_adjacency` on the same ``face``.
        face_batch: graph id of each face ``[F]``.
    """
    normals = face_normals(pos, face)
    cosine = (normals[adjacency[0]] * normals[adjacency[1]]).sum(-1).clamp(-1.0, 1.0)
    return scatter(
        torch.rad2deg(torch.arccos(cosine)), face_batch[adjacency[0]], dim=0, dim_size=num_graphs, reduce="mean"
    )


@torch.no_grad()
def normal_consistency(
    pos: Tensor,
    face: Tensor,
    batch: Tensor,
    gt_pos: Tensor,
    gt_normal: Tensor,
    gt_batch: Tensor,
    num_graphs: int,
    samples: int = NORMAL_SAMPLES,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Mesh R-CNN's absolute normal consistency between ``samples`` area-uniform points on
    each predicted surface (with their face normals) and the GT points with normals, ``[B]``."""
    from p2m_geo.metrics import point_cloud_metrics

    points, points_batch, normals = sample_points_on_faces(
        pos, face, batch, num_graphs, samples, generator, return_normals=True
    )
    return point_cloud_metrics(points, normals, points_batch, gt_pos, gt_normal, gt_batch, num_graphs, thresholds=())[
        "normal_consistency"
    ]


def self_intersection_available() -> bool:
    return importlib.util.find_spec("open3d") is not None


def self_intersecting_fraction(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Share of ``faces [F,3]`` that intersect another face of the same mesh (pairs sharing a
    vertex are neighbours and not tested), by open3d's exact triangle-triangle test
    (``get_self_intersecting_triangles``; open3d imported here, lazily)."""
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.asarray(vertices, dtype=np.float64)),
        o3d.utility.Vector3iVector(np.asarray(faces, dtype=np.int32)),
    )
    pairs = np.asarray(mesh.get_self_intersecting_triangles())
    return float(np.unique(pairs).size) / len(faces) if pairs.size else 0.0


@torch.no_grad()
def mesh_quality(
    mesh, target, num_graphs: int, adjacency: Tensor, generator: Optional[torch.Generator] = None
) -> Dict[str, Tensor]:
    """:data:`QUALITY_KEYS` for each graph of a predicted mesh ``Batch`` against GT
    ``target`` (``pos``, ``normal``, ``batch``). ``self_intersecting`` is in % and NaN
    where open3d is not installed; ``adjacency`` comes from :func:`face_adjacency` on
    ``mesh.face``."""
    face_batch = mesh.batch[mesh.face[0]]
    values = {
        "normal_consistency": normal_consistency(
            mesh.pos, mesh.face, mesh.batch, target.pos, target.normal, target.batch, num_graphs, generator=generator
        ),
        "roughness": dihedral_roughness(mesh.pos, mesh.face, adjacency, face_batch, num_graphs),
    }
    fractions = [float("nan")] * num_graphs
    if self_intersection_available():
        for graph in range(num_graphs):
            vertices, faces = graph_mesh(mesh, graph)
            fractions[graph] = 100.0 * self_intersecting_fraction(vertices.double().cpu().numpy(), faces.cpu().numpy())
    values["self_intersecting"] = torch.tensor(fractions, dtype=mesh.pos.dtype, device=mesh.pos.device)
    return values


def taubin_smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int) -> np.ndarray:
    """``iterations`` rounds of Taubin smoothing (open3d's ``filter_smooth_taubin``, λ = 0.5,
    μ = -0.53: a shrink step then an inflate step, so the surface does not shrink the way
    plain Laplacian smoothing does). Returns the new ``[V,3]`` vertices; faces are unchanged."""
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.asarray(vertices, dtype=np.float64)),
        o3d.utility.Vector3iVector(np.asarray(faces, dtype=np.int32)),
    )
    return np.asarray(mesh.filter_smooth_taubin(number_of_iterations=int(iterations)).vertices)


def smooth_batch(mesh, iterations: int):
    """A copy of a batched mesh with every graph Taubin-smoothed (:func:`taubin_smooth`)."""
    import copy

    smoothed = copy.copy(mesh)
    pos = mesh.pos.detach().clone()
    for graph in range(int(mesh.batch.max()) + 1):
        vertices, faces = graph_mesh(mesh, graph)
        result = taubin_smooth(vertices.detach().double().cpu().numpy(), faces.cpu().numpy(), iterations)
        pos[mesh.batch == graph] = torch.from_numpy(result).to(pos.dtype).to(pos.device)
    smoothed.pos = pos
    return smoothed
