"""Time the training step with and without two CPU fast paths, in turns in one process.

The fast paths: ``nearest_indices(search="auto")`` searching small clouds (at most
``p2m_geo.ops.knn.SMALL_CLOUD_POINTS`` points per graph: the 156 vertices of level 1) by
matrix product instead of KD-tree, and ``GraphProjection`` sampling small maps (at most
``p2m_geo.nn.projection.DENSE_SAMPLING_MAX_CELLS`` cells: cnn18's 7x7 map) by one dense
interpolation-matrix product instead of ``grid_sample``. Both give the same results up to float
rounding (tests). Each round runs one step with both off, one with both on (and each alone with
``--each``); the median of ``--rounds`` is reported.

Usage: python benchmarks/bm_speedups.py [--preset cpu-quick] [--config FILE] [--batch-size 8] [--rounds 15] [--each]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bm_train import build_step  # noqa: E402
from common import machine_description, preset_values  # noqa: E402

import p2m_geo.nn.projection as projection  # noqa: E402
import p2m_geo.ops.knn as knn  # noqa: E402
from p2m_geo.config import Config, from_dict  # noqa: E402
from p2m_geo.runtime import setup_runtime  # noqa: E402

ON = {"knn": knn.SMALL_CLOUD_POINTS, "dense": projection.DENSE_SAMPLING_MAX_CELLS}


def set_paths(knn_on: bool, dense_on: bool) -> None:
    knn.SMALL_CLOUD_POINTS = ON["knn"] if knn_on else 0
    projection.DENSE_SAMPLING_MAX_CELLS = ON["dense"] if dense_on else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-quick")
    parser.add_argument("--config", default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--each", action="store_true", help="also time each fast path alone")
    args = parser.parse_args()
    setup_runtime()
    values = preset_values(args.preset, args.config)
    config = from_dict(Config, values)
    _, step = build_step(config, args.batch_size, torch.device("cpu"))
    variants = {"both off": (False, False), "both on": (True, True)}
    if args.each:
        variants.update({"matmul search only": (True, False), "dense sampling only": (False, True)})
    for knn_on, dense_on in variants.values():  # warm-up
        set_paths(knn_on, dense_on)
        step()
        step()
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (knn_on, dense_on) in variants.items():
            set_paths(knn_on, dense_on)
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    print(machine_description(torch.device("cpu")))
    print(
        f"preset {args.preset}{' + ' + args.config if args.config else ''}, batch {args.batch_size}, median of {args.rounds} steps in turns"
    )
    base = sorted(times["both off"])[args.rounds // 2]
    for name, seconds in times.items():
        median = sorted(seconds)[args.rounds // 2]
        print(
            f"{name:22s} {1000 * median:7.1f} ms/step  {args.batch_size / median:6.2f} samples/s  {base / median:5.3f}x"
        )


if __name__ == "__main__":
    main()
