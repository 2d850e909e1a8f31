r"""Surface sampling and per-face geometry of batched triangle meshes."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["face_cross_products", "face_normals", "sample_points_on_faces"]


def face_cross_products(pos: Tensor, face: Tensor) -> Tensor:
    r""":math:`(b-a)\times(c-a)` of faces ``[3,F]`` -> ``[F,3]`` (twice the area, along the normal)."""
    a, b, c = pos[face[0]], pos[face[1]], pos[face[2]]
    return torch.linalg.cross(b - a, c - a)


def face_normals(pos: Tensor, face: Tensor, eps: float = 1e-20) -> Tensor:
    r"""Unit normals :math:`(b-a)\times(c-a)/\lVert\cdot\rVert` of faces ``[3,F]`` -> ``[F,3]``."""
    cross = face_cross_products(pos, face)
    return cross / cross.norm(dim=-1, keepdim=True).clamp_min(eps)


def sample_points_on_faces(
    pos: Tensor,
    face: Tensor,
    batch: Tensor,
    num_graphs: int,
    count: int,
    generator: Optional[torch.Generator] = None,
    return_normals: bool = False,
) -> Union[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor, Tensor]]:
    """Area-uniform samples on each graph's surface: ``(points [B*count,3], batch [B*count])``,
    plus the unit normal of each sample's face (``[B*count,3]``) with ``return_normals``.

    Args:
        pos: vertices ``[N,3]``; ``face``: ``[3,F]`` (batched, global indices); ``batch``: ``[N]``.
    """
    a, b, c = pos[face[0]], pos[face[1]], pos[face[2]]
    cross = face_cross_products(pos, face)
    area = cross.norm(dim=-1)
    face_batch = batch[face[0]]
    points, batches, normals = [], [], []
    for graph in range(num_graphs):
        ids = torch.nonzero(face_batch == graph).squeeze(1)
        chosen = ids[torch.multinomial(area[ids], count, replacement=True, generator=generator)]
        r1 = torch.rand(count, generator=generator, device=pos.device, dtype=pos.dtype)
        r2 = torch.rand(count, generator=generator, device=pos.device, dtype=pos.dtype)
        s = r1.sqrt()
        points.append(
            (1 - s)[:, None] * a[chosen] + (s * (1 - r2))[:, None] * b[chosen] + (s * r2)[:, None] * c[chosen]
        )
        batches.append(torch.full((count,), graph, dtype=torch.long, device=pos.device))
        normals.append(cross[chosen] / area[chosen, None].clamp_min(1e-20))
    if return_normals:
        return torch.cat(points), torch.cat(batches), torch.cat(normals)
    return torch.cat(points), torch.cat(batches)
