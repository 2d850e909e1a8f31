"""Score checkpoints on the real objects with ground truth in ``../shared/data``.

- the real ShapeNet car (R2N2 renderings, converted with ``p2m-geo data convert-r2n2``): 24 views;
- the real ShapeNetP2M biplane (``shapenet_p2m/sample_abcd``): 5 views;
- the six real renderings in ``examples/`` (no GT): mean pairwise CD between predictions.

With ``--aligned``, also the split of each object's error into placement and shape: F@tau and
CD after the best translation, and after translation + uniform scale, of each view's prediction
onto its GT (:func:`p2m_geo.metrics.align_translation_scale`), with the mean translation (along
the camera's z axis: + is towards the camera) and scale found.

For each checkpoint and object: F@tau and CD of the model, of the same model fed a blank
white image, and of the ellipsoid; the image sensitivity over the object's views. Prints a
Markdown table; ``--json`` also writes the numbers.

Usage::

    python benchmarks/real_objects.py NAME=CHECKPOINT [NAME=CHECKPOINT ...] [--aligned] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Dict

import torch

from p2m_geo.camera import default_intrinsics
from p2m_geo.checkpoint import load_checkpoint, model_from_checkpoint
from p2m_geo.data import ShapeNetP2M
from p2m_geo.data.images import load_image
from p2m_geo.data.r2n2 import convert_r2n2
from p2m_geo.data.factory import make_loader
from p2m_geo.runtime import DistributedContext
from p2m_geo.evaluation import BASELINES, evaluate
from p2m_geo.metrics import align_translation_scale, image_sensitivity, reconstruction_metrics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TAU_KEY = "f@0.0001"


def real_object_lists(workdir: Path) -> Dict[str, tuple]:
    """``{object: (data root, file list lines)}`` for the car (converted here) and the biplane."""
    lines = convert_r2n2(SHARED / "r2n2_raw", workdir / "car", synset="02958343")
    biplane = [f"shapenet_p2m/sample_abcd/rendering/{view:02d}.dat" for view in range(5)]
    return {"car": (workdir / "car", lines), "biplane": (SHARED, biplane)}


def score(model, root: Path, lines) -> Dict[str, float]:
    loader = make_loader(ShapeNetP2M(root, lines), 8, False, 0, 0, 0, DistributedContext(), False)
    result = evaluate(model, loader, torch.device("cpu"), "p2m", baselines=BASELINES, quality="none")
    row = {"sensitivity": result.image_sensitivity}
    for method, table in result.tables.items():
        row[f"{method}_f"] = table["mean"][TAU_KEY]
        row[f"{method}_cd"] = table["mean"]["cd"]
    return row


@torch.no_grad()
def placement_split(model, root: Path, lines) -> Dict[str, float]:
    """Mean over views of F@tau / CD as predicted, after translation, after translation + scale."""
    dataset = ShapeNetP2M(root, lines)
    rows = []
    for index in range(len(dataset)):
        sample = dataset[index]
        pred = model(sample["image"][None], sample["intrinsics"][None]).meshes[-1].pos.double()
        gt = sample["points"].double()
        moved = align_translation_scale(pred, gt, fit_scale=False)
        scaled = align_translation_scale(pred, gt)
        row = {}
        for name, points in (("", pred), ("translated_", moved.points), ("scaled_", scaled.points)):
            metrics = reconstruction_metrics(
                points, torch.zeros(len(points), dtype=torch.long), gt, torch.zeros(len(gt), dtype=torch.long)
            )
            row[f"{name}f"], row[f"{name}cd"] = float(metrics[TAU_KEY]), float(metrics["cd"])
        row.update(translation_z=float(moved.translation[2]), translation=float(moved.translation.norm()))
        row.update(scale=float(scaled.scale))
        rows.append(row)
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}


@torch.no_grad()
def examples_spread(model) -> float:
    """Mean pairwise CD (x1000) of the predictions for the real example renderings."""
    paths = sorted((SHARED / "examples").glob("*.png"))
    images = torch.stack([load_image(p) for p in paths])
    meshes = model(images, default_intrinsics(len(paths))).meshes[-1]
    return image_sensitivity(meshes.pos.view(len(paths), -1, 3))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="NAME=PATH")
    parser.add_argument("--aligned", action="store_true", help="also the placement / shape split")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        objects = real_object_lists(Path(workdir))
        for item in args.checkpoints:
            name, _, path = item.partition("=")
            model = model_from_checkpoint(load_checkpoint(path), path).eval()
            results[name] = {obj: score(model, root, lines) for obj, (root, lines) in objects.items()}
            results[name]["examples_spread"] = examples_spread(model)
            if args.aligned:
                for obj, (root, lines) in objects.items():
                    results[name][obj]["aligned"] = placement_split(model, root, lines)
    print("| model | object | F@tau | blank F@tau | ellipsoid F@tau | CD | blank CD | ellipsoid CD | sensitivity |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        for obj in ("car", "biplane"):
            r = rows[obj]
            print(
                f"| {name} | {obj} | {r['model_f']:.1f} | {r['blank_f']:.1f} | {r['ellipsoid_f']:.1f} | "
                f"{r['model_cd']:.2f} | {r['blank_cd']:.2f} | {r['ellipsoid_cd']:.2f} | {r['sensitivity']:.2f} |"
            )
    print()
    for name, rows in results.items():
        print(
            f"{name}: mean pairwise CD between predictions for the {len(list((SHARED / 'examples').glob('*.png')))} "
            f"example renderings: {rows['examples_spread']:.2f}"
        )
    if args.aligned:
        print()
        print("| model | object | F@tau | translated | + scaled | CD | translated | + scaled | |t| | t_z | scale |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, rows in results.items():
            for obj in ("car", "biplane"):
                a = rows[obj]["aligned"]
                print(
                    f"| {name} | {obj} | {a['f']:.1f} | {a['translated_f']:.1f} | {a['scaled_f']:.1f} | {a['cd']:.2f} | "
                    f"{a['translated_cd']:.2f} | {a['scaled_cd']:.2f} | {a['translation']:.4f} | "
                    f"{a['translation_z']:+.4f} | {a['scale']:.3f} |"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
