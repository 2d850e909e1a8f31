"""The network must see the image: initialisation, gradient flow, weight decay, image-blind
baselines, and a two-shape overfit that only an image-conditioned model passes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from p2m_geo import ModelConfig, Pixel2Mesh
from p2m_geo.camera import default_intrinsics
from p2m_geo.config import PRESETS, TrainConfig
from p2m_geo.nn.gresnet import OUTPUT_INIT_GAIN, FusedGraphConv

CPU_QUICK = ModelConfig(**PRESETS["cpu-quick"]["model"])


def two_real_images(shared_data) -> torch.Tensor:
    from p2m_geo.data import load_image

    return torch.stack([load_image(shared_data / "examples" / name) for name in ("chair.png", "plane.png")])


def sphere_target(count: int = 3000, radius: float = 0.25, centre=(0.0, 0.05, -0.8)):
    """A GT point cloud (points and outward normals) as a PyG Batch of one graph."""
    from torch_geometric.data import Batch, Data

    normals = torch.nn.functional.normalize(torch.randn(count, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    return Batch.from_data_list([Data(pos=torch.tensor(centre) + radius * normals, normal=normals)])


@pytest.mark.parametrize("config", [ModelConfig(), CPU_QUICK], ids=["full", "cpu-quick"])
def test_fresh_encoder_maps_depend_on_the_image_at_every_level(shared_data, config):
    torch.manual_seed(0)
    model = Pixel2Mesh(config).eval()
    with torch.no_grad():
        maps = model.encoder(two_real_images(shared_data))
    for level, feature_map in enumerate(maps):
        first, second = feature_map[0], feature_map[1]
        relative = ((first - second).norm() / (0.5 * (first.norm() + second.norm()))).item()
        assert relative > 0.01, f"level {level}: maps of two images differ by only {relative:.2e} of their size"


@pytest.mark.parametrize("config", [ModelConfig(), CPU_QUICK], ids=["full", "cpu-quick"])
def test_fresh_model_outputs_the_ellipsoid_within_1e_3_yet_listens(shared_data, config):
    torch.manual_seed(0)
    model = Pixel2Mesh(config).eval()
    with torch.no_grad():
        mesh = model(two_real_images(shared_data), default_intrinsics(2)).meshes[-1]
    ellipsoid = model.batched_template(2, 2).pos
    assert (mesh.pos - ellipsoid).abs().max() < 1e-3
    # not zero: the two images already give (slightly) different meshes
    assert (mesh.pos[mesh.batch == 0] - mesh.pos[mesh.batch == 1]).abs().max() > 1e-7


def test_mesh_loss_gradient_reaches_the_first_encoder_conv(shared_data):
    from p2m_geo.losses import P2MLoss

    torch.manual_seed(0)
    model = Pixel2Mesh(ModelConfig(image_branch=False))
    images = two_real_images(shared_data)[:1]
    total, _ = P2MLoss()(model(images, default_intrinsics(1)), sphere_target())
    total.backward()
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    first, last = convs[0].weight.grad.norm().item(), convs[-1].weight.grad.norm().item()
    assert last > 0 and first >= 1e-3 * last, f"first conv gradient {first:.3e} vs last {last:.3e}"


def test_reset_parameters_reinitialises_every_weight_as_the_originals():
    torch.manual_seed(0)
    model = Pixel2Mesh(CPU_QUICK)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(7.0)
    model.reset_parameters()
    for name, parameter in model.named_parameters():
        assert not (parameter == 7.0).any(), f"{name} was not re-initialised"
        if name.endswith("bias"):
            assert parameter.eq(0).all(), f"{name}: expected a zero bias"
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):  # He: std sqrt(2 / fan_in)
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            assert module.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.25), name
        elif isinstance(module, FusedGraphConv):  # Glorot-uniform: std g * sqrt(2 / (fan_in + fan_out))
            gain = OUTPUT_INIT_GAIN if name.endswith("conv_out") else 1.0
            expected = gain * math.sqrt(2 / (module.in_channels + module.out_channels))
            for linear in (module.lin_rel, module.lin_root):
                assert linear.weight.std().item() == pytest.approx(expected, rel=0.25), name


def test_last_block_ends_with_the_originals_halving_tail():
    model = Pixel2Mesh(ModelConfig(encoder_width=0.25, hidden=32, num_residual=1, image_branch=False))
    assert [b.conv_tail is None for b in model.blocks] == [True, True, False]
    tail = model.blocks[2].conv_tail
    assert (tail.in_channels, tail.out_channels) == (32, 16) and model.blocks[2].conv_out.in_channels == 16
    assert Pixel2Mesh(ModelConfig(encoder_width=0.25, hidden=32, last_block_tail=False)).blocks[2].conv_tail is None


def test_weight_decay_groups_follow_the_original_without_its_3000_scale():
    from p2m_geo.training import parameter_groups

    train = TrainConfig()
    assert train.weight_decay == pytest.approx(5e-6 / 3000) and train.encoder_weight_decay == pytest.approx(1e-9)
    model = Pixel2Mesh(CPU_QUICK)
    groups = {group["name"]: group for group in parameter_groups(model, train)}
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [names[id(p)] for group in groups.values() for p in group["params"]]
    assert sorted(grouped) == sorted(names.values())  # every parameter exactly once
    assert groups["none"]["weight_decay"] == 0 and all(p.dim() == 1 for p in groups["none"]["params"])
    assert all(names[id(p)].startswith(("encoder.", "image_decoder.")) for p in groups["image"]["params"])
    # the graph convolutions, and the depth head's and readouts' weights (linear layers on pooled features)
    graph = [names[id(p)] for p in groups["graph"]["params"]]
    assert all(name.startswith(("blocks.", "depth_head.", "depth_readout.")) for name in graph)
    assert {"depth_head.weight", "depth_readout.0.weight", "depth_readout.2.weight"} <= set(graph)
    assert groups["graph"]["weight_decay"] == train.weight_decay
    assert groups["image"]["weight_decay"] == train.encoder_weight_decay


def test_loss_weights_are_the_originals_divided_by_3000():
    from p2m_geo.config import LossWeights

    weights = LossWeights()
    original = {
        "chamfer_gt_to_pred": 3000,
        "chamfer_pred_to_gt": 0.55 * 3000,
        "normal": 0.5,
        "edge": 300,
        "laplacian": 1500,
        "move": 100,
    }
    for name, value in original.items():
        assert getattr(weights, name) == pytest.approx(value / 3000), name
    assert weights.laplacian_first_block == 0.1


def _loader(root, list_name="test_list.txt", batch_size=2):
    from torch.utils.data import DataLoader

    from p2m_geo.data import ShapeNetP2M, collate_samples

    return DataLoader(ShapeNetP2M(root, root / list_name), batch_size=batch_size, collate_fn=collate_samples)


def test_evaluate_reports_blank_image_and_ellipsoid_baselines_and_image_sensitivity(tiny_data):
    from p2m_geo.cli.evaluate import format_table
    from p2m_geo.evaluation import evaluate
    from p2m_geo.metrics import reconstruction_metrics
    from p2m_geo.nn.gresnet import glorot_zero_bias_

    torch.manual_seed(0)
    model = Pixel2Mesh(ModelConfig(encoder_width=0.125, hidden=16, num_residual=1, image_branch=False))
    for block in model.blocks:  # visible offsets
        glorot_zero_bias_(block.conv_out, gain=0.05)
    loader = _loader(tiny_data)
    result = evaluate(model, loader, torch.device("cpu"))
    assert set(result.tables) == {"model", "blank", "ellipsoid"}
    # the blank baseline is the same model on white images with the same cameras
    batch = next(iter(loader))
    with torch.no_grad():
        blank = model(torch.ones_like(batch.images), batch.intrinsics).meshes[-1]
    first = reconstruction_metrics(blank.pos, blank.batch, batch.target.pos, batch.target.batch, len(batch))
    category = batch.categories[0]
    same_category = [i for i, c in enumerate(batch.categories) if c == category]
    assert result.tables["blank"][category]["count"] == len(same_category)  # the first batch holds all its views
    assert result.tables["blank"][category]["cd"] == pytest.approx(first["cd"][same_category].mean().item(), rel=1e-5)
    assert result.image_sensitivity > 0
    text = format_table(result)
    assert "| CD model | CD blank | CD ellipsoid |" in text and "**mean**" in text

    # an image-blind model (its encoder answers 0 to everything) scores 0 sensitivity and
    # exactly its blank-image baseline
    with torch.no_grad():
        for parameter in model.encoder.parameters():
            parameter.zero_()
    blind = evaluate(model, loader, torch.device("cpu"), baselines=("blank",))
    assert blind.image_sensitivity < 1e-9 < 1e-3 * result.image_sensitivity  # float rounding only
    for key, value in blind.tables["model"]["mean"].items():
        assert value == pytest.approx(blind.tables["blank"]["mean"][key], rel=1e-5), key


OVERFIT_STEPS = 200


@pytest.fixture(scope="module")
def chair_and_airplane(tmp_path_factory):
    from p2m_geo.data.synth import SynthSpec, generate_dataset

    root = tmp_path_factory.mktemp("two_shapes")
    generate_dataset(root, SynthSpec(per_class=2, views=1, seed=11, categories=("airplane", "chair")), workers=1)
    return root


@pytest.mark.slow
def test_overfits_two_shapes_each_from_its_own_image(chair_and_airplane):
    """Two different shapes, trained together for a bounded number of steps: each is
    reconstructed from its own image at least 2x better (F@tau) than from the other's."""
    from p2m_geo.data import ShapeNetP2M, collate_samples
    from p2m_geo.losses import P2MLoss
    from p2m_geo.metrics import reconstruction_metrics

    root = chair_and_airplane
    dataset = ShapeNetP2M(root, root / "train_list.txt")  # one airplane view, one chair view
    batch = collate_samples([dataset[i] for i in range(len(dataset))])
    assert sorted(batch.categories) == ["airplane", "chair"]
    torch.manual_seed(0)
    model = Pixel2Mesh(ModelConfig(encoder_width=0.25, hidden=64, num_residual=2, image_branch=False))
    loss_fn = P2MLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(OVERFIT_STEPS):
        total, _ = loss_fn(model(batch.images, batch.intrinsics), batch.target)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        own = model(batch.images, batch.intrinsics).meshes[-1]
        swapped = model(batch.images.flip(0), batch.intrinsics.flip(0)).meshes[-1]
    target = batch.target
    f_own = reconstruction_metrics(own.pos, own.batch, target.pos, target.batch, 2)["f@0.0001"]
    f_swapped = reconstruction_metrics(swapped.pos, swapped.batch, target.pos, target.batch, 2)["f@0.0001"]
    for index, category in enumerate(batch.categories):
        assert f_own[index] >= 2 * f_swapped[index], (
            f"{category}: F@tau {f_own[index]:.1f} from its own image vs {f_swapped[index]:.1f} from the other's"
        )
    assert f_own.min() > 30
