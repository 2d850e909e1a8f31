from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GraphConv

__all__ = [
    "FusedGraphConv",
    "ResidualPair",
    "DeformationBlock",
    "GResBlock",
    "GResNet",
    "glorot_zero_bias_",
    "OUTPUT_INIT_GAIN",
]

LINEAR_AGGREGATIONS = ("mean", "add", "sum")

#: Gain of the Glorot init of each block's last (-> 3 coordinates) convolution: small enough
#: that a fresh model outputs the ellipsoid within 1e-3, not zero so that the first step's
#: gradient reaches every layer and the encoder.
OUTPUT_INIT_GAIN = 3e-5


def glorot_zero_bias_(conv: GraphConv, gain: float = 1.0) -> None:
    r"""The original's graph-convolution init: Glorot-uniform weights
    (:math:`\mathcal{U}(\pm g\sqrt{6/(F_{in}+F_{out})})`) for both linear maps, zero bias."""
    for linear in (conv.lin_rel, conv.lin_root):
        nn.init.xavier_uniform_(linear.weight, gain=gain)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)


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
            out = aggregated + projected[:, self.out_channels :]
            return out if bias is None else out + bias
        if self.aggr in LINEAR_AGGREGATIONS and _may_recompute(x):
            return _AggregateThenLinear.apply(
                x, self.lin_rel.weight, bias, self.lin_root.weight, lambda t: self._aggregate(t, edge_index)
            )
        aggregated = self._aggregate(x, edge_index)
        out = (
            aggregated @ self.lin_rel.weight.t()
            if bias is None
            else torch.addmm(bias, aggregated, self.lin_rel.weight.t())
        )
        return torch.addmm(out, x, self.lin_root.weight.t())

    def _aggregate(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.propagate(edge_index, x=(x, x), edge_weight=None, size=None)


def _may_recompute(x: Tensor) -> bool:
    """Training in full precision, eager: where :class:`_AggregateThenLinear` applies."""
    return (
        torch.is_grad_enabled()
        and x.requires_grad
        and not torch.is_autocast_enabled(x.device.type)
        and not torch.compiler.is_compiling()
    )


class _AggregateThenLinear(torch.autograd.Function):
    r""":math:`\operatorname{aggr}(\mathbf{X})\mathbf{W}_2^\top + \mathbf{b} + \mathbf{X}\mathbf{W}_1^\top`
    that keeps only :math:`\mathbf{X}` for backward and recomputes the (cheap, linear)
    aggregation there, instead of also keeping :math:`\operatorname{aggr}(\mathbf{X})`: one
    fewer :math:`|\mathcal{V}| \times H` tensor per convolution (about a quarter of the
    model's saved activations) for one extra sparse product in backward. Gradients:
    :math:`\partial\mathbf{W}_2 = \mathbf{G}^\top \operatorname{aggr}(\mathbf{X})`,
    :math:`\partial\mathbf{W}_1 = \mathbf{G}^\top\mathbf{X}`, :math:`\partial\mathbf{b} = \mathbf{1}^\top\mathbf{G}`,
    :math:`\partial\mathbf{X} = \operatorname{aggr}^\top(\mathbf{G}\mathbf{W}_2) + \mathbf{G}\mathbf{W}_1`
    (the aggregation's own backward gives :math:`\operatorname{aggr}^\top`). No double backward."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight_rel: Tensor,
        bias: Optional[Tensor],
        weight_root: Tensor,
        aggregate: Callable[[Tensor], Tensor],
    ) -> Tensor:
        aggregated = aggregate(x)
        out = aggregated @ weight_rel.t() if bias is None else torch.addmm(bias, aggregated, weight_rel.t())
        out = torch.addmm(out, x, weight_root.t())
        ctx.save_for_backward(x, weight_rel, weight_root)
        ctx.aggregate = aggregate
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight_rel, weight_root = ctx.saved_tensors
        needs_x, needs_rel, needs_bias, needs_root, _ = ctx.needs_input_grad
        grad_x = grad_rel = grad_bias = grad_root = None
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_(needs_x)
            aggregated = ctx.aggregate(x_leaf)
        if needs_x:
            (grad_x,) = torch.autograd.grad(aggregated, x_leaf, grad_out @ weight_rel)
            grad_x = torch.addmm(grad_x, grad_out, weight_root)
        if needs_rel:
            grad_rel = grad_out.t() @ aggregated.detach()
        if needs_root:
            grad_root = grad_out.t() @ x
        if needs_bias and ctx.has_bias:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_rel, grad_bias, grad_root, None


class ResidualPair(nn.Module):
    r"""Residual pair of graph convolutions with shortcut averaging.

    .. math::
        \mathbf{X}^{\prime} = \tfrac12\Big(\mathbf{X} + \sigma\big(g_2(\sigma(g_1(\mathbf{X})))\big)\Big)

    with :math:`g_k` PyG :class:`~torch_geometric.nn.conv.GraphConv` (as :class:`FusedGraphConv`)
    and :math:`\sigma` ReLU.

    Shapes:
        - **input:** ``x`` :math:`(|\mathcal{V}|, H)`, ``edge_index`` :math:`(2, |\mathcal{E}|)`
        - **output:** :math:`(|\mathcal{V}|, H)`
    """

    def __init__(self, channels: int, aggr: str = "mean") -> None:
        super().__init__()
        self.conv1 = FusedGraphConv(channels, channels, aggr=aggr)
        self.conv2 = FusedGraphConv(channels, channels, aggr=aggr)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot weights, zero biases (as the original)."""
        glorot_zero_bias_(self.conv1)
        glorot_zero_bias_(self.conv2)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        y = F.relu(self.conv1(x, edge_index))
        y = F.relu(self.conv2(y, edge_index))
        return 0.5 * (x + y)


class DeformationBlock(nn.Module):
    r"""One Pixel2Mesh deformation block: input conv, residual pairs, (tail conv,) output conv.

    .. math::
        \mathbf{H}_0 = \sigma(g_{in}(\mathbf{X})),\quad
        \mathbf{H}_{k} = \mathrm{ResidualPair}_k(\mathbf{H}_{k-1}),\quad
        \Delta\mathbf{P} = g_{out}(\mathbf{H}_K)
        \ \text{or}\ g_{out}(\sigma(g_{tail}(\mathbf{H}_K)))

    Returns the coordinate offsets :math:`\Delta\mathbf{P}` and the hidden features
    :math:`\mathbf{H}_K`, which the next block receives after unpooling. With
    ``tail_channels`` (the original's last block: hidden -> hidden/2 -> 3, 15
    convolutions) a ReLU convolution narrows the features before the output convolution.

    Initialisation (:meth:`reset_parameters`): Glorot weights and zero biases everywhere,
    as the original; the output convolution's Glorot gain is :data:`OUTPUT_INIT_GAIN`, so a
    fresh block moves the vertices by less than ~3e-4.

    Args:
        in_channels (int): input features per vertex (963 for cnn18 at level 1).
        hidden_channels (int): width (192 in the 2018 PyTorch port, 256 in the original).
        num_residual (int): residual pairs (6 gives the original 14 convolutions).
        out_channels (int): 3 coordinates.
        aggr (str): neighbour aggregation of every ``GraphConv``.
        tail_channels (int, optional): width of the extra ReLU convolution before the
            output one (``hidden_channels // 2`` in the original's third block).

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
        tail_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.conv_in = FusedGraphConv(in_channels, hidden_channels, aggr=aggr)
        self.residual = nn.ModuleList(ResidualPair(hidden_channels, aggr) for _ in range(num_residual))
        self.conv_tail = None if tail_channels is None else FusedGraphConv(hidden_channels, tail_channels, aggr=aggr)
        self.conv_out = FusedGraphConv(tail_channels or hidden_channels, out_channels, aggr=aggr)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        glorot_zero_bias_(self.conv_in)
        for block in self.residual:
            block.reset_parameters()
        if self.conv_tail is not None:
            glorot_zero_bias_(self.conv_tail)
        glorot_zero_bias_(self.conv_out, gain=OUTPUT_INIT_GAIN)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tuple[Tensor, Tensor]:
        hidden = F.relu(self.conv_in(x, edge_index))
        for block in self.residual:
            hidden = block(hidden, edge_index)
        last = hidden if self.conv_tail is None else F.relu(self.conv_tail(hidden, edge_index))
        return self.conv_out(last, edge_index), hidden


#: Former names (the G-ResNet paper's): one deformation block was ``GResNet``, a residual pair
#: ``GResBlock``. The state-dict keys never depended on the class names.
GResNet = DeformationBlock
GResBlock = ResidualPair
