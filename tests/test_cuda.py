"""The CUDA paths against the same independent references as the CPU tests, and against the CPU.

Skipped where no GPU is present (CI has none); run on a GPU machine with
``pytest tests/test_cuda.py -m "slow or not slow"``. TF32 is switched off for the comparisons
with float32 CPU results (it rounds matmul and convolution inputs to 10 mantissa bits).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch_geometric.data import Batch, Data

from p2m_geo import ModelConfig, Pixel2Mesh
from p2m_geo.camera import default_intrinsics
from p2m_geo.cli.main import cli
from p2m_geo.losses import P2MLoss, chamfer_distance

from test_losses import check_chamfer_matches_dense_reference, random_clouds
from test_model import (
    check_bf16_autocast_matches_float32,
    check_projection_matches_per_vertex_loop,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("search,chunk_bytes", [("matmul", None), ("matmul", 2000), ("auto", None)])
def test_chamfer_on_cuda_matches_dense_reference(search, chunk_bytes):
    result = check_chamfer_matches_dense_reference(search, chunk_bytes, CUDA)
    assert result.x_to_y.is_cuda and result.x_nearest.is_cuda


def test_chamfer_gradient_on_cuda_equals_the_cpu_gradient():
    _, x, xb = random_clouds([300, 2466], seed=3)
    _, y, yb = random_clouds([900, 4000], seed=4)
    grads = []
    for device in ("cpu", CUDA):
        points = x.detach().to(device, copy=True).requires_grad_(True)
        result = chamfer_distance(points, xb.to(device), y.to(device), yb.to(device), reduction="mean")
        (result.x_to_y + 0.55 * result.y_to_x).backward()
        grads.append(points.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-14)
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("sizes,nodes_per_graph", [([5, 9, 7], None), ([6, 6, 6], 6)], ids=["ragged", "equal-size"])
def test_projection_on_cuda_matches_per_vertex_loop(sizes, nodes_per_graph):
    assert check_projection_matches_per_vertex_loop(sizes, nodes_per_graph, CUDA).is_cuda


def small_target(generator: torch.Generator) -> Batch:
    clouds = []
    for count in (300, 200):
        pos = torch.randn(count, 3, generator=generator) * 0.2 + torch.tensor([0.0, 0.0, -0.8])
        clouds.append(Data(pos=pos, normal=torch.nn.functional.normalize(torch.randn(count, 3, generator=generator))))
    return Batch.from_data_list(clouds)


def test_model_loss_and_gradients_on_cuda_match_the_cpu():
    """One training step's forward and backward: the same meshes, loss terms and parameter
    gradients on the GPU as on the CPU (float32, TF32 off), with the GPU-default searches."""
    torch.manual_seed(0)
    config = ModelConfig(
        encoder_width=0.25,
        hidden=16,
        num_residual=1,
        depth_head=True,
        depth_readout=True,
        depth_head_features="spatial",
    )
    cpu_model = Pixel2Mesh(config)
    gpu_model = Pixel2Mesh(config).to(CUDA)
    gpu_model.load_state_dict(cpu_model.state_dict())
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 224, 224, generator=generator)
    target = small_target(generator)
    results = []
    for model, device in ((cpu_model, torch.device("cpu")), (gpu_model, CUDA)):
        output = model(images.to(device), default_intrinsics(2).to(device))
        total, terms = P2MLoss()(output, target.to(device), images.to(device))
        total.backward()
        grads = {name: p.grad.detach().cpu() for name, p in model.named_parameters() if p.grad is not None}
        results.append((output.meshes[2].pos.detach().cpu(), {k: v.item() for k, v in terms.items()}, grads))
    (cpu_pos, cpu_terms, cpu_grads), (gpu_pos, gpu_terms, gpu_grads) = results
    torch.testing.assert_close(gpu_pos, cpu_pos, rtol=0, atol=1e-5)
    assert gpu_terms.keys() == cpu_terms.keys()
    for key in cpu_terms:
        assert gpu_terms[key] == pytest.approx(cpu_terms[key], rel=1e-4, abs=1e-9), key
    assert gpu_grads.keys() == cpu_grads.keys() and len(cpu_grads) > 10
    for name, grad in cpu_grads.items():  # relative to each tensor's gradient norm
        assert (gpu_grads[name] - grad).norm() <= 1e-3 * grad.norm() + 1e-9, name
    assert cpu_grads["encoder.stages.0.0.0.weight"].norm() > 0  # the image gets a gradient


def test_bf16_autocast_on_cuda_matches_float32_within_tolerance():
    """The tolerance stated for CPU autocast (vertices within 5e-3) holds on the GPU."""
    check_bf16_autocast_matches_float32(CUDA)


def read_binary_ply(path: Path):
    """Vertices [V,3] and triangles [F,3] of a binary little-endian PLY with float32
    ``x y z nx ny nz`` vertices and uchar-counted int32 triangles."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    counts = {line.split()[1]: int(line.split()[2]) for line in header if line.startswith("element")}
    vertices = np.frombuffer(data, "<f4", counts["vertex"] * 6, end).reshape(-1, 6)[:, :3]
    faces = np.frombuffer(data, [("n", "u1"), ("i", "<i4", (3,))], counts["face"], end + vertices.size * 8)
    assert (faces["n"] == 3).all()
    return vertices, faces["i"]


def invoke(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_train_eval_predict_on_cuda_through_the_cli(shared_data, tmp_path):
    """``train --device cuda`` on the real biplane's views, then ``eval`` and ``predict`` on the
    GPU; the GPU's prediction equals the CPU's for the same checkpoint."""
    views = [f"shapenet_p2m/sample_abcd/rendering/{view:02d}.dat" for view in range(5)]
    (tmp_path / "train.txt").write_text("\n".join(views[:4]) + "\n")
    (tmp_path / "val.txt").write_text(views[4] + "\n")
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({"model": {"encoder_width": 0.125, "hidden": 16, "num_residual": 1}}))
    common = ["--data", shared_data, "--train-list", tmp_path / "train.txt", "--val-list", tmp_path / "val.txt"]
    invoke(
        "train", "--preset", "cpu-quick", "--config", config, *common, "--out", tmp_path / "runs", "--name", "gpu",
        "--device", "cuda", "--quiet",
    )  # fmt: skip
    run = tmp_path / "runs" / "gpu"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 10  # self-intersections are NaN (not measured) where open3d is not installed
    assert all(np.isfinite(float(rows[-1][key])) for key in ("train_total", "val_cd", "val_f@0.0001", "val_blank_cd"))
    output = invoke(
        "eval",
        "--checkpoint",
        run / "best.pt",
        "--data",
        shared_data,
        "--list",
        tmp_path / "val.txt",
        "--device",
        "cuda",
    )
    assert "| **mean** |" in output
    image = shared_data / "shapenet_p2m" / "sample_abcd" / "rendering" / "04.png"
    meshes = {}
    for device in ("cuda", "cpu"):
        invoke("predict", image, "-o", tmp_path / f"{device}.ply", "--checkpoint", run / "best.pt", "--device", device)
        meshes[device] = read_binary_ply(tmp_path / f"{device}.ply")
    np.testing.assert_allclose(meshes["cuda"][0], meshes["cpu"][0], atol=2e-3)
    assert meshes["cuda"][0].shape == (2466, 3) and meshes["cuda"][1].shape == (4928, 3)
    np.testing.assert_array_equal(meshes["cuda"][1], meshes["cpu"][1])
