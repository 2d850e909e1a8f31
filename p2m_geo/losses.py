r"""Pixel2Mesh losses on batched PyG meshes.

Every loss is a pure function that computes one value per graph and reduces them with
``reduction`` (``'mean'`` over graphs, ``'sum'``, or ``'none'`` for ``[B]``), so each
mesh weighs the same whatever its vertex count. Neighbourhoods come from
``edge_index`` (both directions, PyG convention) through scatter reductions
(``torch_geometric.utils.scatter``), so graphs of any size batch together.

:class:`P2MLoss` combines them with :class:`~p2m_geo.config.LossWeights`. Mapping to the
original TensorFlow code (whose terms are scaled by 3000 relative to chamfer = 1):

=====================  ===============================  ==========================
term                   original                         here (÷ 3000)
=====================  ===============================  ==========================
chamfer GT→pred        ``mean(dist1) * 3000``           ``chamfer_gt_to_pred = 1``
chamfer pred→GT        ``0.55 * mean(dist2) * 3000``    ``chamfer_pred_to_gt = 0.55``
normal                 ``mean(cos) * 0.5``              ``normal = 0.5/3000 = 1.67e-4``
edge length            ``mean(|e|^2) * 300``            ``edge = 300/3000 = 0.1``
Laplacian              ``mean(|Δδ|^2) * 1500``          ``laplacian = 1500/3000 = 0.5``
Laplacian, block 1     extra factor 0.1                 ``laplacian_first_block = 0.1``
move (blocks 2, 3)     ``mean(|Δp|^2) * 100``           ``move = 100/3000 = 0.033``
=====================  ===============================  ==========================

One documented difference: the original's edge and normal terms average over its support
index pairs, which include every vertex's self-pair (length 0, cosine 0); here they
average over the edges only. On the ellipsoid levels (about 6 neighbours per vertex) the
original's mean is 6/7 of this one, so the same weights act 7/6 ≈ 1.167× as strongly
here (multiply ``edge`` and ``normal`` by 6/7 to match the original exactly).

Three terms are not in the original: ``face_normal`` (:func:`face_normal_loss`, adjacent face
normals agree, :math:`1 - \cos\theta`, or :math:`\lVert n_f - n_g\rVert` with
``face_normal_form: normal_difference``) and ``face_fold`` (the same with a 90-degree margin,
:math:`\max(0, -\cos\theta)`: folds only), both from one :func:`adjacent_face_cosines`; and
``depth`` (:func:`mean_depth_loss` on the first block's input, which the optional depth head
places: a direct target for that head).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric import EdgeIndex
from torch_geometric.utils import scatter

from p2m_geo.config import FACE_NORMAL_FORMS, LossWeights
from p2m_geo.ops.chamfer import ChamferResult, chamfer_distance, num_graphs_of, reduce_per_graph
from p2m_geo.ops.knn import SEARCHES, nearest_indices

__all__ = [
    "ChamferResult",
    "chamfer_distance",
    "edge_length_loss",
    "edge_and_normal_losses",
    "laplacian",
    "laplacian_loss",
    "normal_loss",
    "move_loss",
    "mean_depth_loss",
    "face_normal_loss",
    "adjacent_face_cosines",
    "bend_loss",
    "FACE_NORMAL_FORMS",
    "image_reconstruction_loss",
    "P2MLoss",
]


def edge_length_loss(
    pos: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: Optional[int] = None, reduction: str = "mean"
) -> Tensor:
    r"""Mean squared edge length per graph, :math:`\frac{1}{|E_b|}\sum_{(i,j)\in E_b}\lVert p_i-p_j\rVert^2`.

    With both directions in ``edge_index`` every edge counts twice, which leaves the mean unchanged.
    """
    num_graphs = num_graphs_of(batch, num_graphs)
    source, target = edge_index
    squared = (pos[source] - pos[target]).square().sum(-1)
    return reduce_per_graph(scatter(squared, batch[source], dim=0, dim_size=num_graphs, reduce="mean"), reduction)


def laplacian(pos: Tensor, edge_index: Tensor) -> Tensor:
    r"""Uniform Laplacian coordinates :math:`\delta_i = p_i - \frac{1}{|N(i)|}\sum_{j\in N(i)} p_j`.

    ``edge_index`` may be a plain ``[2,E]`` tensor (scatter over the edges) or a PyG
    ``EdgeIndex`` sorted by column with its cache filled, as :class:`~p2m_geo.Pixel2Mesh`
    returns with its meshes (``Pixel2MeshOutput.conv_indices``): then, for float32, the neighbour mean
    is one CSR product in both directions, the fastest path measured
    (``benchmarks/RESULTS.md``).
    """
    if isinstance(edge_index, EdgeIndex) and edge_index.is_sorted_by_col:
        return pos - edge_index.matmul(pos, reduce="mean", transpose=True)
    source, target = edge_index
    return pos - scatter(pos[source], target, dim=0, dim_size=pos.size(0), reduce="mean")


def laplacian_loss(
    pos_before: Tensor,
    pos_after: Tensor,
    edge_index: Tensor,
    batch: Tensor,
    num_graphs: Optional[int] = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Per-graph mean of :math:`\lVert \delta_i(\text{after}) - \delta_i(\text{before})\rVert^2`.

    By linearity this is the Laplacian of the displacement, computed in one pass.
    """
    num_graphs = num_graphs_of(batch, num_graphs)
    delta = laplacian(pos_after - pos_before, edge_index)
    return reduce_per_graph(
        scatter(delta.square().sum(-1), batch, dim=0, dim_size=num_graphs, reduce="mean"), reduction
    )


