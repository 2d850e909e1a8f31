"""benchmarks/pack_dataset.py: a packed dataset unpacks to the same renderings and lists, and
to GT clouds within float16 rounding of the originals."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from pack_dataset import pack, rigid_fit, unpack  # noqa: E402

from p2m_geo.data import load_dat  # noqa: E402


def test_rigid_fit_recovers_a_known_rotation_and_translation():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 3))
    rotation = Rotation.random(random_state=1).as_matrix()
    translation = np.array([0.3, -1.0, 2.0])
    got_rotation, got_translation = rigid_fit(points, points @ rotation.T + translation)
    np.testing.assert_allclose(got_rotation, rotation, atol=1e-12)
    np.testing.assert_allclose(got_translation, translation, atol=1e-12)


def test_pack_then_unpack_gives_the_dataset_back(tiny_data, tmp_path):
    packed = tmp_path / "set.npz"
    assert pack(tiny_data, packed) < 1e-6  # the views of a shape share one cloud, moved rigidly
    out = tmp_path / "unpacked"
    unpack(packed, out)
    originals = sorted(p.relative_to(tiny_data) for p in tiny_data.rglob("*") if p.is_file())
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == originals
    for relative in originals:
        if relative.suffix == ".dat":
            original, copy = load_dat(tiny_data / relative), load_dat(out / relative)
            assert copy.shape == original.shape and copy.dtype == np.float32
            assert np.abs(copy[:, :3] - original[:, :3]).max() < 1e-3  # float16 of coordinates within ~1
            assert np.abs(copy[:, 3:] - original[:, 3:]).max() < 2e-3  # unit normals
        else:
            assert (out / relative).read_bytes() == (tiny_data / relative).read_bytes(), relative
