r"""Reconstruction metrics: chamfer distance and F-score, Pixel2Mesh and Mesh R-CNN protocols.

Both use squared Euclidean distances in the camera frame of the ShapeNetP2M data:

- CD :math:`= \overline{d^2}_{pred\to gt} + \overline{d^2}_{gt\to pred}` (reported x 1000);
- F-score at :math:`\tau`: precision = fraction of predicted points whose squared distance
  to the GT is below :math:`\tau`, recall = the same for GT points, F = 2PR / (P + R)
  (reported in %), for :math:`\tau = 10^{-4}` and :math:`2\tau`.

Protocol ``p2m`` uses the predicted vertices as the predicted points (as Pixel2Mesh
did). Protocol ``meshrcnn`` is Mesh R-CNN's ``compare_meshes`` (:func:`meshrcnn_metrics`).

:func:`image_sensitivity` measures whether a model listens to its input: the mean
pairwise CD between its predictions for different images (0 for an image-blind model).
"""

from __future__ import annotations

import itertools
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from p2m_geo.ops.chamfer import chamfer_distance
from p2m_geo.ops.sampling import sample_points_on_faces

__all__ = [
    "F_SCORE_TAU",
    "MESHRCNN_THRESHOLDS",
    "reconstruction_metrics",
    "sample_points_on_faces",
    "meshrcnn_metrics",
    "point_cloud_metrics",
    "image_sensitivity",
    "protocol_metric_keys",
    "Alignment",
    "align_translation_scale",
    "similarity_from_pairs",
]

F_SCORE_TAU = 1e-4
#: Mesh R-CNN's F1 thresholds (unsquared distances, GT scaled to a longest box edge of 10)
MESHRCNN_THRESHOLDS = (0.1, 0.3, 0.5)
MESHRCNN_SCALE = 10.0
MESHRCNN_SAMPLES = 10000


def protocol_metric_keys(protocol: str) -> Tuple[str, ...]:
    """Metric names each protocol reports, in table order (CD-like first, F-scores after)."""
    if protocol == "p2m":
        return ("cd", f"f@{F_SCORE_TAU:g}", f"f@{2 * F_SCORE_TAU:g}")
    if protocol == "meshrcnn":
        return ("chamfer_l2", "normal_consistency") + tuple(f"f1@{t:g}" for t in MESHRCNN_THRESHOLDS)
    raise ValueError(f"protocol: expected p2m or meshrcnn, got {protocol!r}")


@torch.no_grad()
def reconstruction_metrics(
    pred: Tensor,
    pred_batch: Tensor,
    gt: Tensor,
    gt_batch: Tensor,
    num_graphs: Optional[int] = None,
    thresholds: Sequence[float] = (F_SCORE_TAU, 2 * F_SCORE_TAU),
) -> Dict[str, Tensor]:
    """Per-graph ``cd`` (x1000) and ``f@tau`` (%) for each threshold, as ``[B]`` tensors."""
    result = chamfer_distance(pred, pred_batch, gt, gt_batch, num_graphs, reduction="none")
    num_graphs = result.x_to_y.numel()
    pred_sq = (pred - gt[result.x_nearest]).square().sum(-1)
    gt_sq = (gt - pred[result.y_nearest]).square().sum(-1)
    metrics = {"cd": 1000.0 * (result.x_to_y + result.y_to_x)}
    for tau in thresholds:
        precision = scatter((pred_sq < tau).to(pred.dtype), pred_batch, dim=0, dim_size=num_graphs, reduce="mean")
        recall = scatter((gt_sq < tau).to(gt.dtype), gt_batch, dim=0, dim_size=num_graphs, reduce="mean")
        f_score = torch.where(
            precision + recall > 0,
            2 * precision * recall / (precision + recall).clamp_min(1e-12),
            torch.zeros_like(precision),
        )
        metrics[f"f@{tau:g}"] = 100.0 * f_score
    return metrics


def _subsample(
    points: Tensor, normals: Tensor, batch: Tensor, num_graphs: int, count: int, generator: Optional[torch.Generator]
) -> Tuple[Tensor, Tensor, Tensor]:
    """At most ``count`` points per graph, drawn without replacement (all of them where fewer)."""
    keep = []
    for graph in range(num_graphs):
        ids = torch.nonzero(batch == graph).squeeze(1)
        if ids.numel() > count:
            ids = ids[torch.randperm(ids.numel(), generator=generator, device=ids.device)[:count]].sort().values
        keep.append(ids)
    keep = torch.cat(keep)
    return points[keep], normals[keep], batch[keep]


