"""2D U-Net decoder of the image-reconstruction branch (2018 PyTorch port's design)."""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ImageDecoder"]


class ImageDecoder(nn.Module):
    r"""Decode the encoder maps back to the input image, U-Net style.

    Starting from the coarsest map, each step upsamples by 2 (bilinear), concatenates the
    next finer encoder map (skip connection) and applies a 3x3 conv + ReLU. The 56 px
    result is upsampled to 112 px for one narrow 3x3 conv, and a 1x1 conv gives RGB
    logits that are upsampled bilinearly to 224 px (full-resolution convolutions would
    cost more than the whole mesh network).

    Shapes:
        - **input:** encoder maps :math:`(B, C_m, H_m, W_m)`, coarse last
        - **output:** logits :math:`(B, 3, 4 H_0, 4 W_0)`
    """

    def __init__(self, channels: Sequence[int], width: int = 16) -> None:
        super().__init__()
        channels = list(channels)
        self.merge = nn.ModuleList()
        current = channels[-1]
        for skip in reversed(channels[:-1]):
            out = max(width, skip // 2)
            self.merge.append(nn.Sequential(nn.Conv2d(current + skip, out, 3, padding=1), nn.ReLU(inplace=True)))
            current = out
        self.refine = nn.Sequential(nn.Conv2d(current, width, 3, padding=1), nn.ReLU(inplace=True))
        self.to_rgb = nn.Conv2d(width, 3, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He weights, zero biases."""
        from p2m_geo.models.encoders import he_zero_bias_

        he_zero_bias_(self)

    def forward(self, feature_maps: List[Tensor]) -> Tensor:
        x = feature_maps[-1]
        for merge, skip in zip(self.merge, reversed(feature_maps[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = merge(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        logits = self.to_rgb(self.refine(x))
        return F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=False)
