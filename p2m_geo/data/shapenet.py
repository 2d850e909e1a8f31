"""ShapeNetP2M dataset (the Pixel2Mesh layout) and its batch collation."""

from __future__ import annotations

import copy
import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_geometric.data import Batch, Data

from p2m_geo.camera import default_intrinsics
from p2m_geo.data.dat import DatFileError, load_dat
from p2m_geo.data.images import ImageFileError, load_image

__all__ = [
    "SYNSET_TO_CATEGORY",
    "CATEGORY_TO_SYNSET",
    "SampleRef",
    "FileListError",
    "read_file_list",
    "spread_indices",
    "subsample_target",
    "mirror_left_right",
    "ShapeNetP2M",
    "SampleBatch",
    "collate_samples",
]

log = logging.getLogger(__name__)

#: The 13 ShapeNet classes of Pixel2Mesh.
SYNSET_TO_CATEGORY: Dict[str, str] = {
    "02691156": "airplane",
    "02828884": "bench",
    "02933112": "cabinet",
    "02958343": "car",
    "03001627": "chair",
    "03211117": "display",
    "03636649": "lamp",
    "03691459": "loudspeaker",
    "04090263": "rifle",
    "04256520": "sofa",
    "04379243": "table",
    "04401088": "telephone",
    "04530566": "watercraft",
}
CATEGORY_TO_SYNSET = {name: synset for synset, name in SYNSET_TO_CATEGORY.items()}
LIST_PREFIX = "Data/ShapeNetP2M/"


class FileListError(ValueError):
    """A file list that is empty, malformed or names files that do not exist."""


@dataclass(frozen=True)
class SampleRef:
    """One line of a file list: ``<synset>/<model>/rendering/<view>.dat``."""

    synset: str
    model: str
    view: str
    line: int

    @property
    def relative_dat(self) -> str:
        return f"{self.synset}/{self.model}/rendering/{self.view}.dat"

    @property
    def name(self) -> str:
        return f"{self.synset}/{self.model}/{self.view}"

    @property
    def category(self) -> str:
        return SYNSET_TO_CATEGORY.get(self.synset, self.synset)


def _parse_line(text: str, number: int, source: str) -> SampleRef:
    relative = text[len(LIST_PREFIX) :] if text.startswith(LIST_PREFIX) else text
    parts = relative.split("/")
    if any(part in (".", "..") or "\\" in part for part in parts):
        raise FileListError(f"{source}:{number}: expected a path inside the data root, got {text[:200]!r}")
    if len(parts) != 4 or parts[2] != "rendering" or not parts[3].endswith(".dat") or not all(parts):
        raise FileListError(
            f"{source}:{number}: expected '[Data/ShapeNetP2M/]<synset>/<model>/rendering/<view>.dat', got {text!r}"
        )
    return SampleRef(parts[0], parts[1], parts[3][: -len(".dat")], number)


