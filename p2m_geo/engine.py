"""Training and evaluation loops (plain functions; tqdm lives here and in the CLI only)."""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler, Subset
from tqdm import tqdm

from p2m_geo.allocator import keep_freed_cpu_memory
from p2m_geo.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from p2m_geo.config import Config, TrainConfig, to_dict
from p2m_geo.data.shapenet import ShapeNetP2M, collate_samples, subsample_target
from p2m_geo.io_utils import atomic_path, atomic_write_bytes, folder_lock, remove_stale_temp_files
from p2m_geo.losses import P2MLoss
from p2m_geo.mesh import graph_mesh
from p2m_geo.evaluation import evaluate, format_table, metric_key
from p2m_geo.metrics import F_SCORE_TAU
from p2m_geo.models import Pixel2Mesh
from p2m_geo.plots import write_training_curves

__all__ = [
    "resolve_device", "seed_everything", "default_data_root", "ensure_dataset", "make_loader",
    "build_optimizer", "train_one_epoch", "evaluate", "format_table", "run_training", "TrainingResult", "TrainingStopped",
    "init_distributed", "DistributedContext",
]

log = logging.getLogger(__name__)
#: validation figure that picks best.pt
BEST_METRIC = metric_key("model", f"f@{F_SCORE_TAU:g}")


class TrainingStopped(RuntimeError):
    """Raised when training cannot go on (too many consecutive non-finite steps)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: expected an available device, got {name!r} but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_name: str) -> DistributedContext:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1); gloo on CPU, NCCL on GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistributedContext(rank, world_size, local_rank)


# --------------------------------------------------------------------------------- data
def default_data_root(config: Config) -> Path:
    """Cache folder of the procedural dataset for this config (``$P2M_GEO_DATA`` overrides the base)."""
    base = Path(os.environ.get("P2M_GEO_DATA", Path.home() / ".cache" / "p2m-geo" / "data"))
    data = config.data
    return base / f"synth-v1-pc{data.synth_per_class}-views{data.synth_views}-seed{data.synth_seed}"


def ensure_dataset(config: Config, ctx: Optional[DistributedContext] = None, workers: Optional[int] = None,
                   quiet: bool = False) -> Path:
    """The data root: ``config.data.root``, or the procedural dataset, generated once and reused."""
    ctx = ctx or DistributedContext()
    if config.data.root:
        return Path(config.data.root)
    root = default_data_root(config)
    complete = (root / "train_list.txt").is_file() and (root / "test_list.txt").is_file()
    if not complete and ctx.is_main:
        from p2m_geo.data.synth import SynthSpec, generate_dataset

        spec = SynthSpec(per_class=config.data.synth_per_class, views=config.data.synth_views, seed=config.data.synth_seed)
        total = len(spec.categories) * spec.per_class * spec.views
        log.info("generating the procedural dataset (%d views) into %s", total, root)
        with tqdm(total=total, unit="view", desc="synth data", leave=False, disable=quiet) as bar:
            generate_dataset(root, spec, workers=workers or os.cpu_count() or 1, progress=bar.update)
    ctx.barrier()
    return root


def resolve_list(root: Path, name: str) -> Path:
    """A file list named relative to the data root, unless absolute or written ``./...``
    (relative to the working directory): a list that happens to sit in the working
    directory never replaces the data set's own."""
    path = Path(name)
    return path if path.is_absolute() or str(name).startswith("./") else root / name


def make_loader(dataset, batch_size: int, train: bool, workers: int, seed: int, epoch: int,
                ctx: DistributedContext, pin_memory: bool = False) -> DataLoader:
    """Epoch-seeded order (seed + epoch), so a resumed run sees the same batches as an uninterrupted one."""
    if ctx.enabled:
        sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=train, seed=seed, drop_last=train)
        sampler.set_epoch(epoch)
    elif train:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed * 1000003 + epoch))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_samples, pin_memory=pin_memory, drop_last=train and len(dataset) > batch_size,
                      worker_init_fn=_ignore_interrupts if workers else None)


