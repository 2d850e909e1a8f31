"""Models bundled with the package (package data): trained once by the command in their
metadata, stored in half precision, loaded like any checkpoint (``weights_only=True``).

A bundled file is a :mod:`p2m_geo.checkpoint` dict with one more key, ``metadata``: its
``name``, the ``command`` that trained it, the ``data`` it saw, the ``commit`` it was
trained at, the ``date`` and the ``metrics`` measured on the real objects (README).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

__all__ = ["DEFAULT_MODEL", "BundledModel", "bundled_models", "bundled_path", "export_bundled", "load_bundled"]

FOLDER = Path(__file__).resolve().parent
#: The model ``p2m-geo predict`` falls back to.
DEFAULT_MODEL = "lite0-depth-synth3"
METADATA_KEYS = ("name", "command", "data", "commit", "date", "metrics")


@dataclass(frozen=True)
class BundledModel:
    name: str
    path: Path
    metadata: Dict[str, Any]

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6


def bundled_path(name: str = DEFAULT_MODEL) -> Path:
    """The bundled checkpoint called ``name`` (one-line error listing what exists otherwise)."""
    path = FOLDER / f"{name}.pt"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in FOLDER.glob("*.pt"))) or "none"
        raise FileNotFoundError(f"model: expected a bundled model name ({names}), got {name!r}")
    return path


def bundled_models() -> List[BundledModel]:
    """Every bundled model with its metadata, by name."""
    from p2m_geo.checkpoint import load_checkpoint

    return [BundledModel(p.stem, p, dict(load_checkpoint(p).get("metadata", {}))) for p in sorted(FOLDER.glob("*.pt"))]


def export_bundled(
    checkpoint_path: Union[str, os.PathLike], out: Union[str, os.PathLike], metadata: Dict[str, Any], half: bool = True
) -> Path:
    """Write a training checkpoint's model (weights in float16 when ``half``), configs and
    ``metadata`` (all of :data:`METADATA_KEYS`) to ``out`` for bundling; optimiser state and
    RNG states are dropped."""
    from p2m_geo.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise ValueError(f"metadata: expected keys {', '.join(METADATA_KEYS)}, got none for {missing[0]!r}")
    checkpoint = load_checkpoint(checkpoint_path)
    model_from_checkpoint(checkpoint, str(checkpoint_path))  # refuses NaN or mismatched weights

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.half() if half and tensor.is_floating_point() else tensor

    bundled = {key: checkpoint[key] for key in ("model_config", "config") if key in checkpoint}
    bundled["model"] = {name: convert(tensor) for name, tensor in checkpoint["model"].items()}
    bundled["metadata"] = dict(metadata)
    save_checkpoint(out, bundled)
    return Path(out)


def load_bundled(name: Optional[str] = None):
    """``(model, path)`` for a bundled model (float32 weights, eval mode)."""
    from p2m_geo.checkpoint import load_checkpoint, model_from_checkpoint

    path = bundled_path(name or DEFAULT_MODEL)
    return model_from_checkpoint(load_checkpoint(path), str(path)).eval(), path