@torch.no_grad()
def meshrcnn_metrics(
    pred_pos: Tensor,
    pred_face: Tensor,
    pred_batch: Tensor,
    gt_pos: Tensor,
    gt_normal: Tensor,
    gt_batch: Tensor,
    num_graphs: int,
    num_samples: int = MESHRCNN_SAMPLES,
    thresholds: Sequence[float] = MESHRCNN_THRESHOLDS,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, Tensor]:
    r"""Mesh R-CNN's ``compare_meshes`` (scale ``"gt-10"``) for predicted meshes against GT
    point clouds with normals, per graph (``[B]`` tensors).

    Both are scaled by :math:`s_b = 10 / \max(\text{GT bounding-box edge})`; ``num_samples``
    points are sampled area-uniformly on each predicted surface (with their face
    normals) and the GT points are subsampled to ``num_samples`` (all of them where
    fewer). With :math:`d` the unsquared nearest-neighbour distances:

    - ``chamfer_l2`` :math:`= \overline{d^2}_{pred\to gt} + \overline{d^2}_{gt\to pred}`;
    - ``normal_consistency``: :math:`\tfrac12` (mean over predicted samples of
      :math:`|\cos(n_p, n_{gt}(\mathrm{nn}(p)))|` + mean over GT points of
      :math:`|\cos(n_g, n_p(\mathrm{nn}(g)))|`), Mesh R-CNN's absolute normal consistency;
    - ``f1@t`` (%): precision = % predicted samples with :math:`d < t`, recall = % GT points
      with :math:`d < t`, :math:`F_1 = 2PR/(P+R)`.
    """
    low = torch.full((num_graphs, 3), float("inf"), dtype=gt_pos.dtype, device=gt_pos.device)
    high = torch.full((num_graphs, 3), float("-inf"), dtype=gt_pos.dtype, device=gt_pos.device)
    low = low.scatter_reduce(0, gt_batch[:, None].expand(-1, 3), gt_pos, "amin")
    high = high.scatter_reduce(0, gt_batch[:, None].expand(-1, 3), gt_pos, "amax")
    scale = MESHRCNN_SCALE / (high - low).amax(dim=1).clamp_min(1e-12)  # [B]
    pred_points, pred_points_batch, pred_normals = sample_points_on_faces(
        pred_pos * scale[pred_batch, None],
        pred_face,
        pred_batch,
        num_graphs,
        num_samples,
        generator,
        return_normals=True,
    )
    gt_points, gt_normals, gt_points_batch = _subsample(
        gt_pos * scale[gt_batch, None], gt_normal, gt_batch, num_graphs, num_samples, generator
    )
    return point_cloud_metrics(
        pred_points, pred_normals, pred_points_batch, gt_points, gt_normals, gt_points_batch, num_graphs, thresholds
    )


@torch.no_grad()
def point_cloud_metrics(
    pred_points: Tensor,
    pred_normals: Tensor,
    pred_batch: Tensor,
    gt_points: Tensor,
    gt_normals: Tensor,
    gt_batch: Tensor,
    num_graphs: int,
    thresholds: Sequence[float] = MESHRCNN_THRESHOLDS,
) -> Dict[str, Tensor]:
    """The metrics of :func:`meshrcnn_metrics` on given oriented point clouds (no scaling,
    no sampling): ``chamfer_l2``, ``normal_consistency`` and ``f1@t`` per graph."""

    result = chamfer_distance(pred_points, pred_batch, gt_points, gt_batch, num_graphs, reduction="none")
    pred_dist = (pred_points - gt_points[result.x_nearest]).norm(dim=-1)
    gt_dist = (gt_points - pred_points[result.y_nearest]).norm(dim=-1)

    def cosine(u: Tensor, v: Tensor) -> Tensor:
        return (u * v).sum(-1).abs() / (u.norm(dim=-1) * v.norm(dim=-1)).clamp_min(1e-12)

    pred_cos = scatter(
        cosine(pred_normals, gt_normals[result.x_nearest]), pred_batch, dim=0, dim_size=num_graphs, reduce="mean"
    )
    gt_cos = scatter(
        cosine(gt_normals, pred_normals[result.y_nearest]), gt_batch, dim=0, dim_size=num_graphs, reduce="mean"
    )
    metrics = {"chamfer_l2": result.x_to_y + result.y_to_x, "normal_consistency": 0.5 * (pred_cos + gt_cos)}
    for t in thresholds:
        precision = 100.0 * scatter(
            (pred_dist < t).to(pred_dist.dtype), pred_batch, dim=0, dim_size=num_graphs, reduce="mean"
        )
        recall = 100.0 * scatter((gt_dist < t).to(gt_dist.dtype), gt_batch, dim=0, dim_size=num_graphs, reduce="mean")
        metrics[f"f1@{t:g}"] = 2 * precision * recall / (precision + recall + 1e-8)
    return metrics


