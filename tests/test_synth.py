"""The procedural dataset: geometry, camera consistency, format, determinism."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from p2m_geo.data import ShapeNetP2M, load_dat, read_file_list
from p2m_geo.data.synth import CATEGORIES, SynthSpec, build_shape, contact_sheet, generate_dataset

from test_data import fraction_inside_silhouette

SPEC = SynthSpec(per_class=2, views=2, seed=7)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    counts = generate_dataset(root, SPEC, workers=1)
    assert counts == {"train": 13 * 1 * 2, "test": 13 * 1 * 2}
    return root


def test_thirteen_classes_normalised_like_shapenet():
    assert len(CATEGORIES) == 13
    rng = np.random.default_rng(0)
    extents = {}
    for category in CATEGORIES:
        vertices, triangles = build_shape(category, rng)
        low, high = vertices.min(0), vertices.max(0)
        assert np.linalg.norm(high - low) == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose((low + high) / 2, 0.0, atol=1e-9)
        assert triangles.min() >= 0 and triangles.max() < len(vertices)
        extents[category] = np.round(high - low, 2)
    # classes differ in proportions: airplanes are wide and flat, lamps tall and thin
    assert extents["airplane"][1] < extents["airplane"][0]
    assert extents["lamp"][1] > extents["lamp"][0]


def test_split_by_shape_and_loads_unchanged(generated):
    train = read_file_list(generated / "train_list.txt")
    test = read_file_list(generated / "test_list.txt")
    assert not {r.model for r in train} & {r.model for r in test}
    assert {r.category for r in train} == set(CATEGORIES) == {r.category for r in test}
    dataset = ShapeNetP2M(generated, generated / "train_list.txt")
    item = dataset[0]
    assert item["image"].shape == (3, 224, 224)
    assert item["points"].shape == (9000, 3)


def test_gt_points_fall_inside_own_silhouettes(generated):
    for ref in read_file_list(generated / "train_list.txt") + read_file_list(generated / "test_list.txt"):
        dat = generated / ref.relative_dat
        cloud = load_dat(dat)
        np.testing.assert_allclose(np.linalg.norm(cloud[:, 3:], axis=1), 1.0, atol=1e-4)
        assert (cloud[:, 2] < 0).all()
        assert fraction_inside_silhouette(cloud[:, :3], dat.with_suffix(".png")) > 0.98, ref.name
        alpha = np.asarray(Image.open(dat.with_suffix(".png")))[..., 3]
        assert 0.01 < (alpha > 0).mean() < 0.8  # an object, not an empty or full frame


def test_metadata_rows_follow_r2n2(generated):
    for metadata in generated.glob("*/*/rendering/rendering_metadata.txt"):
        rows = np.loadtxt(metadata, ndmin=2)
        assert rows.shape == (2, 5)
        assert ((rows[:, 0] >= 0) & (rows[:, 0] < 360)).all()
        assert ((rows[:, 1] >= 25) & (rows[:, 1] <= 30)).all()
        assert ((rows[:, 3] >= 0.65) & (rows[:, 3] <= 0.95)).all()
        assert (rows[:, 4] == 25).all()


def test_contact_sheet_one_row_per_class(generated, tmp_path):
    sheet = contact_sheet(generated, tmp_path / "sheet.png", columns=2)
    assert Image.open(sheet).size == (110 + 2 * 137, 13 * 137)


@pytest.mark.slow
def test_same_seed_same_bytes_any_worker_count(generated, tmp_path):
    spec = SynthSpec(per_class=2, views=2, seed=7, categories=("chair", "car"))
    generate_dataset(tmp_path / "again", spec, workers=2)
    files = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*/rendering/*"))
    assert len(files) == 2 * 2 * (2 * 2 + 1)
    for relative in files:
        assert (tmp_path / "again" / relative).read_bytes() == (generated / relative).read_bytes(), relative
    other = tmp_path / "other"
    generate_dataset(other, SynthSpec(per_class=2, views=2, seed=8, categories=("chair",)), workers=1)
    assert next(other.rglob("00.dat")).read_bytes() != next((generated / "03001627").rglob("00.dat")).read_bytes()
