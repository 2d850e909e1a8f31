"""Mesh losses against float64 loops / dense numpy written here, independently."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from p2m_geo.data import load_dat
from p2m_geo.losses import (
    P2MLoss,
    adjacent_face_cosines,
    bend_loss,
    chamfer_distance,
    edge_and_normal_losses,
    edge_length_loss,
    laplacian_loss,
    face_normal_loss,
    mean_depth_loss,
    move_loss,
    normal_loss,
)
from p2m_geo.mesh import ellipsoid_hierarchy


@pytest.fixture(scope="module")
def levels():
    return ellipsoid_hierarchy().levels


def perturbed(data: Data, seed: int, scale: float = 0.02) -> Data:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(data.pos.shape, generator=generator, dtype=torch.float64) * scale
    return Data(pos=data.pos.double() + noise, edge_index=data.edge_index, face=data.face)


def neighbours(edge_index: torch.Tensor, num_nodes: int):
    table = [[] for _ in range(num_nodes)]
    for s, t in edge_index.t().tolist():
        table[t].append(s)
    return table


def mixed_batch(levels, seed=0):
    """Graphs of different sizes, the real level-3 topology among them."""
    graphs = [perturbed(levels[0], seed), perturbed(levels[2], seed + 1), perturbed(levels[1], seed + 2)]
    return graphs, Batch.from_data_list(graphs)


def ref_edge_length(data: Data) -> float:
    pos = data.pos.numpy()
    return float(np.mean([np.sum((pos[s] - pos[t]) ** 2) for s, t in data.edge_index.t().tolist()]))


def ref_laplacian_coords(pos: np.ndarray, table) -> np.ndarray:
    return np.stack([pos[i] - np.mean([pos[j] for j in table[i]], axis=0) for i in range(len(pos))])


def ref_laplacian_loss(before: np.ndarray, after: np.ndarray, edge_index) -> float:
    table = neighbours(edge_index, len(before))
    diff = ref_laplacian_coords(after, table) - ref_laplacian_coords(before, table)
    return float(np.mean(np.sum(diff**2, axis=1)))


def ref_chamfer(x: np.ndarray, y: np.ndarray):
    d = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return d.min(1).mean(), d.min(0).mean(), d.argmin(1), d.argmin(0)


def ref_normal_loss(pos: np.ndarray, edge_index, normals: np.ndarray) -> float:
    values = []
    for s, t in edge_index.t().tolist():
        edge = pos[t] - pos[s]
        n = normals[s] / np.linalg.norm(normals[s])
        values.append(abs(np.dot(edge / np.linalg.norm(edge), n)))
    return float(np.mean(values))


def test_edge_length_matches_loop(levels):
    graphs, batch = mixed_batch(levels)
    values = edge_length_loss(batch.pos, batch.edge_index, batch.batch, reduction="none")
    expected = [ref_edge_length(g) for g in graphs]
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(edge_length_loss(batch.pos, batch.edge_index, batch.batch), values.mean())


def test_laplacian_matches_loop(levels):
    graphs, batch = mixed_batch(levels)
    _, after = mixed_batch(levels, seed=10)
    values = laplacian_loss(batch.pos, after.pos, batch.edge_index, batch.batch, reduction="none")
    expected = [
        ref_laplacian_loss(g.pos.numpy(), a.pos.numpy(), g.edge_index) for g, a in zip(graphs, after.to_data_list())
    ]
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-10)


def test_laplacian_on_cached_edge_index_matches_loop(levels):
    """The CSR path (PyG EdgeIndex sorted by column, as the model attaches) gives the same values."""
    from torch_geometric import EdgeIndex

    graphs, batch = mixed_batch(levels)
    _, after = mixed_batch(levels, seed=11)
    n = batch.num_nodes
    csr = EdgeIndex(batch.edge_index, sparse_size=(n, n)).sort_by("col")[0].fill_cache_()
    before32, after32 = batch.pos.float(), after.pos.float().requires_grad_(True)
    values = laplacian_loss(before32, after32, csr, batch.batch, reduction="none")
    expected = [
        ref_laplacian_loss(g.pos.numpy(), a.pos.numpy(), g.edge_index) for g, a in zip(graphs, after.to_data_list())
    ]
    np.testing.assert_allclose(values.detach().numpy(), expected, rtol=1e-4)
    # gradient against float64 autograd of the scatter path
    grad = torch.autograd.grad(values.mean(), after32)[0]
    pos64 = after.pos.clone().requires_grad_(True)
    grad64 = torch.autograd.grad(laplacian_loss(batch.pos, pos64, batch.edge_index, batch.batch), pos64)[0]
    torch.testing.assert_close(grad.double(), grad64, rtol=1e-3, atol=1e-9)


def test_move_matches_loop(levels):
    graphs, batch = mixed_batch(levels)
    _, after = mixed_batch(levels, seed=5)
    values = move_loss(batch.pos, after.pos, batch.batch, reduction="none")
    expected = [np.mean(np.sum((a.pos.numpy() - g.pos.numpy()) ** 2, 1)) for g, a in zip(graphs, after.to_data_list())]
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-12)


def random_clouds(sizes, seed):
    generator = torch.Generator().manual_seed(seed)
    clouds = [torch.randn(n, 3, generator=generator, dtype=torch.float64) for n in sizes]
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return clouds, torch.cat(clouds), batch


def check_chamfer_matches_dense_reference(search, chunk_bytes, device="cpu"):
    """Per-graph means and nearest indices of both chamfer sides on ``device`` against the dense
    float64 numpy reference; returns the result (on ``device``)."""
    xs, x, xb = random_clouds([40, 7, 120], seed=1)
    ys, y, yb = random_clouds([90, 33, 15], seed=2)
    result = chamfer_distance(
        x.to(device),
        xb.to(device),
        y.to(device),
        yb.to(device),
        reduction="none",
        search=search,
        chunk_bytes=chunk_bytes,
    )
    x_off = y_off = 0
    for b, (xi, yi) in enumerate(zip(xs, ys)):
        d_xy, d_yx, nn_x, nn_y = ref_chamfer(xi.numpy(), yi.numpy())
        assert result.x_to_y[b].item() == pytest.approx(d_xy, rel=1e-12)
        assert result.y_to_x[b].item() == pytest.approx(d_yx, rel=1e-12)
        np.testing.assert_array_equal(result.x_nearest[x_off : x_off + len(xi)].cpu().numpy() - y_off, nn_x)
        np.testing.assert_array_equal(result.y_nearest[y_off : y_off + len(yi)].cpu().numpy() - x_off, nn_y)
        x_off += len(xi)
        y_off += len(yi)
    return result


@pytest.mark.parametrize("search,chunk_bytes", [("matmul", None), ("matmul", 2000), ("kdtree", None)])
def test_chamfer_matches_dense_reference(search, chunk_bytes):
    check_chamfer_matches_dense_reference(search, chunk_bytes)


def test_chamfer_on_real_shapenet_points(levels, shared_data):
    folder = shared_data / "shapenet_p2m" / "sample_abcd" / "rendering"
    gts = [load_dat(folder / f"{v:02d}.dat") for v in (0, 1)]
    preds = [levels[2].pos.numpy(), levels[1].pos.numpy()]
    x = torch.from_numpy(np.concatenate(preds))
    xb = torch.repeat_interleave(torch.arange(2), torch.tensor([len(p) for p in preds]))
    y = torch.from_numpy(np.concatenate([g[:, :3] for g in gts]))
    yb = torch.repeat_interleave(torch.arange(2), torch.tensor([len(g) for g in gts]))
    result = chamfer_distance(x, xb, y, yb, reduction="none")
    matmul = chamfer_distance(x, xb, y, yb, reduction="none", search="matmul")
    torch.testing.assert_close(matmul.x_to_y, result.x_to_y, rtol=1e-5, atol=0)
    for b in range(2):
        d_xy, d_yx, _, _ = ref_chamfer(preds[b].astype(np.float64), gts[b][:, :3].astype(np.float64))
        assert result.x_to_y[b].item() == pytest.approx(d_xy, rel=1e-5)
        assert result.y_to_x[b].item() == pytest.approx(d_yx, rel=1e-5)


def test_normal_loss_matches_loop(levels):
    graphs, batch = mixed_batch(levels)
    generator = torch.Generator().manual_seed(4)
    normals = torch.randn(batch.num_nodes, 3, generator=generator, dtype=torch.float64)
    values = normal_loss(batch.pos, batch.edge_index, batch.batch, normals, reduction="none")
    offset = 0
    for b, g in enumerate(graphs):
        expected = ref_normal_loss(g.pos.numpy(), g.edge_index, normals[offset : offset + g.num_nodes].numpy())
        assert values[b].item() == pytest.approx(expected, rel=1e-10)
        offset += g.num_nodes


def test_edge_and_normal_losses_match_the_separate_references(levels):
    graphs, batch = mixed_batch(levels)
    generator = torch.Generator().manual_seed(6)
    normals = torch.randn(batch.num_nodes, 3, generator=generator, dtype=torch.float64)
    edge, normal = edge_and_normal_losses(batch.pos, batch.edge_index, batch.batch, normals, reduction="none")
    offset = 0
    for b, g in enumerate(graphs):
        assert edge[b].item() == pytest.approx(ref_edge_length(g), rel=1e-10)
        expected = ref_normal_loss(g.pos.numpy(), g.edge_index, normals[offset : offset + g.num_nodes].numpy())
        assert normal[b].item() == pytest.approx(expected, rel=1e-10)
        offset += g.num_nodes


def test_chamfer_with_given_nearest_indices():
    _, x, xb = random_clouds([40, 7], seed=3)
    _, y, yb = random_clouds([30, 50], seed=4)
    searched = chamfer_distance(x, xb, y, yb, reduction="none")
    given = chamfer_distance(x, xb, y, yb, reduction="none", x_nearest=searched.x_nearest)
    torch.testing.assert_close(given.x_to_y, searched.x_to_y, rtol=0, atol=0)
    torch.testing.assert_close(given.y_to_x, searched.y_to_x, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"x_nearest: expected \[47\] indices \(one per x point\), got \[46\]"):
        chamfer_distance(x, xb, y, yb, x_nearest=searched.x_nearest[:-1])


def small_mesh_batch(levels):
    graphs = [perturbed(levels[0], 1), perturbed(levels[0], 2)]
    return Batch.from_data_list(graphs)


def test_gradients_match_finite_differences(levels):
    batch = small_mesh_batch(levels)
    before = batch.pos.clone()
    pos = (batch.pos + 0.01 * torch.randn_like(batch.pos)).requires_grad_(True)
    generator = torch.Generator().manual_seed(9)
    gt = torch.randn(60, 3, generator=generator, dtype=torch.float64) * 0.2 + torch.tensor(
        [0, 0, -0.8], dtype=torch.float64
    )
    gt_batch = torch.repeat_interleave(torch.arange(2), torch.tensor([25, 35]))
    normals = torch.randn(batch.num_nodes, 3, generator=generator, dtype=torch.float64)
    e, b = batch.edge_index, batch.batch

    checks = {
        "edge": lambda p: edge_length_loss(p, e, b),
        "laplacian": lambda p: laplacian_loss(before, p, e, b),
        "move": lambda p: move_loss(before, p, b),
        "normal": lambda p: normal_loss(p, e, b, normals),
        "chamfer": lambda p: sum(chamfer_distance(p, b, gt, gt_batch)[:2]),
    }
    for name, fn in checks.items():
        assert torch.autograd.gradcheck(fn, (pos,), eps=1e-6, atol=1e-5), name


def test_batch_of_four_equals_four_single_calls(levels):
    graphs = [perturbed(levels[k % 3], k) for k in range(4)]
    afters = [perturbed(levels[k % 3], 10 + k) for k in range(4)]
    gts = [torch.randn(50 + 10 * k, 3, dtype=torch.float64) for k in range(4)]
    batch, after = Batch.from_data_list(graphs), Batch.from_data_list(afters)
    gt = torch.cat(gts)
    gt_batch = torch.repeat_interleave(torch.arange(4), torch.tensor([len(g) for g in gts]))
    chamfer = chamfer_distance(batch.pos, batch.batch, gt, gt_batch, reduction="none")
    batched = {
        "edge": edge_length_loss(batch.pos, batch.edge_index, batch.batch, reduction="none"),
        "laplacian": laplacian_loss(batch.pos, after.pos, batch.edge_index, batch.batch, reduction="none"),
        "move": move_loss(batch.pos, after.pos, batch.batch, reduction="none"),
        "chamfer": chamfer.x_to_y + chamfer.y_to_x,
    }
    for k, (g, a) in enumerate(zip(graphs, afters)):
        zeros = torch.zeros(g.num_nodes, dtype=torch.long)
        single = chamfer_distance(g.pos, zeros, gts[k], torch.zeros(len(gts[k]), dtype=torch.long))
        expected = {
            "edge": edge_length_loss(g.pos, g.edge_index, zeros),
            "laplacian": laplacian_loss(g.pos, a.pos, g.edge_index, zeros),
            "move": move_loss(g.pos, a.pos, zeros),
            "chamfer": single.x_to_y + single.y_to_x,
        }
        for name in batched:
            torch.testing.assert_close(batched[name][k], expected[name], rtol=1e-12, atol=1e-14, msg=name)


def test_reduction_and_empty_graph_errors():
    pos = torch.randn(4, 3)
    batch = torch.tensor([0, 0, 2, 2])
    with pytest.raises(ValueError, match="reduction: expected 'mean', 'sum' or 'none', got 'avg'"):
        move_loss(pos, pos, batch, reduction="avg")
    with pytest.raises(ValueError, match="empty graph"):
        chamfer_distance(pos, batch, pos, batch)


def test_p2m_loss_combines_weighted_terms():
    from p2m_geo import ModelConfig, Pixel2Mesh
    from p2m_geo.camera import default_intrinsics
    from p2m_geo.config import LossWeights

    model = Pixel2Mesh(ModelConfig(encoder_width=0.25, hidden=16, num_residual=1, image_branch=True))
    images = torch.rand(2, 3, 224, 224)
    output = model(images, default_intrinsics(2), reconstruct_image=True)
    gt = Batch.from_data_list(
        [
            Data(pos=torch.randn(300, 3) * 0.2 + torch.tensor([0, 0, -0.8]), normal=torch.randn(300, 3)),
            Data(pos=torch.randn(200, 3) * 0.2 + torch.tensor([0, 0, -0.8]), normal=torch.randn(200, 3)),
        ]
    )
    generator = torch.Generator().manual_seed(0)
    for mesh in output.meshes:  # crumpled, so that some adjacent faces fold past 90 degrees
        mesh.pos = mesh.pos + 0.03 * torch.randn(mesh.pos.shape, generator=generator)
    weights = LossWeights(
        face_fold=0.2,
        face_normal=0.01,
        face_normal_block_factors=(0.0, 0.5, 2.0),
        face_normal_margin=2.0,
        face_normal_block_margins=(30.0, 0.0, 4.0),  # each block uses the larger: 30, 2, 4 degrees
    )
    loss_fn = P2MLoss(weights)
    loss_fn.regulariser_scale = 1.5  # an annealing factor on edge, Laplacian and face-normal terms
    total, terms = loss_fn(output, gt, images)
    assert set(terms) == {"chamfer", "normal", "edge", "laplacian", "move", "face_normal", "fold", "image"}
    torch.testing.assert_close(total, sum(terms.values()))
    # the edge term is the weighted sum over the three blocks of the pure function
    expected_edge = sum(1.5 * weights.edge * edge_length_loss(m.pos, m.edge_index, m.batch) for m in output.meshes)
    torch.testing.assert_close(terms["edge"], expected_edge)
    # Laplacian: block 1 with its extra factor, relative to each block's input positions
    factors = [weights.laplacian_first_block, 1.0, 1.0]
    expected_laplacian = sum(
        1.5 * f * weights.laplacian * laplacian_loss(b, m.pos, m.edge_index, m.batch)
        for f, b, m in zip(factors, output.pos_before, output.meshes)
    )
    torch.testing.assert_close(terms["laplacian"], expected_laplacian)
    from p2m_geo.mesh_quality import face_adjacency

    def face_normal_terms(margins):  # block factors 0, 0.5, 2
        return [
            1.5
            * f
            * weights.face_normal
            * face_normal_loss(m.pos, m.face, face_adjacency(m.face), m.batch[m.face[0]], margin_degrees=margin)
            for f, m, margin in zip((0.0, 0.5, 2.0), output.meshes, margins)
        ]

    torch.testing.assert_close(terms["face_normal"], sum(face_normal_terms((30.0, 2.0, 4.0))))
    # the edge-preserving form reaches every block, with the same factors and margins
    chord_loss = P2MLoss(dataclasses.replace(weights, face_normal_form="normal_difference"))
    chord_loss.regulariser_scale = 1.5
    chord_terms = chord_loss(output, gt, images)[1]
    expected_chord = sum(
        1.5
        * f
        * weights.face_normal
        * face_normal_loss(
            m.pos, m.face, face_adjacency(m.face), m.batch[m.face[0]], margin_degrees=a, form="normal_difference"
        )
        for f, m, a in zip((0.0, 0.5, 2.0), output.meshes, (30.0, 2.0, 4.0))
    )
    torch.testing.assert_close(chord_terms["face_normal"], expected_chord)
    assert not torch.allclose(chord_terms["face_normal"], terms["face_normal"])  # not the other form
    # blocks 2 and 3 (block 1 has factor 0): each takes the larger of its margin and the global one
    for other in ((30.0, 0.0, 4.0), (30.0, 2.0, 2.0), (30.0, 4.0, 4.0)):
        assert not torch.allclose(sum(face_normal_terms(other)), terms["face_normal"])
    # the fold term: the face-normal term with a 90-degree margin on every block, at its own weight
    folds = [
        face_normal_loss(m.pos, m.face, face_adjacency(m.face), m.batch[m.face[0]], margin_degrees=90.0)
        for m in output.meshes
    ]
    assert folds[-1] > 0
    torch.testing.assert_close(terms["fold"], 1.5 * weights.face_fold * sum(folds))
    from p2m_geo.losses import image_reconstruction_loss

    torch.testing.assert_close(terms["image"], weights.image * image_reconstruction_loss(output.image_logits, images))
    logits, target = output.image_logits.detach().double(), images.double()
    by_hand = (  # BCE with logits written out, plus L1 of the sigmoid
        (torch.clamp(logits, min=0) - logits * target + torch.log1p(torch.exp(-logits.abs()))).mean()
        + (torch.sigmoid(logits) - target).abs().mean()
    )
    torch.testing.assert_close(terms["image"].double(), weights.image * by_hand, rtol=1e-5, atol=1e-6)
    expected_move = sum(
        weights.move * move_loss(b, m.pos, m.batch) for b, m in zip(output.pos_before[1:], output.meshes[1:])
    )
    torch.testing.assert_close(terms["move"], expected_move)
    # chamfer and normal: one shared vertex -> GT search for the three levels gives what
    # three independent calls give
    chamfers = [chamfer_distance(m.pos, m.batch, gt.pos, gt.batch) for m in output.meshes]
    expected_chamfer = sum(
        weights.chamfer_gt_to_pred * c.y_to_x + weights.chamfer_pred_to_gt * c.x_to_y for c in chamfers
    )
    torch.testing.assert_close(terms["chamfer"], expected_chamfer)
    expected_normal = sum(
        weights.normal * normal_loss(m.pos, m.edge_index, m.batch, gt.normal[c.x_nearest])
        for m, c in zip(output.meshes, chamfers)
    )
    torch.testing.assert_close(terms["normal"], expected_normal)
    matmul_loss = P2MLoss(weights, search="matmul")
    matmul_loss.regulariser_scale = 1.5
    _, matmul_terms = matmul_loss(output, gt, images)
    for name, value in terms.items():
        torch.testing.assert_close(matmul_terms[name], value, rtol=1e-5, atol=1e-7)
    total.backward()
    assert model.blocks[0].conv_out.lin_rel.weight.grad.abs().sum() > 0


def test_mean_depth_loss_matches_a_loop_and_measures_a_scale_about_the_camera():
    generator = torch.Generator().manual_seed(3)
    sizes, gt_sizes = [5, 9, 7], [11, 4, 6]
    pos = torch.randn(sum(sizes), 3, generator=generator, dtype=torch.float64) * 0.1 + torch.tensor([0, 0, -0.8])
    gt = torch.randn(sum(gt_sizes), 3, generator=generator, dtype=torch.float64) * 0.1 + torch.tensor([0, 0, -0.7])
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    gt_batch = torch.repeat_interleave(torch.arange(3), torch.tensor(gt_sizes))
    expected = []
    for graph in range(3):  # written out: distance along the view axis is -Z
        depth = float(np.mean([-p[2] for p, b in zip(pos.tolist(), batch.tolist()) if b == graph]))
        gt_depth = float(np.mean([-p[2] for p, b in zip(gt.tolist(), gt_batch.tolist()) if b == graph]))
        expected.append((np.log(depth) - np.log(gt_depth)) ** 2)
    per_graph = mean_depth_loss(pos, batch, gt, gt_batch, reduction="none")
    np.testing.assert_allclose(per_graph.numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(mean_depth_loss(pos, batch, gt, gt_batch), per_graph.mean())
    # scaling the points about the camera centre by s: the loss against the unscaled is (log s)^2
    scales = torch.tensor([0.8, 1.0, 1.3], dtype=torch.float64)
    scaled = pos * scales[batch, None]
    np.testing.assert_allclose(
        mean_depth_loss(scaled, batch, pos, batch, reduction="none").numpy(), np.log(scales.numpy()) ** 2, rtol=1e-12
    )
    # a translation in x and y does not change it (only the depth counts)
    shifted = pos + torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64)
    torch.testing.assert_close(mean_depth_loss(shifted, batch, gt, gt_batch), mean_depth_loss(pos, batch, gt, gt_batch))


def test_p2m_loss_depth_term_trains_the_depth_head():
    from p2m_geo import ModelConfig, Pixel2Mesh
    from p2m_geo.camera import default_intrinsics
    from p2m_geo.config import LossWeights

    torch.manual_seed(0)
    model = Pixel2Mesh(ModelConfig(encoder_width=0.25, hidden=16, num_residual=1, depth_head=True))
    output = model(torch.rand(2, 3, 224, 224), default_intrinsics(2))
    gt = Batch.from_data_list(
        [
            Data(pos=torch.randn(n, 3) * 0.2 + torch.tensor([0, 0, z]), normal=torch.randn(n, 3))
            for n, z in ((300, -0.6), (200, -1.0))
        ]
    )
    without = P2MLoss(LossWeights())(output, gt)[1]
    total, terms = P2MLoss(LossWeights(depth=2.0))(output, gt)
    assert "depth" not in without and set(terms) == set(without) | {"depth"}
    expected = 2.0 * mean_depth_loss(output.pos_before[0], output.meshes[0].batch, gt.pos, gt.batch)
    torch.testing.assert_close(terms["depth"], expected)
    terms["depth"].backward()  # the term alone reaches the head (zero at start, so not yet the encoder)
    assert model.depth_head.bias.grad.abs() > 0 and model.depth_head.weight.grad.abs().sum() > 0
    assert model.blocks[0].conv_out.lin_rel.weight.grad is None  # the blocks do not place the start


@pytest.mark.parametrize(
    "margin_degrees, form",
    [
        (0.0, "one_minus_cos"),
        (15.0, "one_minus_cos"),
        (90.0, "one_minus_cos"),
        (0.0, "normal_difference"),
        (15.0, "normal_difference"),
    ],
)  # 90 with one_minus_cos: the fold term
def test_face_normal_loss_matches_loop_over_adjacent_faces(levels, margin_degrees, form):
    from p2m_geo.mesh_quality import face_adjacency

    noise = 0.01 if margin_degrees < 90 else 0.05  # enough to fold some pairs past 90 degrees
    meshes = [perturbed(levels[0], seed, noise * (seed + 1)) for seed in range(2)]
    expected, angles = [], []
    for mesh in meshes:
        pos, faces = mesh.pos.double().numpy(), mesh.face.t().numpy()
        normals = np.cross(pos[faces[:, 1]] - pos[faces[:, 0]], pos[faces[:, 2]] - pos[faces[:, 0]])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        by_edge = {}
        for f, face in enumerate(faces.tolist()):
            for k in range(3):
                by_edge.setdefault(frozenset((face[k], face[(k + 1) % 3])), []).append(f)
        costs = []
        for f, g in by_edge.values():
            cosine = float(np.clip(normals[f] @ normals[g], -1.0, 1.0))
            angle = np.degrees(np.arccos(cosine))
            angles.append(angle)
            if form == "one_minus_cos":
                cost = np.cos(np.radians(margin_degrees)) - cosine
            else:  # the length of the normals' difference, the chord of the angle on the unit circle
                cost = np.linalg.norm(normals[f] - normals[g]) - 2.0 * np.sin(np.radians(margin_degrees) / 2)
            costs.append(cost if angle > margin_degrees else 0.0)
        expected.append(np.mean(costs))
    batch = Batch.from_data_list(meshes)
    values = face_normal_loss(
        batch.pos.double(),
        batch.face,
        face_adjacency(batch.face),
        batch.batch[batch.face[0]],
        reduction="none",
        margin_degrees=margin_degrees,
        form=form,
    )
    if form == "one_minus_cos":
        assert values.tolist() == pytest.approx(expected, rel=1e-9)
    else:  # sqrt(2 (1 - cos) + eps^2) - eps is within eps = 1e-4 of the exact chord for every pair
        assert values.tolist() == pytest.approx(expected, abs=1e-4)
    assert values[1] > values[0] > 0
    if margin_degrees:  # both sides of the margin occur
        assert min(angles) < margin_degrees < max(angles)


def test_bend_loss_refuses_an_unknown_form(levels):
    from p2m_geo.mesh_quality import face_adjacency

    mesh = Batch.from_data_list([perturbed(levels[0], 0, 0.01)])
    cosine = adjacent_face_cosines(mesh.pos, mesh.face, face_adjacency(mesh.face))
    with pytest.raises(ValueError, match="form: expected one of one_minus_cos, normal_difference, got 'l1'"):
        bend_loss(cosine, torch.zeros_like(cosine, dtype=torch.long), 1, form="l1")


@pytest.mark.parametrize("points_per_graph", [40, 156, 700])
def test_nearest_indices_auto_matches_a_loop_on_small_and_large_clouds(points_per_graph):
    """``auto`` takes the matrix product for small searched clouds on CPU and the KD-tree for
    large ones; both give each query its nearest point of its own graph (camera-frame
    coordinates around z = -0.8, where a product about the origin would cancel most)."""
    from p2m_geo.ops.knn import nearest_indices

    generator = torch.Generator().manual_seed(5)
    sizes_points, sizes_query = [points_per_graph, points_per_graph // 2 + 3], [300, 250]
    points = torch.randn(sum(sizes_points), 3, generator=generator) * 0.1 + torch.tensor([0.0, 0.0, -0.8])
    query = torch.randn(sum(sizes_query), 3, generator=generator) * 0.1 + torch.tensor([0.0, 0.0, -0.8])
    points_batch = torch.repeat_interleave(torch.arange(2), torch.tensor(sizes_points))
    query_batch = torch.repeat_interleave(torch.arange(2), torch.tensor(sizes_query))
    found = nearest_indices(query, query_batch, points, points_batch, 2)
    p64, q64 = points.double(), query.double()
    for i in range(len(query)):
        own = (points_batch == query_batch[i]).nonzero().squeeze(1)
        distances = (p64[own] - q64[i]).square().sum(1)
        assert int(points_batch[found[i]]) == int(query_batch[i])
        # the nearest, or a point as near within float32 rounding
        assert float((p64[found[i]] - q64[i]).square().sum()) <= float(distances.min()) + 1e-7
