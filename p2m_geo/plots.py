"""``curves.png``: training losses and validation figures per epoch, the model against its
image-blind baselines (matplotlib, imported lazily; Agg backend, no display needed)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Dict, List

from p2m_geo.evaluation import BASELINES, metric_key
from p2m_geo.io_utils import atomic_path
from p2m_geo.metrics import F_SCORE_TAU

__all__ = ["write_training_curves"]

log = logging.getLogger(__name__)

LOSS_TERMS = ("total", "chamfer", "normal", "edge", "laplacian", "move", "face_normal", "fold", "depth", "image")
VALIDATION_PANELS = (
    ("cd", "validation CD x1000 (lower is better)"),
    (f"f@{F_SCORE_TAU:g}", "validation F@τ % (higher is better)"),
)


def write_training_curves(history: List[Dict[str, float]], path: Path) -> bool:
    """Plot ``metrics.csv`` rows (one per epoch) into ``path``: training loss terms (log
    scale), validation CD and F@τ of the model, the blank-image model and the ellipsoid,
    and the image sensitivity. Returns False (writing nothing) without matplotlib."""
    if not history or importlib.util.find_spec("matplotlib") is None:
        if history:
            log.info("matplotlib is not installed: skipping %s", path)
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 5, figsize=(22, 4), constrained_layout=True)
    for term in LOSS_TERMS:
        values = [row.get(f"train_{term}") for row in history]
        if all(v is not None and v > 0 for v in values):
            axes[0].plot(epochs, values, marker="o", label=term, linewidth=2.5 if term == "total" else 1.2)
    axes[0].set(yscale="log", title="training loss terms (weighted)", xlabel="epoch")
    axes[0].legend(fontsize=8)
    for axis, (metric, title) in zip(axes[1:3], VALIDATION_PANELS):
        for method, style in zip(("model",) + BASELINES, ("-o", "--s", ":^")):
            values = [row.get(metric_key(method, metric)) for row in history]
            if all(v is not None for v in values):
                axis.plot(epochs, values, style, label="blank image" if method == "blank" else method)
        axis.set(title=title, xlabel="epoch")
        axis.legend(fontsize=8)
    sensitivity = [row.get("val_image_sensitivity") for row in history]
    if all(v is not None for v in sensitivity):
        axes[3].plot(epochs, sensitivity, "-o")
    axes[3].set(
        title="image sensitivity: mean pairwise CD x1000\nbetween predictions (0 = image-blind)", xlabel="epoch"
    )
    axes[3].set_ylim(bottom=0)
    for key, label in (
        ("self_intersecting", "self-intersecting faces %"),
        ("roughness", "roughness (mean dihedral °)"),
    ):
        values = [row.get(metric_key("model", key)) for row in history]
        if all(v is not None for v in values):
            axes[4].plot(epochs, values, "-o", label=label)
    normal = [row.get(metric_key("model", "normal_consistency")) for row in history]
    if all(v is not None for v in normal):
        axes[4].plot(epochs, [100 * v for v in normal], "-s", label="normal consistency x100")
    axes[4].set(title="mesh quality (validation subset)", xlabel="epoch")
    axes[4].set_ylim(bottom=0)
    axes[4].legend(fontsize=8)
    for axis in axes:
        axis.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)
    return True
