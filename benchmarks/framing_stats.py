"""Silhouette area and extent of renderings: the real ones in ``../shared/data`` against
procedural datasets (README, "Framing").

Usage::

    python benchmarks/framing_stats.py NAME=FOLDER [NAME=FOLDER ...]

Each FOLDER is searched for ``*/rendering/*.png`` (ShapeNetP2M layout, any depth); the real
renderings are always the first rows: the R2N2 car (24 views), the ShapeNetP2M biplane (5)
and the six examples. Area: the fraction of the 137 x 137 image covered (alpha > 127);
extent: the longer side of the silhouette's bounding box over the image side.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from p2m_geo.data.synth import silhouette_statistics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PERCENTILES = (0, 10, 50, 90, 100)


def row(name: str, paths) -> str:
    stats = silhouette_statistics(paths)
    cells = [f"{name} ({len(paths)})"]
    for key in ("area", "extent"):
        cells.append(" / ".join(f"{v:.2f}" for v in np.percentile(stats[key], PERCENTILES)))
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    real = (
        sorted((SHARED / "r2n2_raw").glob("*/rendering/*.png"))
        + sorted((SHARED / "shapenet_p2m").glob("*/rendering/*.png"))
        + sorted((SHARED / "examples").glob("*.png"))
    )
    print("| renderings (n) | area: min / p10 / median / p90 / max | extent: min / p10 / median / p90 / max |")
    print("|---|---|---|")
    print(row("real (car, biplane, examples)", real))
    for item in argv:
        name, _, folder = item.partition("=")
        print(row(name, sorted(Path(folder).rglob("rendering/*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