def normal_loss(
    pos: Tensor,
    edge_index: Tensor,
    batch: Tensor,
    gt_normals_of_nearest: Tensor,
    num_graphs: Optional[int] = None,
    reduction: str = "mean",
    eps: float = 1e-12,
) -> Tensor:
    r"""Normal consistency: per-graph mean over edges :math:`(i,j)` of
    :math:`\lvert\langle \hat n_i, (p_j - p_i)/\lVert p_j - p_i\rVert\rangle\rvert`,
    with :math:`\hat n_i` the (normalised) GT normal of the GT point nearest to vertex :math:`i`
    (``gt_normals_of_nearest[i]``), as in the original. Both edge directions are used,
    so each edge is judged against the normals at both of its ends.
    """
    return edge_and_normal_losses(pos, edge_index, batch, gt_normals_of_nearest, num_graphs, reduction, eps)[1]


def edge_and_normal_losses(
    pos: Tensor,
    edge_index: Tensor,
    batch: Tensor,
    gt_normals_of_nearest: Tensor,
    num_graphs: Optional[int] = None,
    reduction: str = "mean",
    eps: float = 1e-12,
) -> Tuple[Tensor, Tensor]:
    r""":func:`edge_length_loss` and :func:`normal_loss` from one gather of the edge vectors
    :math:`p_j - p_i` and one per-graph reduction of both per-edge terms (what
    :class:`P2MLoss` uses; the two functions alone each gather the edges again)."""
    num_graphs = num_graphs_of(batch, num_graphs)
    source, target = edge_index
    edge = pos[target] - pos[source]
    squared = edge.square().sum(-1)
    unit_normal = gt_normals_of_nearest / gt_normals_of_nearest.norm(dim=-1, keepdim=True).clamp_min(eps)
    cosine = (edge * unit_normal[source]).sum(-1).abs() / squared.sqrt().clamp_min(eps)
    per_graph = scatter(
        torch.stack([squared, cosine], dim=-1), batch[source], dim=0, dim_size=num_graphs, reduce="mean"
    )
    return reduce_per_graph(per_graph[:, 0], reduction), reduce_per_graph(per_graph[:, 1], reduction)


def move_loss(
    pos_before: Tensor, pos_after: Tensor, batch: Tensor, num_graphs: Optional[int] = None, reduction: str = "mean"
) -> Tensor:
    r"""Per-graph mean squared vertex displacement :math:`\lVert p_i^{after} - p_i^{before}\rVert^2`."""
    num_graphs = num_graphs_of(batch, num_graphs)
    squared = (pos_after - pos_before).square().sum(-1)
    return reduce_per_graph(scatter(squared, batch, dim=0, dim_size=num_graphs, reduce="mean"), reduction)


