"""Time the per-epoch validation of ``p2m-geo train`` against how many views it scores.

Each epoch ``train`` runs :func:`p2m_geo.evaluation.evaluate` on the validation list with the
blank-image baseline, the image sensitivity and the mesh quality of a 24-view subset; with
``train.eval_max_samples: N`` it scores N views spread evenly over the list. This script runs
that call on the default procedural set's validation list for each N, in turns, and prints
the median seconds and the mean F@tau / CD each N reports (the spread subsets' figures track
the full list's).

Usage::

    python benchmarks/bm_validation.py --checkpoint runs/<run>/best.pt [--views 0 130 65] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import Subset

from p2m_geo.checkpoint import load_checkpoint, model_from_checkpoint
from p2m_geo.config import Config, from_dict, merge_dicts, preset_dict
from p2m_geo.data.factory import build_datasets, make_loader
from p2m_geo.data.shapenet import spread_indices
from p2m_geo.evaluation import evaluate
from p2m_geo.runtime import DistributedContext


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--views", type=int, nargs="+", default=[0, 130, 65], help="0: every view")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = model_from_checkpoint(load_checkpoint(args.checkpoint))
    config = from_dict(Config, merge_dicts(preset_dict("cpu-quick"), {"train": {"eval_max_samples": 0}}))
    validation = build_datasets(config)[1]
    subsets = {n: Subset(validation, spread_indices(len(validation), n or len(validation))) for n in args.views}
    seconds = {n: [] for n in args.views}
    figures = {}
    for _ in range(args.repeats):
        for n, subset in subsets.items():
            loader = make_loader(
                subset, config.train.batch_size, False, config.train.workers, 0, 0, DistributedContext()
            )
            start = time.perf_counter()
            row = evaluate(model, loader, torch.device("cpu"), baselines=("blank",), quality="subset").flat()
            seconds[n].append(time.perf_counter() - start)
            figures[n] = (row["val_f@0.0001"], row["val_cd"])
    full = statistics.median(seconds[args.views[0]])
    print(
        f"| views | seconds (median of {args.repeats}) | vs {len(subsets[args.views[0]])} views | F@tau % | CD x1000 |"
    )
    print("|---|---|---|---|---|")
    for n, subset in subsets.items():
        median = statistics.median(seconds[n])
        print(f"| {len(subset)} | {median:.1f} | {median / full:.2f}x | {figures[n][0]:.1f} | {figures[n][1]:.2f} |")


if __name__ == "__main__":
    main()
