"""Pixel2Mesh layers and network against hand-written references."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from p2m_geo import ModelConfig, Pixel2Mesh
from p2m_geo.camera import default_intrinsics
from p2m_geo.config import ConfigError, to_dict
from p2m_geo.nn import GraphProjection, GraphUnpooling, DeformationBlock
from p2m_geo.nn.projection import bilinear_sample_dense
from p2m_geo.nn.gresnet import glorot_zero_bias_
from p2m_geo.models.pixel2mesh import depth_head_inputs

SMALL = ModelConfig(encoder_width=0.25, hidden=16, num_residual=1, image_branch=True)


def three_cameras(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(
        [
            [[248.0, 0, 111.5], [0, 248.0, 111.5], [0, 0, 1]],
            [[180.0, 0, 100.0], [0, 200.0, 120.0], [0, 0, 1]],
            [[300.0, 0, 130.0], [0, 290.0, 90.0], [0, 0, 1]],
        ],
        dtype=dtype,
    )


def bilinear_reference(fmap: np.ndarray, u: float, v: float, image_size: int = 224) -> np.ndarray:
    """Sample ``fmap [C,H,W]`` at input-pixel (u, v): pixel centres, clamp to the border."""
    channels, height, width = fmap.shape
    x = (u + 0.5) * width / image_size - 0.5
    y = (v + 0.5) * height / image_size - 0.5
    x = min(max(x, 0.0), width - 1.0)
    y = min(max(y, 0.0), height - 1.0)
    x0, y0 = int(math.floor(x)), int(math.floor(y))
    x1, y1 = min(x0 + 1, width - 1), min(y0 + 1, height - 1)
    ax, ay = x - x0, y - y0
    return (
        fmap[:, y0, x0] * (1 - ax) * (1 - ay)
        + fmap[:, y0, x1] * ax * (1 - ay)
        + fmap[:, y1, x0] * (1 - ax) * ay
        + fmap[:, y1, x1] * ax * ay
    )


def random_vertices(count: int, generator: torch.Generator) -> torch.Tensor:
    xy = (torch.rand(count, 2, generator=generator, dtype=torch.float64) - 0.5) * 0.8
    z = -0.5 - torch.rand(count, 1, generator=generator, dtype=torch.float64)
    return torch.cat([xy, z], dim=1)


def check_projection_matches_per_vertex_loop(sizes, nodes_per_graph, device="cpu") -> torch.Tensor:
    """Features sampled on ``device`` (float64) against a per-vertex loop of the pinhole projection
    and :func:`bilinear_reference`; returns the projection's output (on ``device``)."""
    generator = torch.Generator().manual_seed(1)
    pos = torch.cat([random_vertices(n, generator) for n in sizes])
    pos[0] = torch.tensor([5.0, 5.0, -1.0], dtype=torch.float64)  # far outside: border clamp
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    maps = [
        torch.randn(3, c, s, s, generator=generator, dtype=torch.float64)
        for c, s in ((4, 56), (3, 28), (2, 14), (5, 7))
    ]
    intrinsics = three_cameras()
    out = GraphProjection()(
        pos.to(device),
        batch.to(device),
        intrinsics.to(device),
        [m.to(device) for m in maps],
        nodes_per_graph=nodes_per_graph,
    )
    assert out.shape == (sum(sizes), 3 + 4 + 3 + 2 + 5)
    for i in range(len(pos)):
        x, y, z = pos[i].tolist()
        k = intrinsics[batch[i]].numpy()
        u = k[0, 0] * x / -z + k[0, 2]
        v = k[1, 1] * -y / -z + k[1, 2]
        expected = [pos[i].numpy()] + [bilinear_reference(m[batch[i]].numpy(), u, v) for m in maps]
        np.testing.assert_allclose(out[i].cpu().numpy(), np.concatenate(expected), rtol=1e-10, atol=1e-10)
    return out


@pytest.mark.parametrize("sizes,nodes_per_graph", [([5, 9, 7], None), ([6, 6, 6], 6)], ids=["ragged", "equal-size"])
def test_projection_matches_per_vertex_loop(sizes, nodes_per_graph):
    check_projection_matches_per_vertex_loop(sizes, nodes_per_graph)


def test_projection_gradient_wrt_pos_matches_finite_differences():
    generator = torch.Generator().manual_seed(2)
    pos = random_vertices(6, generator).requires_grad_(True)
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    maps = [torch.randn(2, 3, 28, 28, generator=generator, dtype=torch.float64)]
    intrinsics = three_cameras()[:2]
    projection = GraphProjection()

    def sampled_features(p):
        return projection(p, batch, intrinsics, maps)[:, 3:]

    def sampled_features_equal_size(p):
        return projection(p, batch, intrinsics, maps, nodes_per_graph=3)[:, 3:]

    assert torch.autograd.gradcheck(sampled_features, (pos,), eps=1e-7, atol=1e-5)
    assert torch.autograd.gradcheck(sampled_features_equal_size, (pos,), eps=1e-7, atol=1e-5)
    grad = torch.autograd.grad(sampled_features(pos).sum(), pos)[0]
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("height,width", [(7, 7), (2, 5), (14, 14)])
def test_dense_bilinear_sampling_matches_grid_sample_and_its_gradients(height, width):
    generator = torch.Generator().manual_seed(3)
    fmap = torch.randn(2, 4, height, width, generator=generator, dtype=torch.float64, requires_grad=True)
    grid = torch.rand(2, 40, 2, generator=generator, dtype=torch.float64) * 2.4 - 1.2  # some outside: border
    grid[0, 0] = torch.tensor([1.0 - 1.0 / width, -1.0 + 1.0 / height], dtype=torch.float64)  # last/first centre
    grid[0, 1] = torch.tensor([(2 * 2 + 1.0) / width - 1.0, 0.3], dtype=torch.float64)  # on a cell centre in x
    grid.requires_grad_(True)
    reference = F.grid_sample(fmap, grid[:, :, None], mode="bilinear", padding_mode="border", align_corners=False)
    reference = reference.squeeze(-1).transpose(1, 2)
    dense = bilinear_sample_dense(fmap, grid)
    torch.testing.assert_close(dense, reference, rtol=0, atol=1e-12)
    upstream = torch.randn(dense.shape, generator=generator, dtype=torch.float64)
    expected = torch.autograd.grad(reference, (fmap, grid), upstream)
    got = torch.autograd.grad(dense, (fmap, grid), upstream)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-12)
    inside = (grid.detach().abs() < 1 - 1.0 / max(height, width)).all(-1)  # away from the clamp's kinks
    torch.testing.assert_close(got[1][inside], expected[1][inside], rtol=0, atol=1e-10)


