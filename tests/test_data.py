"""Data formats: .dat reading, file lists, the dataset, collation, R2N2 conversion, images."""

from __future__ import annotations

import gzip
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import CreatesFileWhenUnpickled
from p2m_geo.data import (
    DatFileError,
    FileListError,
    ImageFileError,
    ShapeNetP2M,
    SYNSET_TO_CATEGORY,
    collate_samples,
    load_dat,
    load_image,
    read_file_list,
)
from p2m_geo.data.shapenet import mirror_left_right

SAMPLE_LINES = [f"shapenet_p2m/sample_abcd/rendering/{v:02d}.dat" for v in range(5)]


def project_to_137(points: np.ndarray, f: float = 248.0, c: float = 111.5) -> np.ndarray:
    """Independent pinhole projection (camera looks down -Z, y up) onto the 137 px rendering."""
    u = f * points[:, 0] / -points[:, 2] + c
    v = f * -points[:, 1] / -points[:, 2] + c
    scale = 137 / 224
    return np.stack([(u + 0.5) * scale - 0.5, (v + 0.5) * scale - 0.5], axis=1)


def fraction_inside_silhouette(points: np.ndarray, png: Path) -> float:
    alpha = np.asarray(Image.open(png).convert("RGBA"))[..., 3]
    uv = np.clip(np.round(project_to_137(points)).astype(int), 0, alpha.shape[0] - 1)
    return float((alpha[uv[:, 1], uv[:, 0]] > 0).mean())


# ------------------------------------------------------------------------------------ .dat
def test_load_dat_real_samples(shared_data):
    for view in range(5):
        array = load_dat(shared_data / "shapenet_p2m" / "sample_abcd" / "rendering" / f"{view:02d}.dat")
        assert array.dtype == np.float32 and array.shape == (8853, 6)
        np.testing.assert_allclose(np.linalg.norm(array[:, 3:], axis=1), 1.0, atol=1e-3)
        assert (array[:, 2] < 0).all()  # in front of the camera (looks down -Z)


def test_load_dat_python3_pickle_roundtrip(tmp_path):
    array = np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.dat"
        path.write_bytes(pickle.dumps(array, protocol=protocol))
        np.testing.assert_array_equal(load_dat(path), array)


def test_load_dat_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.dat"
    path.write_bytes(pickle.dumps(CreatesFileWhenUnpickled(str(marker))))
    with pytest.raises(
        DatFileError, match=r"evil\.dat: unsafe pickle.*builtins\.open|evil\.dat: unsafe pickle.*io\.open"
    ):
        load_dat(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "got an empty file"),
        (pickle.dumps(np.zeros((10, 6), np.float32), protocol=2)[:-20], "corrupt pickle"),
        (
            pickle.dumps(np.zeros((10, 3), np.float32), protocol=2),
            r"expected a numeric \[N,6\] array, got float32 \[10, 3\]",
        ),
        (pickle.dumps({"a": 1}, protocol=2), "got dict"),
        (pickle.dumps(np.full((2, 6), np.nan, np.float32)), "NaN or Inf"),
        (b"not a pickle at all", "corrupt pickle"),
    ],
)
def test_load_dat_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.dat"
    path.write_bytes(content)
    with pytest.raises(DatFileError, match=message):
        load_dat(path)


def test_load_dat_missing_file(tmp_path):
    with pytest.raises(DatFileError, match="missing.dat: cannot read"):
        load_dat(tmp_path / "missing.dat")


# ------------------------------------------------------------------------------- file lists
def test_official_test_split(shared_data):
    refs = read_file_list(shared_data / "test_list.txt.gz")
    assert len(refs) == 43783
    counts = Counter(ref.synset for ref in refs)
    assert set(counts) == set(SYNSET_TO_CATEGORY)
    # independent count straight from the gzip text
    with gzip.open(shared_data / "test_list.txt.gz", "rt") as handle:
        raw = Counter(line.split("/")[2] for line in handle if line.strip())
    assert counts == raw
    assert all(ref.view.isdigit() for ref in refs)
    assert refs[0].category == SYNSET_TO_CATEGORY[refs[0].synset]


def test_file_list_errors(tmp_path):
    with pytest.raises(FileListError, match="expected at least one sample line"):
        read_file_list(["", "# comment"])
    with pytest.raises(FileListError, match=r"<list>:2: expected .*got 'bad/line'"):
        read_file_list(["02691156/abc/rendering/00.dat", "bad/line"])
    with pytest.raises(FileListError, match="got no such file"):
        read_file_list(tmp_path / "none.txt")


