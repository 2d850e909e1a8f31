r"""Pinhole camera of the ShapeNet / R2N2 renderings (Pixel2Mesh convention).

The camera looks down :math:`-Z` with :math:`y` up. A camera-frame point
:math:`(X, Y, Z)` lands on pixel

.. math::
    u = f_x \frac{X}{-Z} + c_x, \qquad v = f_y \frac{-Y}{-Z} + c_y

of the 224 x 224 network input, with :math:`u` to the right and :math:`v` down, pixel
:math:`(i, j)` having its centre at :math:`u = i, v = j`. ShapeNet renderings (35 mm lens
on a 32 mm sensor, 137 px resized to 224) give :math:`f \approx 248`, :math:`c = 111.5`.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["SHAPENET_FOCAL", "SHAPENET_CENTER", "IMAGE_SIZE", "default_intrinsics", "project"]

IMAGE_SIZE = 224
SHAPENET_FOCAL = 248.0
SHAPENET_CENTER = 111.5
# Depths below this are clamped so vertices at or behind the camera plane stay finite.
MIN_DEPTH = 1e-4


def default_intrinsics(
    batch_size: int,
    focal: float = SHAPENET_FOCAL,
    center: Union[float, Tuple[float, float]] = SHAPENET_CENTER,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``[B,3,3]`` intrinsics ``[[f,0,c_x],[0,f,c_y],[0,0,1]]`` (default: the ShapeNet
    renderings'); ``center`` is one number for both axes or ``(c_x, c_y)``."""
    cx, cy = (center, center) if isinstance(center, (int, float)) else center
    matrix = torch.tensor([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]], device=device, dtype=dtype)
    return matrix.expand(batch_size, 3, 3).clone()


def project(pos: Tensor, intrinsics: Tensor) -> Tensor:
    r"""Pixel coordinates ``[N,2]`` of camera-frame points.

    Args:
        pos: points ``[N,3]`` in the camera frame (visible points have :math:`Z < 0`).
        intrinsics: ``[N,3,3]`` (one camera per point) or ``[3,3]`` (shared).
    """
    depth = (-pos[:, 2]).clamp(min=MIN_DEPTH)
    x = pos[:, 0] / depth
    y = -pos[:, 1] / depth
    if intrinsics.dim() == 2:
        intrinsics = intrinsics.expand(len(pos), 3, 3)
    u = intrinsics[:, 0, 0] * x + intrinsics[:, 0, 1] * y + intrinsics[:, 0, 2]
    v = intrinsics[:, 1, 1] * y + intrinsics[:, 1, 2]
    return torch.stack([u, v], dim=-1)
