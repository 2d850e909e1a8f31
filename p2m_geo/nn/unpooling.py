from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing

__all__ = ["GraphUnpooling"]


class GraphUnpooling(MessagePassing):
    r"""Edge-midpoint unpooling: one new vertex per vertex pair, appended per graph.

    For every pair :math:`e = (i, j)` in ``unpool_index`` a vertex is added with

    .. math::
        \mathbf{x}^{\prime}_{e} = \tfrac12 (\mathbf{x}_i + \mathbf{x}_j),

    implemented as mean aggregation over a bipartite graph from the old vertices to the
    new ones. Old vertices keep their features. In the output, each graph's vertices are
    its old vertices followed by its new ones in pair order, which is the vertex order
    of the next ellipsoid level (:func:`p2m_geo.mesh.subdivide`). Apply it to
    ``torch.cat([pos, hidden], -1)`` to carry coordinates and features together.

    Shapes:
        - **input:** ``x`` :math:`(|\mathcal{V}|, F)`, ``unpool_index`` :math:`(2, |\mathcal{E}_u|)`
          (batched, offsets from ``Batch``), ``batch`` :math:`(|\mathcal{V}|)`
        - **output:** ``x`` :math:`(|\mathcal{V}| + |\mathcal{E}_u|, F)`, ``batch`` of the same length
    """

    def __init__(self) -> None:
        super().__init__(aggr="mean", flow="source_to_target")

    def forward(self, x: Tensor, unpool_index: Tensor, batch: Tensor) -> Tuple[Tensor, Tensor]:
        num_new = unpool_index.size(1)
        target = torch.arange(num_new, device=x.device).repeat(2)
        bipartite = torch.stack([unpool_index.reshape(-1), target])
        new_x = self.propagate(bipartite, x=(x, None), size=(x.size(0), num_new))
        new_batch = batch[unpool_index[0]]
        merged_batch = torch.cat([batch, new_batch])
        order = torch.argsort(merged_batch, stable=True)
        return torch.cat([x, new_x])[order], merged_batch[order]

    def message(self, x_j: Tensor) -> Tensor:
        return x_j
