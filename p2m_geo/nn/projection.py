from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import to_dense_batch

from p2m_geo.camera import IMAGE_SIZE, project

__all__ = ["GraphProjection", "pixel_to_grid", "bilinear_sample_dense", "DENSE_SAMPLING_MAX_CELLS"]

#: maps of at most this many cells are sampled by :func:`bilinear_sample_dense` on CPU: there
#: ``grid_sample``'s backward scatters thousands of vertices into a few cells one by one (the 7x7
#: map of cnn18, 2466 vertices x 8 images: 26 ms forward + backward against 12 ms dense)
DENSE_SAMPLING_MAX_CELLS = 64


def pixel_to_grid(uv: Tensor, image_size: int = IMAGE_SIZE) -> Tensor:
    r"""Pixel coordinates of the ``image_size`` input to ``grid_sample`` coordinates.

    With ``align_corners=False`` a map of any resolution :math:`H` that covers the input
    image spans :math:`[-1, 1]` edge to edge, so pixel centre :math:`u` maps to
    :math:`2 (u + 0.5) / S - 1` for every map (56, 28, 14 or 7 px alike).
    """
    return (uv + 0.5) * (2.0 / image_size) - 1.0


def bilinear_sample_dense(fmap: Tensor, grid: Tensor) -> Tensor:
    r"""``grid_sample(fmap, grid[:, :, None], bilinear, padding_mode="border",
    align_corners=False)`` as one product with a sparse-in-content, dense-in-memory matrix.

    With :math:`x = \operatorname{clamp}(((g_x + 1) W - 1)/2, 0, W - 1)` (and :math:`y` alike),
    :math:`x_0 = \min(\lfloor x \rfloor, W - 2)`, :math:`a = x - x_0`, :math:`b = y - y_0`, row
    :math:`n` of :math:`\mathbf{S} \in \mathbb{R}^{N \times HW}` holds :math:`(1-a)(1-b)`, :math:`a(1-b)`,
    :math:`(1-a)b`, :math:`ab` at the four cells around :math:`(x, y)`, and the samples are
    :math:`\mathbf{S}\,\mathbf{F}`, :math:`\mathbf{F} \in \mathbb{R}^{HW \times C}`. The same values
    and gradients (to the map and to the grid) as ``grid_sample``, up to float rounding.

    Shapes:
        - **input:** ``fmap`` :math:`(B, C, H, W)`, :math:`H, W \ge 2`; ``grid`` :math:`(B, N, 2)` in :math:`[-1, 1]`
        - **output:** :math:`(B, N, C)`
    """
    batch_size, channels, height, width = fmap.shape
    x = (((grid[..., 0] + 1.0) * width - 1.0) * 0.5).clamp(0, width - 1)
    y = (((grid[..., 1] + 1.0) * height - 1.0) * 0.5).clamp(0, height - 1)
    # a non-finite vertex (a diverged prediction) samples NaN, as grid_sample's does, at a valid cell
    x0 = torch.nan_to_num(x.detach(), nan=0.0).floor().clamp(max=width - 2)
    y0 = torch.nan_to_num(y.detach(), nan=0.0).floor().clamp(max=height - 2)
    a, b = x - x0, y - y0
    corner = (y0 * width + x0).long()
    index = torch.stack([corner, corner + 1, corner + width, corner + width + 1], dim=-1)
    weight = torch.stack([(1 - a) * (1 - b), a * (1 - b), (1 - a) * b, a * b], dim=-1).to(fmap.dtype)
    matrix = fmap.new_zeros(batch_size, grid.size(1), height * width).scatter_add(2, index, weight)
    return torch.bmm(matrix, fmap.reshape(batch_size, channels, height * width).transpose(1, 2))


class GraphProjection(nn.Module):
    r"""Perceptual feature pooling: each vertex gathers image features where it projects.

    For vertex :math:`i` of graph :math:`b`, with pixel position
    :math:`(u_i, v_i) = \pi_{K_b}(\mathbf{p}_i)` (see :func:`p2m_geo.camera.project`),

    .. math::
        \mathbf{x}_i = \mathbf{p}_i \,\Vert\, \big\Vert_{m} \operatorname{bilinear}
        \big(\mathbf{F}^{(m)}_b, u_i, v_i\big)

    over the feature maps :math:`\mathbf{F}^{(m)}`. Coordinates outside a map are
    clamped to its border (as the original Pixel2Mesh does). Sampling is bilinear in
    continuous coordinates, so gradients reach both the features and :math:`\mathbf{p}_i`.

    It is a plain module rather than a ``MessagePassing``: every vertex reads from a
    dense image, there is no graph neighbourhood to aggregate over.

    Args:
        image_size (int): side of the square network input the intrinsics refer to.

    Shapes:
        - **input:** ``pos`` :math:`(|\mathcal{V}|, 3)`, ``batch`` :math:`(|\mathcal{V}|)`,
          ``intrinsics`` :math:`(B, 3, 3)`, ``feature_maps`` list of :math:`(B, C_m, H_m, W_m)`
        - **output:** :math:`(|\mathcal{V}|, 3 + \sum_m C_m)`
    """

    def __init__(self, image_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        self.image_size = image_size

    def forward(
        self,
        pos: Tensor,
        batch: Tensor,
        intrinsics: Tensor,
        feature_maps: Sequence[Tensor],
        nodes_per_graph: Optional[int] = None,
    ) -> Tensor:
        """``nodes_per_graph``: pass it when every graph has that many vertices, in batch
        order (Pixel2Mesh's batched templates): sampling then reshapes instead of padding
        and masking, which gives the same result with fewer copies."""
        batch_size = intrinsics.size(0)
        grid = pixel_to_grid(project(pos, intrinsics[batch]), self.image_size)
        if nodes_per_graph is not None:
            if pos.size(0) != batch_size * nodes_per_graph:
                raise ValueError(
                    f"nodes_per_graph: expected {batch_size} graphs x {nodes_per_graph} = "
                    f"{batch_size * nodes_per_graph} "
                    f"vertices, got {pos.size(0)}"
                )
            dense_grid, mask = grid.view(batch_size, nodes_per_graph, 1, 2), None
        else:
            dense_grid, mask = to_dense_batch(grid, batch, batch_size=batch_size)
            dense_grid = dense_grid.unsqueeze(2)  # [B, Nmax, 1, 2]
        sampled = [pos.view(batch_size, -1, 3) if mask is None else pos]
        for fmap in feature_maps:
            fmap = fmap.to(grid.dtype)  # sample in the coordinates' precision: bf16 grids would be off by ~0.1 px
            height, width = fmap.shape[-2:]
            if fmap.device.type == "cpu" and 2 <= min(height, width) and height * width <= DENSE_SAMPLING_MAX_CELLS:
                values = bilinear_sample_dense(fmap, dense_grid.squeeze(2))
            else:
                values = (
                    F.grid_sample(fmap, dense_grid, mode="bilinear", padding_mode="border", align_corners=False)
                    .squeeze(-1)
                    .transpose(1, 2)
                )  # [B, Nmax, C]
            sampled.append((values if mask is None else values[mask]).to(pos.dtype))
        return torch.cat(sampled, dim=-1).view(pos.size(0), -1)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}"
