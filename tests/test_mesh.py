"""The ellipsoid hierarchy: counts, PyG conventions, orientation, provenance."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from conftest import CreatesFileWhenUnpickled
from p2m_geo.mesh import ellipsoid_hierarchy
from p2m_geo.safe_pickle import UnsafePickleError, restricted_load, restricted_loads

COUNTS = [(156, 462, 308), (618, 1848, 1232), (2466, 7392, 4928)]


def signed_volume(pos, face) -> float:
    """Divergence theorem, written out: the sum of signed tetrahedra (origin, a, b, c)."""
    total = 0.0
    for a, b, c in np.asarray(face).tolist():
        total += float(np.dot(pos[a], np.cross(pos[b], pos[c]))) / 6.0
    return total


@pytest.fixture(scope="module")
def hierarchy():
    return ellipsoid_hierarchy()


def read_obj_faces(path) -> np.ndarray:
    rows = [line.split()[1:4] for line in open(path) if line.startswith("f ")]
    return np.asarray(rows, dtype=np.int64) - 1


def test_counts_and_dtypes(hierarchy):
    assert len(hierarchy.levels) == 3 and all(hasattr(level, "unpool_index") for level in hierarchy.levels[:2])
    for data, (v, e, f) in zip(hierarchy.levels, COUNTS):
        assert data.pos.shape == (v, 3) and data.pos.dtype == torch.float32
        assert data.edge_index.shape == (2, 2 * e) and data.edge_index.dtype == torch.long
        assert data.face.shape == (3, f) and data.face.dtype == torch.long
    assert [level.unpool_index.shape for level in hierarchy.levels[:2]] == [(2, 462), (2, 1848)]


def test_edge_index_follows_pyg_convention(hierarchy):
    for data in hierarchy.levels:
        src, dst = data.edge_index.tolist()
        pairs = list(zip(src, dst))
        assert len(set(pairs)) == len(pairs), "duplicate edges"
        assert all(s != d for s, d in pairs), "self loops"
        assert set(pairs) == {(d, s) for s, d in pairs}, "not both directions"
        # every edge belongs to a face, every face edge is present
        face_edges = set()
        for a, b, c in data.face.t().tolist():
            face_edges |= {(a, b), (b, a), (b, c), (c, b), (c, a), (a, c)}
        assert face_edges == set(pairs)


def test_faces_consistently_outward(hierarchy):
    for data in hierarchy.levels:
        face = data.face.t().numpy()
        directed = [(f[k], f[(k + 1) % 3]) for f in face.tolist() for k in range(3)]
        assert len(set(directed)) == len(directed) == 3 * len(face), "a directed edge is used twice"
        assert set(directed) == {(j, i) for i, j in directed}, "not closed"
        pos = data.pos.double().numpy()
        assert signed_volume(pos, face) > 0
        # The ellipsoid is convex: each face normal points away from the centroid.
        a, b, c = (pos[face[:, k]] for k in range(3))
        normals = np.cross(b - a, c - a)
        outward = (a + b + c) / 3 - pos.mean(0)
        assert (np.einsum("ij,ij->i", normals, outward) > 0).all()


def test_new_vertices_are_midpoints(hierarchy):
    for level, pairs in enumerate(data.unpool_index for data in hierarchy.levels[:2]):
        coarse, fine = hierarchy.levels[level].pos, hierarchy.levels[level + 1].pos
        n = len(coarse)
        torch.testing.assert_close(fine[:n], coarse)
        expected = (coarse[pairs[0]].double() + coarse[pairs[1]].double()) / 2
        torch.testing.assert_close(fine[n:].double(), expected, atol=1e-6, rtol=0)


def test_level1_is_the_original_ellipsoid(hierarchy, shared_data):
    info = restricted_load(shared_data / "ellipsoid" / "info_ellipsoid.dat")
    np.testing.assert_array_equal(hierarchy.levels[0].pos.numpy(), info[0].astype(np.float32))
    assert abs(float(hierarchy.levels[0].pos[:, 2].mean()) + 0.8) < 0.02

    # face1.obj is the consistently outward original: same oriented triangles as ours.
    def canonical(face):  # rotate each triangle so its smallest index comes first
        out = set()
        for f in face.tolist():
            k = f.index(min(f))
            out.add(tuple(f[k:] + f[:k]))
        return out

    original = read_obj_faces(shared_data / "ellipsoid" / "face1.obj")
    assert canonical(hierarchy.levels[0].face.t().numpy()) == canonical(original)


def test_subdivided_levels_match_original_connectivity(hierarchy, shared_data):
    """face2/face3.obj are inconsistently oriented, but as vertex sets they are the original's."""
    for level, name in ((1, "face2.obj"), (2, "face3.obj")):
        ours = {tuple(sorted(f)) for f in hierarchy.levels[level].face.t().tolist()}
        theirs = {tuple(sorted(f)) for f in read_obj_faces(shared_data / "ellipsoid" / name).tolist()}
        assert ours == theirs


def test_unpool_pairs_are_the_original_edge_sets(hierarchy, shared_data):
    info = restricted_load(shared_data / "ellipsoid" / "info_ellipsoid.dat")
    for ours, theirs in zip((level.unpool_index for level in hierarchy.levels[:2]), info[4]):
        assert {tuple(sorted(p)) for p in ours.t().tolist()} == {tuple(sorted(p)) for p in theirs.tolist()}


def test_regenerated_assets_match_packaged(tmp_path, shared_data):
    from p2m_geo.meshes import build_ellipsoid

    out = tmp_path / "ellipsoid.npz"
    build_ellipsoid.main([str(shared_data / "ellipsoid" / "info_ellipsoid.dat"), "-o", str(out)])
    packaged = build_ellipsoid.DEFAULT_OUT
    with np.load(out) as fresh, np.load(packaged) as shipped:
        assert sorted(fresh.files) == sorted(shipped.files)
        for key in fresh.files:
            np.testing.assert_array_equal(fresh[key], shipped[key], err_msg=key)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([np.zeros(3), CreatesFileWhenUnpickled(str(marker))])
    with pytest.raises(UnsafePickleError, match="builtins.*open|io.*open"):
        restricted_loads(payload)
    assert not marker.exists()
    # and a plain pickle.loads would indeed have run it
    pickle.loads(payload)
    assert marker.exists()


def test_restricted_unpickler_reads_arrays_and_containers():
    value = {"a": [np.arange(6, dtype=np.float32).reshape(2, 3), (1, 2.5, "x")]}
    loaded = restricted_loads(pickle.dumps(value, protocol=2))
    np.testing.assert_array_equal(loaded["a"][0], value["a"][0])
    assert loaded["a"][1] == (1, 2.5, "x")
