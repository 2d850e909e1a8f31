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


def test_extra_training_shapes_leave_the_test_views_byte_identical(generated, tmp_path):
    classes = ("chair", "car")
    spec = SynthSpec(per_class=2, views=2, seed=7, categories=classes, extra_train=2)
    root = tmp_path / "extra"
    assert generate_dataset(root, spec, workers=1) == {"train": 2 * (1 + 2) * 2, "test": 2 * 1 * 2}
    assert spec.num_views == 2 * (2 + 2) * 2
    train, test = read_file_list(root / "train_list.txt"), read_file_list(root / "test_list.txt")
    before_train = [r for r in read_file_list(generated / "train_list.txt") if r.category in classes]
    before_test = [r for r in read_file_list(generated / "test_list.txt") if r.category in classes]
    assert sorted(r.relative_dat for r in test) == sorted(r.relative_dat for r in before_test)
    for ref in test + before_train:  # the shapes of per_class alone: the same files, byte for byte
        for suffix in (".dat", ".png"):
            relative = ref.relative_dat.replace(".dat", suffix)
            assert (root / relative).read_bytes() == (generated / relative).read_bytes(), relative
    added = {r.model for r in train} - {r.model for r in before_train}
    assert len(added) == 2 * 2 and not added & {r.model for r in test}
    with pytest.raises(ValueError, match=r"^extra_train: expected an integer >= 0, got -1$"):
        SynthSpec(extra_train=-1)


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


# ----------------------------------------------------------------------------- version 2
V2 = SynthSpec(per_class=2, views=2, seed=7, categories=("car", "airplane", "chair", "lamp"), version=2)


@pytest.fixture(scope="module")
def generated_v2(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_v2")
    generate_dataset(root, V2, workers=1)
    return root


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))


def test_version_1_stays_reproducible_by_name(generated):
    """Version 2 draws from its own random stream: version 1's chair (seed 7) is pinned."""
    import hashlib

    dat = sorted((generated / "03001627").glob("*/rendering/00.dat"))[0]
    assert dat.parent.parent.name == "03e29e25e4befd020b48110536903219"
    assert hashlib.sha256(np.ascontiguousarray(load_dat(dat)).tobytes()).hexdigest()[:16] == "888627c830e0ebdd"
    assert hashlib.sha256(_pixels(dat.with_suffix(".png")).tobytes()).hexdigest()[:16] == "3aa5b855691a560e"


def test_version_2_deterministic_per_seed_and_random_across_seeds(generated_v2, tmp_path):
    again = tmp_path / "again"
    generate_dataset(again, V2, workers=1)
    files = sorted(p.relative_to(again) for p in again.rglob("*/rendering/*"))
    assert files and all((again / f).read_bytes() == (generated_v2 / f).read_bytes() for f in files)
    other = tmp_path / "other"
    generate_dataset(other, SynthSpec(per_class=2, views=2, seed=8, categories=("car",), version=2), workers=1)
    first = lambda root: sorted(root.glob("02958343/*/rendering/00.png"))[0]  # noqa: E731
    assert not np.array_equal(_pixels(first(other)), _pixels(first(generated_v2)))
    metadata = lambda root: np.loadtxt(first(root).with_name("rendering_metadata.txt"))  # noqa: E731
    assert not np.allclose(metadata(other), metadata(generated_v2))


def test_version_2_appearance_varies_and_gt_matches_silhouettes(generated_v2):
    refs = read_file_list(generated_v2 / "train_list.txt") + read_file_list(generated_v2 / "test_list.txt")
    mean_colours, spreads = [], []
    for ref in refs:
        dat = generated_v2 / ref.relative_dat
        # > 0.97: version 2 has thinner rods (lamp poles one pixel wide), where rounding misses
        assert fraction_inside_silhouette(load_dat(dat)[:, :3], dat.with_suffix(".png")) > 0.97, ref.name
        rgba = _pixels(dat.with_suffix(".png")).reshape(-1, 4)
        inside = rgba[rgba[:, 3] == 255, :3].astype(float)
        mean_colours.append(inside.mean(0))
        spreads.append(inside.std(0).mean())
        partial = ((rgba[:, 3] > 0) & (rgba[:, 3] < 255)).sum()
        assert partial > 0  # anti-aliased silhouette edges
    mean_colours = np.array(mean_colours)
    assert mean_colours.std(0).mean() > 15  # shapes differ in colour (0-255 scale)
    assert np.ptp(spreads) > 5  # some are plain, some textured or strongly shaded


