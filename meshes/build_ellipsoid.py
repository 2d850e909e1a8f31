"""Regenerate ``ellipsoid.npz`` from the original Pixel2Mesh ``info_ellipsoid.dat``.

Usage::

    python -m p2m_geo.meshes.build_ellipsoid ../shared/data/ellipsoid/info_ellipsoid.dat [-o OUT.npz]

What it takes from the original file: the level-1 coordinates (entry 0), the level-1
triangles (recovered from the edge / opposite-vertex quadruples of entry 5) and the
order of the unpooling pairs (entry 4). Everything else is derived: faces are oriented
outward consistently, levels 2 and 3 come from orientation-preserving midpoint
subdivision, and the script checks that the edges it derives are the original's
unpooling pairs as sets before adopting the original order. The original
``face2.obj`` / ``face3.obj`` (inconsistently oriented) are not used.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from p2m_geo.safe_pickle import restricted_load

DEFAULT_OUT = Path(__file__).with_name("ellipsoid.npz")


# ------------------------------------------------------------------ build-time mesh helpers
def undirected_edges(face: np.ndarray) -> np.ndarray:
    """Unique undirected edges ``[E,2]`` (``i < j``, sorted) of triangles ``face [F,3]``."""
    pairs = np.concatenate([face[:, [0, 1]], face[:, [1, 2]], face[:, [2, 0]]])
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs, axis=0)


def subdivide(pos: np.ndarray, face: np.ndarray, edges: np.ndarray):
    """Midpoint subdivision that keeps face orientation.

    Args:
        pos: vertex coordinates ``[V,3]``.
        face: triangles ``[F,3]``.
        edges: the undirected edges ``[E,2]`` of ``face``; new vertex ``V + e`` is the
            midpoint of ``edges[e]``.

    Returns:
        ``(pos [V+E,3], face [4F,3])``.
    """
    num_vertices = len(pos)
    lookup = {}
    for e, (i, j) in enumerate(edges):
        lookup[(int(i), int(j))] = lookup[(int(j), int(i))] = num_vertices + e
    if len(lookup) != 2 * len(edges):
        raise ValueError("edges: expected unique undirected edges, got duplicates")
    new_faces = []
    for a, b, c in face.tolist():
        ab, bc, ca = lookup[(a, b)], lookup[(b, c)], lookup[(c, a)]
        new_faces += [(a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca)]
    new_pos = np.concatenate([pos, 0.5 * (pos[edges[:, 0]] + pos[edges[:, 1]])])
    return new_pos.astype(pos.dtype), np.asarray(new_faces, dtype=np.int64)


def signed_volume(pos: np.ndarray, face: np.ndarray) -> float:
    r"""Signed volume :math:`\frac16\sum_f \langle p_a, p_b \times p_c\rangle` (> 0 when outward)."""
    a, b, c = (pos[face[:, k]].astype(np.float64) for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def orient_faces_outward(pos: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Re-orient a closed, connected manifold triangle mesh consistently and outward.

    Walks faces breadth-first across shared edges so each neighbour traverses the shared
    edge in the opposite direction, then flips everything if the signed volume is negative.
    """
    face = face.copy()
    edge_faces: dict = {}
    for f, (a, b, c) in enumerate(face.tolist()):
        for i, j in ((a, b), (b, c), (c, a)):
            edge_faces.setdefault((min(i, j), max(i, j)), []).append(f)
    if any(len(fs) != 2 for fs in edge_faces.values()):
        raise ValueError("face: expected a closed manifold mesh (every edge in two faces)")
    visited = np.zeros(len(face), dtype=bool)
    visited[0] = True
    queue = [0]
    while queue:
        f = queue.pop()
        a, b, c = face[f]
        for i, j in ((a, b), (b, c), (c, a)):
            for g in edge_faces[(min(i, j), max(i, j))]:
                if visited[g]:
                    continue
                directed = {(face[g][k], face[g][(k + 1) % 3]) for k in range(3)}
                if (i, j) in directed:  # same direction as f: flip g
                    face[g] = face[g][::-1]
                visited[g] = True
                queue.append(g)
    if not visited.all():
        raise ValueError("face: expected a connected mesh")
    if signed_volume(pos, face) < 0:
        face = face[:, ::-1].copy()
    return face


def load_info_ellipsoid(path: str | os.PathLike) -> dict:
    """Read the original ``info_ellipsoid.dat`` without executing pickle code.

    Returns:
        dict with ``pos`` ``[156,3]`` float32, ``face`` ``[308,3]`` (unoriented triangles
        recovered from the edge quadruples), ``unpool`` (two ``[E,2]`` int64 arrays) and
        ``laplacian_neighbours`` (three padded ``[V,10]`` tables, see the shared README).
    """
    info = restricted_load(path)
    if not isinstance(info, (tuple, list)) or len(info) != 8:
        raise ValueError(f"{path}: expected the 8-entry Pixel2Mesh ellipsoid tuple")
    quads = np.asarray(info[5][0], dtype=np.int64)
    triangles = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 1, 3]]])
    face = np.unique(np.sort(triangles, axis=1), axis=0)
    return {
        "pos": np.asarray(info[0], dtype=np.float32),
        "face": face,
        "unpool": [np.asarray(p, dtype=np.int64) for p in info[4]],
        "laplacian_neighbours": [np.asarray(t, dtype=np.int64) for t in info[7]],
    }


def _in_original_order(derived: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``original`` pairs (sorted i<j) after checking they are the same set as ``derived``."""
    original = np.sort(original, axis=1)
    if len(original) != len(derived) or set(map(tuple, original.tolist())) != set(map(tuple, derived.tolist())):
        raise ValueError("unpooling pairs of the original differ from the derived edges")
    return original


def build_hierarchy(info: dict) -> dict:
    """All arrays of ``ellipsoid.npz``: ``pos_l``, ``face_l`` (l = 0, 1, 2) and ``unpool_l`` (l = 0, 1)."""
    pos = info["pos"]
    face = orient_faces_outward(pos, info["face"])
    arrays = {}
    for level in range(3):
        arrays[f"pos_{level}"] = pos.astype(np.float32)
        arrays[f"face_{level}"] = face.astype(np.int32)
        if level == 2:
            break
        edges = _in_original_order(undirected_edges(face), info["unpool"][level])
        arrays[f"unpool_{level}"] = edges.astype(np.int32)
        pos, face = subdivide(pos.astype(np.float64), face, edges)
    return arrays


def write_npz(arrays: dict, out: str | os.PathLike) -> None:
    """Write ``arrays`` to ``out`` atomically (temp file in the same folder, then rename)."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("info_ellipsoid", help="path to the original info_ellipsoid.dat")
    parser.add_argument("-o", "--out", default=str(DEFAULT_OUT), help="output .npz")
    args = parser.parse_args(argv)
    write_npz(build_hierarchy(load_info_ellipsoid(args.info_ellipsoid)), args.out)


if __name__ == "__main__":
    main()
