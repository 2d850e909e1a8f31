"""Datasets and loaders from a :class:`~p2m_geo.config.Config`: one factory entry per data
format (``DataConfig.format``), the procedural set's cache, and epoch-seeded loaders."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler, Subset

from p2m_geo.config import Config
from p2m_geo.data.shapenet import ShapeNetP2M, collate_samples, spread_indices
from p2m_geo.runtime import DistributedContext

__all__ = [
    "DATASET_FORMATS",
    "register_dataset_format",
    "dataset_format_names",
    "build_datasets",
    "default_data_root",
    "ensure_procedural_dataset",
    "resolve_list",
    "make_loader",
]

log = logging.getLogger(__name__)

#: ``progress(total)`` returns a callable that takes the number of items just finished
#: (the engine passes a tqdm bar's ``update``; None: no progress display).
ProgressFactory = Optional[Callable[[int], Callable[[int], None]]]
DatasetBuilder = Callable[[Config, DistributedContext, ProgressFactory], Tuple[Dataset, Dataset]]

#: ``DataConfig.format`` -> builder of ``(train, validation)`` datasets.
DATASET_FORMATS: Dict[str, DatasetBuilder] = {}


def register_dataset_format(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator adding a ``builder(config, ctx, progress) -> (train, val)`` to :data:`DATASET_FORMATS`."""

    def add(builder: DatasetBuilder) -> DatasetBuilder:
        DATASET_FORMATS[name] = builder
        return builder

    return add


def dataset_format_names() -> Tuple[str, ...]:
    return tuple(DATASET_FORMATS)


def resolve_list(root: Path, name: str) -> Path:
    """A file list named relative to the data root, unless absolute or written ``./...``
    (relative to the working directory): a list that happens to sit in the working
    directory never replaces the data set's own."""
    path = Path(name)
    return path if path.is_absolute() or str(name).startswith("./") else root / name


def default_data_root(config: Config) -> Path:
    """Cache folder of the procedural dataset for this config (``$P2M_GEO_DATA`` overrides the base)."""
    base = Path(os.environ.get("P2M_GEO_DATA", Path.home() / ".cache" / "p2m-geo" / "data"))
    data = config.data
    name = f"synth-v{data.synth_version}-pc{data.synth_per_class}-views{data.synth_views}-seed{data.synth_seed}"
    return base / (f"{name}-extra{data.synth_extra_train}" if data.synth_extra_train else name)


def ensure_procedural_dataset(
    config: Config,
    ctx: Optional[DistributedContext] = None,
    workers: Optional[int] = None,
    progress: ProgressFactory = None,
) -> Path:
    """The procedural dataset's folder, generated once (by rank 0) and reused."""
    ctx = ctx or DistributedContext()
    root = default_data_root(config)
    complete = (root / "train_list.txt").is_file() and (root / "test_list.txt").is_file()
    if not complete and ctx.is_main:
        from p2m_geo.data.synth import SynthSpec, generate_dataset

        data = config.data
        spec = SynthSpec(
            per_class=data.synth_per_class,
            views=data.synth_views,
            seed=data.synth_seed,
            version=data.synth_version,
            extra_train=data.synth_extra_train,
        )
        total = spec.num_views
        log.info("generating the procedural dataset (%d views) into %s", total, root)
        generate_dataset(
            root, spec, workers=workers or os.cpu_count() or 1, progress=progress(total) if progress else None
        )
    ctx.barrier()
    return root


def _train_and_validation(root: Path, config: Config) -> Tuple[Dataset, Dataset]:
    data = config.data
    cache_bytes = data.cache_mb * 2**20
    train_set = ShapeNetP2M(
        root, resolve_list(root, data.train_list), on_bad_sample=data.on_bad_sample, cache_bytes=cache_bytes
    )
    val_set: Dataset = ShapeNetP2M(
        root, resolve_list(root, data.val_list), on_bad_sample=data.on_bad_sample, cache_bytes=cache_bytes
    )
    if config.train.eval_max_samples:
        val_set = Subset(val_set, spread_indices(len(val_set), config.train.eval_max_samples))
    return train_set, val_set


@register_dataset_format("shapenet_p2m")
def _shapenet_p2m(config: Config, ctx: DistributedContext, progress: ProgressFactory) -> Tuple[Dataset, Dataset]:
    """ShapeNetP2M layout under ``data.root`` (R2N2 renderings + ``.dat`` GT, file lists)."""
    if not config.data.root:
        raise ValueError("data.root: expected the ShapeNetP2M folder for format shapenet_p2m, got none")
    return _train_and_validation(Path(config.data.root), config)


@register_dataset_format("procedural")
def _procedural(config: Config, ctx: DistributedContext, progress: ProgressFactory) -> Tuple[Dataset, Dataset]:
    """The procedural 13-class set (:mod:`p2m_geo.data.synth`), cached under :func:`default_data_root`."""
    return _train_and_validation(ensure_procedural_dataset(config, ctx, progress=progress), config)


def build_datasets(
    config: Config, ctx: Optional[DistributedContext] = None, progress: ProgressFactory = None
) -> Tuple[Dataset, Dataset]:
    """``(train, validation)`` for ``config.data.format``; ``auto`` is ``shapenet_p2m`` when
    ``data.root`` is set, else ``procedural``."""
    name = config.data.format
    if name == "auto":
        name = "shapenet_p2m" if config.data.root else "procedural"
    return DATASET_FORMATS[name](config, ctx or DistributedContext(), progress)


def _ignore_interrupts(_worker_id: int) -> None:
    """Ctrl-C is the main process's to handle: workers stop when it shuts them down,
    without printing tracebacks of their own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(
    dataset,
    batch_size: int,
    train: bool,
    workers: int,
    seed: int,
    epoch: int,
    ctx: DistributedContext,
    pin_memory: bool = False,
) -> DataLoader:
    """Epoch-seeded order (seed + epoch), so a resumed run sees the same batches as an uninterrupted one."""
    if ctx.enabled:
        sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=train, seed=seed, drop_last=train)
        sampler.set_epoch(epoch)
    elif train:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed * 1000003 + epoch))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_samples,
        pin_memory=pin_memory,
        drop_last=train and len(dataset) > batch_size,
        worker_init_fn=_ignore_interrupts if workers else None,
    )
