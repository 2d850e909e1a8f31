r"""Pixel2Mesh losses on batched PyG meshes.

Every loss is a pure function that computes one value per graph and reduces them with
``reduction`` (``'mean'`` over graphs, ``'sum'``, or ``'none'`` for ``[B]``), so each
mesh weighs the same whatever its vertex count. Neighbourhoods come from
``edge_index`` (both directions, PyG convention) through scatter reductions
(:mod:`p2m_geo.scatter`), so graphs of any size batch together.

:class:`P2MLoss` combines them with :class:`~p2m_geo.config.LossWeights`. Mapping to the
original TensorFlow code (whose terms are scaled by 3000 relative to chamfer = 1):

=====================  ===============================  ==========================
term                   original                         here (÷ 3000)
=====================  ===============================  ==========================
chamfer GT→pred        ``mean(dist1) * 3000``           ``chamfer = 1``
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
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn
from torch_geometric import EdgeIndex
from torch_geometric.utils import to_dense_batch

from p2m_geo.config import LossWeights
from p2m_geo.scatter import scatter

__all__ = [
    "ChamferResult",
    "chamfer_distance",
    "edge_length_loss",
    "edge_and_normal_losses",
    "laplacian",
    "laplacian_loss",
    "normal_loss",
    "move_loss",
    "face_normal_loss",
    "P2MLoss",
]

#: Memory one distance block of the matrix-product search may use on CPU (cache-sized blocks
#: are fastest there) and on GPU.
CHAMFER_CHUNK_BYTES_CPU = 32 * 1024 * 1024
CHAMFER_CHUNK_BYTES_GPU = 512 * 1024 * 1024
NEAREST_BACKENDS = ("auto", "kdtree", "matmul")


def _num_graphs(batch: Tensor, num_graphs: Optional[int]) -> int:
    return int(batch.max()) + 1 if num_graphs is None else num_graphs


def _reduce(per_graph: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_graph.mean()
    if reduction == "sum":
        return per_graph.sum()
    if reduction == "none":
        return per_graph
    raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")


class ChamferResult(NamedTuple):
    """Per-graph chamfer terms (reduced as asked) and the nearest-neighbour indices.

    ``x_to_y[b]`` is the mean over points of graph ``b`` in ``x`` of the squared distance
    to the nearest point of the same graph in ``y``; ``x_nearest [Nx]`` indexes ``y``.
    """

    x_to_y: Tensor
    y_to_x: Tensor
    x_nearest: Tensor
    y_nearest: Tensor


def _scipy_kdtree():
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        return None
    return cKDTree


@torch.no_grad()
def _nearest_matmul(query: Tensor, query_batch: Tensor, points: Tensor, points_batch: Tensor, num_graphs: int,
                    chunk_bytes: int) -> Tensor:
    dense_points, points_mask = to_dense_batch(points, points_batch, batch_size=num_graphs)
    dense_query, query_mask = to_dense_batch(query, query_batch, batch_size=num_graphs)
    # |q - p|^2 = |q|^2 - 2 q.p + |p|^2; |q|^2 does not change the argmin. Padding -> +inf.
    squared_norm = dense_points.square().sum(-1).masked_fill(~points_mask, float("inf")).unsqueeze(1)
    points_t = dense_points.transpose(1, 2).contiguous()
    bytes_per_row = num_graphs * dense_points.size(1) * dense_points.element_size()
    rows = max(1, chunk_bytes // max(1, bytes_per_row))
    nearest = []
    for start in range(0, dense_query.size(1), rows):
        block = torch.bmm(dense_query[:, start : start + rows], points_t).mul_(-2.0).add_(squared_norm)
        nearest.append(block.argmin(dim=-1))
    local = torch.cat(nearest, dim=1)  # [B, Nq_max], index within the graph
    counts = points_mask.sum(1)
    return (local + (torch.cumsum(counts, 0) - counts).unsqueeze(1))[query_mask]


@torch.no_grad()
def _nearest_kdtree(query: Tensor, query_batch: Tensor, points: Tensor, points_batch: Tensor, num_graphs: int) -> Tensor:
    """One KD-tree for the whole batch: graph ``b`` is shifted by ``b * spacing`` along x, with
    ``spacing`` larger than any in-graph distance, so no nearest neighbour crosses graphs."""
    tree_class = _scipy_kdtree()
    query_np, points_np = query.double().cpu().numpy(), points.double().cpu().numpy()
    extent = max(float(abs(query_np).max(initial=0.0)), float(abs(points_np).max(initial=0.0)))
    spacing = 4.0 * extent + 1.0
    shifted_points = points_np.copy()
    shifted_points[:, 0] += points_batch.cpu().numpy() * spacing
    shifted_query = query_np.copy()
    shifted_query[:, 0] += query_batch.cpu().numpy() * spacing
    tree = tree_class(shifted_points, balanced_tree=False, compact_nodes=False)  # faster to build, exact
    _, index = tree.query(shifted_query, workers=torch.get_num_threads())
    return torch.from_numpy(index.astype("int64")).to(query.device)


def _nearest_indices(query: Tensor, query_batch: Tensor, points: Tensor, points_batch: Tensor, num_graphs: int,
                     backend: str, chunk_bytes: Optional[int]) -> Tensor:
    """For each query row, the flat index in ``points`` of its nearest point of the same graph."""
    if backend not in NEAREST_BACKENDS:
        raise ValueError(f"nearest: expected one of {', '.join(NEAREST_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = "kdtree" if query.device.type == "cpu" and _scipy_kdtree() is not None else "matmul"
    if backend == "kdtree":
        if _scipy_kdtree() is None:
            raise ValueError("nearest: 'kdtree' needs scipy, which is not installed")
        return _nearest_kdtree(query, query_batch, points, points_batch, num_graphs)
    if chunk_bytes is None:
        chunk_bytes = CHAMFER_CHUNK_BYTES_GPU if query.is_cuda else CHAMFER_CHUNK_BYTES_CPU
    return _nearest_matmul(query, query_batch, points, points_batch, num_graphs, chunk_bytes)


def chamfer_distance(
    x: Tensor,
    x_batch: Tensor,
    y: Tensor,
    y_batch: Tensor,
    num_graphs: Optional[int] = None,
    reduction: str = "mean",
    nearest: str = "auto",
    chunk_bytes: Optional[int] = None,
    x_nearest: Optional[Tensor] = None,
) -> ChamferResult:
    r"""Exact, batched, memory-bounded chamfer distance (squared Euclidean).

    .. math::
        d_{x\to y}(b) = \frac{1}{|X_b|}\sum_{p\in X_b}\min_{q\in Y_b}\lVert p-q\rVert^2,
        \qquad d_{y\to x}(b) \text{ likewise.}

    Nearest neighbours are found without gradient, then the distances are recomputed
    exactly as :math:`\lVert p - q^*\rVert^2`, which is differentiable in both clouds.
    The search (``nearest``) is a KD-tree per graph (``'kdtree'``, scipy; the fastest on
    CPU) or a chunked batched matrix product with at most ``chunk_bytes`` per distance
    block (``'matmul'``, the GPU path); ``'auto'`` picks by device. No compiled
    extension is needed.

    Args:
        x, y: points ``[Nx,3]`` and ``[Ny,3]``; ``x_batch``, ``y_batch``: their graph ids
            (sorted, as in a PyG ``Batch``). Every graph must have points in both.
        num_graphs: number of graphs (default: from the batch vectors).
        x_nearest: the :math:`x \to y` nearest indices when already known (P2MLoss finds
            them for all three mesh levels in one search against the same GT cloud).

    Returns:
        :class:`ChamferResult` with ``x_to_y``, ``y_to_x`` (``[B]`` when
        ``reduction='none'``) and the nearest indices ``x_nearest [Nx]`` (into ``y``),
        ``y_nearest [Ny]`` (into ``x``).
    """
    num_graphs = max(_num_graphs(x_batch, num_graphs), _num_graphs(y_batch, num_graphs))
    x_counts = torch.bincount(x_batch, minlength=num_graphs)
    y_counts = torch.bincount(y_batch, minlength=num_graphs)
    if bool(((x_counts == 0) | (y_counts == 0)).any()):
        raise ValueError("chamfer_distance: expected every graph to have points in both x and y, got an empty graph")
    if x_nearest is None:
        x_nearest = _nearest_indices(x.detach(), x_batch, y.detach(), y_batch, num_graphs, nearest, chunk_bytes)
    elif x_nearest.shape != x_batch.shape:
        raise ValueError(f"x_nearest: expected {list(x_batch.shape)} indices (one per x point), got {list(x_nearest.shape)}")
    y_nearest = _nearest_indices(y.detach(), y_batch, x.detach(), x_batch, num_graphs, nearest, chunk_bytes)
    x_dist = (x - y[x_nearest]).square().sum(-1)
    y_dist = (y - x[y_nearest]).square().sum(-1)
    x_to_y = scatter(x_dist, x_batch, num_graphs, reduce="mean")
    y_to_x = scatter(y_dist, y_batch, num_graphs, reduce="mean")
    return ChamferResult(_reduce(x_to_y, reduction), _reduce(y_to_x, reduction), x_nearest, y_nearest)


def edge_length_loss(pos: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: Optional[int] = None,
                     reduction: str = "mean") -> Tensor:
    r"""Mean squared edge length per graph, :math:`\frac{1}{|E_b|}\sum_{(i,j)\in E_b}\lVert p_i-p_j\rVert^2`.

    With both directions in ``edge_index`` every edge counts twice, which leaves the mean unchanged.
    """
    num_graphs = _num_graphs(batch, num_graphs)
    source, target = edge_index
    squared = (pos[source] - pos[target]).square().sum(-1)
    return _reduce(scatter(squared, batch[source], num_graphs, reduce="mean"), reduction)


def laplacian(pos: Tensor, edge_index: Tensor) -> Tensor:
    r"""Uniform Laplacian coordinates :math:`\delta_i = p_i - \frac{1}{|N(i)|}\sum_{j\in N(i)} p_j`.

    ``edge_index`` may be a plain ``[2,E]`` tensor (scatter over the edges) or a PyG
    ``EdgeIndex`` sorted by column with its cache filled, as :class:`~p2m_geo.Pixel2Mesh`
    attaches to its output meshes (``conv_index``): then, for float32, the neighbour mean
    is one CSR product in both directions, the fastest path measured
    (``benchmarks/RESULTS.md``).
    """
    if isinstance(edge_index, EdgeIndex) and edge_index.is_sorted_by_col:
        return pos - edge_index.matmul(pos, reduce="mean", transpose=True)
    source, target = edge_index
    return pos - scatter(pos[source], target, pos.size(0), reduce="mean")


def laplacian_loss(pos_before: Tensor, pos_after: Tensor, edge_index: Tensor, batch: Tensor,
                   num_graphs: Optional[int] = None, reduction: str = "mean") -> Tensor:
    r"""Per-graph mean of :math:`\lVert \delta_i(\text{after}) - \delta_i(\text{before})\rVert^2`.

    By linearity this is the Laplacian of the displacement, computed in one pass.
    """
    num_graphs = _num_graphs(batch, num_graphs)
    delta = laplacian(pos_after - pos_before, edge_index)
    return _reduce(scatter(delta.square().sum(-1), batch, num_graphs, reduce="mean"), reduction)


def normal_loss(pos: Tensor, edge_index: Tensor, batch: Tensor, gt_normals_of_nearest: Tensor,
                num_graphs: Optional[int] = None, reduction: str = "mean", eps: float = 1e-12) -> Tensor:
    r"""Normal consistency: per-graph mean over edges :math:`(i,j)` of
    :math:`\lvert\langle \hat n_i, (p_j - p_i)/\lVert p_j - p_i\rVert\rangle\rvert`,
    with :math:`\hat n_i` the (normalised) GT normal of the GT point nearest to vertex :math:`i`
    (``gt_normals_of_nearest[i]``), as in the original. Both edge directions are used,
    so each edge is judged against the normals at both of its ends.
    """
    return edge_and_normal_losses(pos, edge_index, batch, gt_normals_of_nearest, num_graphs, reduction, eps)[1]


def edge_and_normal_losses(pos: Tensor, edge_index: Tensor, batch: Tensor, gt_normals_of_nearest: Tensor,
                           num_graphs: Optional[int] = None, reduction: str = "mean",
                           eps: float = 1e-12) -> Tuple[Tensor, Tensor]:
    r""":func:`edge_length_loss` and :func:`normal_loss` from one gather of the edge vectors
    :math:`p_j - p_i` and one per-graph reduction of both per-edge terms (what
    :class:`P2MLoss` uses; the two functions alone each gather the edges again)."""
    num_graphs = _num_graphs(batch, num_graphs)
    source, target = edge_index
    edge = pos[target] - pos[source]
    squared = edge.square().sum(-1)
    unit_normal = gt_normals_of_nearest / gt_normals_of_nearest.norm(dim=-1, keepdim=True).clamp_min(eps)
    cosine = (edge * unit_normal[source]).sum(-1).abs() / squared.sqrt().clamp_min(eps)
    per_graph = scatter(torch.stack([squared, cosine], dim=-1), batch[source], num_graphs, reduce="mean")
    return _reduce(per_graph[:, 0], reduction), _reduce(per_graph[:, 1], reduction)


def move_loss(pos_before: Tensor, pos_after: Tensor, batch: Tensor, num_graphs: Optional[int] = None,
              reduction: str = "mean") -> Tensor:
    r"""Per-graph mean squared vertex displacement :math:`\lVert p_i^{after} - p_i^{before}\rVert^2`."""
    num_graphs = _num_graphs(batch, num_graphs)
    squared = (pos_after - pos_before).square().sum(-1)
    return _reduce(scatter(squared, batch, num_graphs, reduce="mean"), reduction)


def face_normal_loss(pos: Tensor, face: Tensor, adjacency: Tensor, face_batch: Tensor,
                     num_graphs: Optional[int] = None, reduction: str = "mean") -> Tensor:
    r"""Per-graph mean of :math:`1 - \langle n_f, n_g\rangle` over pairs of faces :math:`(f, g)`
    sharing an edge (PyTorch3D's ``mesh_normal_consistency``): 0 for a plane, small for a
    smooth surface, up to 2 for a face folded back onto its neighbour. Not in the original
    Pixel2Mesh; it penalises the crumples and folds that the vertex-based Laplacian lets
    through (``p2m_geo.mesh_quality`` measures them).

    Args:
        face: ``[3,F]``; adjacency: ``[2,A]`` face pairs from
            :func:`p2m_geo.mesh_quality.face_adjacency`; face_batch: graph id per face.
    """
    from p2m_geo.mesh_quality import face_normals

    num_graphs = int(face_batch.max()) + 1 if num_graphs is None else num_graphs
    normals = face_normals(pos, face)
    disagreement = 1.0 - (normals[adjacency[0]] * normals[adjacency[1]]).sum(-1)
    return _reduce(scatter(disagreement, face_batch[adjacency[0]], num_graphs, reduce="mean"), reduction)


class P2MLoss(nn.Module):
    """All Pixel2Mesh training losses for the three blocks, weighted by :class:`LossWeights`.

    ``forward(output, target, images=None)`` takes a :class:`~p2m_geo.Pixel2MeshOutput`
    and the ground truth as a PyG ``Batch`` with ``pos`` and ``normal`` (``[M,3]`` each) and
    ``batch``; ``images`` enables the image-reconstruction term when the output has
    ``image_logits``. Returns ``(total, terms)`` where ``terms`` maps each weighted term
    (summed over blocks) to a scalar; ``total`` is their sum. ``nearest`` picks the
    chamfer search (see :func:`chamfer_distance`).
    """

    def __init__(self, weights: Optional[LossWeights] = None, nearest: str = "auto") -> None:
        super().__init__()
        if nearest not in NEAREST_BACKENDS:
            raise ValueError(f"nearest: expected one of {', '.join(NEAREST_BACKENDS)}, got {nearest!r}")
        self.weights = weights or LossWeights()
        self.nearest = nearest
        #: factor on the edge and Laplacian terms, set per epoch by the trainer (LossWeights.regulariser_factor)
        self.regulariser_scale = 1.0
        self._adjacency: Dict[Tuple, Tuple[Tensor, Tensor]] = {}

    def _face_adjacency(self, mesh) -> Tuple[Tensor, Tensor]:
        """Face pairs sharing an edge and the graph of each face, cached per topology."""
        key = (mesh.face.data_ptr(), mesh.face.shape, mesh.face.device)
        if key not in self._adjacency:
            from p2m_geo.mesh_quality import face_adjacency

            self._adjacency[key] = (face_adjacency(mesh.face), mesh.batch[mesh.face[0]])
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
        found = _nearest_indices(vertices, vertex_batch[order], target.pos, target.batch, num_graphs, self.nearest, None)
        nearest_gt = torch.empty_like(found).index_put_((order,), found)
        nearest_gt = nearest_gt.split([mesh.pos.size(0) for mesh in output.meshes])
        for block, (mesh, before) in enumerate(zip(output.meshes, output.pos_before)):
            chamfer = chamfer_distance(mesh.pos, mesh.batch, target.pos, target.batch, num_graphs,
                                       nearest=self.nearest, x_nearest=nearest_gt[block])
            add("chamfer", w.chamfer * chamfer.y_to_x + w.chamfer_pred_to_gt * chamfer.x_to_y)
            edge, normal = edge_and_normal_losses(mesh.pos, mesh.edge_index, mesh.batch,
                                                  target.normal[chamfer.x_nearest], num_graphs)
            add("normal", w.normal * normal)
            add("edge", self.regulariser_scale * w.edge * edge)
            factor = self.regulariser_scale * (w.laplacian_first_block if block == 0 else 1.0)
            neighbours = getattr(mesh, "conv_index", None)
            neighbours = mesh.edge_index if neighbours is None else neighbours
            add("laplacian", factor * w.laplacian * laplacian_loss(before, mesh.pos, neighbours, mesh.batch, num_graphs))
            if block > 0:
                add("move", w.move * move_loss(before, mesh.pos, mesh.batch, num_graphs))
            if w.face_normal > 0:
                adjacency, face_batch = self._face_adjacency(mesh)
                add("face_normal", self.regulariser_scale * w.face_normal
                    * face_normal_loss(mesh.pos, mesh.face, adjacency, face_batch, num_graphs))
        if images is not None and output.image_logits is not None:
            from p2m_geo.models.image_decoder import image_reconstruction_loss

            add("image", w.image * image_reconstruction_loss(output.image_logits, images))
        total = torch.stack(list(terms.values())).sum()
        return total, terms
