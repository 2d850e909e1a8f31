"""Pack a ShapeNetP2M-layout dataset into one small ``.npz`` to carry to a GPU machine, and unpack it.

The lent GPU machines take at most 64 MiB of working tree and have no open3d to generate the
procedural set; the default set is 388 MB, nearly all of it GT ``.dat`` clouds (9000 points x 6
float32 per view). The views of one shape share one cloud moved rigidly, so a pack keeps view 0's
cloud in float16 (within 5e-4 of float32 on the procedural shapes, 1/20 of the F-score threshold's
distance, 1e-2) and, per view, the rigid map from view 0 (a 3 x 4 matrix fitted by Kabsch in
float64); renderings, metadata and file lists are copied byte for byte. The default set packs
to 21 MB. Figures measured on an unpacked set are close to, not equal to, those on the original
(README, round 15).

Usage: python benchmarks/pack_dataset.py pack ROOT OUT.npz
       python benchmarks/pack_dataset.py unpack OUT.npz ROOT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2m_geo.data.dat import load_dat, save_dat  # noqa: E402

LISTS = ("train_list.txt", "test_list.txt")
PREFIX = Path("Data/ShapeNetP2M")


def rigid_fit(source: np.ndarray, target: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    r"""Rotation :math:`R` and translation :math:`t` minimising :math:`\sum_i \lVert R s_i + t - t_i\rVert^2`
    (Kabsch, no reflection).

    Shapes:
        source, target: ``[N, 3]`` corresponding points; returns ``R [3, 3]``, ``t [3]``.
    """
    source_mean, target_mean = source.mean(0), target.mean(0)
    u, _, vt = np.linalg.svd((source - source_mean).T @ (target - target_mean))
    sign = np.sign(np.linalg.det(vt.T @ u.T))
    rotation = vt.T @ np.diag([1.0, 1.0, sign]) @ u.T
    return rotation, target_mean - rotation @ source_mean


def model_folders(root: Path) -> List[str]:
    """The ``synset/model`` folders named by the file lists, sorted."""
    models = set()
    for name in LISTS:
        for line in (root / name).read_text().splitlines():
            if line.strip():
                models.add(str(Path(line.strip()).parent.parent.relative_to(PREFIX)))
    return sorted(models)


def pack(root: Path, out: Path) -> float:
    """Write ``out`` (npz) for the dataset at ``root``; returns the largest rigid-fit error."""
    arrays: Dict[str, np.ndarray] = {}
    models = model_folders(root)
    worst = 0.0
    for index, model in enumerate(models):
        folder = root / model / "rendering"
        clouds = [load_dat(path).astype(np.float64) for path in sorted(folder.glob("*.dat"))]
        maps = []
        for cloud in clouds:
            rotation, translation = rigid_fit(clouds[0][:, :3], cloud[:, :3])
            worst = max(worst, float(np.abs(clouds[0][:, :3] @ rotation.T + translation - cloud[:, :3]).max()))
            maps.append(np.concatenate([rotation, translation[:, None]], axis=1))
        arrays[f"{index}/cloud"] = clouds[0].astype(np.float16)
        arrays[f"{index}/maps"] = np.stack(maps)
        for png in sorted(folder.glob("*.png")):
            arrays[f"{index}/png/{png.name}"] = np.frombuffer(png.read_bytes(), np.uint8)
        arrays[f"{index}/metadata"] = np.frombuffer((folder / "rendering_metadata.txt").read_bytes(), np.uint8)
    arrays["models"] = np.array(models)
    for name in LISTS:
        arrays[name] = np.frombuffer((root / name).read_bytes(), np.uint8)
    np.savez_compressed(out, **arrays)
    return worst


def unpack(packed: Path, root: Path) -> None:
    """Write the dataset packed in ``packed`` under ``root`` (file lists last: a complete set)."""
    data = np.load(packed)
    models = [str(m) for m in data["models"]]
    for index, model in enumerate(models):
        folder = root / model / "rendering"
        folder.mkdir(parents=True, exist_ok=True)
        cloud = data[f"{index}/cloud"].astype(np.float64)
        for view, matrix in enumerate(data[f"{index}/maps"]):
            rotation, translation = matrix[:, :3], matrix[:, 3]
            moved = np.concatenate([cloud[:, :3] @ rotation.T + translation, cloud[:, 3:] @ rotation.T], axis=1)
            save_dat(folder / f"{view:02d}.dat", moved.astype(np.float32))
        (folder / "rendering_metadata.txt").write_bytes(data[f"{index}/metadata"].tobytes())
    for key in data.files:
        if "/png/" in key:
            index, _, name = key.split("/")
            (root / models[int(index)] / "rendering" / name).write_bytes(data[key].tobytes())
    for name in LISTS:
        (root / name).write_bytes(data[name].tobytes())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pack_parser = sub.add_parser("pack")
    pack_parser.add_argument("root", type=Path)
    pack_parser.add_argument("out", type=Path)
    unpack_parser = sub.add_parser("unpack")
    unpack_parser.add_argument("packed", type=Path)
    unpack_parser.add_argument("root", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        worst = pack(args.root, args.out)
        print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MiB; largest rigid-fit error {worst:.2e}")
    else:
        unpack(args.packed, args.root)


if __name__ == "__main__":
    main()
