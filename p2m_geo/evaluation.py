"""Evaluation of a model against its image-blind baselines, per category.

A reconstruction number means something only beside what a model gets without looking at
the image. :func:`evaluate` therefore scores, on the same views and with the same metrics:

- ``model``: the model on the real images;
- ``blank``: the same model fed a blank white image (same camera): what it has learned
  about the data set's mean shape, whatever the input;
- ``ellipsoid``: the undeformed ellipsoid it starts from;

and reports the model's **image sensitivity** (:func:`~p2m_geo.metrics.image_sensitivity`):
the mean pairwise CD between its predictions for different validation images, 0 when it
ignores its input, and the quality of its meshes (:mod:`p2m_geo.mesh_quality`: normal
consistency, % self-intersecting faces, roughness).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import copy
import math

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from p2m_geo.data.shapenet import spread_indices
from p2m_geo.mesh_quality import QUALITY_KEYS, face_adjacency, mesh_quality, smooth_batch
from p2m_geo.metrics import image_sensitivity, meshrcnn_metrics, protocol_metric_keys, reconstruction_metrics

__all__ = ["BASELINES", "Evaluation", "evaluate", "metric_key"]

#: image-blind baselines evaluated beside the model
BASELINES = ("blank", "ellipsoid")
#: how each metric is labelled in tables (units in the header line of the CLI)
QUALITY_MODES = ("all", "subset", "none")
#: predictions kept (spread evenly over the views) for the image-sensitivity figure
SENSITIVITY_SAMPLES = 24

Table = Dict[str, Dict[str, float]]  # category (and "mean") -> metric -> value (+ "count")


def metric_key(method: str, metric: str) -> str:
    """Flat name of one figure, as in ``metrics.csv``: ``val_cd`` (the model), ``val_blank_cd``."""
    return f"val_{metric}" if method == "model" else f"val_{method}_{metric}"


@dataclass
class Evaluation:
    """What :func:`evaluate` returns.

    Attributes:
        protocol: ``p2m`` or ``meshrcnn``.
        tables: ``{method: {category: {metric: mean, "count": n}}}`` for ``model`` and the
            baselines asked for; each has a ``"mean"`` row, the unweighted mean over categories.
        image_sensitivity: mean pairwise CD (x1000) between the model's predictions for up to
            :data:`SENSITIVITY_SAMPLES` different views; None without a model or with one view.
        quality: the model's mesh quality (:data:`~p2m_geo.mesh_quality.QUALITY_KEYS`) per
            category and ``"mean"`` (``quality="all"``), or only ``"mean"`` over a subset of
            views (``"subset"``).
    """

    protocol: str
    tables: Dict[str, Table] = field(default_factory=dict)
    image_sensitivity: Optional[float] = None
    quality: Table = field(default_factory=dict)

    def flat(self) -> Dict[str, float]:
        """The ``mean`` rows, the sensitivity and the number of views scored (``val_views``) as
        ``metric_key`` -> value (for metrics.csv)."""
        row = {
            metric_key(method, k): v
            for method, table in self.tables.items()
            for k, v in table["mean"].items()
            if k != "count"
        }
        if self.image_sensitivity is not None:
            row["val_image_sensitivity"] = self.image_sensitivity
        if "model" in self.tables:
            row["val_views"] = self.tables["model"]["mean"]["count"]
        if "mean" in self.quality:
            row.update({metric_key("model", k): v for k, v in self.quality["mean"].items() if k != "count"})
        return row

    def to_dict(self) -> Dict:
        return {
            "protocol": self.protocol,
            **self.tables,
            "image_sensitivity": self.image_sensitivity,
            "quality": self.quality,
        }


def _blank_image_meshes(model, images: torch.Tensor, intrinsics: torch.Tensor):
    """The model's meshes for blank white images with each view's camera. A blank image gives
    the same mesh for the same camera, so the network runs once per distinct camera."""
    cameras, inverse = torch.unique(intrinsics, dim=0, return_inverse=True)
    unique = model(torch.ones_like(images[: len(cameras)]), cameras).meshes[-1]
    template = model.batched_template(2, len(images))
    mesh = copy.copy(template)
    mesh.pos = unique.pos.view(len(cameras), -1, 3)[inverse].reshape(-1, 3)
    return mesh


def _score(protocol: str, mesh, target, num_graphs: int, generator: torch.Generator) -> Dict[str, torch.Tensor]:
    if protocol == "meshrcnn":
        return meshrcnn_metrics(
            mesh.pos, mesh.face, mesh.batch, target.pos, target.normal, target.batch, num_graphs, generator=generator
        )
    return reconstruction_metrics(mesh.pos, mesh.batch, target.pos, target.batch, num_graphs)


@torch.no_grad()
def evaluate(
    model,
    loader: DataLoader,
    device: torch.device,
    protocol: str = "p2m",
    baselines: Sequence[str] = BASELINES,
    max_samples: int = 0,
    quiet: bool = True,
    seed: int = 0,
    quality: str = "all",
    smooth: int = 0,
) -> Evaluation:
    """Per-category mean metrics of ``model`` and its image-blind ``baselines`` (see the module).

    Args:
        model: a :class:`~p2m_geo.Pixel2Mesh` (put in eval mode here).
        loader: batches from :func:`~p2m_geo.data.collate_samples` (unshuffled).
        protocol: ``p2m`` (predicted vertices, squared distances, τ = 1e-4) or ``meshrcnn``.
        baselines: any of :data:`BASELINES`.
        max_samples: stop after this many views (0: all).
        seed: seeds the surface sampling (``meshrcnn`` protocol, normal consistency).
        quality: mesh-quality metrics of the model for ``all`` views (per category; the
            self-intersection test costs ~0.1 s per mesh), for a ``subset`` of about
            :data:`SENSITIVITY_SAMPLES` views (the mean only: per-epoch validation), or ``none``.
        smooth: Taubin-smooth the model's meshes with this many iterations before scoring them
            (what ``p2m-geo predict --smooth`` does; 0: off).
    """
    if quality not in QUALITY_MODES:
        raise ValueError(f"quality: expected one of {', '.join(QUALITY_MODES)}, got {quality!r}")
    keys = protocol_metric_keys(protocol)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"baselines: expected any of {', '.join(BASELINES)}, got {unknown[0]!r}")
    generator = torch.Generator(device=device).manual_seed(seed)
    total = len(loader.dataset) if not max_samples else min(max_samples, len(loader.dataset))
    kept = set(spread_indices(total, SENSITIVITY_SAMPLES))
    batches = math.ceil(total / loader.batch_size)
    quality_batches = (
        set(range(batches))
        if quality == "all"
        else set()
        if quality == "none"
        else set(spread_indices(batches, math.ceil(SENSITIVITY_SAMPLES / loader.batch_size)))
    )
    sums: Dict[str, Dict[str, Dict[str, float]]] = {}
    quality_sums: Dict[str, Dict[str, float]] = {}
    adjacency: Dict[int, torch.Tensor] = {}
    predictions: List[torch.Tensor] = []
    seen = 0
    model.eval()
    for batch_number, batch in enumerate(tqdm(loader, desc="eval", unit="batch", leave=False, disable=quiet)):
        batch = batch.to(device)
        size = len(batch)
        meshes = {"model": model(batch.images, batch.intrinsics).meshes[-1]}
        if smooth:
            meshes["model"] = smooth_batch(meshes["model"], smooth)
        if "blank" in baselines:
            meshes["blank"] = _blank_image_meshes(model, batch.images, batch.intrinsics)
        if "ellipsoid" in baselines:
            meshes["ellipsoid"] = model.batched_template(2, size)
        per_graph = meshes["model"].pos.view(size, -1, 3)
        predictions += [per_graph[i] for i in range(size) if seen + i in kept]
        for method, mesh in meshes.items():
            values = _score(protocol, mesh, batch.target, size, generator)
            table = sums.setdefault(method, {})
            for index, category in enumerate(batch.categories):
                entry = table.setdefault(category, {key: 0.0 for key in keys} | {"count": 0})
                for key in keys:
                    entry[key] += float(values[key][index])
                entry["count"] += 1
        if batch_number in quality_batches:
            if size not in adjacency:
                adjacency[size] = face_adjacency(meshes["model"].face)
            values = mesh_quality(meshes["model"], batch.target, size, adjacency[size], generator)
            for index, category in enumerate(batch.categories):
                for group in (category, "mean") if quality == "all" else ("mean",):
                    entry = quality_sums.setdefault(group, {key: 0.0 for key in QUALITY_KEYS} | {"count": 0})
                    for key in QUALITY_KEYS:
                        entry[key] += float(values[key][index])
                    entry["count"] += 1
        seen += size
        if max_samples and seen >= max_samples:
            break
    evaluation = Evaluation(protocol)
    for method, table in sums.items():
        per_class = {
            c: {k: v / e["count"] if k != "count" else v for k, v in e.items()} for c, e in sorted(table.items())
        }
        mean = {k: float(np.mean([e[k] for e in per_class.values()])) for k in keys}
        per_class["mean"] = mean | {"count": sum(e["count"] for e in per_class.values())}
        evaluation.tables[method] = per_class
    if len(predictions) >= 2:
        evaluation.image_sensitivity = image_sensitivity(torch.stack(predictions))
    if quality == "all":  # the mean row as the unweighted mean over categories, like the tables
        per_class = {
            c: {k: v / e["count"] if k != "count" else v for k, v in e.items()}
            for c, e in sorted(quality_sums.items())
            if c != "mean"
        }
        if per_class:
            mean = {k: float(np.mean([e[k] for e in per_class.values()])) for k in QUALITY_KEYS}
            per_class["mean"] = mean | {"count": sum(e["count"] for e in per_class.values())}
        evaluation.quality = per_class
    elif quality_sums:
        entry = quality_sums["mean"]
        evaluation.quality = {"mean": {k: v / entry["count"] if k != "count" else v for k, v in entry.items()}}
    return evaluation
