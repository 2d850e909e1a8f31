"""Checkpoints: plain dicts, written atomically, read with ``weights_only=True`` and strict keys."""

from __future__ import annotations

import errno
import os
import pickle
import random
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import torch

from p2m_geo.config import ModelConfig, from_dict
from p2m_geo.io_utils import atomic_path

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "rng_state",
    "set_rng_state",
]

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_config", "model")


class CheckpointError(ValueError):
    """A checkpoint that is unreadable, unsafe, of another format version or another model."""


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch RNG states as tensors / plain types (``weights_only`` safe)."""
    np_state = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": python_version, "state": list(python_state), "gauss": python_gauss},
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))


def save_checkpoint(path: Union[str, os.PathLike], checkpoint: Dict[str, Any]) -> None:
    """``torch.save`` to a temp file next to ``path``, then ``os.replace`` (never half-written)."""
    checkpoint = {"format_version": FORMAT_VERSION, **checkpoint}
    try:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
    except (OSError, RuntimeError) as error:
        # torch.save reports a full disk as "[enforce fail at inline_container.cc] unexpected pos"
        full = getattr(error, "errno", None) == errno.ENOSPC or "unexpected pos" in str(error)
        reason = "a full disk (ENOSPC)" if full else f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        raise OSError(
            errno.ENOSPC if full else errno.EIO,
            f"checkpoint: expected to write {path}, got {reason}; the earlier checkpoints are kept",
        ) from None


def load_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Load with ``weights_only=True`` (no code runs) and check the format version and keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint: expected a .pt file, got {'a directory' if path.is_dir() else 'no such file'}: {path}"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unpickling error"
        raise CheckpointError(
            f"checkpoint: expected a p2m-geo checkpoint, got an unsafe or foreign file {path} ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as error:
        raise CheckpointError(
            f"checkpoint: expected a p2m-geo checkpoint, got an unreadable file {path} ({type(error).__name__})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint: expected a dict, got {type(checkpoint).__name__} in {path}")
    version = checkpoint.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint: expected format_version {FORMAT_VERSION}, got {version!r} in {path}")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"checkpoint: expected keys {', '.join(REQUIRED_KEYS)}, got none for {missing[0]!r} in {path}"
        )
    return checkpoint


def model_from_checkpoint(checkpoint: Dict[str, Any], path: str = "checkpoint"):
    """Build :class:`~p2m_geo.Pixel2Mesh` from the checkpoint's config and load weights strictly."""
    from p2m_geo.models import Pixel2Mesh

    values = dict(checkpoint["model_config"])
    values.setdefault("last_block_tail", False)  # checkpoints from before the option: no tail
    model_config = from_dict(ModelConfig, values, "model_config")
    # a trunk that started from pretrained weights trained with its BatchNorm statistics frozen
    started_pretrained = model_config.backbone_weights is not None or model_config.pretrained
    model_config.backbone_weights = None  # the checkpoint carries the trained trunk ...
    model_config.pretrained = False  # ... so nothing is loaded before it (nor needs the extra)
    for name, tensor in checkpoint["model"].items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"checkpoint: expected finite weights, got NaN/Inf in {name} of {path}")
    model = Pixel2Mesh(model_config)
    if hasattr(model.encoder, "frozen_batchnorm"):  # ... and keeps them frozen if trained further
        model.encoder.frozen_batchnorm = started_pretrained
    try:
        model.load_state_dict(checkpoint["model"], strict=True)
    except RuntimeError as error:
        detail = str(error).splitlines()[0]
        raise CheckpointError(
            f"checkpoint: expected weights matching its model config, got a mismatch in {path} ({detail})"
        ) from None
    return model
