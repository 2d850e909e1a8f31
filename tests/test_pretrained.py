"""The bundled pretrained model: packaged, safe to load, documented, used by `predict`, and
conditioned on its input (on the real car, better than its own blank-image prediction)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from click.testing import CliRunner

from p2m_geo.camera import default_intrinsics
from p2m_geo.cli.main import cli
from p2m_geo.data.images import load_image
from p2m_geo.metrics import reconstruction_metrics
from p2m_geo.pretrained import DEFAULT_MODEL, METADATA_KEYS, bundled_models, bundled_path, load_bundled


def test_bundled_model_is_small_safe_and_documented():
    path = bundled_path()
    assert path.stat().st_size <= 25 * 1024 * 1024
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # no code can run
    metadata = checkpoint["metadata"]
    assert set(METADATA_KEYS) <= set(metadata)
    assert metadata["command"].startswith("p2m-geo train") and "--preset" in metadata["command"]
    assert len(metadata["commit"]) == 40
    assert [m.name for m in bundled_models()] == [DEFAULT_MODEL]


def test_predict_without_checkpoint_or_runs_uses_the_bundled_model(tmp_path, shared_data, monkeypatch, caplog):
    import open3d as o3d

    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="p2m_geo.cli.predict"):
        result = CliRunner().invoke(cli, ["predict", str(shared_data / "examples" / "car.png"), "-o", "car.ply"])
    assert result.exit_code == 0, result.output
    assert f"(bundled model {DEFAULT_MODEL})" in caplog.text
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "car.ply"))
    assert len(mesh.vertices) == 2466 and len(mesh.triangles) == 4928


@torch.no_grad()
def test_bundled_model_reconstructs_real_objects_better_than_from_a_blank_image(shared_data, tmp_path):
    """The real car (24 R2N2 views, converted) and the real biplane (5 ShapeNetP2M views):
    lower CD and higher F@tau than the same model fed white images, and the real-renderings
    issue's F@tau targets, 30% and 20% (README: car 31.7 vs 8.5, biplane 21.2 vs 8.4)."""
    from p2m_geo.data import ShapeNetP2M, collate_samples
    from p2m_geo.data.r2n2 import convert_r2n2

    car = convert_r2n2(shared_data / "r2n2_raw", tmp_path, synset="02958343")
    biplane = [f"shapenet_p2m/sample_abcd/rendering/{view:02d}.dat" for view in range(5)]
    model, _ = load_bundled()
    for root, lines, f_target in ((tmp_path, car, 30.0), (shared_data, biplane, 20.0)):
        batch = collate_samples([ShapeNetP2M(root, lines)[i] for i in range(len(lines))])
        scores = {}
        for name, images in {"real": batch.images, "blank": torch.ones_like(batch.images)}.items():
            mesh = model(images, batch.intrinsics).meshes[-1]
            scores[name] = reconstruction_metrics(
                mesh.pos, mesh.batch, batch.target.pos, batch.target.batch, len(batch)
            )
        assert scores["real"]["cd"].mean() < 0.6 * scores["blank"]["cd"].mean()
        assert scores["real"]["f@0.0001"].mean() > 1.5 * scores["blank"]["f@0.0001"].mean()
        assert scores["real"]["f@0.0001"].mean() >= f_target


@torch.no_grad()
def test_bundled_model_gives_different_meshes_for_different_real_renderings(shared_data):
    model, _ = load_bundled()
    paths = sorted((shared_data / "examples").glob("*.png"))
    meshes = model(torch.stack([load_image(p) for p in paths]), default_intrinsics(len(paths))).meshes[-1]
    pos = meshes.pos.view(len(paths), -1, 3)
    assert float((pos[0] - pos[1:]).norm(dim=-1).mean()) > 0.01
    assert np.isfinite(pos.numpy()).all()
