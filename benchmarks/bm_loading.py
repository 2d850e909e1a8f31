"""Time an epoch of the training loader with and without the decoded-view cache (``data.cache_mb``).

Builds the preset's datasets (the default procedural set unless ``--config`` says otherwise) and
iterates the training loader in the training process (workers 0, as ``cpu-quick`` loads), one
epoch after another: without the cache every epoch decodes each view's PNG and ``.dat``; with it
the first epoch decodes and keeps them, later epochs copy the kept tensors. The two loaders run in
turns, ``--rounds`` times; the median of each epoch position is reported, and a checksum of the
batches shows both give the same data.

Usage: python benchmarks/bm_loading.py [--preset cpu-quick] [--config FILE] [--epochs 3] [--rounds 3] [--cache-mb 1024]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, preset_values  # noqa: E402

from p2m_geo.config import Config, from_dict, merge_dicts  # noqa: E402
from p2m_geo.data.factory import build_datasets, make_loader  # noqa: E402
from p2m_geo.runtime import DistributedContext, setup_runtime  # noqa: E402


def epoch_seconds(config: Config, epochs: int) -> Tuple[List[float], List[float]]:
    """Seconds per pass over a fresh training set's loader, and a checksum of each pass's batches."""
    train_set, _ = build_datasets(config, DistributedContext())
    times, checksums = [], []
    for epoch in range(epochs):
        loader = make_loader(
            train_set, config.train.batch_size, True, 0, config.train.seed, epoch, DistributedContext()
        )
        start = time.perf_counter()
        checksum = 0.0
        for number, batch in enumerate(loader):
            checksum += (number + 1) * float(batch.images.double().sum() + batch.target.pos.double().sum())
        times.append(time.perf_counter() - start)
        checksums.append(checksum)
    return times, checksums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-quick")
    parser.add_argument("--config", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-mb", type=int, default=1024)
    args = parser.parse_args()
    setup_runtime()
    values = preset_values(args.preset, args.config)
    cache_sizes = (("decoded every epoch (cache_mb 0)", 0), (f"cached (cache_mb {args.cache_mb})", args.cache_mb))
    variants = {label: from_dict(Config, merge_dicts(values, {"data": {"cache_mb": mb}})) for label, mb in cache_sizes}
    timings = {name: [] for name in variants}
    checksums = set()
    for _ in range(args.rounds):
        for name, config in variants.items():
            times, sums = epoch_seconds(config, args.epochs)
            timings[name].append(times)
            checksums.add(tuple(sums))
    print(machine_description(torch.device("cpu")))
    print(
        f"training loader, batch {values['train']['batch_size']}, in-process; median of {args.rounds} rounds in turns"
    )
    for name, rounds in timings.items():
        medians = [statistics.median(r[e] for r in rounds) for e in range(args.epochs)]
        print(f"{name}: " + ", ".join(f"epoch {e + 1} {m:.2f} s" for e, m in enumerate(medians)))
    print("same batches in every round and variant:", "yes" if len(checksums) == 1 else "NO")


if __name__ == "__main__":
    main()
