"""Training-step throughput, FLOPs, MFU and a per-part breakdown.

For each batch size: samples/s of a full training step (forward, P2MLoss, backward,
Adam), FLOPs per sample from ``torch.utils.flop_counter`` and MFU against the fp32
matmul peak measured in the same run. The breakdown comes from ``torch.profiler``
(``record_function`` scopes in the model: encoder, projection, G-ResNet, unpooling;
here: losses, optimiser). Data loading is measured alone on the procedural dataset.

Usage: python benchmarks/bm_train.py [--preset full|cpu-quick|bundled|...] [--config FILE] [--against FILE] [--batch-sizes 1 8 32] [--quick]
       [--amp] [--compile] [--no-channels-last] [--workers N] [--write]
On a GPU: python benchmarks/bm_train.py --device cuda --amp --compile --batch-sizes 1 8 32 64 128 --write
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path
from typing import List

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode
from torch_geometric.data import Batch, Data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, mode_label, preset_values, report, synchronize  # noqa: E402

from p2m_geo.runtime import setup_runtime  # noqa: E402
from p2m_geo.camera import default_intrinsics  # noqa: E402
from p2m_geo.config import Config, from_dict, merge_dicts, read_yaml_dict  # noqa: E402
from p2m_geo.presets import PRESETS  # noqa: E402
from p2m_geo.training import build_optimizer, freeze_parts  # noqa: E402
from p2m_geo.losses import P2MLoss  # noqa: E402
from p2m_geo.models import Pixel2Mesh  # noqa: E402

log = logging.getLogger("bm_train")
#: GT points per view of a ShapeNetP2M rendering: the synthetic batch's size when ``train.gt_points`` is 0
SHAPENET_GT_POINTS = 9000
PARTS = ("p2m.encoder", "p2m.projection", "p2m.gresnet", "p2m.unpooling", "p2m.losses", "p2m.backward", "p2m.optimizer")


def matmul_peak_gflops(device: torch.device, size: int = 2048, repeats: int = 10, trials: int = 5) -> float:
    """Best of ``trials`` timings of ``repeats`` fp32 ``size``-square matrix products."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def synthetic_batch(batch_size: int, device: torch.device, gt_points: int = SHAPENET_GT_POINTS):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, 224, 224, generator=generator)
    target = Batch.from_data_list(
        [
            Data(
                pos=torch.randn(gt_points, 3, generator=generator) * 0.15 + torch.tensor([0.0, 0.0, -0.8]),
                normal=torch.nn.functional.normalize(torch.randn(gt_points, 3, generator=generator), dim=1),
            )
            for _ in range(batch_size)
        ]
    )
    return images.to(device), default_intrinsics(batch_size, device=device), target.to(device)


def count_flops(model: Pixel2Mesh, step) -> int:
    """FLOPs of one step. FlopCounterMode prices a sparse ``mm`` as if it were dense (N x N), so
    the graph aggregations are counted on the plain ``edge_index`` (scatter, which the counter
    does not price: ~2*E*F per aggregation, under 1% here) instead of the CSR ``EdgeIndex``."""
    cached = model._batched

    def plain_edges(level: int, batch_size: int):
        topology, _ = cached(level, batch_size)
        return topology, topology.edge_index

    model._batched = plain_edges
    try:
        with FlopCounterMode(display=False) as counter:
            step()
    finally:
        del model._batched
    return counter.get_total_flops()


def train_step(model, loss_fn, optimizer, images, intrinsics, target, amp: bool = False):
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        output = model(images, intrinsics)
    if amp:
        output = output.float()
    with record_function("p2m.losses"):
        total, _ = loss_fn(output, target)
    optimizer.zero_grad(set_to_none=True)
    with record_function("p2m.backward"):
        total.backward()
    with record_function("p2m.optimizer"):
        optimizer.step()


