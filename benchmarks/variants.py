"""Training variants of equal budget (same preset, same epochs, same data), side by side.

``run`` trains each variant (in parallel processes where the machine allows; on a GPU
several share the card) and keeps its ``metrics.csv`` and ``best.pt``; ``report`` evaluates
each ``best.pt`` on the validation list (accuracy, the blank-image baseline, image
sensitivity and, with open3d, the mesh-quality metrics) and prints one Markdown table.

    python benchmarks/variants.py run --out variant-runs                # all variants
    python benchmarks/variants.py run --out variant-runs --only base,edge-x3
    python benchmarks/variants.py report variant-runs --data ~/.cache/p2m-geo/data/synth-v1-pc24-views4-seed0

Every variant is the ``cpu-quick`` preset plus the overrides below, so each costs about the
same per training sample (the image branch adds its decoder in epoch 1).

    python benchmarks/variants.py run --out round1 --only base,image-branch,lr-1e-3,...   # README round 1
    python benchmarks/variants.py run --out round2 --epochs 6 --milestones 5 --only base,fnc-1e-3,...
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2m_geo.config import Config, from_dict, merge_dicts, preset_dict  # noqa: E402

#: what the measured rounds shared: all GT points in the loss and no face-normal term (both came later)
_SWEEP = {"loss": {"face_normal": 0.0}, "train": {"gt_points": 0}}
#: round 1 ran on the old default, which had the image branch on
_ROUND1 = merge_dicts(_SWEEP, {"model": {"image_branch": True}})


def _with(base: Dict[str, Any], change: Dict[str, Any]) -> Dict[str, Any]:
    return merge_dicts(base, change)


#: name -> (what it changes, config overrides on top of the preset). README's table comes from
#: round 1 (``run`` with the preset's 8 epochs) and round 2 (``--epochs 6 --milestones 5``).
VARIANTS: Dict[str, Any] = {
    "default": ("the current defaults", {}),
    "base": ("no face-normal term, all GT points, no image branch", _SWEEP),
    "image-branch": ("U-Net image branch in epoch 1", _ROUND1),
    "lr-1e-3": ("image branch, lr 1e-3", _with(_ROUND1, {"train": {"lr": 1e-3}})),
    "lr-2e-4": ("image branch, lr 2e-4", _with(_ROUND1, {"train": {"lr": 2e-4}})),
    "lr-1e-3-cosine": (
        "image branch, lr 1e-3, cosine schedule",
        _with(_ROUND1, {"train": {"lr": 1e-3, "lr_schedule": "cosine"}}),
    ),
    "edge-x3": ("image branch, edge weight x3 (0.3)", _with(_ROUND1, {"loss": {"edge": 0.3}})),
    "edge-x10": ("image branch, edge weight x10 (1.0)", _with(_ROUND1, {"loss": {"edge": 1.0}})),
    "lap-x3": ("image branch, Laplacian weight x3 (1.5)", _with(_ROUND1, {"loss": {"laplacian": 1.5}})),
    "normal-x10": ("image branch, normal weight x10", _with(_ROUND1, {"loss": {"normal": 5.0 / 3000}})),
    "anneal-x10": (
        "image branch, edge + Laplacian x10 in epoch 1, annealed to x1 by epoch 5",
        _with(_ROUND1, {"loss": {"regulariser_start": 10.0, "regulariser_anneal_epochs": 4}}),
    ),
    "tanh-0.1": ("image branch, offsets bounded by 0.1 tanh", _with(_ROUND1, {"model": {"offset_bound": 0.1}})),
    "edge-x3-lap-x3": (
        "image branch, edge x3 + Laplacian x3",
        _with(_ROUND1, {"loss": {"edge": 0.3, "laplacian": 1.5}}),
    ),
    "smooth-anneal-tanh": (
        "image branch, edge x3 + Laplacian x3, x10 annealed, tanh 0.1",
        _with(
            _ROUND1,
            {
                "loss": {"edge": 0.3, "laplacian": 1.5, "regulariser_start": 10.0, "regulariser_anneal_epochs": 4},
                "model": {"offset_bound": 0.1},
            },
        ),
    ),
    "fnc-1e-3": ("adjacent-face normal term 1e-3", _with(_SWEEP, {"loss": {"face_normal": 1e-3}})),
    "fnc-3e-3": ("adjacent-face normal term 3e-3", _with(_SWEEP, {"loss": {"face_normal": 3e-3}})),
    "fnc-1e-2": ("adjacent-face normal term 1e-2", _with(_SWEEP, {"loss": {"face_normal": 1e-2}})),
    "fnc-3e-2": ("adjacent-face normal term 3e-2", _with(_SWEEP, {"loss": {"face_normal": 3e-2}})),
    "fnc-1e-2-lap-x3": (
        "adjacent-face normal term 1e-2, Laplacian x3",
        _with(_SWEEP, {"loss": {"face_normal": 1e-2, "laplacian": 1.5}}),
    ),
}


def variant_config(name: str, preset: str, extra: Dict[str, Any]) -> Config:
    return from_dict(Config, merge_dicts(merge_dicts(preset_dict(preset), VARIANTS[name][1]), extra))


def _train(job) -> str:
    name, preset, extra, out, weights_only = job
    from p2m_geo.checkpoint import load_checkpoint, save_checkpoint
    from p2m_geo.engine import run_training

    torch.set_num_threads(1)
    run_dir = Path(out) / name
    start = time.perf_counter()
    run_training(variant_config(name, preset, extra), run_dir, quiet=True)
    (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    if weights_only:  # keep the weights, drop the optimiser state (smaller to move around)
        best = load_checkpoint(run_dir / "best.pt")
        save_checkpoint(run_dir / "weights.pt", {k: best[k] for k in ("model_config", "model", "config", "metrics")})
        (run_dir / "best.pt").unlink()
        (run_dir / "last.pt").unlink()
    return name


def run(args) -> None:
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--only: expected names from {', '.join(VARIANTS)}, got {unknown[0]!r}")
    extra: Dict[str, Any] = {"train": {"device": args.device, "workers": args.workers}}
    if args.data:
        extra["data"] = {"root": args.data}
    if args.epochs:
        extra["train"]["epochs"] = args.epochs
    if args.milestones:
        extra["train"]["lr_milestones"] = [int(m) for m in args.milestones.split(",")]
    if args.max_steps:
        extra["train"]["max_steps"] = args.max_steps
    jobs = [(n, args.preset, extra, args.out, args.weights_only) for n in names]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    # not multiprocessing.Pool: its daemonic workers could not start DataLoader workers
    with ProcessPoolExecutor(args.parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        for name in pool.map(_train, jobs):
            logging.info("finished %s", name)


def report(args) -> None:
    from torch.utils.data import DataLoader, Subset

    from p2m_geo.checkpoint import load_checkpoint, model_from_checkpoint
    from p2m_geo.data import ShapeNetP2M, collate_samples
    from p2m_geo.data.shapenet import spread_indices
    from p2m_geo.evaluation import evaluate

    rows: List[Dict[str, Any]] = []
    dataset = ShapeNetP2M(args.data, Path(args.data) / "test_list.txt")
    if args.views:  # evenly spread over the class-sorted list, so every class is in
        dataset = Subset(dataset, spread_indices(len(dataset), args.views))
    loader = DataLoader(dataset, batch_size=8, collate_fn=collate_samples)
    for run_dir in sorted(p for p in Path(args.runs).iterdir() if p.is_dir()):
        path = run_dir / "weights.pt" if (run_dir / "weights.pt").is_file() else run_dir / "best.pt"
        if not path.is_file() or run_dir.name not in VARIANTS:
            continue
        model = model_from_checkpoint(load_checkpoint(path), str(path))
        result = evaluate(model, loader, torch.device("cpu"), baselines=("blank",), quality="all")
        mean = result.tables["model"]["mean"] | result.quality["mean"]
        rows.append(
            {
                "variant": run_dir.name,
                "what": VARIANTS[run_dir.name][0],
                **mean,
                "blank_f": result.tables["blank"]["mean"]["f@0.0001"],
                "sensitivity": result.image_sensitivity,
            }
        )
        logging.info("%s: %s", run_dir.name, rows[-1])
    columns = [
        ("F@τ %", "f@0.0001", 1),
        ("CD", "cd", 2),
        ("blank F@τ", "blank_f", 1),
        ("sens.", "sensitivity", 1),
        ("NC", "normal_consistency", 3),
        ("self-int. %", "self_intersecting", 1),
        ("roughness °", "roughness", 1),
    ]
    print("| variant | what | " + " | ".join(c[0] for c in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for row in rows:
        print(
            f"| {row['variant']} | {row['what']} | "
            + " | ".join(f"{row[key]:.{digits}f}" if key in row else "–" for _, key, digits in columns)
            + " |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("run", help="train the variants")
    train.add_argument("--out", required=True)
    train.add_argument("--data", default="", help="ShapeNetP2M-layout root [default: the procedural set]")
    train.add_argument("--preset", default="cpu-quick")
    train.add_argument("--epochs", type=int, default=0, help="[default: the preset's]")
    train.add_argument("--milestones", default="", help="comma-separated lr milestones [default: the preset's]")
    train.add_argument("--max-steps", type=int, default=0, help="stop each run after this many steps (smoke tests)")
    train.add_argument("--only", default="", help="comma-separated variant names")
    train.add_argument("--device", default="auto")
    train.add_argument("--workers", type=int, default=1)
    train.add_argument("--parallel", type=int, default=1, help="variants trained at the same time")
    train.add_argument("--weights-only", action="store_true", help="keep weights.pt instead of best.pt/last.pt")
    train.set_defaults(func=run)
    summary = commands.add_parser("report", help="evaluate the trained variants")
    summary.add_argument("runs")
    summary.add_argument("--data", required=True)
    summary.add_argument("--json", default="")
    summary.add_argument("--views", type=int, default=0, help="evaluate this many views, spread evenly [default: all]")
    summary.set_defaults(func=report)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