def _ignore_interrupts(_worker_id: int) -> None:
    """Ctrl-C is the main process's to handle: workers stop when it shuts them down,
    without printing tracebacks of their own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ----------------------------------------------------------------------------- training
def _all_finite(value: torch.Tensor, ctx: DistributedContext) -> bool:
    flag = torch.tensor([1.0 if bool(torch.isfinite(value).all()) else 0.0])
    if ctx.enabled:
        flag = flag.to(value.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _gradients_finite(model: nn.Module, ctx: DistributedContext) -> bool:
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())  # one fused (foreach) reduction
    return _all_finite(total, ctx)


class ModelWithLoss(nn.Module):
    """Forward pass plus loss in one module, so DDP sees the loss and finds every used parameter
    (its output search does not look inside PyG ``Batch`` objects)."""

    def __init__(self, model: Pixel2Mesh, loss_fn: P2MLoss, amp: bool = False, gt_points: int = 0) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.amp = amp
        self.gt_points = gt_points

    def forward(self, batch, use_image_branch: bool):
        device_type = batch.images.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.amp):
            output = self.model(batch.images, batch.intrinsics, reconstruct_image=use_image_branch)
        if self.amp:  # losses (nearest neighbours, small squared distances) in float32
            output = output.float()
        target = subsample_target(batch.target, self.gt_points) if self.gt_points else batch.target
        return self.loss_fn(output, target, batch.images if use_image_branch else None)


def parameter_groups(model: Pixel2Mesh, train: TrainConfig) -> List[Dict]:
    """Adam parameter groups: image-convolution weights (``encoder_weight_decay``; the
    encoder and the image decoder), graph-convolution weights (``weight_decay``), and the
    biases and normalisation parameters (no decay), as the original regularised weights only."""
    groups: Dict[str, List[nn.Parameter]] = {"image": [], "graph": [], "none": []}
    for name, parameter in model.named_parameters():
        if parameter.dim() < 2:
            groups["none"].append(parameter)
        elif name.startswith(("encoder.", "image_decoder.")):
            groups["image"].append(parameter)
        else:
            groups["graph"].append(parameter)
    decay = {"image": train.encoder_weight_decay, "graph": train.weight_decay, "none": 0.0}
    return [{"params": params, "weight_decay": decay[key], "name": key} for key, params in groups.items() if params]


def build_optimizer(model: Pixel2Mesh, train: TrainConfig) -> torch.optim.Adam:
    """Adam with the configured learning rate and weight decays (:func:`parameter_groups`), as
    one fused kernel over all parameters (``fused=True``: fewer passes over the 17.8 M
    parameters than the per-parameter loop, on CPU and GPU alike)."""
    return torch.optim.Adam(parameter_groups(model, train), lr=train.lr, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate schedule: ``step`` (x ``lr_gamma`` at ``lr_milestones``) or
    ``cosine`` (from ``lr`` to 0 over ``epochs``)."""
    if train.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(train.lr_milestones), train.lr_gamma)


@dataclass
class TrainState:
    epoch: int = 0
    step: int = 0
    bad_steps_total: int = 0
    consecutive_bad_steps: int = 0


def train_one_epoch(model_with_loss: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, state: TrainState, use_image_branch: bool, max_bad_steps: int,
                    max_steps: int = 0, ctx: Optional[DistributedContext] = None, quiet: bool = False) -> Dict[str, float]:
    """One pass over ``loader``. A step whose loss or gradient is NaN/Inf is skipped and counted;
    ``max_bad_steps`` consecutive ones raise :class:`TrainingStopped`."""
    ctx = ctx or DistributedContext()
    model_with_loss.train()
    sums: Dict[str, float] = {}
    steps = samples = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1}", unit="batch", leave=False, disable=quiet or not ctx.is_main)
    for batch in bar:
        batch = batch.to(device, non_blocking=True)
        total, terms = model_with_loss(batch, use_image_branch)
        optimizer.zero_grad(set_to_none=True)
        finite = _all_finite(total.detach(), ctx)
        if finite:
            total.backward()
            finite = _gradients_finite(model_with_loss, ctx)
        if not finite:
            state.bad_steps_total += 1
            state.consecutive_bad_steps += 1
            log.warning("non-finite loss or gradient at step %d: step skipped (%d in a row)",
                        state.step, state.consecutive_bad_steps)
            if state.consecutive_bad_steps >= max_bad_steps:
                raise TrainingStopped(
                    f"training diverged at step {state.step + 1} (loss/prediction not finite in "
                    f"{state.consecutive_bad_steps} steps in a row); lower --lr; the last good checkpoint is kept"
                )
            continue
        optimizer.step()
        state.consecutive_bad_steps = 0
        state.step += 1
        steps += 1
        samples += len(batch) * ctx.world_size
        sums["total"] = sums.get("total", 0.0) + float(total.detach())
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{float(total.detach()):.4f}", samples_per_s=f"{samples / max(elapsed, 1e-9):.1f}")
        if max_steps and state.step >= max_steps:
            break
    elapsed = time.perf_counter() - start
    stats = {f"train_{k}": v / max(steps, 1) for k, v in sums.items()}
    stats.update(samples_per_s=samples / max(elapsed, 1e-9), train_steps=steps)
    return stats


