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
from p2m_geo.data import read_file_list

from conftest import train_args


def invoke(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def weights(path: Path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
def test_train_resume_eval_predict(tiny_data, tiny_config, tmp_path):
    runs = tmp_path / "runs"
    result = invoke(*train_args(tiny_data, tiny_config, runs, "straight", 2))
    assert result.exit_code == 0, result.output
    run = runs / "straight"
    for name in (
        "config.yaml",
        "last.pt",
        "best.pt",
        "metrics.csv",
        "curves.png",
        "preview_epoch001.png",
        "preview_epoch002.png",
    ):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in (
        "train_chamfer",
        "train_edge",
        "train_laplacian",
        "train_normal",
        "train_move",
        "val_cd",
        "val_f@0.0001",
        "val_f@0.0002",
        "lr",
        "samples_per_s",
        "val_blank_cd",
        "val_blank_f@0.0001",
        "val_ellipsoid_cd",
        "val_ellipsoid_f@0.0001",
        "val_image_sensitivity",
    ):
        assert key in rows[0] and np.isfinite(float(rows[0][key])), key
    assert float(rows[1]["val_image_sensitivity"]) > 0
    assert [float(r["val_views"]) for r in rows] == [len(read_file_list(tiny_data / "test_list.txt"))] * 2
    assert f"validation ({rows[1]['val_views'].split('.')[0]} views)" in result.output

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
    result = invoke(
        "eval",
        "--checkpoint",
        run / "best.pt",
        "--data",
        tiny_data,
        "--list",
        "test_list.txt",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--json",
        json_path,
    )
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
    result = invoke(
        "predict",
        image,
        "-o",
        out,
        "--checkpoint",
        run / "best.pt",
        "--all-levels",
        "--preview",
        tmp_path / "preview.png",
        "--device",
        "cpu",
    )
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

    # --smooth: the written mesh is the prediction Taubin-smoothed (same topology, the vertices of
    # taubin_smooth; that it smooths a rough surface is tests/test_mesh_quality.py's)
    from p2m_geo.mesh_quality import taubin_smooth

    smooth = tmp_path / "smooth.ply"
    result = invoke("predict", image, "-o", smooth, "--checkpoint", run / "best.pt", "--smooth", 10)
    assert result.exit_code == 0, result.output
    plain_mesh, smooth_mesh = o3d.io.read_triangle_mesh(str(out)), o3d.io.read_triangle_mesh(str(smooth))
    assert np.array_equal(np.asarray(plain_mesh.triangles), np.asarray(smooth_mesh.triangles))
    expected = taubin_smooth(np.asarray(plain_mesh.vertices), np.asarray(plain_mesh.triangles), 10)
    assert not np.allclose(expected, np.asarray(plain_mesh.vertices), atol=1e-6)
    np.testing.assert_allclose(np.asarray(smooth_mesh.vertices), expected, atol=1e-5)


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


def test_predict_without_checkpoint_or_bundled_model_says_how_to_get_one(tmp_path, shared_data, monkeypatch):
    import p2m_geo.pretrained as pretrained

    monkeypatch.setattr(pretrained, "FOLDER", tmp_path / "no-bundled-models")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["predict", str(shared_data / "examples" / "car.png"), "-o", "car.ply"])
    assert result.exit_code != 0
    assert "run `p2m-geo train` or pass --checkpoint" in result.output
    assert not (tmp_path / "car.ply").exists()


def test_export_then_predict_falls_back_to_the_bundled_model(
    tmp_path, shared_data, tiny_checkpoint, monkeypatch, caplog
):
    """A checkpoint exported with metadata into the bundled folder: listed by `models`, loaded
    with weights_only (half precision) and used by `predict` when no runs/*/best.pt exists."""
    import p2m_geo.pretrained as pretrained
    from p2m_geo.checkpoint import load_checkpoint, model_from_checkpoint

    folder = tmp_path / "bundled"
    folder.mkdir()
    monkeypatch.setattr(pretrained, "FOLDER", folder)
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL", "tiny")
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"car_f_tau": 12.5}')
    result = invoke(
        "models",
        "export",
        tiny_checkpoint,
        folder / "tiny.pt",
        "--command",
        "p2m-geo train --x",
        "--data",
        "synth-v2",
        "--metrics",
        metrics,
        "--commit",
        "abc123",
    )
    assert result.exit_code == 0, result.output
    bundled = torch.load(folder / "tiny.pt", weights_only=True)
    assert bundled["metadata"]["command"] == "p2m-geo train --x" and bundled["metadata"]["commit"] == "abc123"
    assert all(t.dtype == torch.float16 for t in bundled["model"].values() if t.is_floating_point())
    listing = invoke("models")
    assert "tiny (default)" in listing.output and "p2m-geo train --x" in listing.output and "12.5" in listing.output

    monkeypatch.chdir(tmp_path)  # no runs/ here
    with caplog.at_level("INFO", logger="p2m_geo.cli.predict"):
        result = invoke("predict", shared_data / "examples" / "car.png", "-o", tmp_path / "car.ply", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "(bundled model tiny)" in caplog.text
    # the half-precision weights give the float32 model's mesh to half-precision accuracy
    import open3d as o3d

    written = np.asarray(o3d.io.read_triangle_mesh(str(tmp_path / "car.ply")).vertices)
    reference = model_from_checkpoint(load_checkpoint(tiny_checkpoint)).eval()
    from p2m_geo.camera import default_intrinsics
    from p2m_geo.data.images import load_image

    with torch.no_grad():
        expected = (
            reference(load_image(shared_data / "examples" / "car.png")[None], default_intrinsics(1)).meshes[-1].pos
        )
    np.testing.assert_allclose(written, expected.numpy(), atol=2e-3)


def test_principal_point_and_focal_reach_the_projection(tmp_path, shared_data, tiny_checkpoint):
    """--focal/--principal change the intrinsics the model projects with (so the mesh)."""
    import open3d as o3d

    image = shared_data / "examples" / "car.png"
    meshes = {}
    for name, extra in {
        "default": [],
        "explicit": ["--focal", "248", "--principal", "111.5", "111.5"],
        "moved": ["--focal", "300", "--principal", "100", "120"],
    }.items():
        result = invoke(
            "predict", image, "-o", tmp_path / f"{name}.ply", "--checkpoint", tiny_checkpoint, "--device", "cpu", *extra
        )
        assert result.exit_code == 0, result.output
        meshes[name] = np.asarray(o3d.io.read_triangle_mesh(str(tmp_path / f"{name}.ply")).vertices)
    np.testing.assert_array_equal(meshes["default"], meshes["explicit"])
    assert np.abs(meshes["default"] - meshes["moved"]).max() > 1e-6


def test_default_intrinsics_principal_point():
    from p2m_geo.camera import default_intrinsics, project

    intrinsics = default_intrinsics(2, 200.0, (100.0, 120.0))
    point = torch.tensor([[0.1, 0.2, -1.0]])
    uv = project(point, intrinsics[:1])
    # u = f X / -Z + c_x, v = f (-Y) / -Z + c_y, written out
    np.testing.assert_allclose(uv.numpy(), [[200 * 0.1 + 100, 200 * -0.2 + 120]], rtol=1e-6)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_data, tmp_path):
    """torchrun with 2 gloo processes: identical weights on both ranks, one run folder."""
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(worker),
        str(tiny_data),
        str(tmp_path),
    ]
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


