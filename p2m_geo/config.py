"""One configuration dataclass tree, with strict loading from dicts and YAML.

Every field has its default documented in place. Loading rejects unknown keys with an
error that names the key and its section, so a typo never silently falls back to a
default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Type, TypeVar, get_type_hints

__all__ = ["ModelConfig", "LossWeights", "TrainConfig", "Config", "from_dict", "to_dict", "load_yaml"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value that does not fit the schema."""


@dataclass
class ModelConfig:
    """Architecture of :class:`p2m_geo.Pixel2Mesh`. Mesh levels (156/618/2466) are fixed."""

    backbone: str = "cnn18"  #: ``cnn18`` (Pixel2Mesh's VGG-style CNN), ``vgg16`` or ``resnet50``
    encoder_width: float = 1.0  #: channel multiplier of cnn18 (1.0 gives 64/128/256/512 at 56/28/14/7 px)
    backbone_weights: Optional[str] = None  #: local file with trunk weights; never downloaded
    hidden: int = 192  #: G-ResNet width (192: 2018 PyTorch port; 256: original checkpoint)
    num_residual: int = 6  #: residual pairs per block (6 -> 14 graph convolutions per block)
    aggr: str = "mean"  #: GraphConv neighbour aggregation
    image_size: int = 224  #: side of the square input the intrinsics refer to
    image_branch: bool = True  #: build the 2D U-Net image-reconstruction decoder

    def __post_init__(self) -> None:
        if self.backbone not in ("cnn18", "vgg16", "resnet50"):
            raise ConfigError(
                f"model.backbone: expected one of cnn18, vgg16, resnet50, got {self.backbone!r}"
            )
        if self.aggr not in ("mean", "add", "max"):
            raise ConfigError(f"model.aggr: expected mean, add or max, got {self.aggr!r}")
        for name in ("hidden", "num_residual"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}: expected a positive integer, got {getattr(self, name)}")


@dataclass
class LossWeights:
    """Weights of the Pixel2Mesh losses (see :class:`p2m_geo.losses.P2MLoss` for the mapping
    from the original TensorFlow code)."""

    chamfer: float = 1.0  #: weight of the GT -> prediction chamfer side
    chamfer_pred_to_gt: float = 0.55  #: weight of the prediction -> GT chamfer side
    normal: float = 1.6e-4
    edge: float = 0.1
    laplacian: float = 0.3
    laplacian_first_block: float = 0.1  #: extra factor on block 1's Laplacian term
    move: float = 0.1  #: vertex move (blocks 2 and 3 only)
    image: float = 1.0  #: image-reconstruction branch (BCE + L1)


@dataclass
class TrainConfig:
    """Optimisation schedule (Adam as in the original)."""

    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-5
    lr_milestones: tuple = ()
    lr_gamma: float = 0.3
    image_branch_epochs: int = 1  #: epochs the image branch trains for (0 disables it)
    workers: int = 2
    seed: int = 0
    device: str = "auto"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    train: TrainConfig = field(default_factory=TrainConfig)


def from_dict(cls: Type[T], values: Dict[str, Any], section: str = "") -> T:
    """Build dataclass ``cls`` from ``values``; unknown keys raise :class:`ConfigError`."""
    if not isinstance(values, dict):
        raise ConfigError(f"{section or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        where = f"{section}.{key}" if section else key
        if key not in known:
            raise ConfigError(f"{where}: unknown key (expected one of {', '.join(known)})")
        hint = hints[key]
        if is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, where)
        elif hint is tuple or getattr(hint, "__origin__", None) is tuple:
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def to_dict(config: Any) -> Dict[str, Any]:
    """Plain nested dict (lists for tuples) that YAML and ``torch.load(weights_only=True)`` accept."""
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def load_yaml(path: str | Path, cls: Type[T] = Config) -> T:
    """Read a YAML file into ``cls`` with strict keys."""
    import yaml

    with open(path, "r", encoding="utf-8") as handle:
        values = yaml.safe_load(handle) or {}
    return from_dict(cls, values)
