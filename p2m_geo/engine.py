"""Training and evaluation loops (plain functions; tqdm lives here and in the CLI only)."""
from __future__ import annotations

import csv
import importlib.util
import io
import logging
import math
import os
import random
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
from p2m_geo.data.shapenet import ShapeNetP2M, collate_samples
from p2m_geo.io_utils import atomic_path, atomic_write_bytes
from p2m_geo.losses import P2MLoss
from p2m_geo.mesh import graph_mesh
from p2m_geo.metrics import F_SCORE_TAU, reconstruction_metrics, sample_points_on_faces
from p2m_geo.models import Pixel2Mesh

__all__ = [
    "resolve_device", "seed_everything", "default_data_root", "ensure_dataset", "make_loader",
    "build_optimizer", "train_one_epoch", "evaluate", "format_table", "run_training", "TrainingResult", "TrainingStopped",
    "init_distributed", "DistributedContext",
]

log = logging.getLogger(__name__)
METRIC_KEYS = ("cd", f"f@{F_SCORE_TAU:g}", f"f@{2 * F_SCORE_TAU:g}")


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
    path = Path(name)
    return path if path.is_absolute() or path.exists() else root / name


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
                      collate_fn=collate_samples, pin_memory=pin_memory, drop_last=train and len(dataset) > batch_size)


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

    def __init__(self, model: Pixel2Mesh, loss_fn: P2MLoss, amp: bool = False) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.amp = amp

    def forward(self, batch, use_image_branch: bool):
        device_type = batch.images.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.amp):
            output = self.model(batch.images, batch.intrinsics, reconstruct_image=use_image_branch)
        if self.amp:  # losses (nearest neighbours, small squared distances) in float32
            output = output.float()
        return self.loss_fn(output, batch.target, batch.images if use_image_branch else None)


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Adam:
    """Adam with the configured learning rate and weight decay, as one fused kernel over all
    parameters (``fused=True``: fewer passes over the 17.8 M parameters than the
    per-parameter loop, on CPU and GPU alike)."""
    return torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay, fused=True)


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
                    f"training: expected finite losses, got {state.consecutive_bad_steps} non-finite steps in a row "
                    f"(limit {max_bad_steps}); the last good checkpoint is kept"
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


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: Optional[Pixel2Mesh], loader: DataLoader, device: torch.device, protocol: str = "p2m",
             baseline: Optional[Pixel2Mesh] = None, max_samples: int = 0, quiet: bool = True,
             seed: int = 0) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Per-category mean metrics of the model and/or the undeformed-ellipsoid baseline.

    Returns ``{"model": {category: {cd, f@1e-4, f@2e-4, count}}, "ellipsoid": {...}}``;
    each has a ``"mean"`` entry: the unweighted mean over categories.
    """
    if protocol not in ("p2m", "meshrcnn"):
        raise ValueError(f"protocol: expected p2m or meshrcnn, got {protocol!r}")
    generator = torch.Generator(device=device).manual_seed(seed)
    sums: Dict[str, Dict[str, Dict[str, float]]] = {}
    seen = 0
    if model is not None:
        model.eval()
    for batch in tqdm(loader, desc="eval", unit="batch", leave=False, disable=quiet):
        batch = batch.to(device)
        predictions = {}
        if model is not None:
            predictions["model"] = model(batch.images, batch.intrinsics).meshes[-1]
        if baseline is not None:
            predictions["ellipsoid"] = baseline.batched_template(2, len(batch))
        for name, mesh in predictions.items():
            pos, pos_batch = mesh.pos, mesh.batch
            if protocol == "meshrcnn":
                pos, pos_batch = sample_points_on_faces(mesh.pos, mesh.face, mesh.batch, len(batch), 10000, generator)
            values = reconstruction_metrics(pos, pos_batch, batch.target.pos, batch.target.batch, len(batch))
            table = sums.setdefault(name, {})
            for index, category in enumerate(batch.categories):
                entry = table.setdefault(category, {key: 0.0 for key in METRIC_KEYS} | {"count": 0})
                for key in METRIC_KEYS:
                    entry[key] += float(values[key][index])
                entry["count"] += 1
        seen += len(batch)
        if max_samples and seen >= max_samples:
            break
    results = {}
    for name, table in sums.items():
        per_class = {c: {k: v / e["count"] if k != "count" else v for k, v in e.items()} for c, e in sorted(table.items())}
        per_class["mean"] = {k: float(np.mean([e[k] for e in per_class.values()])) for k in METRIC_KEYS}
        per_class["mean"]["count"] = sum(e["count"] for c, e in per_class.items() if c != "mean")
        results[name] = per_class
    return results


def format_table(results: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """Markdown table: one row per category (+ mean), CD and F-scores for each method."""
    methods = list(results)
    header = "| category | n |" + "".join(f" {m} CD | {m} F@τ | {m} F@2τ |" for m in methods)
    lines = [header, "|---|---|" + "---|---|---|" * len(methods)]
    categories = [c for c in results[methods[0]] if c != "mean"] + ["mean"]
    for category in categories:
        row = f"| {category} | {int(results[methods[0]][category]['count'])} |"
        for m in methods:
            e = results[m][category]
            row += f" {e['cd']:.3f} | {e[METRIC_KEYS[1]]:.2f} | {e[METRIC_KEYS[2]]:.2f} |"
        lines.append(row)
    return "\n".join(lines)


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
    """
    import yaml

    ctx = init_distributed(config.train.device)
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
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.train.lr_milestones), config.train.lr_gamma)
    state, history, best = TrainState(), [], -math.inf
    if resume:
        checkpoint = load_checkpoint(run_dir / "last.pt")
        model.load_state_dict(checkpoint["model"], strict=True)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = TrainState(**checkpoint["train_state"])
        history, best = list(checkpoint["history"]), checkpoint["best_metric"]
        set_rng_state(checkpoint["rng"])
        log.info("resumed %s at epoch %d, step %d", run_dir, state.epoch, state.step)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False).encode())
    ctx.barrier()
    if config.train.compile:
        model.compile_submodules()
    trained: nn.Module = ModelWithLoss(model, loss_fn, amp=config.train.amp)
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
    while state.epoch < config.train.epochs:
        if config.train.max_steps and state.step >= config.train.max_steps:
            break
        epoch_start = time.perf_counter()
        use_image = config.model.image_branch and state.epoch < config.train.image_branch_epochs
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
            metrics = evaluate(model, val_loader, device)["model"]["mean"]
            row.update({f"val_{k}": v for k, v in metrics.items() if k != "count"})
            row["epoch_seconds"] = time.perf_counter() - epoch_start
            history.append(row)
            _write_metrics_csv(run_dir / "metrics.csv", history)
            if preview_indices:
                write_preview(model, val_set, preview_indices, device, run_dir / f"preview_epoch{state.epoch:03d}.png")
            score = row[f"val_f@{F_SCORE_TAU:g}"]
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
            if board is not None:
                for key, value in row.items():
                    board.add_scalar(key, value, state.epoch)
            if not quiet:
                log.info("epoch %d: loss %.4f, val CD %.3f, F@tau %.2f%%, %.1f samples/s", state.epoch,
                         row.get("train_total", float("nan")), row["val_cd"], score, row["samples_per_s"])
        last_row = row
        ctx.barrier()
    if board is not None:
        board.close()
    ctx.barrier()
    return TrainingResult(model=model, metrics=last_row)