def test_dense_bilinear_sampling_of_a_non_finite_point_gives_nan_like_grid_sample():
    fmap = torch.randn(1, 3, 7, 7, dtype=torch.float64)
    grid = torch.tensor([[[0.1, -0.2], [float("nan"), 0.3], [float("inf"), -float("inf")]]], dtype=torch.float64)
    dense = bilinear_sample_dense(fmap, grid)
    reference = F.grid_sample(fmap, grid[:, :, None], mode="bilinear", padding_mode="border", align_corners=False)
    reference = reference.squeeze(-1).transpose(1, 2)
    torch.testing.assert_close(dense[0, 0], reference[0, 0])
    assert torch.isnan(dense[0, 1]).all()  # a diverged vertex stays visible to the loss's check
    torch.testing.assert_close(dense[0, 2], fmap[0, :, 0, 6])  # x = +inf, y = -inf: the border cell (row 0, column 6)


def test_projection_gradient_on_a_small_map_matches_finite_differences():
    generator = torch.Generator().manual_seed(4)
    pos = random_vertices(6, generator).requires_grad_(True)
    maps = [torch.randn(2, 3, 7, 7, generator=generator, dtype=torch.float64, requires_grad=True)]
    batch, intrinsics = torch.tensor([0, 0, 0, 1, 1, 1]), three_cameras()[:2]
    projection = GraphProjection()
    assert torch.autograd.gradcheck(
        lambda p, m: projection(p, batch, intrinsics, [m], nodes_per_graph=3)[:, 3:],
        (pos, maps[0]),
        eps=1e-7,
        atol=1e-5,
    )


def test_projection_rejects_wrong_nodes_per_graph():
    pos = torch.zeros(6, 3) + torch.tensor([0.0, 0.0, -1.0])
    with pytest.raises(ValueError, match=r"nodes_per_graph: expected 2 graphs x 4 = 8 vertices, got 6"):
        GraphProjection()(
            pos, torch.tensor([0, 0, 0, 1, 1, 1]), default_intrinsics(2), [torch.rand(2, 1, 7, 7)], nodes_per_graph=4
        )


def test_unpooling_appends_midpoint_features_per_graph():
    # two graphs of 3 and 4 vertices with pair lists of 2 and 3 pairs
    graphs = [
        Data(x=torch.randn(3, 5), unpool_index=torch.tensor([[0, 1], [1, 2]]).t(), num_nodes=3),
        Data(x=torch.randn(4, 5), unpool_index=torch.tensor([[0, 3], [2, 3], [1, 0]]).t(), num_nodes=4),
    ]
    batch = Batch.from_data_list(graphs)
    x, new_batch = GraphUnpooling()(batch.x, batch.unpool_index, batch.batch)
    expected, expected_batch = [], []
    for g, data in enumerate(graphs):
        rows = [data.x[i] for i in range(data.num_nodes)]
        rows += [(data.x[i] + data.x[j]) / 2 for i, j in data.unpool_index.t().tolist()]
        expected += rows
        expected_batch += [g] * len(rows)
    torch.testing.assert_close(x, torch.stack(expected))
    assert new_batch.tolist() == expected_batch