# ------------------------------------------------------------------------------ previews
@torch.no_grad()
def write_preview(model: Pixel2Mesh, dataset, indices: List[int], device: torch.device, path: Path) -> bool:
    """Input image | prediction from the input camera | prediction turned 90 deg, one row per sample.

    Returns False (and writes nothing) where open3d, the CPU renderer, is not installed.
    """
    if importlib.util.find_spec("open3d") is None:
        log.info("open3d is not installed: skipping the preview")
        return False
    from PIL import Image

    from p2m_geo.render import render_mesh_views, side_by_side

    model.eval()
    batch = collate_samples([dataset[i] for i in indices]).to(device)
    mesh = model(batch.images, batch.intrinsics).meshes[-1]
    rows = []
    for graph in range(len(batch)):
        vertices, faces = graph_mesh(mesh, graph)
        image = (batch.images[graph].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        rows.append([image] + render_mesh_views(vertices.cpu().double().numpy(), faces.cpu().numpy()))
    with atomic_path(path) as tmp:
        Image.fromarray(side_by_side(rows)).save(tmp, format="PNG")
    return True


def _write_metrics_csv(path: Path, rows: List[Dict[str, float]]) -> None:
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


# ----------------------------------------------------------------------------------- run
@dataclass
class TrainingResult:
    model: Pixel2Mesh  #: the trained (unwrapped) model, on every rank
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


def _config_differences(saved: Dict, current: Dict, prefix: str = "") -> List[str]:
    keys = sorted(set(saved) | set(current), key=str)
    out: List[str] = []
    for key in keys:
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _run_training(config: Config, run_dir: Path, resume: bool, quiet: bool, ctx: DistributedContext) -> TrainingResult:
    import yaml
    device = resolve_device(config.train.device)
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    if device.type == "cpu" and config.train.cpu_retain_memory:
        keep_freed_cpu_memory()  # no page faults on every step's large activations
    seed_everything(config.train.seed)

    root = ensure_dataset(config, ctx, quiet=quiet)
    train_set = ShapeNetP2M(root, resolve_list(root, config.data.train_list), on_bad_sample=config.data.on_bad_sample)
    val_set = ShapeNetP2M(root, resolve_list(root, config.data.val_list), on_bad_sample=config.data.on_bad_sample)
    if config.train.eval_max_samples:
        val_set = Subset(val_set, list(range(min(len(val_set), config.train.eval_max_samples))))

    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    model = Pixel2Mesh(config.model).to(device, memory_format=memory_format)
    loss_fn = P2MLoss(config.loss)
    optimizer = build_optimizer(model, config.train)
    scheduler = build_scheduler(optimizer, config.train)
    state, history, best = TrainState(), [], -math.inf
    if resume:
        checkpoint = load_checkpoint(run_dir / "last.pt")
        try:
            model.load_state_dict(checkpoint["model"], strict=True)
        except RuntimeError:
            changed = _config_differences(checkpoint.get("config", {}), to_dict(config))
            raise ValueError(f"--resume: expected {run_dir / 'config.yaml'} to match last.pt, got changed keys: "
                             f"{', '.join(changed[:8]) or 'none (the weights do not fit this model)'}") from None
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = TrainState(**checkpoint["train_state"])
        history, best = list(checkpoint["history"]), checkpoint["best_metric"]
        set_rng_state(checkpoint["rng"])
        log.info("resumed %s at epoch %d, step %d", run_dir, state.epoch, state.step)
    if ctx.is_main:
        atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False).encode())
    ctx.barrier()
    if config.train.compile:
        model.compile_submodules()
    trained: nn.Module = ModelWithLoss(model, loss_fn, amp=config.train.amp, gt_points=config.train.gt_points)
    if ctx.enabled:
        # The image decoder is used in the first epoch(s) only, hence find_unused_parameters.
        trained = nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    board = _tensorboard_writer(run_dir) if ctx.is_main else None
    # evenly spread over the (class-sorted) validation list, so several classes show up
    count = min(config.train.preview_samples, len(val_set))
    preview_indices = sorted({int(i) for i in np.linspace(0, len(val_set) - 1, count)}) if count else []
    pin = device.type == "cuda"

    last_row: Dict[str, float] = history[-1] if history else {}
    ellipsoid_row = {k: v for k, v in last_row.items() if k.startswith("val_ellipsoid_")}
    while state.epoch < config.train.epochs:
        if config.train.max_steps and state.step >= config.train.max_steps:
            break
        epoch_start = time.perf_counter()
        use_image = config.model.image_branch and state.epoch < config.train.image_branch_epochs
        loss_fn.regulariser_scale = config.loss.regulariser_factor(state.epoch)
        loader = make_loader(train_set, config.train.batch_size, True, config.train.workers, config.train.seed,
                             state.epoch, ctx, pin)
        stats = train_one_epoch(trained, loader, optimizer, device, state, use_image,
                                config.train.max_bad_steps, config.train.max_steps, ctx, quiet)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        state.epoch += 1
        row: Dict[str, float] = {"epoch": state.epoch, "step": state.step, "lr": lr, **stats,
                                 "bad_steps": state.bad_steps_total, "image_branch": int(use_image)}
        if ctx.is_main:
            val_loader = make_loader(val_set, config.train.batch_size, False, config.train.workers, 0, 0,
                                     DistributedContext(), pin)
            # the ellipsoid does not change: scored once, then carried over
            baselines = ("blank",) if ellipsoid_row else ("blank", "ellipsoid")
            validation = evaluate(model, val_loader, device, baselines=baselines, quality="subset").flat()
            ellipsoid_row = ellipsoid_row or {k: v for k, v in validation.items() if k.startswith("val_ellipsoid_")}
            row.update(validation | ellipsoid_row)
            row["epoch_seconds"] = time.perf_counter() - epoch_start
            history.append(row)
            score = row[BEST_METRIC]
            checkpoint = {
                "config": to_dict(config), "model_config": to_dict(config.model), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "train_state": vars(state).copy(), "history": history, "best_metric": max(best, score),
                "rng": rng_state(), "metrics": row,
            }
            if score > best:
                best = score
                save_checkpoint(run_dir / "best.pt", checkpoint)
            save_checkpoint(run_dir / "last.pt", checkpoint)
            # after the checkpoint: metrics.csv never holds a row that no checkpoint has
            _write_metrics_csv(run_dir / "metrics.csv", history)
            write_training_curves(history, run_dir / "curves.png")
            if preview_indices:
                write_preview(model, val_set, preview_indices, device, run_dir / f"preview_epoch{state.epoch:03d}.png")
            if board is not None:
                for key, value in row.items():
                    board.add_scalar(key, value, state.epoch)
            if not quiet:
                log.info("epoch %d: loss %.4f, val CD %.3f (blank image %.3f), F@tau %.2f%% (blank image %.2f%%), "
                         "image sensitivity %.2f, %.1f samples/s", state.epoch, row.get("train_total", float("nan")),
                         row["val_cd"], row["val_blank_cd"], score, row[metric_key("blank", f"f@{F_SCORE_TAU:g}")],
                         row.get("val_image_sensitivity", float("nan")), row["samples_per_s"])
        last_row = row
        ctx.barrier()
    if board is not None:
        board.close()
    ctx.barrier()
    return TrainingResult(model=model, metrics=last_row)