@torch.no_grad()
def image_sensitivity(predictions: Tensor) -> float:
    r"""Mean pairwise CD (x1000, as ``reconstruction_metrics``' ``cd``) between the predicted
    vertex sets of different inputs: :math:`\frac{2}{K(K-1)}\sum_{i<j}\mathrm{CD}(P_i, P_j)`.

    0 means the model gives every image the same mesh (it does not see the image).

    Args:
        predictions: ``[K, N, 3]``, one predicted mesh's vertices per input, ``K >= 2``.
    """

    count, nodes = predictions.shape[:2]
    if count < 2:
        raise ValueError(f"predictions: expected at least 2 meshes, got {count}")
    pairs = torch.tensor(list(itertools.combinations(range(count), 2)), device=predictions.device)
    pair_batch = torch.arange(len(pairs), device=predictions.device).repeat_interleave(nodes)
    first = predictions[pairs[:, 0]].reshape(-1, 3)
    second = predictions[pairs[:, 1]].reshape(-1, 3)
    result = chamfer_distance(first, pair_batch, second, pair_batch, len(pairs), reduction="mean")
    return 1000.0 * float(result.x_to_y + result.y_to_x)


class Alignment(NamedTuple):
    """Result of :func:`align_translation_scale`: the moved points and the similarity found."""

    points: Tensor  #: ``[N,3]`` the prediction after alignment
    translation: Tensor  #: ``[3]``
    scale: Tensor  #: ``[]`` (1 when the scale is not fitted)


def similarity_from_pairs(
    source: Tensor, target: Tensor, centre: Tensor, fit_scale: bool = True
) -> Tuple[Tensor, Tensor]:
    r"""Least-squares :math:`s, \mathbf t` of :math:`\mathbf b_k \approx s(\mathbf a_k - \mathbf c) + \mathbf c +
    \mathbf t` over paired points ``source`` :math:`\mathbf a` and ``target`` :math:`\mathbf b` (``[K,3]``
    each), :math:`\mathbf c` = ``centre``: :math:`s = \frac{\sum_k (\mathbf a_k - \bar{\mathbf a})\cdot(\mathbf b_k -
    \bar{\mathbf b})}{\sum_k \lVert \mathbf a_k - \bar{\mathbf a}\rVert^2}` (1 without ``fit_scale``),
    :math:`\mathbf t = \bar{\mathbf b} - s(\bar{\mathbf a} - \mathbf c) - \mathbf c`."""
    source_mean, target_mean = source.mean(0), target.mean(0)
    scale = source.new_tensor(1.0)
    if fit_scale:
        centred = source - source_mean
        scale = (centred * (target - target_mean)).sum() / centred.square().sum().clamp_min(1e-30)
    return scale, target_mean - scale * (source_mean - centre) - centre


@torch.no_grad()
def align_translation_scale(
    pred: Tensor, gt: Tensor, fit_scale: bool = True, iterations: int = 30, tolerance: float = 1e-10
) -> Alignment:
    r"""The translation (and uniform scale about the prediction's centroid) that best places
    ``pred`` on ``gt``: symmetric ICP without rotation, for splitting a prediction's error into
    placement (where, how large) and shape (what is left after alignment).

    Each iteration pairs every predicted point with its nearest GT point and every GT point with
    its nearest moved predicted point, then solves for :math:`s, \mathbf t` in closed form over
    those pairs, with the original predicted points as sources and their centroid as the centre
    (:func:`similarity_from_pairs`; :math:`s = 1` without ``fit_scale``). It stops when
    :math:`s, \mathbf t` change by less than ``tolerance`` or after ``iterations``. A local method:
    it needs a start within the basin of the right pairing, as predictions from the input camera are.

    Args:
        pred: ``[N,3]`` predicted points (e.g. mesh vertices); gt: ``[M,3]`` GT points.
        fit_scale: also fit the uniform scale.
    """
    if pred.dim() != 2 or pred.size(-1) != 3 or gt.dim() != 2 or gt.size(-1) != 3:
        raise ValueError(f"pred, gt: expected [N,3] and [M,3] points, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    pred64, gt64 = pred.double(), gt.double()
    centre = pred64.mean(0)
    pred_batch = torch.zeros(len(pred64), dtype=torch.long, device=pred.device)
    gt_batch = torch.zeros(len(gt64), dtype=torch.long, device=gt.device)
    scale, translation = pred64.new_tensor(1.0), pred64.new_zeros(3)
    for _ in range(iterations):
        moved = scale * (pred64 - centre) + centre + translation
        pairs = chamfer_distance(moved, pred_batch, gt64, gt_batch, 1, reduction="none")
        source = torch.cat([pred64, pred64[pairs.y_nearest]])
        target = torch.cat([gt64[pairs.x_nearest], gt64])
        new_scale, new_translation = similarity_from_pairs(source, target, centre, fit_scale)
        change = float((new_scale - scale).abs() + (new_translation - translation).abs().max())
        scale, translation = new_scale, new_translation
        if change < tolerance:
            break
    moved = scale * (pred64 - centre) + centre + translation
    return Alignment(moved.to(pred.dtype), translation.to(pred.dtype), scale.to(pred.dtype))
