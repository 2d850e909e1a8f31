"""What a training run keeps in its folder: the checkpoint layout, metrics.csv, TensorBoard
events and preview pictures."""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List

import torch

from p2m_geo.data.shapenet import collate_samples
from p2m_geo.io_utils import atomic_write_bytes
from p2m_geo.mesh import graph_mesh
from p2m_geo.models import Pixel2Mesh

__all__ = ["TrainCheckpoint", "write_preview", "write_metrics_csv", "tensorboard_writer", "config_differences"]

log = logging.getLogger(__name__)


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

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # no deep copy of the tensors

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainCheckpoint":
        missing = [f.name for f in fields(cls) if f.name not in values and f.name != "metrics"]
        if missing:
            raise ValueError(f"checkpoint: expected a training checkpoint, got none for {missing[0]!r}")
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


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