def test_version_2_framing_inside_the_real_renderings(shared_data, generated_v2):
    """Silhouette area and extent of generated cars/airplanes fall inside the range of the
    real R2N2 car and ShapeNetP2M airplane renderings (same camera distribution)."""
    from p2m_geo.data.synth import silhouette_statistics

    real = {
        "02958343": sorted((shared_data / "r2n2_raw").glob("*/rendering/*.png")),
        "02691156": sorted((shared_data / "shapenet_p2m").glob("*/rendering/*.png")),
    }
    for synset, paths in real.items():
        reference = silhouette_statistics(paths)
        ours = silhouette_statistics(sorted(generated_v2.glob(f"{synset}/*/rendering/*.png")))
        for key in ("area", "extent"):
            low, high = reference[key].min(), reference[key].max()
            assert low * 0.8 <= np.median(ours[key]) <= high * 1.25, (synset, key, np.median(ours[key]), low, high)


def _signed_volume(vertices: np.ndarray, triangles: np.ndarray) -> float:
    """Volume enclosed by a closed triangle mesh (divergence theorem), > 0 for outward faces."""
    a, b, c = (vertices[triangles[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


def test_lathe_is_closed_and_outward():
    import open3d as o3d

    from p2m_geo.data.synth import lathe

    mesh = lathe([0.5, 0.5], [0.0, 2.0], resolution=64)
    assert mesh.is_watertight() and mesh.is_orientable()
    volume = _signed_volume(np.asarray(mesh.vertices), np.asarray(mesh.triangles))
    # regular 64-gon prism: (n/2) r^2 sin(2 pi / n) h
    assert volume == pytest.approx(32 * 0.25 * np.sin(2 * np.pi / 64) * 2.0, rel=1e-9)
    assert isinstance(mesh, o3d.geometry.TriangleMesh)


def test_version_2_shapes_normalised_and_closed_parts():
    from p2m_geo.data.synth import build_shape_parts

    for category in CATEGORIES:
        vertices, triangles, parts = build_shape_parts(category, np.random.default_rng(3), version=2)
        low, high = vertices.min(0), vertices.max(0)
        assert np.linalg.norm(high - low) == pytest.approx(1.0, abs=1e-9)
        assert len(parts) == len(triangles) and parts.min() == 0
        for part in np.unique(parts):  # every part encloses a positive volume (outward faces)
            assert _signed_volume(vertices, triangles[parts == part]) > 0, (category, part)


def test_pattern_and_shading_against_formulas():
    from p2m_geo.data.appearance import Lighting, Material, pattern_value, shade

    points = np.random.default_rng(0).uniform(-0.5, 0.5, size=(200, 3))
    checker = Material((0, 0, 0), (1, 1, 1), "checker", frequency=4.0)
    expected = [(int(np.floor(x * 4)) + int(np.floor(y * 4)) + int(np.floor(z * 4))) % 2 for x, y, z in points]
    np.testing.assert_array_equal(pattern_value(checker, points), expected)
    for name in ("noise", "stripes", "grain"):
        values = pattern_value(
            Material((0, 0, 0), (1, 1, 1), name, 8.0, (0.0, 0.0, 1.0), ((3.0, 1.0, 2.0, 0.5),) * 3), points
        )
        assert values.min() >= 0 and values.max() <= 1 and values.std() > 0.05, name
    light = Lighting((0.0, 0.0, 1.0), 0.2, 0.6, 0.3, 10.0)
    normal = np.array([[0.0, np.sin(0.3), np.cos(0.3)]])
    view = np.array([[0.0, 0.0, 1.0]])
    colour = shade(np.array([[0.5, 0.4, 0.3]]), normal, view, light)
    half_cos = np.cos(0.3)  # the half vector of light and view is +z
    np.testing.assert_allclose(
        colour, np.clip(np.array([[0.5, 0.4, 0.3]]) * (0.2 + 0.6 * np.cos(0.3)) + 0.3 * half_cos**10, 0, 1), rtol=1e-12
    )


# ----------------------------------------------------------------------------- version 3
def _airplane_heights(version: int, count: int) -> np.ndarray:
    """Height (y extent) of the first ``count`` seed-0 airplanes, as the generator draws them."""
    from p2m_geo.data.synth import build_shape_parts

    heights = []
    for index in range(count):
        vertices, _, _ = build_shape_parts("airplane", np.random.default_rng([0, 0, index]), version=version)
        heights.append(np.ptp(vertices[:, 1]))
    return np.array(heights)


def test_version_3_adds_biplanes_as_tall_as_the_real_one(shared_data):
    """Version 1's airplanes are all flatter than the real ShapeNet biplane in ``../shared``
    (height over bounding-box diagonal, measured here in its object frame); version 3 keeps
    version 1's airplanes and adds biplanes (about a quarter) that cover its height."""
    from p2m_geo.data.camera_r2n2 import points_to_object, view_rotation_and_position

    rendering = shared_data / "shapenet_p2m" / "sample_abcd" / "rendering"
    azimuth, elevation, _, distance, _ = np.loadtxt(rendering / "rendering_metadata.txt")[0]
    cloud = load_dat(rendering / "00.dat")
    real = points_to_object(cloud[:, :3], *view_rotation_and_position(azimuth, elevation, distance))
    extent = np.ptp(real, axis=0)
    real_height = extent[1] / np.linalg.norm(extent)
    assert 0.3 < real_height < 0.4
    version_1, version_3 = _airplane_heights(1, 48), _airplane_heights(3, 48)
    assert version_1.max() < real_height - 0.05
    tall = version_3 > version_1.max()
    assert 0.1 < tall.mean() < 0.4
    assert version_3[tall].min() < real_height < version_3[tall].max() + 0.02


def test_version_3_is_version_1_outside_the_airplanes(tmp_path):
    spec = dict(per_class=2, views=1, seed=7, categories=("chair", "airplane"))
    generate_dataset(tmp_path / "v1", SynthSpec(**spec), workers=1)
    generate_dataset(tmp_path / "v3", SynthSpec(**spec, version=3), workers=1)

    def files(root: Path, synset: str) -> list:  # contents only: the model folders' names differ by version
        return sorted(p.read_bytes() for p in root.glob(f"{synset}/*/rendering/*") if p.suffix in (".png", ".dat"))

    assert files(tmp_path / "v1", "03001627") == files(tmp_path / "v3", "03001627")  # chairs
    assert len(files(tmp_path / "v3", "02691156")) == 4  # airplanes: 2 shapes x 1 view, png + dat
    v1_ids = {p.name for p in (tmp_path / "v1" / "02691156").iterdir()}
    assert v1_ids.isdisjoint(p.name for p in (tmp_path / "v3" / "02691156").iterdir())


def test_version_3_biplanes_normalised_and_closed_parts():
    from p2m_geo.data.synth import _biplane, build_shape_parts

    vertices, triangles, parts = build_shape_parts("airplane", np.random.default_rng(5), version=3)
    assert np.linalg.norm(np.ptp(vertices, axis=0)) == pytest.approx(1.0, abs=1e-9)
    for seed in range(3):
        pieces = _biplane(np.random.default_rng(seed))
        # fuselage, nose, tail cone, 2 wings, fin, stabiliser, propeller, 4 struts, 2 x (leg, wheel)
        assert len(pieces) == 16
        for piece in pieces:  # every part encloses a positive volume (outward faces)
            assert _signed_volume(np.asarray(piece.vertices), np.asarray(piece.triangles)) > 0
