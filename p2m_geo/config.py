"""One configuration dataclass tree, with strict loading from dicts and YAML
(:mod:`p2m_geo.config_io`: types from the hints, ranges, renamed keys, no YAML aliases).

Every field has its default documented in place. Loading rejects unknown keys with an
error that names the key and its section, so a typo never silently falls back to a
default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Optional, Tuple, Type, TypeVar

from p2m_geo.config_io import (
    ConfigError,
    _check_ranges,
    _short,
    from_dict,
    merge_dicts,
    read_yaml_dict,
    to_dict,
)
from p2m_geo.presets import PRESETS

__all__ = [
    "ConfigError",
    "ModelConfig",
    "LossWeights",
    "TrainConfig",
    "DataConfig",
    "Config",
    "PRESETS",
    "preset_dict",
    "merge_dicts",
    "from_dict",
    "to_dict",
    "load_yaml",
    "read_yaml_dict",
]

T = TypeVar("T")

#: forms of the face-normal term (``loss.face_normal_form``; :func:`p2m_geo.losses.bend_loss`)
FACE_NORMAL_FORMS = ("one_minus_cos", "normal_difference")
#: inputs of the depth head (``model.depth_head_features``; :meth:`p2m_geo.Pixel2Mesh.depth_scale`)
DEPTH_HEAD_FEATURES = ("coarsest", "all", "spatial")
#: learning-rate schedules (``train.lr_schedule``; :func:`p2m_geo.training.build_scheduler`)
LR_SCHEDULES = ("step", "cosine", "linear-decay")


@dataclass
class ModelConfig:
    """Architecture of :class:`p2m_geo.Pixel2Mesh`. Mesh levels (156/618/2466) are fixed."""

    #: a name in :data:`p2m_geo.models.encoders.ENCODERS`: ``cnn18`` (Pixel2Mesh's VGG-style CNN),
    #: ``vgg16``, ``resnet50``, ``efficientnet-lite0`` (ImageNet weights from the [pretrained] extra)
    backbone: str = "cnn18"
    encoder_width: float = 1.0  #: channel multiplier of cnn18 (1.0 gives 64/128/256/512 at 56/28/14/7 px)
    #: cnn18's stages: ``none`` (the original: conv -> ReLU) or ``batch`` (conv -> BatchNorm -> ReLU);
    #: the other backbones keep their own normalisation and ignore it (so ``--backbone`` works with
    #: any preset)
    encoder_norm: str = "none"
    backbone_weights: Optional[str] = None  #: local file with trunk weights; never downloaded
    #: efficientnet-lite0 without ``backbone_weights``: start from the ImageNet weights that the
    #: ``[pretrained]`` extra installs (False: random init)
    pretrained: bool = True
    hidden: int = 192  #: G-ResNet width (192: 2018 PyTorch port; 256: original checkpoint)
    num_residual: int = 6  #: residual pairs per block (6 -> 14 graph convolutions per block)
    aggr: str = "mean"  #: GraphConv neighbour aggregation
    image_size: int = 224  #: side of the square input the intrinsics refer to
    #: build the 2D U-Net image-reconstruction decoder (off: at equal epochs the meshes were better
    #: without it, and each step is cheaper; see benchmarks/variants.py and README)
    image_branch: bool = False
    last_block_tail: bool = True  #: block 3 ends hidden -> hidden/2 (ReLU) -> 3, as the original (15 convs)
    offset_bound: float = 0.0  #: > 0: each block's offsets are b * tanh(raw / b), at most b per axis (0: unbounded)
    #: lambda > 0: each block's offsets pass through (I + lambda L)^-1, L the level's graph Laplacian (a
    #: low-pass filter: smooth offsets, smooth gradients; Nicolet et al. 2021, "Large Steps"); 0: off
    offset_smoothing: float = 0.0
    #: a global depth estimate per image: a linear head on the mean of the encoder's coarsest map
    #: scales the starting ellipsoid about the camera centre by :math:`e^{d}`, :math:`d \in (-0.5,
    #: 0.5)` (its projection stays; its depth and size change), before block 1 deforms it
    depth_head: bool = False
    #: what the depth head reads: ``coarsest`` (the mean of the coarsest map, round 10) or ``all``
    #: (the mean and the maximum of every map: the object's extent at each scale, 56 px included)
    #: or ``spatial`` (the coarsest map cell by cell, pooled to 7 x 7: where the object ends)
    depth_head_features: str = "coarsest"
    #: > 0: the depth head is a one-hidden-layer MLP of this width (ReLU) on the coarsest map's 7 x 7
    #: cells (needs ``depth_head_features: spatial``): depth goes as 1 / apparent size, which a
    #: linear map of the cells cannot follow; 0: the linear head
    depth_head_hidden: int = 0
    #: a global depth readout per block: a linear map of the mean of the block's hidden vertex
    #: features scales the block's output mesh about the camera centre by :math:`e^{d}`,
    #: :math:`d \in (-0.5, 0.5)` (its projection stays), so every block can move its whole mesh in
    #: depth, informed by the image features its vertices sampled; starts at zero (scale 1)
    depth_readout: bool = False
    #: > 0: a global image code of this many features per image, a linear map (ReLU) of the
    #: encoder's coarsest map pooled to 7 x 7 cells, appended to every vertex's sampled features in
    #: every block, so each vertex sees the whole image and not only the pixels it projects to
    #: (not in the original); 0: off
    global_features: int = 0

    def __post_init__(self) -> None:
        from p2m_geo.models.encoders import encoder_names

        if self.backbone not in encoder_names():
            raise ConfigError(
                f"model.backbone: expected one of {', '.join(encoder_names())}, got {_short(self.backbone)}"
            )
        if self.depth_head_features not in DEPTH_HEAD_FEATURES:
            raise ConfigError(
                f"model.depth_head_features: expected one of {', '.join(DEPTH_HEAD_FEATURES)}, "
                f"got {_short(self.depth_head_features)}"
            )
        from p2m_geo.models.encoders import ENCODER_NORMS

        if self.encoder_norm not in ENCODER_NORMS:
            raise ConfigError(
                f"model.encoder_norm: expected one of {', '.join(ENCODER_NORMS)}, got {_short(self.encoder_norm)}"
            )
        if self.aggr not in ("mean", "add", "max"):
            raise ConfigError(f"model.aggr: expected mean, add or max, got {_short(self.aggr)}")
        _check_ranges(
            "model",
            self,
            {
                "hidden": (lambda v: v >= 2, "an integer >= 2"),
                "num_residual": (lambda v: v >= 1, "a positive integer"),
                "encoder_width": (lambda v: 0 < v <= 8, "a number in (0, 8]"),
                "image_size": (lambda v: v >= 32, "an integer >= 32"),
                "offset_bound": (lambda v: v >= 0, "a number >= 0"),
                "offset_smoothing": (lambda v: v >= 0, "a number >= 0"),
                "global_features": (lambda v: v >= 0, "an integer >= 0"),
                "depth_head_hidden": (lambda v: v >= 0, "an integer >= 0"),
            },
        )
        if self.depth_head_hidden > 0 and self.depth_head_features != "spatial":
            raise ConfigError(
                f"model.depth_head_hidden: expected 0 unless model.depth_head_features is spatial, "
                f"got {self.depth_head_hidden} with {self.depth_head_features}"
            )


@dataclass
class LossWeights:
    """Weights of the Pixel2Mesh losses: the original TensorFlow weights divided by its 3000
    chamfer scale (see :class:`p2m_geo.losses.P2MLoss` for the whole mapping)."""

    #: old key -> new key; old configs and checkpoints still load
    RENAMED_KEYS: ClassVar[Dict[str, str]] = {"chamfer": "chamfer_gt_to_pred"}

    chamfer_gt_to_pred: float = 1.0  #: GT -> prediction chamfer side (TF: 3000 / 3000); formerly ``chamfer``
    chamfer_pred_to_gt: float = 0.55  #: prediction -> GT chamfer side (TF: 0.55 * 3000 / 3000)
    normal: float = 0.5 / 3000  #: TF: 0.5 / 3000 = 1.67e-4
    edge: float = 300 / 3000  #: TF: 300 / 3000 = 0.1
    laplacian: float = 1500 / 3000  #: TF: 1500 / 3000 = 0.5
    laplacian_first_block: float = 0.1  #: extra factor on block 1's Laplacian term (TF: 0.1)
    move: float = 100 / 3000  #: vertex move, blocks 2 and 3 only (TF: 100 / 3000 = 0.033)
    image: float = 1.0  #: image-reconstruction branch (BCE + L1; not in the TF original)
    #: adjacent-face normal agreement (PyTorch3D's mesh_normal_consistency; not in the original): the
    #: measured fix for crumpled, self-intersecting meshes (benchmarks/variants.py, README)
    face_normal: float = 1e-2
    #: factors on the face-normal term of blocks 1, 2, 3: (1 - cos) grows as the square of the angle,
    #: and the faces of the coarse levels meet at larger angles on the same smooth shape
    face_normal_block_factors: Tuple[float, ...] = (1.0, 1.0, 1.0)
    #: degrees: adjacent faces meeting at a smaller angle cost nothing in the face-normal term
    face_normal_margin: float = 0.0
    #: per-block margins in degrees for blocks 1, 2, 3 (each block uses the larger of this and
    #: ``face_normal_margin``): a coarse level needs sharp corners to stand for the shape, while
    #: folds (angles near 180 degrees) are wrong at every level
    face_normal_block_margins: Tuple[float, ...] = (0.0, 0.0, 0.0)
    #: cost of one pair as a function of the angle between its normals: ``one_minus_cos``
    #: (:math:`1 - \cos\theta \approx \theta^2/2`) or ``normal_difference`` (:math:`\lVert n_f - n_g\rVert
    #: \approx \theta`, edge-preserving: corners cost less, small crumples more); p2m_geo.losses.bend_loss
    face_normal_form: str = "one_minus_cos"
    #: folds only: adjacent faces bent past 90 degrees, :math:`\max(0, -\cos\theta)` per pair, on every
    #: block (the face-normal term with a 90-degree margin, at its own weight; smooth bends cost nothing)
    face_fold: float = 0.0
    #: the depth head's direct target: squared log-ratio of the mean depth of the first block's
    #: input (the ellipsoid as the head places it) to the GT's (p2m_geo.losses.mean_depth_loss);
    #: needs ``model.depth_head`` (a config with the term and without the head is refused)
    depth: float = 0.0
    regulariser_start: float = 1.0  #: factor on edge, Laplacian, face-normal, fold in epoch 1, annealed to 1 ...
    regulariser_anneal_epochs: int = 0  #: ... over this many epochs (0: constant weights)

    def __post_init__(self) -> None:
        nonnegative = (lambda v: v >= 0, "a number >= 0")
        _check_ranges(
            "loss",
            self,
            {
                name: nonnegative
                for name in (
                    "chamfer_gt_to_pred",
                    "chamfer_pred_to_gt",
                    "normal",
                    "edge",
                    "laplacian",
                    "laplacian_first_block",
                    "move",
                    "image",
                    "face_normal",
                    "face_fold",
                    "depth",
                    "regulariser_anneal_epochs",
                )
            }
            | {"regulariser_start": (lambda v: v > 0, "a number > 0")}
            | {"face_normal_block_factors": (lambda v: len(v) == 3 and min(v) >= 0, "3 numbers >= 0")}
            | {"face_normal_margin": (lambda v: 0 <= v < 180, "degrees in [0, 180)")}
            | {
                "face_normal_form": (
                    lambda v: v in FACE_NORMAL_FORMS,
                    " or ".join(FACE_NORMAL_FORMS),
                )
            }
            | {
                "face_normal_block_margins": (
                    lambda v: len(v) == 3 and all(0 <= a < 180 for a in v),
                    "3 degrees in [0, 180)",
                )
            },
        )

    def regulariser_factor(self, epoch: int) -> float:
        """Factor on the edge, Laplacian, face-normal and fold weights in (0-based) ``epoch``."""
        if self.regulariser_anneal_epochs <= 0:
            return 1.0
        progress = min(1.0, epoch / self.regulariser_anneal_epochs)
        return self.regulariser_start + (1.0 - self.regulariser_start) * progress


@dataclass
class TrainConfig:
    """Optimisation schedule. Adam as in the original Pixel2Mesh. The original adds
    ``5e-6 * l2_loss(w)`` (graph convolutions) and ``0.3 * 1e-5 * l2_loss(w)`` (image
    convolutions) to a loss whose chamfer term is scaled by 3000; ``l2_loss(w) = |w|^2 / 2``
    has gradient ``w``, so with chamfer at weight 1 here the equal coupled decays are
    those coefficients divided by 3000 (on weights only, as there). Learning rates are for
    the given batch size (the original trained at batch 1 with 3e-5; Adam needs roughly
    sqrt(B) scaling, so 1e-4 at B = 8)."""

    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 5e-6 / 3000  #: graph convolutions' weights: TF 5e-6 / 3000 = 1.7e-9
    encoder_weight_decay: float = 0.3 * 1e-5 / 3000  #: image convolutions' weights: TF 3e-6 / 3000 = 1e-9
    #: step (x lr_gamma at lr_milestones), cosine (to 0 at the last epoch) or linear-decay (constant
    #: until epoch lr_milestones[0] ends, then down by the same amount each optimiser step to 0 after
    #: the last: :func:`p2m_geo.training.linear_decay_factor`)
    lr_schedule: str = "step"
    #: epochs at which the learning rate is multiplied by lr_gamma (linear-decay: the first is the
    #: epoch after which the decay starts; without one, or with one at or past ``epochs``, the decay
    #: takes the last epoch)
    lr_milestones: tuple = (30, 40)
    lr_gamma: float = 0.3
    #: > 0: validate, preview and save (``best.pt``, and ``model`` in ``last.pt``) an exponential
    #: moving average of the weights, updated after every step with this decay (0: the raw weights)
    ema_decay: float = 0.0
    #: keep the image encoder's weights as built or loaded (a pretrained trunk as a fixed feature
    #: extractor; no encoder backward, so faster steps); the G-ResNet and projection still train
    freeze_encoder: bool = False
    gt_points: int = 0  #: > 0: the loss sees a fresh random subset of this many GT points per sample each step
    #: probability that a training view is mirrored left to right in a step (image, camera and GT
    #: together, :func:`p2m_geo.data.shapenet.mirror_left_right`; 0: never)
    mirror_probability: float = 0.0
    image_branch_epochs: int = 1  #: epochs the image branch trains for, when the model has one (0 disables it)
    workers: int = 2  #: DataLoader worker processes
    seed: int = 0
    device: str = "auto"  #: auto, cpu or cuda
    max_steps: int = 0  #: stop after this many optimiser steps in total (0: no limit)
    max_bad_steps: int = 20  #: consecutive non-finite steps before training stops
    preview_samples: int = 4  #: fixed validation samples drawn in each epoch's preview PNG
    #: validation views per epoch, spread evenly over the list (each class keeps its share; 0: all);
    #: ``p2m-geo eval`` scores them all
    eval_max_samples: int = 0
    amp: bool = False  #: bfloat16 autocast for the network's forward (losses stay float32)
    channels_last: bool = True  #: NHWC encoder convolutions (faster with oneDNN on CPU and on GPUs)
    compile: bool = False  #: torch.compile the encoder and deformation blocks (for GPUs; no gain on CPU)
    cpu_retain_memory: bool = True  #: CPU: keep freed memory in the process (faster; higher peak RSS)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"train.device: expected auto, cpu or cuda, got {_short(self.device)}")
        positive = (lambda v: v >= 1, "a positive integer")
        nonnegative = (lambda v: v >= 0, "an integer >= 0")
        _check_ranges(
            "train",
            self,
            {
                "epochs": positive,
                "batch_size": positive,
                "max_bad_steps": positive,
                "lr": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
                "weight_decay": (lambda v: v >= 0, "a number >= 0"),
                "encoder_weight_decay": (lambda v: v >= 0, "a number >= 0"),
                "lr_gamma": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
                "ema_decay": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
                "mirror_probability": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
                "lr_milestones": (lambda v: all(m >= 1 for m in v), "epochs >= 1"),
                "gt_points": nonnegative,
                "image_branch_epochs": nonnegative,
                "workers": nonnegative,
                "max_steps": nonnegative,
                "preview_samples": nonnegative,
                "eval_max_samples": nonnegative,
            },
        )
        if self.lr_schedule not in LR_SCHEDULES:
            expected = " or ".join(LR_SCHEDULES)
            raise ConfigError(f"train.lr_schedule: expected {expected}, got {_short(self.lr_schedule)}")


@dataclass
class DataConfig:
    """Where the data comes from. Empty ``root`` means the generated procedural dataset."""

    #: a name in :data:`p2m_geo.data.factory.DATASET_FORMATS` (``shapenet_p2m``, ``procedural``),
    #: or ``auto``: ``shapenet_p2m`` when ``root`` is set, else ``procedural``
    format: str = "auto"
    root: str = ""  #: ShapeNetP2M-layout folder; empty: the cached procedural dataset
    train_list: str = "train_list.txt"  #: relative to root unless absolute
    val_list: str = "test_list.txt"
    synth_per_class: int = 24  #: procedural dataset: shapes per class
    synth_views: int = 4  #: procedural dataset: views per shape
    synth_seed: int = 0
    #: procedural dataset version: 1 flat-shaded primitives, 2 curved shapes with palette
    #: colours, textures and random lighting, 3 version 1 with biplanes among the airplanes
    #: (:mod:`p2m_geo.data.synth`)
    synth_version: int = 1
    #: procedural dataset: this many more training shapes per class, generated after the
    #: ``synth_per_class`` ones; the test (validation) views stay those of ``synth_per_class`` alone
    synth_extra_train: int = 0
    on_bad_sample: str = "fail"  #: fail or skip
    #: keep up to this many MiB of decoded views (image and GT tensors) in memory per dataset, so later
    #: epochs skip the PNG and .dat decoding (0: decode every time). It helps where views load in the
    #: training process (``train.workers: 0``, as in cpu-quick): DataLoader workers start empty each epoch
    cache_mb: int = 0

    def __post_init__(self) -> None:
        from p2m_geo.data.synth import DATASET_VERSIONS

        _check_ranges(
            "data",
            self,
            {
                "synth_per_class": (lambda v: v >= 2, "an integer >= 2"),
                "synth_views": (lambda v: 1 <= v <= 24, "an integer from 1 to 24"),
                "synth_version": (lambda v: v in DATASET_VERSIONS, "one of " + ", ".join(map(str, DATASET_VERSIONS))),
                "synth_extra_train": (lambda v: v >= 0, "an integer >= 0"),
                "cache_mb": (lambda v: v >= 0, "an integer >= 0"),
            },
        )
        from p2m_geo.data.factory import dataset_format_names

        if self.format not in ("auto",) + dataset_format_names():
            formats = ", ".join(("auto",) + dataset_format_names())
            raise ConfigError(f"data.format: expected one of {formats}, got {_short(self.format)}")
        if self.on_bad_sample not in ("fail", "skip"):
            raise ConfigError(f"data.on_bad_sample: expected fail or skip, got {_short(self.on_bad_sample)}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.loss.depth > 0 and not self.model.depth_head:
            raise ConfigError(
                f"loss.depth: expected 0 without model.depth_head (the term only trains that head), "
                f"got {self.loss.depth!r}"
            )


def preset_dict(name: str) -> Dict[str, Any]:
    """The sections of preset ``name`` (:data:`p2m_geo.presets.PRESETS`)."""
    if name not in PRESETS:
        raise ConfigError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]


def load_yaml(path: str | Path, cls: Type[T] = Config) -> T:
    """Read a YAML file into ``cls`` with strict keys."""
    return from_dict(cls, read_yaml_dict(path))