# --------------------------------------------------------------------------------- dataset
def test_dataset_items_on_real_samples(shared_data):
    dataset = ShapeNetP2M(shared_data, ["Data/ShapeNetP2M/" + SAMPLE_LINES[0]] + SAMPLE_LINES[1:])
    assert len(dataset) == 5
    item = dataset[2]
    assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    torch.testing.assert_close(item["image"][:, 0, 0], torch.ones(3))  # transparent corner -> white
    assert item["points"].shape == (8853, 3) and item["normals"].shape == (8853, 3)
    torch.testing.assert_close(item["intrinsics"], torch.tensor([[248.0, 0, 111.5], [0, 248.0, 111.5], [0, 0, 1]]))
    assert item["name"] == "shapenet_p2m/sample_abcd/02"
    raw = load_dat(shared_data / "shapenet_p2m" / "sample_abcd" / "rendering" / "02.dat")
    np.testing.assert_array_equal(item["points"].numpy(), raw[:, :3])


def test_dataset_cache_returns_the_decoded_views_without_the_files(tiny_data, tmp_path):
    """``cache_bytes``: a kept view reads back equal after its files are gone, a copy each time;
    views past the byte bound are decoded from the files as before."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    lines = (root / "train_list.txt").read_text().split()[:3]
    reference = [ShapeNetP2M(root, lines)[i] for i in range(3)]
    one_view = sum(v.numel() * v.element_size() for v in reference[0].values() if isinstance(v, torch.Tensor))
    cached = ShapeNetP2M(root, lines, cache_bytes=2 * one_view)  # room for two of the three
    uncached = ShapeNetP2M(root, lines)
    for index in range(3):
        cached[index]
    first = cached[0]
    first["image"].fill_(0.5)  # a caller's change does not reach the kept copy
    for ref in cached.samples:
        (root / ref.relative_dat).unlink()
        (root / ref.relative_dat.replace(".dat", ".png")).unlink()
    for index in range(2):
        item = cached[index]
        for key in ("image", "points", "normals", "intrinsics"):
            assert torch.equal(item[key], reference[index][key]), (index, key)
        assert item["name"] == reference[index]["name"]
    with pytest.raises(DatFileError, match="cannot read"):
        cached[2]  # past the bound: not kept
    with pytest.raises(DatFileError, match="cannot read"):
        uncached[0]
    with pytest.raises(ValueError, match="cache_bytes: expected an integer >= 0, got -1"):
        ShapeNetP2M(root, lines, check_files=False, cache_bytes=-1)


def test_dataset_reports_missing_file_with_line_number(shared_data):
    with pytest.raises(FileListError, match=r"file list line 3: expected .*07\.dat to exist"):
        ShapeNetP2M(shared_data, SAMPLE_LINES[:2] + ["shapenet_p2m/sample_abcd/rendering/07.dat"])


def test_collate_with_workers(shared_data):
    dataset = ShapeNetP2M(shared_data, SAMPLE_LINES)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_samples)
    batches = list(loader)
    assert [len(b) for b in batches] == [3, 2]
    first = batches[0]
    assert first.images.shape == (3, 3, 224, 224) and first.intrinsics.shape == (3, 3, 3)
    assert first.target.num_graphs == 3 and first.target.pos.shape == (3 * 8853, 3)
    assert torch.bincount(first.target.batch).tolist() == [8853] * 3


def naive_spread(size: int, count: int) -> list:
    """Reference: k (size - 1) / (count - 1) rounded half to even, for k = 0 .. count - 1."""
    count = min(count, size)
    if count <= 1:
        return [0] * count
    return [round(k * (size - 1) / (count - 1)) for k in range(count)]


@pytest.mark.parametrize("size, count", [(260, 65), (260, 24), (10, 10), (7, 3), (5, 9), (5, 1), (5, 0)])
def test_spread_indices(size, count):
    from p2m_geo.data.shapenet import spread_indices

    indices = spread_indices(size, count)
    assert indices == naive_spread(size, count)
    assert len(set(indices)) == len(indices) == min(size, count)
    assert all(0 <= i < size for i in indices)
    if count >= 2:
        assert indices[0] == 0 and indices[-1] == size - 1


def test_validation_subset_keeps_every_class(tiny_data):
    """``train.eval_max_samples`` picks views spread over the class-sorted list, not its head."""
    from p2m_geo.config import Config, from_dict
    from p2m_geo.data.factory import build_datasets

    full = build_datasets(from_dict(Config, {"data": {"root": str(tiny_data)}}))[1]
    categories = [ref.synset for ref in full.samples]
    assert len(set(categories)) == 2 and len(set(categories[:2])) == 1  # the head alone misses a class
    subset = build_datasets(from_dict(Config, {"data": {"root": str(tiny_data)}, "train": {"eval_max_samples": 2}}))[1]
    assert subset.indices == naive_spread(len(full), 2)
    assert {categories[i] for i in subset.indices} == set(categories)


def test_collate_graphs_of_different_sizes():
    items = [
        {
            "image": torch.zeros(3, 224, 224),
            "points": torch.randn(n, 3),
            "normals": torch.randn(n, 3),
            "intrinsics": torch.eye(3),
            "category": "x",
            "name": str(n),
        }
        for n in (5, 9, 2)
    ]
    batch = collate_samples(items)
    assert batch.target.batch.tolist() == [0] * 5 + [1] * 9 + [2] * 2
    torch.testing.assert_close(batch.target.normal[5:14], items[1]["normals"])


def splat_points(points: np.ndarray, fx: float, fy: float, cx: float, cy: float, size: int = 224) -> np.ndarray:
    """A size x size mask with the pixel each point projects to set, one point at a time
    (pinhole looking down -Z, y up; pixel u's centre at u)."""
    mask = np.zeros((size, size), dtype=bool)
    for x, y, z in points:
        u, v = round(fx * x / -z + cx), round(fy * -y / -z + cy)
        if 0 <= u < size and 0 <= v < size:
            mask[v, u] = True
    return mask


def test_mirror_left_right_is_the_rendering_of_the_mirrored_shape():
    generator = torch.Generator().manual_seed(0)
    clouds = [
        torch.randn(n, 3, generator=generator, dtype=torch.float64) * 0.1 + torch.tensor([0.05, 0.0, -0.8])
        for n in (300, 200)
    ]
    # an off-centre camera per view (so a mirror that forgot the principal point would show)
    cameras = [(250.0, 240.0, 96.0, 120.0), (248.0, 248.0, 111.5, 111.5)]
    images = torch.stack(
        [torch.from_numpy(splat_points(c.numpy(), *cam)).double().expand(3, -1, -1) for c, cam in zip(clouds, cameras)]
    )
    intrinsics = torch.tensor(
        [[[fx, 0, cx], [0, fy, cy], [0, 0, 1]] for fx, fy, cx, cy in cameras], dtype=torch.float64
    )
    items = [
        {
            "image": images[i],
            "points": clouds[i],
            "normals": torch.nn.functional.normalize(clouds[i], dim=1),
            "intrinsics": intrinsics[i],
            "category": "x",
            "name": str(i),
        }
        for i in range(2)
    ]
    batch = collate_samples(items)
    mirrored = mirror_left_right(batch, torch.tensor([True, False]))
    # view 0: the mirrored image is the splat of the mirrored cloud through the mirrored camera
    fx, fy, cx, cy = (float(mirrored.intrinsics[0][i, j]) for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    assert cx == 223 - 96.0 and (fx, fy, cy) == (250.0, 240.0, 120.0)
    expected = splat_points(mirrored.target.pos[:300].numpy(), fx, fy, cx, cy)
    assert expected.sum() > 100
    np.testing.assert_array_equal(mirrored.images[0, 0].numpy().astype(bool), expected)
    np.testing.assert_array_equal(mirrored.images[0].numpy(), images[0].numpy()[:, :, ::-1])
    source = clouds[0].numpy()
    np.testing.assert_array_equal(mirrored.target.pos[:300].numpy(), source * [-1, 1, 1])
    np.testing.assert_array_equal(mirrored.target.normal[:300].numpy(), items[0]["normals"].numpy() * [-1, 1, 1])
    # view 1 and the input batch are untouched
    torch.testing.assert_close(mirrored.images[1], images[1], rtol=0, atol=0)
    torch.testing.assert_close(mirrored.target.pos[300:], clouds[1], rtol=0, atol=0)
    torch.testing.assert_close(mirrored.intrinsics[1], intrinsics[1], rtol=0, atol=0)
    torch.testing.assert_close(batch.target.pos[:300], clouds[0], rtol=0, atol=0)
    torch.testing.assert_close(batch.intrinsics, intrinsics, rtol=0, atol=0)
    with pytest.raises(ValueError, match="mirrored: expected a \\[2\\] bool tensor"):
        mirror_left_right(batch, torch.tensor([True]))


# ---------------------------------------------------------------------------- R2N2 convert
def reference_camera(azimuth, elevation, distance):
    """The original generation procedure, written out independently in float64."""
    theta, phi = np.deg2rad(azimuth), np.deg2rad(elevation)
    cam = np.array(
        [distance * np.cos(phi) * np.cos(theta), distance * np.sin(phi), distance * np.cos(phi) * np.sin(theta)]
    )
    z = cam / np.linalg.norm(cam)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.array([x, y, z]), cam


def test_convert_r2n2_real_car_inside_silhouettes(shared_data, tmp_path):
    from p2m_geo.data.r2n2 import convert_r2n2

    (model_dir,) = (shared_data / "r2n2_raw").iterdir()
    lines = convert_r2n2(shared_data / "r2n2_raw", tmp_path, synset="02958343")
    assert len(lines) == 24
    raw = np.loadtxt(model_dir / "model_normal.xyz")
    metadata = np.loadtxt(model_dir / "rendering" / "rendering_metadata.txt")
    rendering = tmp_path / "02958343" / model_dir.name / "rendering"
    for view in range(24):
        converted = load_dat(rendering / f"{view:02d}.dat")
        rotation, cam = reference_camera(metadata[view, 0], metadata[view, 1], metadata[view, 3])
        expected = (0.57 * raw[:, :3] - cam) @ rotation.T
        np.testing.assert_allclose(converted[:, :3], expected, atol=1e-5)
        np.testing.assert_allclose(converted[:, 3:], raw[:, 3:] @ rotation.T, atol=1e-5)
        assert fraction_inside_silhouette(converted[:, :3], rendering / f"{view:02d}.png") > 0.99, view
        # control: the camera of another view does not fit this silhouette
        wrong_rotation, wrong_cam = reference_camera(metadata[view, 0] + 90, metadata[view, 1], metadata[view, 3])
        wrong = (0.57 * raw[:, :3] - wrong_cam) @ wrong_rotation.T
        assert fraction_inside_silhouette(wrong, rendering / f"{view:02d}.png") < 0.9
    dataset = ShapeNetP2M(tmp_path, lines)
    assert dataset[0]["category"] == "car"


def test_convert_r2n2_needs_a_synset(shared_data, tmp_path):
    from p2m_geo.data.r2n2 import convert_r2n2

    with pytest.raises(ValueError, match="synset: expected --synset or an 8-digit synset folder"):
        convert_r2n2(shared_data / "r2n2_raw", tmp_path)


# ----------------------------------------------------------------------------------- images
def test_load_image_modes(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[5:15, 10:20, 3] = 255  # opaque red square, transparent elsewhere
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    image = load_image(tmp_path / "rgba.png", size=20)  # 30x20 -> centre crop 20x20 at x 5..25
    assert image.shape == (3, 20, 20)
    torch.testing.assert_close(image[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(image[:, 10, 10], torch.tensor([200 / 255, 0.0, 0.0]))

    gray = (np.arange(64 * 64) % 256).reshape(64, 64).astype(np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    Image.fromarray(gray, "L").convert("P").save(tmp_path / "palette.png")
    Image.fromarray(np.stack([gray] * 3, -1), "RGB").convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    reference = load_image(tmp_path / "gray.png", size=64)
    torch.testing.assert_close(reference[0], torch.from_numpy(gray / 255.0).float())
    torch.testing.assert_close(load_image(tmp_path / "gray16.png", size=64), reference, atol=1 / 255, rtol=0)
    torch.testing.assert_close(load_image(tmp_path / "palette.png", size=64), reference, atol=1 / 255, rtol=0)
    cmyk = load_image(tmp_path / "cmyk.jpg", size=64)
    assert cmyk.shape == (3, 64, 64) and float((cmyk - reference).abs().mean()) < 0.05


def test_load_image_bad_files(tmp_path):
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageFileError, match="text.png: expected a PNG or JPEG image"):
        load_image(tmp_path / "text.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageFileError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageFileError, match="got a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageFileError, match="got no such file"):
        load_image(tmp_path / "missing.png")


def test_real_example_renderings(shared_data):
    for png in sorted((shared_data / "examples").glob("*.png")):
        image = load_image(png)
        assert image.shape == (3, 224, 224)
        assert float(image.min()) < 0.9  # there is an object
        torch.testing.assert_close(image[:, 0, 0], torch.ones(3))