def mean_depth_loss(
    pos: Tensor,
    batch: Tensor,
    gt_pos: Tensor,
    gt_batch: Tensor,
    num_graphs: Optional[int] = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Squared log-ratio of mean depths per graph, :math:`(\log \bar z_b - \log \bar z^{gt}_b)^2`,
    :math:`\bar z_b` the mean of :math:`z = -Z` (distance along the camera's view axis, the camera
    looking down :math:`-Z`) over the graph's points.

    A scale-free error on *where* a mesh lies, not on its shape: scaling points about the camera
    centre by :math:`s` adds :math:`\log s` to :math:`\log \bar z`. Depths are clamped at 1e-6.

    Shapes:
        - pos :math:`(N, 3)`, batch :math:`(N)`, gt_pos :math:`(M, 3)`, gt_batch :math:`(M)`
        - output: scalar, or :math:`(B)` with ``reduction='none'``
    """
    num_graphs = num_graphs_of(batch, num_graphs)
    depth = scatter(-pos[:, 2], batch, dim=0, dim_size=num_graphs, reduce="mean").clamp_min(1e-6)
    gt_depth = scatter(-gt_pos[:, 2], gt_batch, dim=0, dim_size=num_graphs, reduce="mean").clamp_min(1e-6)
    return reduce_per_graph((depth.log() - gt_depth.log()).square(), reduction)


def adjacent_face_cosines(pos: Tensor, face: Tensor, adjacency: Tensor) -> Tensor:
    r""":math:`\langle n_f, n_g\rangle = \cos\theta_{fg}` of the unit normals of each pair of faces
    :math:`(f, g)` sharing an edge (``adjacency`` ``[2,A]``) -> ``[A]``."""
    from p2m_geo.ops.sampling import face_normals

    normals = face_normals(pos, face)
    return (normals[adjacency[0]] * normals[adjacency[1]]).sum(-1)


def bend_loss(
    cosine: Tensor,
    pair_batch: Tensor,
    num_graphs: int,
    reduction: str = "mean",
    margin_degrees: float = 0.0,
    form: str = "one_minus_cos",
) -> Tensor:
    r"""Per-graph mean over face pairs of a bend cost :math:`c(\theta)` above a margin,
    :math:`\max(0,\ c(\theta) - c(\theta_0))`, :math:`\theta_0` = ``margin_degrees``;
    ``cosine`` from :func:`adjacent_face_cosines`, ``pair_batch`` the graph of each pair.

    ``form`` picks :math:`c`:

    - ``one_minus_cos``: :math:`1 - \cos\theta = \tfrac12\lVert n_f - n_g\rVert^2 \approx
      \theta^2/2`, quadratic in the angle (PyTorch3D's ``mesh_normal_consistency``);
    - ``normal_difference``: :math:`\lVert n_f - n_g\rVert = \sqrt{2(1 - \cos\theta)} =
      2\sin(\theta/2) \approx \theta`, linear in the angle (the total-variation, edge-preserving
      prior of mesh denoising): a sharp corner costs what the same turn spread over a rounded
      one costs, while every small crumple costs in proportion to its angle, not its square.
      Computed as :math:`\sqrt{2(1-\cos\theta) + \epsilon^2} - \epsilon`,
      :math:`\epsilon = 10^{-4}`, so its gradient stays finite at :math:`\theta = 0`.
    """
    if form not in FACE_NORMAL_FORMS:
        raise ValueError(f"form: expected one of {', '.join(FACE_NORMAL_FORMS)}, got {form!r}")
    one_minus_cos = 1.0 - cosine
    threshold = 1.0 - math.cos(math.radians(margin_degrees))
    if form == "normal_difference":
        eps = 1e-4
        disagreement = (2.0 * one_minus_cos.clamp_min(0.0) + eps * eps).sqrt() - eps
        threshold = math.sqrt(2.0 * threshold + eps * eps) - eps
    else:
        disagreement = one_minus_cos
    if margin_degrees > 0:
        disagreement = (disagreement - threshold).clamp_min(0.0)
    return reduce_per_graph(scatter(disagreement, pair_batch, dim=0, dim_size=num_graphs, reduce="mean"), reduction)


def face_normal_loss(
    pos: Tensor,
    face: Tensor,
    adjacency: Tensor,
    face_batch: Tensor,
    num_graphs: Optional[int] = None,
    reduction: str = "mean",
    margin_degrees: float = 0.0,
    form: str = "one_minus_cos",
) -> Tensor:
    r"""Per-graph mean of :math:`\max(0,\ 1 - \langle n_f, n_g\rangle - (1 - \cos\theta_0))`
    over pairs of faces :math:`(f, g)` sharing an edge, :math:`\theta_0` = ``margin_degrees``.
    With no margin it is PyTorch3D's ``mesh_normal_consistency``, :math:`1 - \cos\theta`: 0
    for a plane, small for a smooth surface, up to 2 for a face folded back onto its
    neighbour. A margin leaves dihedral angles up to :math:`\theta_0` free (corners and
    creases of the shape) and penalises only sharper bends and folds; at 90 degrees it is the
    fold term, :math:`\max(0, -\cos\theta)`. Not in the original Pixel2Mesh; it penalises
    the crumples and folds that the vertex-based Laplacian lets through
    (``p2m_geo.mesh_quality`` measures them).

    Args:
        face: ``[3,F]``; adjacency: ``[2,A]`` face pairs from
            :func:`p2m_geo.mesh_quality.face_adjacency`; face_batch: graph id per face.
        margin_degrees: angle between adjacent face normals below which a pair costs nothing.
        form: ``one_minus_cos`` or ``normal_difference`` (:func:`bend_loss`; with the latter,
            each pair costs :math:`\lVert n_f - n_g\rVert` instead).
    """
    num_graphs = int(face_batch.max()) + 1 if num_graphs is None else num_graphs
    cosine = adjacent_face_cosines(pos, face, adjacency)
    return bend_loss(cosine, face_batch[adjacency[0]], num_graphs, reduction, margin_degrees, form)


def image_reconstruction_loss(logits: Tensor, images: Tensor) -> Tensor:
    r"""BCE (with logits) + L1 of :math:`\sigma(\text{logits})` against the input in :math:`[0,1]`."""
    bce = F.binary_cross_entropy_with_logits(logits, images)
    return bce + (torch.sigmoid(logits) - images).abs().mean()


class P2MLoss(nn.Module):
    """All Pixel2Mesh training losses for the three blocks, weighted by :class:`LossWeights`.

    ``forward(output, target, images=None)`` takes a :class:`~p2m_geo.Pixel2MeshOutput`
    and the ground truth as a PyG ``Batch`` with ``pos`` and ``normal`` (``[M,3]`` each) and
    ``batch``; ``images`` enables the image-reconstruction term when the output has
    ``image_logits``. Returns ``(total, terms)`` where ``terms`` maps each weighted term
    (summed over blocks) to a scalar; ``total`` is their sum. ``search`` picks the
    nearest-neighbour search (:func:`~p2m_geo.ops.knn.nearest_indices`).
    """

    def __init__(self, weights: Optional[LossWeights] = None, search: str = "auto") -> None:
        super().__init__()
        if search not in SEARCHES:
            raise ValueError(f"search: expected one of {', '.join(SEARCHES)}, got {search!r}")
        self.weights = weights or LossWeights()
        self.search = search
        #: factor on the edge, Laplacian, face-normal and fold terms, set per epoch by the trainer
        #: (LossWeights.regulariser_factor)
        self.regulariser_scale = 1.0
        self._adjacency: Dict[Tuple, Tuple[Tensor, Tensor]] = {}

    def _face_adjacency(self, mesh) -> Tuple[Tensor, Tensor]:
        """Face pairs sharing an edge and the graph of each pair, cached per topology."""
        key = (mesh.face.data_ptr(), mesh.face.shape, mesh.face.device)
        if key not in self._adjacency:
            from p2m_geo.mesh_quality import face_adjacency

            adjacency = face_adjacency(mesh.face)
            self._adjacency[key] = (adjacency, mesh.batch[mesh.face[0, adjacency[0]]])
        return self._adjacency[key]

    def forward(self, output, target, images: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        w = self.weights
        num_graphs = output.meshes[0].num_graphs
        terms: Dict[str, Tensor] = {}

        def add(name: str, value: Tensor) -> None:
            terms[name] = terms[name] + value if name in terms else value

        if not bool(torch.isfinite(output.meshes[-1].pos).all()):
            # a diverged prediction (a non-finite level carries into every later one): a non-finite
            # total that the trainer skips and counts (the nearest-neighbour search would fail on
            # it with a message about its own input)
            nan = output.meshes[-1].pos.sum() * float("nan")
            return nan, {"chamfer": nan}
        # vertices -> GT nearest neighbours of all three levels in one search of the same GT cloud
        vertex_batch = torch.cat([mesh.batch for mesh in output.meshes])
        order = torch.argsort(vertex_batch, stable=True)  # graph-sorted, as the searches expect
        vertices = torch.cat([mesh.pos.detach() for mesh in output.meshes])[order]
        found = nearest_indices(vertices, vertex_batch[order], target.pos, target.batch, num_graphs, self.search)
        nearest_gt = torch.empty_like(found).index_put_((order,), found)
        nearest_gt = nearest_gt.split([mesh.pos.size(0) for mesh in output.meshes])
        for block, (mesh, before) in enumerate(zip(output.meshes, output.pos_before)):
            chamfer = chamfer_distance(
                mesh.pos,
                mesh.batch,
                target.pos,
                target.batch,
                num_graphs,
                search=self.search,
                x_nearest=nearest_gt[block],
            )
            add("chamfer", w.chamfer_gt_to_pred * chamfer.y_to_x + w.chamfer_pred_to_gt * chamfer.x_to_y)
            edge, normal = edge_and_normal_losses(
                mesh.pos, mesh.edge_index, mesh.batch, target.normal[chamfer.x_nearest], num_graphs
            )
            add("normal", w.normal * normal)
            add("edge", self.regulariser_scale * w.edge * edge)
            factor = self.regulariser_scale * (w.laplacian_first_block if block == 0 else 1.0)
            neighbours = output.conv_indices[block] if output.conv_indices else mesh.edge_index
            add(
                "laplacian", factor * w.laplacian * laplacian_loss(before, mesh.pos, neighbours, mesh.batch, num_graphs)
            )
            if block > 0:
                add("move", w.move * move_loss(before, mesh.pos, mesh.batch, num_graphs))
            face_normal_weight = w.face_normal * w.face_normal_block_factors[block]
            if face_normal_weight > 0 or w.face_fold > 0:
                adjacency, pair_batch = self._face_adjacency(mesh)
                cosine = adjacent_face_cosines(mesh.pos, mesh.face, adjacency)
            if face_normal_weight > 0:
                margin = max(w.face_normal_margin, w.face_normal_block_margins[block])
                bend = bend_loss(cosine, pair_batch, num_graphs, margin_degrees=margin, form=w.face_normal_form)
                add("face_normal", self.regulariser_scale * face_normal_weight * bend)
            if w.face_fold > 0:
                fold = bend_loss(cosine, pair_batch, num_graphs, margin_degrees=90.0)
                add("fold", self.regulariser_scale * w.face_fold * fold)
        if w.depth > 0:  # the first block's input: the ellipsoid as placed by the depth head
            start = output.pos_before[0]
            add("depth", w.depth * mean_depth_loss(start, output.meshes[0].batch, target.pos, target.batch, num_graphs))
        if images is not None and output.image_logits is not None:
            add("image", w.image * image_reconstruction_loss(output.image_logits, images))
        total = torch.stack(list(terms.values())).sum()
        return total, terms
