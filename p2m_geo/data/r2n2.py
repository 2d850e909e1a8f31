"""Convert raw ShapeNet + R2N2 renderings into the ShapeNetP2M layout."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, List, Optional

import numpy as np

from p2m_geo.data.camera_r2n2 import object_to_camera, read_rendering_metadata
from p2m_geo.data.dat import save_dat
from p2m_geo.io_utils import atomic_path

__all__ = ["find_model_folders", "load_model_normal_xyz", "convert_model", "convert_r2n2"]

log = logging.getLogger(__name__)
SYNSET_PATTERN = re.compile(r"^\d{8}$")


def find_model_folders(source: Path) -> List[Path]:
    """Model folders under ``source`` (itself, its children, or grandchildren) that hold
    ``model_normal.xyz`` and ``rendering/rendering_metadata.txt``."""

    def is_model(folder: Path) -> bool:
        return (folder / "model_normal.xyz").is_file() and (folder / "rendering" / "rendering_metadata.txt").is_file()

    if is_model(source):
        return [source]
    found = sorted(p for p in source.glob("*") if p.is_dir() and is_model(p))
    found += sorted(p for p in source.glob("*/*") if p.is_dir() and is_model(p))
    return found


def load_model_normal_xyz(path: Path) -> np.ndarray:
    """``model_normal.xyz`` rows ``x y z nx ny nz`` -> float32 ``[N,6]``."""
    try:
        array = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise ValueError(f"{path}: expected rows of 6 numbers, got unparsable text ({error})") from None
    if array.ndim != 2 or array.shape[1] != 6 or len(array) == 0:
        raise ValueError(f"{path}: expected rows of 6 numbers, got shape {list(array.shape)}")
    return array.astype(np.float32)


def convert_model(model_dir: Path, out_root: Path, synset: str) -> List[str]:
    """Write ``out_root/<synset>/<model>/rendering/NN.{dat,png}`` + metadata for every view.

    Returns the file-list lines of the written views.
    """
    cloud = load_model_normal_xyz(model_dir / "model_normal.xyz")
    rendering = model_dir / "rendering"
    views = read_rendering_metadata(rendering / "rendering_metadata.txt")
    target = out_root / synset / model_dir.name / "rendering"
    target.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, view in enumerate(views):
        points, normals = object_to_camera(cloud[:, :3], cloud[:, 3:], view)
        save_dat(target / f"{index:02d}.dat", np.concatenate([points, normals], axis=1))
        png = rendering / f"{index:02d}.png"
        if png.is_file():
            with atomic_path(target / png.name) as tmp:
                shutil.copyfile(png, tmp)
        else:
            log.warning("%s: no rendering for view %d", model_dir, index)
        lines.append(f"Data/ShapeNetP2M/{synset}/{model_dir.name}/rendering/{index:02d}.dat")
    with atomic_path(target / "rendering_metadata.txt") as tmp:
        shutil.copyfile(rendering / "rendering_metadata.txt", tmp)
    return lines


def convert_r2n2(
    source: os.PathLike, out_root: os.PathLike, synset: Optional[str] = None, progress: Optional[Iterable] = None
) -> List[str]:
    """Convert every model folder under ``source``; returns the list lines written.

    The synset comes from ``synset`` or from an 8-digit parent folder name.
    """
    source, out_root = Path(source), Path(out_root)
    if not source.is_dir():
        raise ValueError(
            "source: expected a folder of ShapeNet models, got "
            f"{'a file' if source.exists() else 'no such folder'}: {source}"
        )
    models = find_model_folders(source)
    if not models:
        raise ValueError(
            f"source: expected model folders with model_normal.xyz and rendering/, got none under {source}"
        )
    if synset is not None and not SYNSET_PATTERN.match(synset):
        raise ValueError(f"synset: expected 8 digits, got {synset!r}")
    out_root.mkdir(parents=True, exist_ok=True)
    lines: List[str] = []
    for model_dir in progress(models) if progress else models:
        model_synset = synset or model_dir.parent.name
        if not SYNSET_PATTERN.match(model_synset):
            raise ValueError(
                f"synset: expected --synset or an 8-digit synset folder above {model_dir.name}, "
                f"got {model_dir.parent.name!r}"
            )
        lines += convert_model(model_dir, out_root, model_synset)
    return lines
