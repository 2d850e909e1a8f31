"""Training orchestration: the run folder, resume, per-epoch validation, checkpoints, metrics,
curves and previews. The pieces live in :mod:`p2m_geo.runtime` (device, distributed, seeding),
:mod:`p2m_geo.data.factory` (datasets by format, loaders) and :mod:`p2m_geo.training`
(step and epoch loops)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

from torch import nn
from tqdm import tqdm

from p2m_geo.config import Config, to_dict
from p2m_geo.data.factory import build_datasets, make_loader
from p2m_geo.evaluation import evaluate
from p2m_geo.io_utils import atomic_write_bytes, folder_lock, remove_stale_temp_files
from p2m_geo.losses import P2MLoss
from p2m_geo.models import Pixel2Mesh
from p2m_geo import run_folder
from p2m_geo.run_folder import BEST_METRIC, TrainCheckpoint
from p2m_geo.runtime import DistributedContext, init_distributed, setup_training_runtime
from p2m_geo.training import (
    ModelWithLoss,
    TrainingStopped,
    TrainState,
    WeightAverage,
    build_optimizer,
    build_scheduler,
    freeze_parts,
    scheduler_interval,
    train_one_epoch,
)

__all__ = ["run_training", "TrainingResult", "TrainingStopped", "TrainCheckpoint", "BEST_METRIC"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- run
@dataclass
class TrainingResult:
    model: Pixel2Mesh  #: the trained (unwrapped) model, on every rank; its weight average with train.ema_decay
    metrics: Dict[str, float]  #: the last epoch's metrics row (rank 0; training stats elsewhere)


def run_training(config: Config, run_dir: Path, resume: bool = False, quiet: bool = False) -> TrainingResult:
    """Train (or resume, from ``run_dir/last.pt``) and evaluate each epoch.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank trains its shard through DDP and
    rank 0 alone evaluates and writes the run folder; checkpoints hold unwrapped weights.
    Rank 0 holds the run folder's lock (:func:`~p2m_geo.io_utils.folder_lock`) throughout, so
    two trainings never write into one folder, and first removes temp files a killed
    run left behind.
    """
    ctx = init_distributed(config.train.device)
    with contextlib.ExitStack() as stack:
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(folder_lock(run_dir))
            if remove_stale_temp_files(run_dir):
                log.info("removed temp files a killed run left in %s", run_dir)
        return _run_training(config, run_dir, resume, quiet, ctx)


def _after_step_hook(average, model, scheduler):
    """What runs after each optimiser step: the weight average's update and a per-step
    learning-rate schedule's step (each when given); ``None`` when neither is."""
    if average is None and scheduler is None:
        return None

    def hook(step: int) -> None:
        if average is not None:
            average.update(model, step)
        if scheduler is not None:
            scheduler.step()

    return hook


def _progress(quiet: bool):
    """A tqdm bar factory for dataset generation (None when quiet)."""
    if quiet:
        return None
    return lambda total: tqdm(total=total, unit="view", desc="synth data", leave=False).update


def _run_training(config: Config, run_dir: Path, resume: bool, quiet: bool, ctx: DistributedContext) -> TrainingResult:
    import yaml

    train = config.train
    runtime = setup_training_runtime(train, ctx)
    device = runtime.device
    train_set, val_set = build_datasets(config, ctx, _progress(quiet or not ctx.is_main))
    model = freeze_parts(runtime.place(Pixel2Mesh(config.model)), train)
    loss_fn = P2MLoss(config.loss)
    optimizer = build_optimizer(model, config.train)
    steps_per_epoch = len(make_loader(train_set, train.batch_size, True, 0, train.seed, 0, ctx))
    scheduler = build_scheduler(optimizer, config.train, steps_per_epoch)
    per_step_schedule = scheduler_interval(config.train) == "step"
    average = WeightAverage(model, train.ema_decay) if train.ema_decay else None
    validated = average.model if average is not None else model  # what is validated, previewed, saved
    state, history, best = TrainState(), [], -math.inf
    if resume:
        state, history, best = run_folder.restore_training(run_dir, config, model, optimizer, scheduler, average)
    if ctx.is_main:
        atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False).encode())
    ctx.barrier()
    if config.train.compile:
        model.compile_submodules()
    trained: nn.Module = ModelWithLoss(
        model,
        loss_fn,
        amp=config.train.amp,
        gt_points=config.train.gt_points,
        mirror_probability=config.train.mirror_probability,
    )
    if ctx.enabled:
        # The image decoder is used in the first epoch(s) only, hence find_unused_parameters.
        trained = nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    board = run_folder.tensorboard_writer(run_dir) if ctx.is_main else None
    preview_indices = run_folder.preview_indices(len(val_set), config.train.preview_samples)
    pin = device.type == "cuda"

    last_row: Dict[str, float] = history[-1] if history else {}
    ellipsoid_row = {k: v for k, v in last_row.items() if k.startswith("val_ellipsoid_")}
    while state.epoch < config.train.epochs:
        if config.train.max_steps and state.step >= config.train.max_steps:
            break
        epoch_start = time.perf_counter()
        use_image = config.model.image_branch and state.epoch < config.train.image_branch_epochs
        loss_fn.regulariser_scale = config.loss.regulariser_factor(state.epoch)
        loader = make_loader(
            train_set, config.train.batch_size, True, config.train.workers, config.train.seed, state.epoch, ctx, pin
        )
        hook = _after_step_hook(average, model, scheduler if per_step_schedule else None)
        stats = train_one_epoch(
            trained, loader, optimizer, device, state, use_image, train.max_bad_steps, train.max_steps, ctx, quiet, hook
        )
        lr = optimizer.param_groups[0]["lr"]
        if not per_step_schedule:
            scheduler.step()
        state.epoch += 1
        row: Dict[str, float] = {"epoch": state.epoch, "step": state.step, "lr": lr, **stats}
        row.update(bad_steps=state.bad_steps_total, image_branch=int(use_image))
        if ctx.is_main:
            val_loader = make_loader(
                val_set, config.train.batch_size, False, config.train.workers, 0, 0, DistributedContext(), pin
            )
            # the ellipsoid does not change: scored once, then carried over
            baselines = ("blank",) if ellipsoid_row else ("blank", "ellipsoid")
            validation = evaluate(validated, val_loader, device, baselines=baselines, quality="subset").flat()
            ellipsoid_row = ellipsoid_row or {k: v for k, v in validation.items() if k.startswith("val_ellipsoid_")}
            row.update(validation | ellipsoid_row)
            row["epoch_seconds"] = time.perf_counter() - epoch_start
            history.append(row)
            checkpoint = TrainCheckpoint.capture(config, model, optimizer, scheduler, state, history, best, average)
            best = max(best, run_folder.write_epoch_outputs(run_dir, checkpoint, best, board, quiet))
            if preview_indices:
                preview = run_dir / f"preview_epoch{state.epoch:03d}.png"
                run_folder.write_preview(validated, val_set, preview_indices, device, preview)
        last_row = row
        ctx.barrier()
    if board is not None:
        board.close()
    ctx.barrier()
    return TrainingResult(model=validated, metrics=last_row)