def read_file_list(file_list: Union[str, os.PathLike, Sequence[str]]) -> List[SampleRef]:
    """Parse a file list (text file, ``.gz`` text file, or a sequence of lines).

    Blank lines and ``#`` comments are skipped; the ``Data/ShapeNetP2M/`` prefix is optional.
    """
    if isinstance(file_list, (str, os.PathLike)):
        source = str(file_list)
        path = Path(file_list)
        if not path.is_file():
            raise FileListError(
                f"file list: expected a text file, got {'a directory' if path.is_dir() else 'no such file'}: {source}"
            )
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rt", encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except (OSError, UnicodeDecodeError, EOFError) as error:
            raise FileListError(f"file list: expected UTF-8 text, got an unreadable file {source} ({error})") from None
    else:
        source, lines = "<list>", list(file_list)
    refs = [
        _parse_line(line.strip(), number, source)
        for number, line in enumerate(lines, start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not refs:
        raise FileListError(f"file list: expected at least one sample line, got none in {source}")
    return refs


def _with_copied_tensors(sample: Dict[str, object]) -> Dict[str, object]:
    """The sample with a copy of each tensor (so neither a caller nor the cache sees the other's changes)."""
    return {key: value.clone() if isinstance(value, Tensor) else value for key, value in sample.items()}


class ShapeNetP2M(Dataset):
    """ShapeNetP2M views: R2N2 rendering + camera-frame GT points and normals.

    Args:
        root: folder holding ``<synset>/<model>/rendering/<view>.{dat,png}`` (the
            ``Data/ShapeNetP2M`` folder of the official release, or a generated one).
        file_list: list file or lines (see :func:`read_file_list`).
        image_size: network input side (224).
        on_bad_sample: ``'fail'`` raises on an unreadable sample naming the file;
            ``'skip'`` logs it and returns the next readable sample instead.
        cache_bytes: keep decoded samples in memory until their tensors take this many bytes
            (0: none); later reads of a kept sample return copies of its tensors instead of
            decoding the files again. Each process that loads keeps its own (a DataLoader worker's
            goes with the worker at the end of its epoch).

    Each item is a dict: ``image [3,224,224]`` in [0,1], ``points [N,3]``,
    ``normals [N,3]``, ``intrinsics [3,3]``, ``synset``, ``category``, ``name``.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        file_list: Union[str, os.PathLike, Sequence[str]],
        image_size: int = 224,
        on_bad_sample: str = "fail",
        check_files: bool = True,
        cache_bytes: int = 0,
    ) -> None:
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes: expected an integer >= 0, got {cache_bytes!r}")
        if on_bad_sample not in ("fail", "skip"):
            raise ValueError(f"on_bad_sample: expected 'fail' or 'skip', got {on_bad_sample!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileListError(
                f"data root: expected a folder, got {'a file' if self.root.exists() else 'no such folder'}: {root}"
            )
        self.samples = read_file_list(file_list)
        self.image_size = image_size
        self.on_bad_sample = on_bad_sample
        self.intrinsics = default_intrinsics(1)[0]
        self.cache_bytes = cache_bytes
        self._cache: Dict[int, Dict[str, object]] = {}
        self._cached_bytes = 0
        if check_files:
            for ref in self.samples:
                for suffix in (".dat", ".png"):
                    path = self.root / ref.relative_dat.replace(".dat", suffix)
                    if not path.is_file():
                        raise FileListError(f"file list line {ref.line}: expected {path} to exist, got no such file")

    def __len__(self) -> int:
        return len(self.samples)

    def paths(self, index: int):
        ref = self.samples[index]
        dat = self.root / ref.relative_dat
        return dat, dat.with_suffix(".png")

    def _load(self, index: int) -> Dict[str, object]:
        kept = self._cache.get(index)
        if kept is not None:
            return _with_copied_tensors(kept)
        sample = self._decode(index)
        size = sum(value.numel() * value.element_size() for value in sample.values() if isinstance(value, Tensor))
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[index] = _with_copied_tensors(sample)
            self._cached_bytes += size
        return sample

    def _decode(self, index: int) -> Dict[str, object]:
        ref = self.samples[index]
        dat_path, png_path = self.paths(index)
        points = torch.from_numpy(load_dat(dat_path))
        return {
            "image": load_image(png_path, self.image_size),
            "points": points[:, :3].contiguous(),
            "normals": points[:, 3:].contiguous(),
            "intrinsics": self.intrinsics.clone(),
            "synset": ref.synset,
            "category": ref.category,
            "name": ref.name,
        }

    def __getitem__(self, index: int) -> Dict[str, object]:
        for attempt in range(len(self)):
            current = (index + attempt) % len(self)
            try:
                return self._load(current)
            except (DatFileError, ImageFileError) as error:
                if self.on_bad_sample == "fail":
                    raise
                log.warning("skipping bad sample (line %d): %s", self.samples[current].line, error)
        raise FileListError("dataset: every sample failed to load")


@dataclass
class SampleBatch:
    """A collated batch: images, per-image cameras and the GT clouds as a PyG ``Batch``."""

    images: Tensor  # [B,3,H,W]
    intrinsics: Tensor  # [B,3,3]
    target: Batch  # pos [M,3], normal [M,3], batch [M]
    categories: List[str]
    names: List[str]

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "SampleBatch":
        return SampleBatch(
            self.images.to(device, non_blocking=non_blocking),
            self.intrinsics.to(device, non_blocking=non_blocking),
            self.target.to(device, non_blocking=non_blocking),
            self.categories,
            self.names,
        )

    def pin_memory(self) -> "SampleBatch":
        return SampleBatch(
            self.images.pin_memory(),
            self.intrinsics.pin_memory(),
            self.target.pin_memory(),
            self.categories,
            self.names,
        )

    def __len__(self) -> int:
        return self.images.size(0)


def spread_indices(size: int, count: int) -> List[int]:
    """``min(count, size)`` distinct indices evenly spread over ``range(size)``, first and last
    included: on a class-sorted file list every class keeps its share of the views."""
    count = min(count, size)
    return np.linspace(0, size - 1, count).round().astype(int).tolist() if count else []


def subsample_target(target: Batch, count: int, generator: Optional[torch.Generator] = None) -> Batch:
    """At most ``count`` GT points per graph, drawn uniformly without replacement (all of a
    graph's points where it has fewer), keeping ``pos``, ``normal`` and the graph order.

    Training on a fresh random subset each step keeps the GT -> prediction chamfer term an
    unbiased estimate while the nearest-neighbour searches, most of a CPU step, shrink
    with the cloud."""
    keys = target.batch.to(torch.float64) + torch.rand(
        target.batch.shape, generator=generator, dtype=torch.float64, device=target.batch.device
    )
    order = torch.argsort(keys)  # grouped by graph, random within each
    graph = target.batch[order]
    rank = torch.arange(order.numel(), device=order.device) - target.ptr[graph]
    chosen = order[rank < count].sort().values  # the original point order within each graph
    return Batch(
        pos=target.pos[chosen],
        normal=target.normal[chosen],
        batch=target.batch[chosen],
        ptr=torch.cat(
            [target.ptr.new_zeros(1), torch.bincount(target.batch[chosen], minlength=target.num_graphs).cumsum(0)]
        ),
    )


def mirror_left_right(batch: SampleBatch, mirrored: Tensor) -> SampleBatch:
    r"""Mirror the views where ``mirrored`` is True left to right: the image's columns reversed,
    the GT cloud's :math:`x` (points and normals) negated, the camera's principal point moved to
    :math:`c_x' = W - 1 - c_x`.

    With the pinhole :math:`u = f X / (-Z) + c_x` and pixel :math:`u` of a :math:`W`-wide image
    going to :math:`W - 1 - u`, the mirrored image is exactly the rendering of the mirrored
    shape (:math:`X \to -X`) by the mirrored camera (ShapeNet's :math:`c_x = 111.5` on 224 px
    stays where it is), so a mirrored view is a new, consistent training sample.

    Args:
        batch: a collated batch (unchanged; a new one is returned).
        mirrored: ``[B]`` bool, which views to mirror.
    """
    if mirrored.shape != (len(batch),):
        raise ValueError(f"mirrored: expected a [{len(batch)}] bool tensor, got shape {tuple(mirrored.shape)}")
    mirrored = mirrored.to(batch.images.device)
    width = batch.images.size(-1)
    images = torch.where(mirrored.view(-1, 1, 1, 1), batch.images.flip(-1), batch.images)
    intrinsics = batch.intrinsics.clone()
    intrinsics[mirrored, 0, 2] = (width - 1) - intrinsics[mirrored, 0, 2]
    sign = torch.ones(3, dtype=batch.target.pos.dtype, device=batch.target.pos.device)
    sign[0] = -1.0
    per_point = torch.where(mirrored[batch.target.batch].unsqueeze(1), sign, torch.ones_like(sign))
    target = copy.copy(batch.target)
    target.pos = batch.target.pos * per_point
    target.normal = batch.target.normal * per_point
    return SampleBatch(images, intrinsics, target, batch.categories, batch.names)


def collate_samples(items: Sequence[Dict[str, object]]) -> SampleBatch:
    """Collate dataset items (clouds of different sizes) into a :class:`SampleBatch`."""
    target = Batch.from_data_list([Data(pos=item["points"], normal=item["normals"]) for item in items])
    return SampleBatch(
        images=torch.stack([item["image"] for item in items]),
        intrinsics=torch.stack([item["intrinsics"] for item in items]),
        target=target,
        categories=[item["category"] for item in items],
        names=[item["name"] for item in items],
    )