class ToyEncoder(torch.nn.Module):
    """Average pooling at strides 4..32 and a 1x1 convolution: the smallest valid Encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Conv2d(3, 5, 1)
        self.channels = [5, 5, 5, 5]

    def reset_parameters(self) -> None:
        self.mix.reset_parameters()

    def forward(self, images):
        return [self.mix(torch.nn.functional.avg_pool2d(images, stride)) for stride in (4, 8, 16, 32)]


def test_a_registered_encoder_trains_through_the_cli(tiny_data, tiny_config, tmp_path, monkeypatch):
    """Adding a backbone is one registry entry: config validation, the CLI choice and the model pick it up."""
    from p2m_geo.models.encoders import ENCODERS

    monkeypatch.setitem(ENCODERS, "toy", lambda width, weights_path, pretrained: ToyEncoder())
    result = invoke(
        "train",
        "--preset",
        "cpu-quick",
        "--config",
        tiny_config,
        "--data",
        tiny_data,
        "--backbone",
        "toy",
        "--out",
        tmp_path,
        "--name",
        "toy",
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert weights(tmp_path / "toy" / "last.pt")["encoder.mix.weight"].shape == (5, 3, 1, 1)
    refused = invoke("train", "--backbone", "nope", "--out", tmp_path)
    assert refused.exit_code == 2 and "'nope' is not one of" in refused.output and "toy" in refused.output


def test_a_registered_dataset_format_trains_through_the_cli(tiny_data, tiny_config, tmp_path, monkeypatch):
    """Adding a dataset format is one factory entry: config validation and training pick it up."""
    from p2m_geo.data import ShapeNetP2M
    from p2m_geo.data.factory import DATASET_FORMATS

    used = []

    def two_views(config, ctx, progress):
        used.append(config.data.format)
        lines = (tiny_data / "train_list.txt").read_text().splitlines()[:2]
        return ShapeNetP2M(tiny_data, lines), ShapeNetP2M(tiny_data, lines)

    monkeypatch.setitem(DATASET_FORMATS, "two-views", two_views)
    config = tmp_path / "format.yaml"
    config.write_text(tiny_config.read_text() + "data:\n  format: two-views\n")
    result = invoke(
        "train",
        "--preset",
        "cpu-quick",
        "--config",
        config,
        "--out",
        tmp_path,
        "--name",
        "fmt",
        "--epochs",
        "1",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert used == ["two-views"]
    history = list(csv.DictReader(open(tmp_path / "fmt" / "metrics.csv")))
    assert len(history) == 1 and int(history[0]["step"]) == 1  # 2 views, batch 2: one step


def test_train_checkpoint_round_trip_is_what_resume_reads(tiny_data, tiny_config, tmp_path):
    from p2m_geo.checkpoint import load_checkpoint
    from p2m_geo.engine import TrainCheckpoint

    result = invoke(*train_args(tiny_data, tiny_config, tmp_path, "ckpt", 1))
    assert result.exit_code == 0, result.output
    raw = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    restored = TrainCheckpoint.from_dict(raw)
    assert set(restored.to_dict()) | {"format_version"} == set(raw)
    assert restored.train_state["epoch"] == 1 and restored.history[-1]["epoch"] == 1
    with pytest.raises(ValueError, match="expected a training checkpoint, got none for 'optimizer'"):
        TrainCheckpoint.from_dict({k: v for k, v in raw.items() if k != "optimizer"})


def _learning_rates(train, steps_per_epoch: int, per_step: bool) -> list:
    """The learning rate of every optimiser step of a run with ``train``'s schedule."""
    from p2m_geo.training import build_scheduler

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=train.lr)
    scheduler = build_scheduler(optimizer, train, steps_per_epoch)
    rates = []
    for _ in range(train.epochs):
        for _ in range(steps_per_epoch):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if per_step:
                scheduler.step()
        if not per_step:
            scheduler.step()
    return rates + [optimizer.param_groups[0]["lr"]]


