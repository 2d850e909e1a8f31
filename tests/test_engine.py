"""End to end through the CLI: synth data, train, resume, eval, predict (tiny model)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from p2m_geo.cli.main import cli


def invoke(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def train_args(data: Path, config: Path, out: Path, name: str, epochs: int):
    return ["train", "--preset", "cpu-quick", "--config", config, "--data", data, "--out", out, "--name", name,
            "--epochs", epochs, "--device", "cpu", "--quiet"]


def weights(path: Path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
def test_train_resume_eval_predict(tiny_data, tiny_config, tmp_path):
    runs = tmp_path / "runs"
    result = invoke(*train_args(tiny_data, tiny_config, runs, "straight", 2))
    assert result.exit_code == 0, result.output
    run = runs / "straight"
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.csv", "curves.png", "preview_epoch001.png",
                 "preview_epoch002.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in ("train_chamfer", "train_edge", "train_laplacian", "train_normal", "train_move", "val_cd",
                "val_f@0.0001", "val_f@0.0002", "lr", "samples_per_s", "val_blank_cd", "val_blank_f@0.0001",
                "val_ellipsoid_cd", "val_ellipsoid_f@0.0001", "val_image_sensitivity"):
        assert key in rows[0] and np.isfinite(float(rows[0][key])), key
    assert float(rows[1]["val_image_sensitivity"]) > 0

    # image branch: trained in epoch 1 only
    assert [r["image_branch"] for r in rows] == ["1", "0"]
    assert float(rows[0]["train_image"]) > 0 and rows[1]["train_image"] in ("", None)

    # interrupted after epoch 1, resumed to 2 epochs: bit-identical to the straight run
    assert invoke(*train_args(tiny_data, tiny_config, runs, "split", 1)).exit_code == 0
    epoch1 = weights(runs / "split" / "last.pt")
    result = invoke("train", "--resume", runs / "split", "--epochs", 2, "--quiet")
    assert result.exit_code == 0, result.output
    resumed, straight = weights(runs / "split" / "last.pt"), weights(run / "last.pt")
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key
    # the decoder trained in epoch 1 and not in epoch 2; the mesh network trained in both
    decoder = [k for k in straight if k.startswith("image_decoder.")]
    assert decoder and all(torch.equal(epoch1[k], straight[k]) for k in decoder)
    assert not torch.equal(epoch1["blocks.2.conv_out.lin_rel.weight"], straight["blocks.2.conv_out.lin_rel.weight"])

    # eval through the CLI, with JSON
    json_path = tmp_path / "eval.json"
    result = invoke("eval", "--checkpoint", run / "best.pt", "--data", tiny_data, "--list", "test_list.txt",
                    "--device", "cpu", "--workers", "0", "--json", json_path)
    assert result.exit_code == 0, result.output
    assert "| chair |" in result.output and "| **mean** |" in result.output and "image sensitivity" in result.output
    assert "| CD model | CD blank | CD ellipsoid |" in result.output
    numbers = json.loads(json_path.read_text())
    assert set(numbers["model"]) == {"chair", "table", "mean"} and {"blank", "ellipsoid"} <= set(numbers)
    assert numbers["model"]["chair"]["count"] == 2 and numbers["image_sensitivity"] > 0
    assert numbers["blank"]["mean"]["cd"] != numbers["model"]["mean"]["cd"]

    # predict: one image -> .ply, read back as a closed, consistently oriented mesh
    import open3d as o3d

    image = next(tiny_data.rglob("00.png"))
    out = tmp_path / "pred.ply"
    result = invoke("predict", image, "-o", out, "--checkpoint", run / "best.pt", "--all-levels",
                    "--preview", tmp_path / "preview.png", "--device", "cpu")
    assert result.exit_code == 0, result.output
    mesh = o3d.io.read_triangle_mesh(str(out))
    assert len(mesh.vertices) == 2466 and len(mesh.triangles) == 4928
    assert mesh.has_vertex_normals()
    # closed (watertight as a surface) and consistently oriented; Pixel2Mesh does not prevent
    # self-intersections, so open3d's is_watertight (which also tests those) is not asked for
    assert mesh.is_edge_manifold(allow_boundary_edges=False) and mesh.is_vertex_manifold() and mesh.is_orientable()
    faces = np.asarray(mesh.triangles)
    directed = {(f[k], f[(k + 1) % 3]) for f in faces.tolist() for k in range(3)}
    assert len(directed) == 3 * len(faces) and directed == {(j, i) for i, j in directed}
    assert len(o3d.io.read_triangle_mesh(str(tmp_path / "pred_level1.ply")).vertices) == 156
    assert len(o3d.io.read_triangle_mesh(str(tmp_path / "pred_level2.ply")).vertices) == 618
    assert (tmp_path / "preview.png").is_file()

    # several images -> a folder, other formats by extension
    folder = tmp_path / "many"
    same_names = sorted(tiny_data.rglob("01.png"))[:2]
    result = invoke("predict", *same_names, "-o", folder, "--checkpoint", run / "best.pt")
    assert result.exit_code != 0 and "expected images with distinct file names" in result.output
    images = [tmp_path / "a.png", tmp_path / "b.png"]
    for source, target in zip(same_names, images):
        target.write_bytes(source.read_bytes())
    result = invoke("predict", *images, "-o", folder, "--checkpoint", run / "best.pt", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["a.ply", "b.ply"]
    result = invoke("data", "mesh-quality", folder / "a.ply", folder / "b.ply")
    assert result.exit_code == 0, result.output
    assert "| a.ply | 2466 | 4928 |" in result.output and "mean pairwise CD x1000" in result.output
    for suffix in (".obj", ".off"):
        assert invoke("predict", image, "-o", tmp_path / f"m{suffix}", "--checkpoint", run / "best.pt").exit_code == 0
        assert len(o3d.io.read_triangle_mesh(str(tmp_path / f"m{suffix}")).vertices) == 2466

    # --smooth: Taubin smoothing moves the vertices, keeps the topology, and makes the surface smoother
    from p2m_geo.mesh_quality import dihedral_roughness, face_adjacency

    smooth = tmp_path / "smooth.ply"
    result = invoke("predict", image, "-o", smooth, "--checkpoint", run / "best.pt", "--smooth", 10)
    assert result.exit_code == 0, result.output
    plain_mesh, smooth_mesh = o3d.io.read_triangle_mesh(str(out)), o3d.io.read_triangle_mesh(str(smooth))
    assert np.array_equal(np.asarray(plain_mesh.triangles), np.asarray(smooth_mesh.triangles))
    face = torch.from_numpy(np.asarray(plain_mesh.triangles)).t().long()
    adjacency, face_batch = face_adjacency(face), torch.zeros(face.size(1), dtype=torch.long)
    roughness = [dihedral_roughness(torch.from_numpy(np.asarray(m.vertices)), face, adjacency, face_batch, 1).item()
                 for m in (plain_mesh, smooth_mesh)]
    assert roughness[1] < roughness[0]


def test_predict_real_renderings(shared_data, tiny_checkpoint, tmp_path):
    import open3d as o3d

    examples = sorted((shared_data / "examples").glob("*.png"))
    result = invoke("predict", *examples, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in (tmp_path / "out").iterdir()) == sorted(p.stem for p in examples)
    for mesh_path in (tmp_path / "out").iterdir():
        mesh = o3d.io.read_triangle_mesh(str(mesh_path))
        assert len(mesh.vertices) == 2466 and len(mesh.triangles) == 4928


def test_unknown_config_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epocs: 3\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(bad), "--out", str(tmp_path / "runs")])
    assert result.exit_code != 0
    assert "train.epocs: unknown key" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_predict_without_checkpoint_says_how_to_get_one(tmp_path, shared_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["predict", str(shared_data / "examples" / "car.png"), "-o", "car.ply"])
    assert result.exit_code != 0
    assert "run `p2m-geo train` first or pass --checkpoint" in result.output
    assert not (tmp_path / "car.ply").exists()


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_data, tmp_path):
    """torchrun with 2 gloo processes: identical weights on both ranks, one run folder."""
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(worker), str(tiny_data), str(tmp_path)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rank0 = torch.load(tmp_path / "weights_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "weights_rank1.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]
    checkpoint = torch.load(tmp_path / "runs" / "ddp" / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in checkpoint["model"])
    for key in rank0:
        assert torch.equal(checkpoint["model"][key], rank0[key]), key