def build_step(config: Config, batch_size: int, device: torch.device, amp: bool = False, channels_last: bool = True):
    """``(model, step)``: a seeded model as ``p2m-geo train`` builds it and one training step on a
    synthetic batch with ``train.gt_points`` GT points per view (:data:`SHAPENET_GT_POINTS` when 0)."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = freeze_parts(Pixel2Mesh(config.model).to(device, memory_format=memory_format).train(), config.train)
    loss_fn = P2MLoss(config.loss)
    optimizer = build_optimizer(model, config.train)  # what p2m-geo train uses
    images, intrinsics, target = synthetic_batch(batch_size, device, config.train.gt_points or SHAPENET_GT_POINTS)
    return model, lambda: train_step(model, loss_fn, optimizer, images, intrinsics, target, amp)


def interleaved_samples_per_s(configs: List[Config], batch_size: int, device: torch.device, rounds: int) -> List[float]:
    """Samples/s of each config's training step, timed in turns (one step of each per round, the
    median of ``rounds``), so that a machine's changing load hits them alike."""
    steps = [build_step(config, batch_size, device)[1] for config in configs]
    for step in steps:
        step()
        step()
    times: List[List[float]] = [[] for _ in steps]
    for _ in range(rounds):
        for step, seconds in zip(steps, times):
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            seconds.append(time.perf_counter() - start)
    return [batch_size / sorted(seconds)[len(seconds) // 2] for seconds in times]


def measure(
    config: Config,
    batch_size: int,
    device: torch.device,
    steps: int,
    peak: float,
    amp: bool = False,
    compile_model: bool = False,
    channels_last: bool = True,
) -> dict:
    model, step = build_step(config, batch_size, device, amp, channels_last)
    step()
    flops_per_sample = count_flops(model, step) / batch_size  # on the eager model
    compile_seconds = 0.0
    if compile_model:
        start = time.perf_counter()
        model.compile_submodules()
        step()
        step()  # the optimizer's first steps also compile
        synchronize(device)
        compile_seconds = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    with profile(
        activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    ) as prof:
        step()
        synchronize(device)
    events = [e for e in prof.key_averages() if e.key in PARTS]
    totals = {e.key: e.cpu_time_total for e in events}
    if device.type == "cuda" and any(e.device_time_total for e in events):
        totals = {e.key: e.device_time_total for e in events}
    whole = sum(totals.values()) or 1.0
    samples_per_s = batch_size / seconds
    if device.type == "cuda":
        peak_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak_memory_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "batch": batch_size,
        "samples_per_s": samples_per_s,
        "gflop_per_sample": flops_per_sample / 1e9,
        "mfu": flops_per_sample * samples_per_s / (peak * 1e9),
        "breakdown": {k.split(".")[1]: totals.get(k, 0.0) / whole for k in PARTS},
        "peak_memory_gb": peak_memory_gb,
        "compile_seconds": compile_seconds,
    }


def data_loading_rate(config: Config, batch_size: int, workers: int, device: torch.device, batches: int = 10) -> float:
    """Samples/s of the training DataLoader alone (decode, resize, collate; pinned and copied to
    ``device`` when it is a GPU), on the cached procedural dataset."""
    from p2m_geo.data import ShapeNetP2M
    from p2m_geo.data.factory import default_data_root, make_loader
    from p2m_geo.runtime import DistributedContext

    root = default_data_root(config)
    if not (root / "train_list.txt").is_file():
        return float("nan")
    dataset = ShapeNetP2M(root, root / "train_list.txt")
    loader = make_loader(
        dataset, batch_size, True, workers, 0, 0, DistributedContext(), pin_memory=device.type == "cuda"
    )
    iterator = iter(loader)
    next(iterator)
    batches = min(batches, len(loader) - 1)
    start, count = time.perf_counter(), 0
    for _ in range(batches):
        count += len(next(iterator).to(device, non_blocking=True))
    synchronize(device)
    return count / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS))
    parser.add_argument("--config", type=Path, help="YAML merged over the preset, as p2m-geo train --config")
    parser.add_argument(
        "--against",
        type=Path,
        help="only compare: samples/s of the preset (+ --config) and of it with this YAML merged too, "
        "timed in turns at the first batch size; prints the ratio",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="cpu-quick preset, B in {1, 8}, 3 steps (< 1 min)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for the network (MFU still vs fp32 peak)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder and deformation blocks")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="NCHW encoder")
    parser.add_argument(
        "--no-retain-memory",
        dest="retain_memory",
        action="store_false",
        help="CPU: glibc's default allocator behaviour (train.cpu_retain_memory: false)",
    )
    parser.add_argument("--workers", type=int, default=2, help="loader workers for the data-loading measurement")
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.preset, args.batch_sizes, args.steps = "cpu-quick", [1, 8], 3
    # as p2m-geo train does (train.cpu_retain_memory; channels-last is chosen per measurement below)
    device = setup_runtime(args.device, retain_cpu_memory=args.retain_memory).device
    values = preset_values(args.preset, args.config)
    config = from_dict(Config, values)
    if args.against is not None:
        other = from_dict(Config, merge_dicts(values, read_yaml_dict(args.against)))
        batch_size = args.batch_sizes[0]
        base, changed = interleaved_samples_per_s([config, other], batch_size, device, max(args.steps, 5))
        log.info(
            "%s, B = %d: %.2f samples/s; with %s: %.2f samples/s (%.2fx) -- %s",
            args.preset,
            batch_size,
            base,
            args.against,
            changed,
            changed / base,
            machine_description(device),
        )
        return
    peak = matmul_peak_gflops(device)
    memory = "peak allocated GB" if device.type == "cuda" else "max RSS GB (process)"
    rows = [
        f"| B | samples/s | vs B = {min(args.batch_sizes)} | GFLOP/sample | MFU | encoder | projection | G-ResNet | "
        f"unpooling | losses | backward | optimiser | {memory} | per sample MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    results = []
    for batch_size in sorted(args.batch_sizes):
        r = measure(config, batch_size, device, args.steps, peak, args.amp, args.compile, args.channels_last)
        results.append(r)
        b = r["breakdown"]
        rows.append(
            f"| {batch_size} | {r['samples_per_s']:.2f} | {r['samples_per_s'] / results[0]['samples_per_s']:.2f}x | "
            f"{r['gflop_per_sample']:.1f} | {100 * r['mfu']:.1f}% | "
            + " | ".join(
                f"{100 * b[k]:.0f}%"
                for k in ("encoder", "projection", "gresnet", "unpooling", "losses", "backward", "optimizer")
            )
            + f" | {r['peak_memory_gb']:.2f} | {r['peak_memory_gb'] * 1024 / batch_size:.0f} |"
        )
        log.info(rows[-1])
    best = max(results, key=lambda r: r["samples_per_s"])
    loading = data_loading_rate(config, best["batch"], args.workers, device)
    mode = mode_label(
        [
            ("bf16 autocast", args.amp),
            ("torch.compile", args.compile),
            ("channels-last", args.channels_last),
            ("default allocator", device.type == "cpu" and not args.retain_memory),
        ]
    )
    compile_note = (
        f" Compilation took {max(r['compile_seconds'] for r in results):.0f} s (excluded)." if args.compile else ""
    )
    body = (
        f"Machine: {machine_description(device)}\n\nPreset `{args.preset}`{f' + `{args.config}`' if args.config else ''}, {mode}, synthetic inputs "
        f"({config.train.gt_points or SHAPENET_GT_POINTS} GT points per sample); fp32 matmul peak measured in this run: {peak:.0f} GFLOP/s. Breakdown = share of profiled "
        f"{'GPU' if device.type == 'cuda' else 'CPU'} time (forward parts; backward and optimiser as whole phases)."
        f"{compile_note}\n\n"
        + "\n".join(rows)
        + f"\n\nBest: {best['samples_per_s']:.1f} samples/s at B = {best['batch']}. Data loading alone (procedural "
        f"dataset, {args.workers} workers, B = {best['batch']}{', pinned, copied to the GPU' if device.type == 'cuda' else ''}): "
        f"{loading:.0f} samples/s, {loading / best['samples_per_s']:.1f}x the training step.\n"
    )
    report(f"Training step ({args.preset}, {mode}, {device.type})", body, args.write)


if __name__ == "__main__":
    main()
