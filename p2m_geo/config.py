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

__all__ = [
    "ConfigError", "ModelConfig", "LossWeights", "TrainConfig", "DataConfig", "Config", "PRESETS",
    "preset_dict", "merge_dicts", "from_dict", "to_dict", "load_yaml", "read_yaml_dict",
]

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
    """Optimisation schedule. Adam as in the original Pixel2Mesh; the original's coupled L2
    term ``5e-6 * l2_loss(w)`` is a weight decay of 5e-6. Learning rates are for the
    given batch size (the original trained at batch 1 with 3e-5; Adam needs roughly
    sqrt(B) scaling, so 1e-4 at B = 8)."""

    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 5e-6
    lr_milestones: tuple = (30, 40)  #: epochs at which the learning rate is multiplied by lr_gamma
    lr_gamma: float = 0.3
    image_branch_epochs: int = 1  #: epochs the image branch trains for (0 disables it)
    workers: int = 2  #: DataLoader worker processes
    seed: int = 0
    device: str = "auto"  #: auto, cpu or cuda
    max_steps: int = 0  #: stop after this many optimiser steps in total (0: no limit)
    max_bad_steps: int = 20  #: consecutive non-finite steps before training stops
    preview_samples: int = 4  #: fixed validation samples drawn in each epoch's preview PNG
    eval_max_samples: int = 0  #: cap on validation samples per epoch (0: all)
    amp: bool = False  #: bfloat16 autocast for the network's forward (losses stay float32)
    channels_last: bool = True  #: NHWC encoder convolutions (faster with oneDNN on CPU and on GPUs)
    compile: bool = False  #: torch.compile the encoder and deformation blocks (for GPUs; no gain on CPU)
    cpu_retain_memory: bool = True  #: CPU: keep freed memory in the process (faster; higher peak RSS)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"train.device: expected auto, cpu or cuda, got {self.device!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr: expected a positive number, got {self.lr}")


@dataclass
class DataConfig:
    """Where the data comes from. Empty ``root`` means the generated procedural dataset."""

    root: str = ""  #: ShapeNetP2M-layout folder; empty: the cached procedural dataset
    train_list: str = "train_list.txt"  #: relative to root unless absolute
    val_list: str = "test_list.txt"
    synth_per_class: int = 24  #: procedural dataset: shapes per class
    synth_views: int = 4  #: procedural dataset: views per shape
    synth_seed: int = 0
    on_bad_sample: str = "fail"  #: fail or skip

    def __post_init__(self) -> None:
        if self.on_bad_sample not in ("fail", "skip"):
            raise ConfigError(f"data.on_bad_sample: expected fail or skip, got {self.on_bad_sample!r}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


#: Named presets: the same code, different widths/depths and schedule. Mesh levels never change.
PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    # The original architecture (cnn18, hidden 192, 3 x 14 graph convolutions): ~37 GFLOP per
    # training sample, ~0.8 samples/s on 2 CPU cores; meant for a GPU.
    "full": {},
    # Narrow encoder and G-ResNet for a ~15 minute CPU run on 2 cores that clearly learns.
    "cpu-quick": {
        "model": {"encoder_width": 0.25, "hidden": 64, "num_residual": 2},
        "train": {"epochs": 8, "batch_size": 8, "lr": 5e-4, "lr_milestones": [6], "workers": 1},
        "data": {"synth_per_class": 24, "synth_views": 4},
    },
}


def merge_dicts(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge (``override`` wins); neither input is modified."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def preset_dict(name: str) -> Dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]


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


def read_yaml_dict(path: str | Path) -> Dict[str, Any]:
    """A YAML mapping from ``path`` (safe loader); errors name the file."""
    import yaml

    try:
        with open(path, "r", encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"config: expected a readable YAML file, got {path} ({type(error).__name__})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config: expected a YAML mapping in {path}, got {type(values).__name__}")
    return values


def load_yaml(path: str | Path, cls: Type[T] = Config) -> T:
    """Read a YAML file into ``cls`` with strict keys."""
    return from_dict(cls, read_yaml_dict(path))