@pytest.mark.parametrize(
    "epochs, milestones, start_epoch", [(5, (3,), 3), (5, (), 4), (5, (7,), 4), (1, (1,), 0), (4, (2, 3), 2)]
)
def test_linear_decay_schedule_steps_down_to_zero_after_the_last_step(epochs, milestones, start_epoch):
    from p2m_geo.config import TrainConfig
    from p2m_geo.training import scheduler_interval

    train = TrainConfig(epochs=epochs, lr=0.3, lr_schedule="linear-decay", lr_milestones=milestones)
    assert scheduler_interval(train) == "step"
    steps_per_epoch = 7
    rates = _learning_rates(train, steps_per_epoch, per_step=True)
    constant = start_epoch * steps_per_epoch
    decay = (epochs - start_epoch) * steps_per_epoch
    expected = [0.3] * constant + [0.3 * (decay - k) / decay for k in range(decay)] + [0.0]
    np.testing.assert_allclose(rates, expected, rtol=1e-12, atol=1e-15)
    assert rates[constant - 1 if constant else 0] == pytest.approx(0.3) and rates[-2] == pytest.approx(0.3 / decay)


def test_step_and_cosine_schedules_step_per_epoch():
    from p2m_geo.config import TrainConfig
    from p2m_geo.training import build_scheduler, scheduler_interval

    step = TrainConfig(epochs=4, lr=1.0, lr_milestones=(2, 3), lr_gamma=0.5)
    assert scheduler_interval(step) == "epoch"
    assert _learning_rates(step, 2, per_step=False) == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25]
    cosine = TrainConfig(epochs=4, lr=1.0, lr_schedule="cosine")
    expected = [0.5 * (1 + np.cos(np.pi * e / 4)) for e in range(4) for _ in range(2)] + [0.0]
    np.testing.assert_allclose(_learning_rates(cosine, 2, per_step=False), expected, atol=1e-12)
    with pytest.raises(ValueError, match="steps_per_epoch: expected a positive integer for linear-decay, got 0"):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        build_scheduler(optimizer, TrainConfig(lr_schedule="linear-decay"))


