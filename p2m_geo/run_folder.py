"""What a training run keeps in its folder: the checkpoint layout, metrics.csv, TensorBoard
events and preview pictures."""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from p2m_geo.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from p2m_geo.config import to_dict
from p2m_geo.data.shapenet import collate_samples, spread_indices
from p2m_geo.evaluation import metric_key
from p2m_geo.io_utils import atomic_write_bytes
from p2m_geo.mesh import graph_mesh
from p2m_geo.metrics import F_SCORE_TAU
from p2m_geo.models import Pixel2Mesh
from p2m_geo.plots import write_training_curves
from p2m_geo.training import TrainState, WeightAverage

__all__ = [
    "BEST_METRIC",
    "TrainCheckpoint",
    "preview_indices",
    "write_preview",
    "write_metrics_csv",
    "tensorboard_writer",
    "config_differences",
    "restore_training",
    "write_epoch_outputs",
]

log = logging.getLogger(__name__)
#: validation figure that picks best.pt
BEST_METRIC = metric_key("model", f"f@{F_SCORE_TAU:g}")


@dataclass
class TrainCheckpoint:
    """Everything ``last.pt`` / ``best.pt`` hold: written by :meth:`to_dict` and read back by
    :meth:`from_dict`, so saving and resuming cannot drift apart."""

    config: Dict[str, Any]
    model_config: Dict[str, Any]
    model: Dict[str, torch.Tensor]
    optimizer: Dict[str, Any]
    scheduler: Dict[str, Any]
    train_state: Dict[str, int]
    history: List[Dict[str, float]]
    best_metric: float
    rng: Dict[str, Any]
    metrics: Dict[str, float] = field(default_factory=dict)
    #: the weights being optimised, where ``model`` holds their moving average (``train.ema_decay``)
    train_model: Dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # no deep copy of the tensors

    @classmethod
    def capture(
        cls,
        config,
        model,
        optimizer,
        scheduler,
        state,
        history: List[Dict[str, float]],
        best: float,
        average: Optional[WeightAverage] = None,
    ):
        """The state of a run after an epoch whose metrics are ``history[-1]``; with a weight
        ``average``, ``model`` holds the average (what was validated) and ``train_model`` the
        optimised weights."""
        row = history[-1]
        return cls(
            to_dict(config),
            to_dict(config.model),
            (average.model if average is not None else model).state_dict(),
            optimizer.state_dict(),
            scheduler.state_dict(),
            vars(state).copy(),
            history,
            max(best, row[BEST_METRIC]),
            rng_state(),
            row,
            model.state_dict() if average is not None else {},
        )

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainCheckpoint":
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in values]
        if missing:
            raise ValueError(f"checkpoint: expected a training checkpoint, got none for {missing[0]!r}")
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def preview_indices(dataset_size: int, count: int) -> List[int]:
    """``count`` sample indices evenly spread over a (class-sorted) dataset, so several
    classes show up in the preview."""
    return spread_indices(dataset_size, count)


@torch.no_grad()
def write_preview(model: Pixel2Mesh, dataset, indices: List[int], device: torch.device, path: Path) -> bool:
    """Input image | prediction from the input camera | prediction turned 90 deg, one row per sample.

    Returns False (and writes nothing) where open3d, the CPU renderer, is not installed.
    """
    if importlib.util.find_spec("open3d") is None:
        log.info("open3d is not installed: skipping the preview")
        return False
    from p2m_geo.render import preview_row, write_preview_png

    model.eval()
    batch = collate_samples([dataset[i] for i in indices]).to(device)
    mesh = model(batch.images, batch.intrinsics).meshes[-1]
    rows = []
    for graph in range(len(batch)):
        vertices, faces = graph_mesh(mesh, graph)
        rows.append(preview_row(batch.images[graph], vertices.cpu().double().numpy(), faces.cpu().numpy()))
    write_preview_png(rows, path)
    return True


def write_metrics_csv(path: Path, rows: List[Dict[str, float]]) -> None:
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def config_differences(saved: Dict, current: Dict, prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = sorted(set(saved) | set(current), key=str)
    out: List[str] = []
    for key in keys:
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def restore_training(run_dir: Path, config, model, optimizer, scheduler, average: Optional[WeightAverage] = None):
    """Load ``run_dir/last.pt`` into the model (and its weight ``average``), optimiser,
    scheduler and RNGs; returns ``(TrainState, history, best metric)``. A config that no
    longer fits the weights is named."""

    saved = TrainCheckpoint.from_dict(load_checkpoint(run_dir / "last.pt"))
    try:
        model.load_state_dict(saved.train_model or saved.model, strict=True)
        if average is not None:
            average.model.load_state_dict(saved.model, strict=True)
    except RuntimeError:
        changed = config_differences(saved.config, to_dict(config))
        raise ValueError(
            f"--resume: expected {run_dir / 'config.yaml'} to match last.pt, got changed keys: "
            f"{', '.join(changed[:8]) or 'none (the weights do not fit this model)'}"
        ) from None
    optimizer.load_state_dict(saved.optimizer)
    scheduler.load_state_dict(saved.scheduler)
    set_rng_state(saved.rng)
    state = TrainState(**saved.train_state)
    log.info("resumed %s at epoch %d, step %d", run_dir, state.epoch, state.step)
    return state, list(saved.history), saved.best_metric


def write_epoch_outputs(run_dir: Path, checkpoint: TrainCheckpoint, best: float, board, quiet: bool) -> float:
    """After an epoch: ``best.pt`` (when the epoch's score beats ``best``) and ``last.pt``, then
    ``metrics.csv`` and ``curves.png`` (so they never hold a row that no checkpoint has),
    TensorBoard scalars and the log line. Returns the epoch's score."""

    row, history = checkpoint.metrics, checkpoint.history
    score = row[BEST_METRIC]
    values = checkpoint.to_dict()
    if score > best:
        save_checkpoint(run_dir / "best.pt", values)
    save_checkpoint(run_dir / "last.pt", values)
    write_metrics_csv(run_dir / "metrics.csv", history)
    write_training_curves(history, run_dir / "curves.png")
    if board is not None:
        for key, value in row.items():
            board.add_scalar(key, value, row["epoch"])
    if not quiet:
        log.info(
            "epoch %d: loss %.4f, val CD %.3f (blank image %.3f), F@tau %.2f%% (blank image %.2f%%), "
            "image sensitivity %.2f, %.1f samples/s",
            row["epoch"],
            row.get("train_total", float("nan")),
            row["val_cd"],
            row["val_blank_cd"],
            score,
            row[metric_key("blank", f"f@{F_SCORE_TAU:g}")],
            row.get("val_image_sensitivity", float("nan")),
            row["samples_per_s"],
        )
    return score
