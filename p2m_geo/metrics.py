r"""Reconstruction metrics: chamfer distance and F-score, Pixel2Mesh and Mesh R-CNN protocols.

Both use squared Euclidean distances in the camera frame of the ShapeNetP2M data:

- CD :math:`= \overline{d^2}_{pred\to gt} + \overline{d^2}_{gt\to pred}` (reported x 1000);
- F-score at :math:`\tau`: precision = fraction of predicted points whose squared distance
  to the GT is below :math:`\tau`, recall = the same for GT points, F = 2PR / (P + R)
  (reported in %), for :math:`\tau = 10^{-4}` and :math:`2\tau`.

Protocol ``p2m`` uses the predicted vertices as the predicted points (as Pixel2Mesh
did); ``meshrcnn`` samples 10k points uniformly on the predicted surface.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from p2m_geo.losses import chamfer_distance
from p2m_geo.scatter import scatter

__all__ = ["F_SCORE_TAU", "reconstruction_metrics", "sample_points_on_faces"]

F_SCORE_TAU = 1e-4


@torch.no_grad()
def reconstruction_metrics(
    pred: Tensor, pred_batch: Tensor, gt: Tensor, gt_batch: Tensor, num_graphs: Optional[int] = None,
    thresholds: Sequence[float] = (F_SCORE_TAU, 2 * F_SCORE_TAU),
) -> Dict[str, Tensor]:
    """Per-graph ``cd`` (x1000) and ``f@tau`` (%) for each threshold, as ``[B]`` tensors."""
    result = chamfer_distance(pred, pred_batch, gt, gt_batch, num_graphs, reduction="none")
    num_graphs = result.x_to_y.numel()
    pred_sq = (pred - gt[result.x_nearest]).square().sum(-1)
    gt_sq = (gt - pred[result.y_nearest]).square().sum(-1)
    metrics = {"cd": 1000.0 * (result.x_to_y + result.y_to_x)}
    for tau in thresholds:
        precision = scatter((pred_sq < tau).to(pred.dtype), pred_batch, num_graphs, reduce="mean")
        recall = scatter((gt_sq < tau).to(gt.dtype), gt_batch, num_graphs, reduce="mean")
        f_score = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                              torch.zeros_like(precision))
        metrics[f"f@{tau:g}"] = 100.0 * f_score
    return metrics


def sample_points_on_faces(pos: Tensor, face: Tensor, batch: Tensor, num_graphs: int, count: int,
                           generator: Optional[torch.Generator] = None):
    """Area-uniform samples on each graph's surface: ``(points [B*count,3], batch [B*count])``.

    Args:
        pos: vertices ``[N,3]``; ``face``: ``[3,F]`` (batched, global indices); ``batch``: ``[N]``.
    """
    a, b, c = pos[face[0]], pos[face[1]], pos[face[2]]
    area = torch.linalg.cross(b - a, c - a).norm(dim=-1)
    face_batch = batch[face[0]]
    points, batches = [], []
    for graph in range(num_graphs):
        ids = torch.nonzero(face_batch == graph).squeeze(1)
        chosen = ids[torch.multinomial(area[ids], count, replacement=True, generator=generator)]
        r1 = torch.rand(count, generator=generator, device=pos.device, dtype=pos.dtype)
        r2 = torch.rand(count, generator=generator, device=pos.device, dtype=pos.dtype)
        s = r1.sqrt()
        points.append((1 - s)[:, None] * a[chosen] + (s * (1 - r2))[:, None] * b[chosen] + (s * r2)[:, None] * c[chosen])
        batches.append(torch.full((count,), graph, dtype=torch.long, device=pos.device))
    return torch.cat(points), torch.cat(batches)