@pytest.mark.slow
def test_linear_decay_run_resumes_bit_identical_and_ends_at_zero(tiny_data, tmp_path):
    """The per-step schedule through the CLI: the last epoch's row logs learning rate 0, and a
    run stopped after epoch 1 (``--max-steps``: the schedule is that of the 2-epoch run) and
    resumed ends with the weights of the straight run."""
    import yaml

    from conftest import TINY

    config = tmp_path / "decay.yaml"
    train = {**TINY["train"], "lr_schedule": "linear-decay", "lr_milestones": [1]}
    config.write_text(yaml.safe_dump({**TINY, "train": train}))
    runs = tmp_path / "runs"
    assert invoke(*train_args(tiny_data, config, runs, "straight", 2)).exit_code == 0
    rows = list(csv.DictReader(open(runs / "straight" / "metrics.csv")))
    assert float(rows[0]["lr"]) == pytest.approx(1e-3) and float(rows[1]["lr"]) == 0.0
    steps_per_epoch = int(rows[0]["step"])
    stopped = invoke(*train_args(tiny_data, config, runs, "split", 2), "--max-steps", steps_per_epoch)
    assert stopped.exit_code == 0, stopped.output
    assert len(list(csv.DictReader(open(runs / "split" / "metrics.csv")))) == 1
    result = invoke("train", "--resume", runs / "split", "--max-steps", 0, "--quiet")
    assert result.exit_code == 0, result.output
    straight = weights(runs / "straight" / "last.pt")
    resumed = weights(runs / "split" / "last.pt")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_weight_average_matches_a_float64_loop():
    from p2m_geo.training import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    average = WeightAverage(model, decay=0.9)
    reference = [p.detach().double().clone() for p in model.parameters()]
    for step in range(1, 40):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        model.train()(torch.randn(5, 3))  # moves the BatchNorm running statistics
        average.update(model, step)
        d = min(0.9, (1 + step) / (10 + step))
        reference = [d * r + (1 - d) * p.detach().double() for r, p in zip(reference, model.parameters())]
    assert average.decay_at(1) == pytest.approx(2 / 11) and average.decay_at(1000) == 0.9
    for mine, expected in zip(average.model.parameters(), reference):
        torch.testing.assert_close(mine.double(), expected, rtol=0, atol=1e-5)
        assert not mine.requires_grad
    for mine, theirs in zip(average.model.buffers(), model.buffers()):
        assert torch.equal(mine, theirs)  # buffers are copied, not averaged
    with pytest.raises(ValueError, match="decay: expected a number in"):
        WeightAverage(model, 1.0)


@pytest.mark.slow
def test_weight_average_is_what_is_validated_saved_and_resumed(tiny_data, tmp_path):
    """With train.ema_decay the checkpoint's ``model`` is the average (its eval reproduces the
    epoch's validation row), ``train_model`` the optimised weights; resume is bit-identical."""
    import yaml

    from conftest import TINY

    config = tmp_path / "ema.yaml"
    config.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "ema_decay": 0.5}}))
    runs = tmp_path / "runs"
    assert invoke(*train_args(tiny_data, config, runs, "straight", 2)).exit_code == 0
    assert invoke(*train_args(tiny_data, config, runs, "split", 1)).exit_code == 0
    result = invoke("train", "--resume", runs / "split", "--epochs", 2, "--quiet")
    assert result.exit_code == 0, result.output
    straight = torch.load(runs / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(runs / "split" / "last.pt", weights_only=True)
    for part in ("model", "train_model"):
        assert straight[part].keys() == resumed[part].keys()
        for key in straight[part]:
            assert torch.equal(straight[part][key], resumed[part][key]), (part, key)
    key = "blocks.2.conv_out.lin_rel.weight"
    assert not torch.equal(straight["model"][key], straight["train_model"][key])

    json_path = tmp_path / "eval.json"
    args = ["--data", tiny_data, "--list", "test_list.txt", "--device", "cpu", "--workers", "0"]
    result = invoke("eval", "--checkpoint", runs / "straight" / "last.pt", *args, "--json", json_path)
    assert result.exit_code == 0, result.output
    row = list(csv.DictReader(open(runs / "straight" / "metrics.csv")))[-1]
    mean = json.loads(json_path.read_text())["model"]["mean"]
    assert mean["cd"] == pytest.approx(float(row["val_cd"]), rel=1e-5)  # both x1000
    assert mean["f@0.0001"] == pytest.approx(float(row["val_f@0.0001"]), rel=1e-5)


def test_freeze_encoder_trains_the_graph_network_only(tiny_data, tiny_config, tmp_path):
    """``train.freeze_encoder``: after one step and after two the encoder's weights are equal
    (those the run started from), while the G-ResNet's change; without it the encoder trains."""
    import yaml

    from conftest import TINY

    frozen = tmp_path / "frozen.yaml"
    frozen.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "freeze_encoder": True}}))
    runs = tmp_path / "runs"
    for name, config, steps in (("one", frozen, 1), ("two", frozen, 2), ("free", tiny_config, 2)):
        result = invoke(*train_args(tiny_data, config, runs, name, 1), "--max-steps", steps)
        assert result.exit_code == 0, result.output
    one, two, free = (weights(runs / name / "last.pt") for name in ("one", "two", "free"))
    encoder = [key for key in one if key.startswith("encoder.") and key.endswith("weight")]
    assert encoder and all(torch.equal(one[key], two[key]) for key in encoder)
    assert not all(torch.equal(one[key], free[key]) for key in encoder)
    assert not torch.equal(one["blocks.2.conv_out.lin_rel.weight"], two["blocks.2.conv_out.lin_rel.weight"])
