from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GraphConv

__all__ = ["FusedGraphConv", "GResBlock", "GResNet"]

LINEAR_AGGREGATIONS = ("mean", "add", "sum")


class FusedGraphConv(GraphConv):
    r"""PyG :class:`~torch_geometric.nn.conv.GraphConv` with its two linear maps fused into
    fewer, cheaper kernels; same parameters, same ``state_dict`` keys, same results up to
    float rounding.

    .. math::
        \mathbf{x}^{\prime}_i = \mathbf{W}_1 \mathbf{x}_i + \mathbf{b}
        + \mathbf{W}_2 \operatorname{aggr}_{j \in \mathcal{N}(i)} \mathbf{x}_j

    (``lin_rel`` = :math:`\mathbf{W}_2, \mathbf{b}`; ``lin_root`` = :math:`\mathbf{W}_1`).

    - Narrowing (``out_channels < in_channels``, a linear aggregation: mean or sum; the
      963/1155 -> 192 input and 192 -> 3 output convolutions of a deformation block):
      :math:`\mathbf{W}_2 \operatorname{aggr}_j \mathbf{x}_j = \operatorname{aggr}_j \mathbf{W}_2 \mathbf{x}_j`,
      so both maps are one product with :math:`[\mathbf{W}_2; \mathbf{W}_1]` and the graph
      aggregation runs on the narrow side.
    - Otherwise: aggregate, then two accumulating ``addmm`` (bias and root term added inside
      the matrix products instead of by separate element-wise kernels).

    Shapes:
        - **input:** ``x`` :math:`(|\mathcal{V}|, F_{in})`, ``edge_index`` :math:`(2, |\mathcal{E}|)`
        - **output:** :math:`(|\mathcal{V}|, F_{out})`
    """

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:  # type: ignore[override]
        bias = self.lin_rel.bias
        if self.aggr in LINEAR_AGGREGATIONS and self.out_channels < self.in_channels:
            weight = torch.cat([self.lin_rel.weight, self.lin_root.weight], dim=0)
            projected = x @ weight.t()
            neighbour = projected[:, : self.out_channels].contiguous()
            aggregated = self.propagate(edge_index, x=(neighbour, neighbour), edge_weight=None, size=None)
            out = aggregated + projected[:, self.out_channels:]
            return out if bias is None else out + bias
        aggregated = self.propagate(edge_index, x=(x, x), edge_weight=None, size=None)
        out = aggregated @ self.lin_rel.weight.t() if bias is None else torch.addmm(bias, aggregated, self.lin_rel.weight.t())
        return torch.addmm(out, x, self.lin_root.weight.t())


class GResBlock(nn.Module):
    r"""Residual pair of graph convolutions with shortcut averaging.

    .. math::
        \mathbf{X}^{\prime} = \tfrac12\Big(\mathbf{X} + \sigma\big(g_2(\sigma(g_1(\mathbf{X})))\big)\Big)

    with :math:`g_k` PyG :class:`~torch_geometric.nn.conv.GraphConv` (as :class:`FusedGraphConv`) and :math:`\sigma` ReLU.

    Shapes:
        - **input:** ``x`` :math:`(|\mathcal{V}|, H)`, ``edge_index`` :math:`(2, |\mathcal{E}|)`
        - **output:** :math:`(|\mathcal{V}|, H)`
    """

    def __init__(self, channels: int, aggr: str = "mean") -> None:
        super().__init__()
        self.conv1 = FusedGraphConv(channels, channels, aggr=aggr)
        self.conv2 = FusedGraphConv(channels, channels, aggr=aggr)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        y = F.relu(self.conv1(x, edge_index))
        y = F.relu(self.conv2(y, edge_index))
        return 0.5 * (x + y)


class GResNet(nn.Module):
    r"""One Pixel2Mesh deformation block: input conv, residual pairs, output conv.

    .. math::
        \mathbf{H}_0 = \sigma(g_{in}(\mathbf{X})),\quad
        \mathbf{H}_{k} = \mathrm{GResBlock}_k(\mathbf{H}_{k-1}),\quad
        \Delta\mathbf{P} = g_{out}(\mathbf{H}_K)

    Returns the coordinate offsets :math:`\Delta\mathbf{P}` and the hidden features
    :math:`\mathbf{H}_K`, which the next block receives after unpooling.

    Args:
        in_channels (int): input features per vertex (963 for cnn18 at level 1).
        hidden_channels (int): width (192 in the 2018 PyTorch port, 256 in the original).
        num_residual (int): residual pairs (6 gives the original 14 convolutions).
        out_channels (int): 3 coordinates.
        aggr (str): neighbour aggregation of every ``GraphConv``.

    Shapes:
        - **input:** ``x`` :math:`(|\mathcal{V}|, F_{in})`, ``edge_index`` :math:`(2, |\mathcal{E}|)`
        - **output:** :math:`(|\mathcal{V}|, 3)`, :math:`(|\mathcal{V}|, H)`
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        num_residual: int = 6,
        out_channels: int = 3,
        aggr: str = "mean",
    ) -> None:
        super().__init__()
        self.conv_in = FusedGraphConv(in_channels, hidden_channels, aggr=aggr)
        self.residual = nn.ModuleList(GResBlock(hidden_channels, aggr) for _ in range(num_residual))
        self.conv_out = FusedGraphConv(hidden_channels, out_channels, aggr=aggr)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tuple[Tensor, Tensor]:
        hidden = F.relu(self.conv_in(x, edge_index))
        for block in self.residual:
            hidden = block(hidden, edge_index)
        return self.conv_out(hidden, edge_index), hidden