@pytest.mark.parametrize("channels", [4, 9], ids=["widening-input", "narrowing-input"])
def test_gresnet_matches_dense_reference(channels):
    generator = torch.Generator().manual_seed(3)
    num_nodes, hidden = 7, 6
    edges = [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (4, 5), (5, 6), (6, 4), (2, 4)]
    edge_index = torch.tensor(edges + [(j, i) for i, j in edges]).t()
    x = torch.randn(num_nodes, channels, generator=generator, dtype=torch.float64)
    network = DeformationBlock(channels, hidden, num_residual=2).double()
    adjacency = np.zeros((num_nodes, num_nodes))
    for i, j in edge_index.t().tolist():
        adjacency[j, i] = 1.0
    mean_adjacency = adjacency / adjacency.sum(1, keepdims=True)

    def conv(layer, h):
        w_rel = layer.lin_rel.weight.detach().numpy()
        b_rel = layer.lin_rel.bias.detach().numpy()
        w_root = layer.lin_root.weight.detach().numpy()
        return (mean_adjacency @ h) @ w_rel.T + b_rel + h @ w_root.T

    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    h = relu(conv(network.conv_in, x.numpy()))
    for block in network.residual:
        h = 0.5 * (h + relu(conv(block.conv2, relu(conv(block.conv1, h)))))
    offsets, hidden_out = network(x, edge_index)
    np.testing.assert_allclose(hidden_out.detach().numpy(), h, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(offsets.detach().numpy(), conv(network.conv_out, h), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("aggr", ["mean", "add", "max"])
@pytest.mark.parametrize("in_channels,out_channels", [(12, 5), (5, 5), (5, 12)])
@pytest.mark.parametrize("index_type", ["tensor", "EdgeIndex"])
def test_fused_graph_conv_equals_pyg_graph_conv(aggr, in_channels, out_channels, index_type):
    """Same parameters, same outputs and gradients as PyG's GraphConv (float64; float32 for
    ``EdgeIndex``, whose cached CSR values are float32)."""
    from torch_geometric import EdgeIndex
    from torch_geometric.nn import GraphConv

    from p2m_geo.nn import FusedGraphConv

    generator = torch.Generator().manual_seed(5)
    num_nodes = 30
    edge_index = torch.randint(0, num_nodes, (2, 90), generator=generator)
    dtype, tolerance = torch.float64, 1e-12
    if index_type == "EdgeIndex":
        edge_index = EdgeIndex(edge_index, sparse_size=(num_nodes, num_nodes)).sort_by("col")[0].fill_cache_()
        dtype, tolerance = torch.float32, 1e-5
    reference = GraphConv(in_channels, out_channels, aggr=aggr).to(dtype)
    fused = FusedGraphConv(in_channels, out_channels, aggr=aggr).to(dtype)
    fused.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(num_nodes, in_channels, generator=generator, dtype=dtype, requires_grad=True)
    upstream = torch.randn(num_nodes, out_channels, generator=generator, dtype=dtype)
    outputs, gradients = [], []
    for layer in (reference, fused):
        out = layer(x, edge_index)
        grads = torch.autograd.grad(out, [x, *layer.parameters()], upstream)
        outputs.append(out)
        gradients.append(grads)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=tolerance, atol=tolerance)
    for got, expected in zip(gradients[1], gradients[0]):
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def expected_parameter_count(config: ModelConfig, feature_channels) -> int:
    def graph_conv(c_in, c_out):
        return 2 * c_in * c_out + c_out  # lin_rel (with bias) + lin_root

    def gresnet(c_in, tail=False):
        h = config.hidden
        body = graph_conv(c_in, h) + config.num_residual * 2 * graph_conv(h, h)
        # the original's block 3 ends hidden -> hidden/2 -> 3 (15 convolutions)
        return body + (graph_conv(h, h // 2) + graph_conv(h // 2, 3) if tail else graph_conv(h, 3))

    width = [max(4, int(round(b * config.encoder_width))) for b in (16, 32, 64, 128, 256, 512)]
    convs = [
        (3, width[0], 3),
        (width[0], width[0], 3),
        (width[0], width[1], 3),
        (width[1], width[1], 3),
        (width[1], width[1], 3),
    ]
    previous = width[1]
    # the stride-2 conv opening each stage is 5x5 for the 14 and 7 px stages, the rest 3x3
    for c, k, n in ((width[2], 3, 3), (width[3], 3, 3), (width[4], 5, 3), (width[5], 5, 4)):
        for i in range(n):
            convs.append((previous, c, k if i == 0 else 3))
            previous = c
    encoder = sum(ci * co * k * k + co for ci, co, k in convs)
    features = 3 + sum(feature_channels)
    return (
        encoder
        + gresnet(features)
        + gresnet(features + config.hidden)
        + gresnet(features + config.hidden, tail=config.last_block_tail)
    )


def test_default_model_parameter_count():
    config = ModelConfig(image_branch=False)
    model = Pixel2Mesh(config)
    assert model.encoder.channels == [64, 128, 256, 512]
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameter_count(config, [64, 128, 256, 512])
    print(f"Pixel2Mesh default (cnn18, hidden 192) parameters: {count:,}")


def test_forward_shapes_and_topology():
    model = Pixel2Mesh(SMALL).eval()
    out = model(torch.rand(2, 3, 224, 224), default_intrinsics(2), reconstruct_image=True)
    for mesh, (v, e, f) in zip(out.meshes, [(156, 462, 308), (618, 1848, 1232), (2466, 7392, 4928)]):
        assert mesh.num_graphs == 2
        assert mesh.pos.shape == (2 * v, 3)
        assert mesh.edge_index.shape == (2, 4 * e)
        assert mesh.face.shape == (3, 2 * f)
        assert mesh.batch.tolist() == [0] * v + [1] * v
        assert int(mesh.face[:, f:].min()) == v  # second graph's faces are offset by PyG
    assert out.image_logits.shape == (2, 3, 224, 224)
    torch.testing.assert_close(out.pos_before[0], model.pos_0.repeat(2, 1))


def run_batch_equivalence(device: torch.device, memory_format=torch.contiguous_format) -> None:
    torch.manual_seed(0)
    model = Pixel2Mesh(ModelConfig()).to(device, memory_format=memory_format).eval()
    assert model.image_memory_format() == memory_format
    images = torch.rand(4, 3, 224, 224, device=device)
    intrinsics = torch.stack([three_cameras(torch.float32)[i % 3] for i in range(4)]).to(device)
    intrinsics[3, 0, 0] = 220.0
    with torch.no_grad():
        together = model(images, intrinsics)
        for i in range(4):
            alone = model(images[i : i + 1], intrinsics[i : i + 1])
            for level in range(3):
                mask = together.meshes[level].batch == i
                torch.testing.assert_close(
                    together.meshes[level].pos[mask], alone.meshes[level].pos, atol=1e-5, rtol=1e-5
                )
    # different cameras must matter: graphs 0 and 3 share nothing
    assert not torch.allclose(
        together.meshes[2].pos[together.meshes[2].batch == 0], together.meshes[2].pos[together.meshes[2].batch == 3]
    )


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels-last"])
def test_batch_equivalence_cpu(memory_format):
    run_batch_equivalence(torch.device("cpu"), memory_format)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
def test_batch_equivalence_cuda():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    run_batch_equivalence(torch.device("cuda"), torch.channels_last)


@pytest.mark.slow
def test_forward_backward_batch_of_8_default_model():
    model = Pixel2Mesh(ModelConfig(image_branch=True))
    out = model(torch.rand(8, 3, 224, 224), default_intrinsics(8), reconstruct_image=True)
    loss = sum(mesh.pos.square().mean() for mesh in out.meshes) + out.image_logits.mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    # gradients reach the encoder through the vertex projection, not only through the image branch
    model.zero_grad()
    out = model(torch.rand(2, 3, 224, 224), default_intrinsics(2))
    out.meshes[2].pos.square().sum().backward()
    assert model.encoder.stages[0][0][0].weight.grad.abs().sum() > 0


def test_save_and_reload_through_p2m_geo_checkpoint(tmp_path, monkeypatch):
    """save_checkpoint -> load_checkpoint (which must use weights_only=True) -> model_from_checkpoint."""
    from p2m_geo import checkpoint as checkpoint_module

    model = Pixel2Mesh(SMALL).eval()
    path = tmp_path / "model.pt"
    checkpoint_module.save_checkpoint(path, {"model_config": to_dict(model.config), "model": model.state_dict()})
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    restored = checkpoint_module.model_from_checkpoint(checkpoint_module.load_checkpoint(path)).eval()
    assert calls == [True]
    images = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            model(images, default_intrinsics(1)).meshes[2].pos, restored(images, default_intrinsics(1)).meshes[2].pos
        )


def test_wrong_intrinsics_shape_is_a_clear_error():
    model = Pixel2Mesh(SMALL)
    with pytest.raises(ValueError, match=r"intrinsics: expected \[2,3,3\].*got \[3, 3\]"):
        model(torch.rand(2, 3, 224, 224), default_intrinsics(1)[0])


@pytest.mark.parametrize("backbone,channels", [("vgg16", [256, 512, 512, 512]), ("resnet50", [256, 512, 1024, 2048])])
def test_torchvision_backbones_give_four_maps(backbone, channels):
    from p2m_geo.models import build_encoder

    encoder = build_encoder(backbone).eval()
    with torch.no_grad():
        maps = encoder(torch.rand(1, 3, 224, 224))
    assert [m.shape[1] for m in maps] == channels
    assert [m.shape[-1] for m in maps] == [56, 28, 14, 7]


def test_backbone_weights_load_from_a_local_file(tmp_path):
    from torchvision.models import resnet50

    from p2m_geo.models import build_encoder

    torch.manual_seed(1)
    reference = resnet50(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet50.pt")
    encoder = build_encoder("resnet50", weights_path=str(tmp_path / "resnet50.pt"))
    torch.testing.assert_close(encoder.stages[3][0].conv1.weight, reference.layer4[0].conv1.weight)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="backbone_weights: expected a ResNet state dict"):
        build_encoder("resnet50", weights_path=str(tmp_path / "bad.pt"))


def check_bf16_autocast_matches_float32(device: torch.device) -> None:
    """Stated tolerance of the autocast mode: vertex positions within 5e-3 (camera-frame units,
    the mesh spans ~0.5) of float32, and batch equivalence within the same bound."""
    torch.manual_seed(0)
    model = Pixel2Mesh(ModelConfig(encoder_width=0.25, hidden=32, num_residual=2)).to(device).eval()
    for block in model.blocks:  # larger output layers: offsets of ~0.1, a signal above the tolerance
        glorot_zero_bias_(block.conv_out, gain=0.03)
    images = torch.rand(3, 3, 224, 224).to(device)
    intrinsics = torch.stack([three_cameras(torch.float32)[i] for i in range(3)]).to(device)
    with torch.no_grad():
        reference = model(images, intrinsics).meshes[2]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            together = model(images, intrinsics).meshes[2]
            alone = model(images[1:2], intrinsics[1:2]).meshes[2]
    assert together.pos.dtype == torch.float32
    assert (together.pos - reference.pos).abs().max() < 5e-3
    assert (together.pos[together.batch == 1] - alone.pos).abs().max() < 5e-3
    assert (reference.pos - model.pos_2.repeat(3, 1)).abs().max() > 2e-2  # the tolerance is below the signal


def test_bf16_autocast_matches_float32_within_tolerance():
    check_bf16_autocast_matches_float32(torch.device("cpu"))


def test_amp_training_step_keeps_losses_in_float32():
    from p2m_geo.training import ModelWithLoss
    from p2m_geo.losses import P2MLoss
    from types import SimpleNamespace

    model = Pixel2Mesh(SMALL)
    step = ModelWithLoss(model, P2MLoss(), amp=True)
    target = Batch.from_data_list(
        [Data(pos=torch.randn(200, 3) * 0.2 + torch.tensor([0, 0, -0.8]), normal=torch.randn(200, 3)) for _ in range(2)]
    )
    batch = SimpleNamespace(images=torch.rand(2, 3, 224, 224), intrinsics=default_intrinsics(2), target=target)
    total, terms = step(batch, use_image_branch=True)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert all(value.dtype == torch.float32 for value in terms.values())
    total.backward()
    assert model.blocks[2].conv_out.lin_rel.weight.grad.abs().sum() > 0


def test_training_step_mirrors_views_with_the_configured_probability():
    """``train.mirror_probability``: 1 trains on every view mirrored (the loss equals the loss of
    the mirrored batch, and differs from the unmirrored one), 0 draws no random number."""
    from p2m_geo.data import collate_samples
    from p2m_geo.data.shapenet import mirror_left_right
    from p2m_geo.losses import P2MLoss
    from p2m_geo.training import ModelWithLoss

    model = Pixel2Mesh(SMALL)
    items = [
        {
            "image": torch.rand(3, 224, 224),
            "points": torch.randn(200, 3) * 0.2 + torch.tensor([0.1, 0.05, -0.8]),
            "normals": torch.randn(200, 3),
            "intrinsics": default_intrinsics(1)[0],
            "category": "x",
            "name": str(i),
        }
        for i in range(2)
    ]
    batch = collate_samples(items)
    plain = ModelWithLoss(model, P2MLoss()).train()
    always = ModelWithLoss(model, P2MLoss(), mirror_probability=1.0).train()
    expected, _ = plain(mirror_left_right(batch, torch.tensor([True, True])), use_image_branch=False)
    unmirrored, _ = plain(batch, use_image_branch=False)
    total, _ = always(batch, use_image_branch=False)
    torch.testing.assert_close(total, expected)
    assert not torch.allclose(total, unmirrored)
    state = torch.random.get_rng_state()
    plain(batch, use_image_branch=False)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.slow
def test_compiled_model_matches_eager_and_keeps_batch_equivalence():
    """``train.compile``: same meshes and gradients as eager (float32 rounding), and a graph's
    mesh does not depend on the rest of its batch."""
    torch.manual_seed(0)
    config = ModelConfig(encoder_width=0.25, hidden=32, num_residual=2, image_branch=True)
    eager = Pixel2Mesh(config)
    compiled = Pixel2Mesh(config)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_submodules()
    images = torch.rand(3, 3, 224, 224)
    intrinsics = torch.stack([three_cameras(torch.float32)[i] for i in range(3)])

    def loss_and_grads(model):
        out = model(images, intrinsics, reconstruct_image=True)
        loss = sum(mesh.pos.square().mean() for mesh in out.meshes) + out.image_logits.sigmoid().mean()
        return out, torch.autograd.grad(loss, list(model.parameters()))

    reference, reference_grads = loss_and_grads(eager)
    result, grads = loss_and_grads(compiled)
    for level in range(3):
        torch.testing.assert_close(result.meshes[level].pos, reference.meshes[level].pos, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, reference_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        alone = compiled(images[1:2], intrinsics[1:2]).meshes[2].pos
    torch.testing.assert_close(alone, reference.meshes[2].pos[reference.meshes[2].batch == 1], rtol=1e-5, atol=1e-5)
    assert compiled.state_dict().keys() == eager.state_dict().keys()


def test_fused_graph_conv_gradcheck_and_saves_less_for_backward():
    """The recomputing backward is exact (float64 gradcheck) and keeps only the input, not
    the aggregated features, for backward."""
    from torch_geometric.nn import GraphConv

    from p2m_geo.nn import FusedGraphConv

    generator = torch.Generator().manual_seed(8)
    edge_index = torch.randint(0, 12, (2, 40), generator=generator)
    layer = FusedGraphConv(6, 6, aggr="mean").double()
    x = torch.randn(12, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    params = (layer.lin_rel.weight, layer.lin_rel.bias, layer.lin_root.weight)

    def run(x_, w_rel, bias, w_root):
        return torch.func.functional_call(
            layer, {"lin_rel.weight": w_rel, "lin_rel.bias": bias, "lin_root.weight": w_root}, (x_, edge_index)
        )

    inputs = (x,) + tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(run, inputs)

    def saved_elements(module):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            module(torch.randn(500, 64, requires_grad=True), torch.randint(0, 500, (2, 3000)))
        return sum(sizes)

    fused, reference = FusedGraphConv(64, 64, aggr="mean"), GraphConv(64, 64, aggr="mean")
    assert saved_elements(fused) < saved_elements(reference) - 500 * 64 // 2  # the [500, 64] aggregate is gone


def test_channels_last_model_matches_contiguous_model():
    torch.manual_seed(0)
    model = Pixel2Mesh(SMALL).eval()
    images, intrinsics = torch.rand(2, 3, 224, 224), default_intrinsics(2)
    with torch.no_grad():
        reference = model(images, intrinsics).meshes[2].pos
        model.to(memory_format=torch.channels_last)
        assert model.image_memory_format() == torch.channels_last
        result = model(images, intrinsics).meshes[2].pos
    torch.testing.assert_close(result, reference, rtol=1e-5, atol=1e-5)


def test_laplacian_smoothing_matrix_solves_the_sparse_system():
    import scipy.sparse
    import scipy.sparse.linalg

    from p2m_geo.mesh import ellipsoid_hierarchy
    from p2m_geo.models.pixel2mesh import laplacian_smoothing_matrix

    level = ellipsoid_hierarchy().levels[1]
    n, (rows, cols) = level.num_nodes, level.edge_index.numpy()
    adjacency = scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    laplacian = scipy.sparse.diags(np.asarray(adjacency.sum(1)).ravel()) - adjacency
    offsets = np.random.default_rng(0).normal(size=(n, 3))
    expected = scipy.sparse.linalg.spsolve((scipy.sparse.identity(n) + 2.5 * laplacian).tocsc(), offsets)
    matrix = laplacian_smoothing_matrix(level.edge_index, n, 2.5)
    np.testing.assert_allclose(matrix.double().numpy() @ offsets, expected, atol=1e-5)
    # a rigid shift passes unchanged; independent random offsets (mostly high frequencies) shrink
    torch.testing.assert_close(matrix @ torch.ones(n), torch.ones(n))
    damped = np.linalg.norm(matrix.double().numpy() @ offsets) / np.linalg.norm(offsets)
    assert damped < 0.3


def test_offset_smoothing_filters_each_blocks_offsets():
    torch.manual_seed(0)
    plain = Pixel2Mesh(SMALL).eval()
    smoothing = Pixel2Mesh(dataclasses.replace(SMALL, offset_smoothing=3.0)).eval()
    assert smoothing.state_dict().keys() == plain.state_dict().keys()  # the filters are derived, not saved
    smoothing.load_state_dict(plain.state_dict())
    with torch.no_grad():  # large output weights, so that the offsets are not tiny
        for model in (plain, smoothing):
            for block in model.blocks:
                block.conv_out.lin_rel.weight.mul_(1000.0)
    images, intrinsics = torch.rand(2, 3, 224, 224), default_intrinsics(2)
    with torch.no_grad():
        raw = plain(images, intrinsics).meshes[0].pos - plain.pos_0.repeat(2, 1)
        filtered = smoothing(images, intrinsics).meshes[0].pos - plain.pos_0.repeat(2, 1)
    matrix, vertices = smoothing.offset_filter_0.double(), plain.pos_0.size(0)
    expected = torch.cat([matrix @ raw[:vertices].double(), matrix @ raw[vertices:].double()]).float()
    torch.testing.assert_close(filtered, expected, atol=1e-6, rtol=1e-4)
    assert raw.abs().max() > 1e-2 and not torch.allclose(filtered, raw, atol=1e-3)


def project(points: torch.Tensor, focal: float = 248.0, centre: float = 111.5) -> torch.Tensor:
    """The ShapeNetP2M camera written out: u = f X / (-Z) + c, v = f (-Y) / (-Z) + c."""
    depth = -points[:, 2]
    return torch.stack([focal * points[:, 0] / depth + centre, focal * -points[:, 1] / depth + centre], dim=1)


def test_depth_head_starts_at_the_ellipsoid_and_scales_it_per_image_about_the_camera():
    torch.manual_seed(0)
    model = Pixel2Mesh(dataclasses.replace(SMALL, depth_head=True)).eval()
    images, intrinsics = torch.rand(2, 3, 224, 224), default_intrinsics(2)
    with torch.no_grad():
        start = model(images, intrinsics).pos_before[0]
    torch.testing.assert_close(start, model.pos_0.repeat(2, 1))  # zero head: scale 1
    with torch.no_grad():  # a head that reads the image: a different scale for each image
        coarsest = model.encoder(images)[-1]
        difference = coarsest[0].mean(dim=(1, 2)) - coarsest[1].mean(dim=(1, 2))
        model.depth_head.weight.copy_(0.5 * difference / difference.square().sum())  # raw differs by 0.5
        model.depth_head.bias.fill_(-float(model.depth_head.weight[0] @ coarsest[0].mean(dim=(1, 2))) + 0.2)
        raw = coarsest.mean(dim=(2, 3)) @ model.depth_head.weight[0] + model.depth_head.bias[0]
        expected_scale = torch.exp(0.5 * torch.tanh(2.0 * raw))
        start = model(images, intrinsics).pos_before[0].view(2, -1, 3)
    assert abs(float(expected_scale[0] - expected_scale[1])) > 1e-3
    template = model.pos_0
    for graph in range(2):
        torch.testing.assert_close(start[graph], template * expected_scale[graph], rtol=1e-5, atol=1e-6)
        # about the camera centre: each vertex stays on its pixel, only its depth changes
        torch.testing.assert_close(project(start[graph].double()), project(template.double()), rtol=0, atol=1e-4)
    batch_of_one = model(images[1:], intrinsics[1:]).pos_before[0]
    torch.testing.assert_close(batch_of_one, start[1], rtol=1e-5, atol=1e-6)


def test_depth_head_gets_a_gradient_at_the_first_step_and_changes_no_other_key():
    torch.manual_seed(0)
    plain = Pixel2Mesh(SMALL)
    model = Pixel2Mesh(dataclasses.replace(SMALL, depth_head=True))
    assert set(model.state_dict()) - set(plain.state_dict()) == {"depth_head.weight", "depth_head.bias"}
    output = model(torch.rand(2, 3, 224, 224), default_intrinsics(2))
    target = torch.tensor([0.0, 0.0, -0.6])  # the meshes should come closer: d/d scale != 0
    sum((mesh.pos - target).square().sum() for mesh in output.meshes).backward()
    assert model.depth_head.weight.grad.abs().sum() > 0 and model.depth_head.bias.grad.abs() > 0


def test_depth_head_reading_all_maps_takes_their_means_and_maxima():
    torch.manual_seed(0)
    model = Pixel2Mesh(dataclasses.replace(SMALL, depth_head=True, depth_head_features="all")).eval()
    assert model.depth_head.in_features == 2 * sum(model.encoder.channels)
    images, intrinsics = torch.rand(2, 3, 224, 224), default_intrinsics(2)
    with torch.no_grad():
        torch.testing.assert_close(model(images, intrinsics).pos_before[0], model.pos_0.repeat(2, 1))  # scale 1
        maps = model.encoder(images)
        weight = torch.randn(1, model.depth_head.in_features) * 0.1
        model.depth_head.weight.copy_(weight)
        for graph in range(2):  # the head's input written out: per map, per channel, mean then max
            reference = []
            for fmap in maps:
                for channel in range(fmap.size(1)):
                    reference.append(float(fmap[graph, channel].double().mean()))
                for channel in range(fmap.size(1)):
                    reference.append(float(fmap[graph, channel].double().max()))
            raw = float(torch.tensor(reference, dtype=torch.float64) @ weight[0].double())
            start = model(images, intrinsics).pos_before[0].view(2, -1, 3)[graph]
            scale = math.exp(0.5 * math.tanh(2.0 * raw))
            torch.testing.assert_close(start, model.pos_0 * scale, rtol=1e-4, atol=1e-6)
    with pytest.raises(
        ConfigError, match=r"^model.depth_head_features: expected one of coarsest, all, spatial, got 'mean'$"
    ):
        ModelConfig(depth_head_features="mean")


def test_spatial_depth_head_weighs_each_cell_of_the_coarsest_map_by_where_it_is():
    torch.manual_seed(0)
    model = Pixel2Mesh(dataclasses.replace(SMALL, depth_head=True, depth_head_features="spatial")).eval()
    channels = model.encoder.channels[-1]
    assert model.depth_head.in_features == channels * 49
    images, intrinsics = torch.rand(2, 3, 224, 224), default_intrinsics(2)
    with torch.no_grad():
        torch.testing.assert_close(model(images, intrinsics).pos_before[0], model.pos_0.repeat(2, 1))  # scale 1
        coarsest = model.encoder(images)[-1]
        assert coarsest.shape[-2:] == (7, 7)  # 224 px: the grid is the map itself
        weight = torch.randn(channels, 7, 7) * 0.5
        model.depth_head.weight.copy_(weight.reshape(1, -1))
        for graph in range(2):  # the head written out: a weight per channel and cell, over 49 cells
            raw = (
                sum(
                    float(coarsest[graph, c, row, col]) * float(weight[c, row, col])
                    for c in range(channels)
                    for row in range(7)
                    for col in range(7)
                )
                / 49
            )
            start = model(images, intrinsics).pos_before[0].view(2, -1, 3)[graph]
            torch.testing.assert_close(start, model.pos_0 * math.exp(0.5 * math.tanh(2.0 * raw)), rtol=1e-4, atol=1e-6)
        # the same weight in every cell is the coarsest-map head with that weight
        uniform = torch.randn(channels)
        torch.testing.assert_close(
            depth_head_inputs([coarsest], "spatial") @ uniform.repeat_interleave(49),
            depth_head_inputs([coarsest]) @ uniform,
        )
        # a map shifted by one cell changes the head's output although its mean stays the same
        rolled = coarsest.roll(1, dims=-1)
        inputs = depth_head_inputs([coarsest], "spatial"), depth_head_inputs([rolled], "spatial")
        assert not torch.allclose(model.depth_head(inputs[0]), model.depth_head(inputs[1]))
        torch.testing.assert_close(depth_head_inputs([coarsest]), depth_head_inputs([rolled]))


def relu_units_of_cells_loop(coarsest: torch.Tensor, graph: int, weight: torch.Tensor, bias: torch.Tensor):
    """``ReLU(W vec(cells) + b)`` of one graph's ``[C, 7, 7]`` map, written out unit by unit, channel
    by channel, cell by cell (the flattening order: channel, then row, then column)."""
    channels = coarsest.size(1)
    units = []
    for unit in range(weight.size(0)):
        total = float(bias[unit])
        for c in range(channels):
            for row in range(7):
                for col in range(7):
                    total += float(coarsest[graph, c, row, col]) * float(weight[unit, (c * 7 + row) * 7 + col])
        units.append(max(0.0, total))
    return units


def test_mlp_depth_head_reads_the_cells_through_one_relu_layer_and_starts_at_scale_one():
    torch.manual_seed(0)
    config = dataclasses.replace(
        SMALL, image_branch=False, depth_head=True, depth_head_features="spatial", depth_head_hidden=6
    )
    model = Pixel2Mesh(config).eval()
    channels = model.encoder.channels[-1]
    assert (model.depth_head_hidden_layer.in_features, model.depth_head.in_features) == (channels * 49, 6)
    images, intrinsics = torch.rand(2, 3, 224, 224), default_intrinsics(2)
    with torch.no_grad():
        torch.testing.assert_close(model(images, intrinsics).pos_before[0], model.pos_0.repeat(2, 1))  # scale 1
        coarsest = model.encoder(images)[-1]
        output_weight = torch.randn(1, 6)
        model.depth_head.weight.copy_(output_weight)
        hidden_weight, hidden_bias = model.depth_head_hidden_layer.weight, model.depth_head_hidden_layer.bias
        for graph in range(2):  # written out: 6 ReLU units of the 7 x 7 x C cells, then the output weights
            hidden = relu_units_of_cells_loop(coarsest, graph, hidden_weight, hidden_bias)
            raw = sum(value * float(output_weight[0, unit]) for unit, value in enumerate(hidden))
            assert raw != 0.0
            start = model(images, intrinsics).pos_before[0].view(2, -1, 3)[graph]
            torch.testing.assert_close(start, model.pos_0 * math.exp(0.5 * math.tanh(2.0 * raw)), rtol=1e-4, atol=1e-6)
    model.depth_head.weight.data.fill_(1.0)
    model.reset_parameters()
    assert not model.depth_head.weight.detach().any()
    message = r"^model.depth_head_hidden: expected 0 unless model.depth_head_features is spatial, got 8 with coarsest$"
    with pytest.raises(ConfigError, match=message):
        ModelConfig(depth_head=True, depth_head_hidden=8)


def test_global_code_appends_one_relu_code_of_the_coarsest_cells_to_every_vertex_in_every_block():
    torch.manual_seed(0)
    features = 5
    model = Pixel2Mesh(dataclasses.replace(SMALL, image_branch=False, global_features=features)).eval()
    plain = Pixel2Mesh(dataclasses.replace(SMALL, image_branch=False))
    assert set(model.state_dict()) - set(plain.state_dict()) == {"global_code.weight", "global_code.bias"}
    channels, sampled = model.encoder.channels[-1], 3 + sum(model.encoder.channels)
    assert model.global_code.in_features == channels * 49
    assert not model.global_code.bias.detach().any()  # He weights, zero bias
    widths = [block.conv_in.in_channels for block in model.blocks]
    assert widths == [sampled + features] + [sampled + features + SMALL.hidden] * 2
    block_inputs = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: block_inputs.append(args[0]))
    images, intrinsics = torch.rand(2, 3, 224, 224), default_intrinsics(2)
    with torch.no_grad():
        output = model(images, intrinsics)
        coarsest = model.encoder(images)[-1]
    assert coarsest.shape[-2:] == (7, 7)
    weight, bias = model.global_code.weight.double(), model.global_code.bias.double()
    for graph in range(2):  # the code written out: per feature, a weight per channel and cell, then ReLU
        expected = torch.tensor(relu_units_of_cells_loop(coarsest, graph, weight, bias), dtype=torch.float32)
        assert 0 < int((expected > 0).sum()) < features  # the ReLU cut some and kept some
        for inputs in block_inputs:  # blocks 1, 2, 3
            appended = inputs.view(2, -1, inputs.size(-1))[graph, :, sampled : sampled + features]
            torch.testing.assert_close(appended, expected.expand_as(appended), rtol=1e-4, atol=1e-5)
    # a fresh model still returns the ellipsoid: the code enters the blocks, whose outputs start small
    torch.testing.assert_close(output.meshes[2].pos, model.pos_2.repeat(2, 1), rtol=0, atol=1e-3)
    model.global_code.bias.data.fill_(1.0)
    model.reset_parameters()
    assert not model.global_code.bias.detach().any()
    with pytest.raises(ConfigError, match=r"^model.global_features: expected an integer >= 0, got -1$"):
        ModelConfig(global_features=-1)


def test_depth_readout_scales_each_block_mesh_about_the_camera_and_starts_at_one():
    torch.manual_seed(0)
    plain = Pixel2Mesh(SMALL).eval()
    model = Pixel2Mesh(dataclasses.replace(SMALL, depth_readout=True)).eval()
    added = set(model.state_dict()) - set(plain.state_dict())
    assert added == {f"depth_readout.{level}.{name}" for level in range(3) for name in ("weight", "bias")}
    model.load_state_dict(plain.state_dict(), strict=False)
    images, intrinsics = torch.rand(2, 3, 224, 224), default_intrinsics(2)
    with torch.no_grad():
        reference = plain(images, intrinsics)
        fresh = model(images, intrinsics)
    for got, expected in zip(fresh.meshes, reference.meshes):  # zero readouts: the plain model
        torch.testing.assert_close(got.pos, expected.pos)
    with torch.no_grad():
        model.depth_readout[0].bias.fill_(0.1)  # block 1 scaled by e^{0.5 tanh 0.2}
        output = model(images, intrinsics)
    scale = math.exp(0.5 * math.tanh(0.2))
    block_1 = reference.meshes[0].pos
    torch.testing.assert_close(output.meshes[0].pos, block_1 * scale, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(project(output.meshes[0].pos.double()), project(block_1.double()), rtol=0, atol=1e-4)
    torch.testing.assert_close(output.pos_before[1][:12], output.meshes[0].pos[:12])  # block 2 starts there
    # a readout of the hidden features: a weight gives each image its own scale
    with torch.no_grad():
        model.depth_readout[0].bias.zero_()
        model.depth_readout[2].weight.normal_(std=1e-2)
        scaled = model(images, intrinsics).meshes[2].pos.view(2, -1, 3)
        unscaled = reference.meshes[2].pos.view(2, -1, 3)
    ratios = [float((scaled[g] * unscaled[g]).sum() / unscaled[g].square().sum()) for g in range(2)]
    for graph in range(2):
        torch.testing.assert_close(scaled[graph], unscaled[graph] * ratios[graph], rtol=1e-4, atol=1e-5)
    assert abs(ratios[0] - ratios[1]) > 1e-4 and all(math.exp(-0.5) < r < math.exp(0.5) for r in ratios)


def test_cnn18_batch_norm_normalises_each_stage_convolution_over_the_batch_and_leaves_the_stem():
    """``encoder_norm: batch``: in the four output stages each convolution (no bias) is followed by
    a batch norm, checked against the statistics written out in float64; the stem is unchanged."""
    from p2m_geo.models.encoders import CNN18

    torch.manual_seed(0)
    plain, normed = CNN18(0.25), CNN18(0.25, norm="batch")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in normed.stem.modules())
    stage_convs = [m for m in normed.stages.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(stage_convs) == 13 and all(conv.bias is None for conv in stage_convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in normed.modules()) == 13
    with pytest.raises(ValueError, match="norm: expected one of none, batch, got 'group'"):
        CNN18(0.25, norm="group")

    normed.train()
    stem = normed.stem(torch.rand(4, 3, 224, 224)).detach()
    conv, bn = normed.stages[0][0][0], normed.stages[0][0][1]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
        result = normed.stages[0][0](stem)
    x = F.conv2d(stem.double(), conv.weight.double(), stride=2, padding=1)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    variance = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)  # biased, as BatchNorm normalises
    scale, shift = bn.weight.double().view(1, -1, 1, 1), bn.bias.double().view(1, -1, 1, 1)
    reference = (x - mean) / torch.sqrt(variance + bn.eps) * scale + shift
    torch.testing.assert_close(result.double(), reference.clamp(min=0), rtol=1e-4, atol=1e-5)
    # running statistics move by momentum 0.1 from (0, 1), with the unbiased variance
    count = x.numel() / x.size(1)
    torch.testing.assert_close(bn.running_mean.double(), 0.1 * mean.flatten(), rtol=1e-4, atol=1e-6)
    expected_var = 0.9 + 0.1 * variance.flatten() * count / (count - 1)
    torch.testing.assert_close(bn.running_var.double(), expected_var, rtol=1e-4, atol=1e-6)


def test_encoder_norm_reaches_cnn18_and_leaves_the_other_backbones_as_they_are():
    model = Pixel2Mesh(dataclasses.replace(SMALL, encoder_norm="batch"))
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder.modules()) == 13
    with pytest.raises(ConfigError, match="model.encoder_norm: expected one of none, batch, got 'layer'"):
        ModelConfig(encoder_norm="layer")
    from p2m_geo.models import build_encoder

    with pytest.raises(ValueError, match="norm: expected one of none, batch, got 'layer'"):
        build_encoder("cnn18", norm="layer")
    # a preset's cnn18 setting does not change another backbone (e.g. cpu-quick with --backbone vgg16)
    torch.manual_seed(0)
    plain = build_encoder("vgg16")
    torch.manual_seed(0)
    with_setting = build_encoder("vgg16", norm="batch")
    assert [type(m) for m in with_setting.modules()] == [type(m) for m in plain.modules()]
