"""Evaluation metrics against brute-force float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2m_geo.mesh import ellipsoid_hierarchy
from p2m_geo.metrics import (
    align_translation_scale,
    reconstruction_metrics,
    sample_points_on_faces,
    similarity_from_pairs,
)


def brute_force(pred: np.ndarray, gt: np.ndarray, tau: float):
    d = ((pred[:, None, :] - gt[None, :, :]) ** 2).sum(-1)
    pred_to_gt, gt_to_pred = d.min(1), d.min(0)
    precision = (pred_to_gt < tau).mean()
    recall = (gt_to_pred < tau).mean()
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return 1000 * (pred_to_gt.mean() + gt_to_pred.mean()), 100 * f


def test_metrics_match_brute_force():
    rng = np.random.default_rng(0)
    preds = [rng.normal(size=(n, 3)) * 0.05 for n in (50, 80, 30)]
    gts = [p[: len(p) // 2] + rng.normal(size=(len(p) // 2, 3)) * 0.01 for p in preds]
    gts[1] = np.concatenate([gts[1], rng.normal(size=(40, 3)) * 0.05])
    gts[2] = gts[2] + 5.0  # far away: F = 0
    x = torch.from_numpy(np.concatenate(preds))
    xb = torch.repeat_interleave(torch.arange(3), torch.tensor([len(p) for p in preds]))
    y = torch.from_numpy(np.concatenate(gts))
    yb = torch.repeat_interleave(torch.arange(3), torch.tensor([len(g) for g in gts]))
    values = reconstruction_metrics(x, xb, y, yb, thresholds=(1e-4, 2e-4))
    for b in range(3):
        for tau in (1e-4, 2e-4):
            cd, f = brute_force(preds[b], gts[b], tau)
            assert values["cd"][b].item() == pytest.approx(cd, rel=1e-10)
            assert values[f"f@{tau:g}"][b].item() == pytest.approx(f, abs=1e-9)
    assert values["f@0.0001"][2].item() == 0.0
    assert values["f@0.0001"][0].item() > 0.0


def test_surface_samples_lie_on_the_faces():
    level = ellipsoid_hierarchy().levels[0]
    pos, face = level.pos.double(), level.face
    batch = torch.zeros(len(pos), dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    points, point_batch = sample_points_on_faces(pos, face, batch, 1, 20000, generator)
    assert points.shape == (20000, 3) and point_batch.eq(0).all()
    # every sample lies in the plane of some face and inside its triangle (barycentric check)
    a, b, c = (pos[face[k]].numpy() for k in range(3))
    p = points.numpy()[:500]
    inside = np.zeros(len(p), dtype=bool)
    for i, q in enumerate(p):
        v0, v1, v2 = b - a, c - a, q - a
        d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
        d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
        denom = d00 * d11 - d01 * d01
        v = (d11 * d20 - d01 * d21) / denom
        w = (d00 * d21 - d01 * d20) / denom
        normal = np.cross(v0, v1)
        plane = np.abs((v2 * normal).sum(1)) / np.linalg.norm(normal, axis=1)
        inside[i] = bool(((v >= -1e-9) & (w >= -1e-9) & (v + w <= 1 + 1e-9) & (plane < 1e-9)).any())
    assert inside.all()


def test_surface_sampling_is_area_uniform():
    # two disjoint triangles: area 0.5 at z = 0 and area 1.5 at z = 1; plus a second graph
    pos = torch.tensor(
        [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 1, 1], [0, 0, 5], [1, 0, 5], [0, 1, 5]],
        dtype=torch.float64,
    )
    face = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]]).t()
    batch = torch.tensor([0] * 6 + [1] * 3)
    points, point_batch = sample_points_on_faces(pos, face, batch, 2, 40000, torch.Generator().manual_seed(1))
    first = points[point_batch == 0]
    torch.testing.assert_close(points[point_batch == 1][:, 2], torch.full((40000,), 5.0, dtype=torch.float64))
    upper = (first[:, 2] - 1).abs() < 1e-9
    assert abs(upper.double().mean().item() - 0.75) < 0.01
    # uniform inside a triangle: the sample mean is the centroid
    lower = first[first[:, 2].abs() < 1e-9]
    torch.testing.assert_close(lower.mean(0), torch.tensor([1 / 3, 1 / 3, 0], dtype=torch.float64), atol=0.01, rtol=0)


def brute_force_point_cloud_metrics(pred, pred_n, gt, gt_n, thresholds):
    """Mesh R-CNN's _compute_sampling_metrics for one graph, with dense float64 numpy."""
    d2 = ((pred[:, None, :] - gt[None, :, :]) ** 2).sum(-1)
    p_nn, g_nn = d2.argmin(1), d2.argmin(0)
    p_d, g_d = np.sqrt(d2.min(1)), np.sqrt(d2.min(0))

    def abs_cos(u, v):
        return np.abs((u * v).sum(-1)) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))

    out = {
        "chamfer_l2": (p_d**2).mean() + (g_d**2).mean(),
        "normal_consistency": 0.5 * (abs_cos(pred_n, gt_n[p_nn]).mean() + abs_cos(gt_n, pred_n[g_nn]).mean()),
    }
    for t in thresholds:
        precision, recall = 100 * (p_d < t).mean(), 100 * (g_d < t).mean()
        out[f"f1@{t:g}"] = 2 * precision * recall / (precision + recall + 1e-8)
    return out


def test_point_cloud_metrics_match_mesh_rcnn_brute_force():
    from p2m_geo.metrics import point_cloud_metrics

    rng = np.random.default_rng(3)
    sizes_pred, sizes_gt = (60, 45), (50, 70)
    preds = [rng.normal(size=(n, 3)) for n in sizes_pred]
    gts = [p[:40] + rng.normal(size=(40, 3)) * 0.2 for p in preds]
    gts = [np.concatenate([g, rng.normal(size=(m - 40, 3))]) for g, m in zip(gts, sizes_gt)]
    pred_n = [rng.normal(size=p.shape) for p in preds]
    gt_n = [rng.normal(size=g.shape) for g in gts]
    cat = lambda arrays: torch.from_numpy(np.concatenate(arrays))  # noqa: E731
    batch = lambda sizes: torch.repeat_interleave(torch.arange(2), torch.tensor(sizes))  # noqa: E731
    values = point_cloud_metrics(
        cat(preds), cat(pred_n), batch(sizes_pred), cat(gts), cat(gt_n), batch(sizes_gt), 2, thresholds=(0.1, 0.3, 0.5)
    )
    for b in range(2):
        expected = brute_force_point_cloud_metrics(preds[b], pred_n[b], gts[b], gt_n[b], (0.1, 0.3, 0.5))
        for key, value in expected.items():
            assert values[key][b].item() == pytest.approx(value, rel=1e-9, abs=1e-9), key
    assert 0 < values["f1@0.3"][0] < values["f1@0.5"][0] < 100


def cube_surface(rng, count):
    """``count`` points on the surface of the unit cube [0,1]^3 with their outward normals."""
    axis, side = rng.integers(0, 3, count), rng.integers(0, 2, count)
    points = rng.random((count, 3))
    points[np.arange(count), axis] = side
    normals = np.zeros((count, 3))
    normals[np.arange(count), axis] = 2 * side - 1
    return points, normals


def unit_cube_mesh():
    vertices = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
    faces = np.array(
        [
            [0, 1, 3],
            [0, 3, 2],
            [4, 6, 7],
            [4, 7, 5],
            [0, 4, 5],
            [0, 5, 1],
            [2, 3, 7],
            [2, 7, 6],
            [0, 2, 6],
            [0, 6, 4],
            [1, 5, 7],
            [1, 7, 3],
        ]
    )
    return torch.from_numpy(vertices), torch.from_numpy(faces).t().contiguous()


def test_meshrcnn_metrics_scale_by_the_gt_box_and_score_a_perfect_mesh_as_perfect():
    from p2m_geo.metrics import meshrcnn_metrics

    rng = np.random.default_rng(0)
    vertices, faces = unit_cube_mesh()
    gt, gt_normals = cube_surface(rng, 12000)  # subsampled to 10k inside
    gt, gt_normals = torch.from_numpy(gt), torch.from_numpy(gt_normals)
    zeros_v, zeros_g = torch.zeros(8, dtype=torch.long), torch.zeros(len(gt), dtype=torch.long)

    def run(scale, shift):
        return meshrcnn_metrics(
            vertices * scale + shift,
            faces,
            zeros_v,
            gt * scale + shift,
            gt_normals,
            zeros_g,
            1,
            generator=torch.Generator().manual_seed(5),
        )

    unit = run(1.0, 0.0)
    # the predicted cube is the GT surface: tiny chamfer, normals agree, F1 = 100 at every threshold
    assert unit["chamfer_l2"].item() < 0.05 and unit["normal_consistency"].item() > 0.95  # < 1 only near the edges
    assert all(unit[f"f1@{t:g}"].item() > 99.0 for t in (0.3, 0.5))
    # "gt-10": the same scene scaled by 0.07 and moved gives the same numbers
    small = run(0.07, 3.0)
    for key in unit:
        assert small[key].item() == pytest.approx(unit[key].item(), rel=1e-6, abs=1e-9), key
    # a cube shrunk to half its size about its centre is worse on every count
    shrunk = meshrcnn_metrics(
        (vertices - 0.5) * 0.5 + 0.5,
        faces,
        zeros_v,
        gt,
        gt_normals,
        zeros_g,
        1,
        generator=torch.Generator().manual_seed(5),
    )
    assert shrunk["chamfer_l2"] > 10 * unit["chamfer_l2"] and shrunk["f1@0.5"] < 50


def test_image_sensitivity_is_the_mean_pairwise_chamfer_and_zero_for_identical_meshes():
    from itertools import combinations

    from p2m_geo.metrics import image_sensitivity

    rng = np.random.default_rng(1)
    meshes = rng.normal(size=(4, 30, 3)) * np.array([1.0, 0.5, 0.2, 2.0])[:, None, None]
    expected = []
    for i, j in combinations(range(4), 2):
        d2 = ((meshes[i][:, None] - meshes[j][None]) ** 2).sum(-1)
        expected.append(1000 * (d2.min(1).mean() + d2.min(0).mean()))
    assert image_sensitivity(torch.from_numpy(meshes)) == pytest.approx(np.mean(expected), rel=1e-10)
    same = torch.from_numpy(np.repeat(meshes[:1], 5, axis=0))
    assert image_sensitivity(same) == 0.0
    with pytest.raises(ValueError, match="predictions: expected at least 2 meshes, got 1"):
        image_sensitivity(same[:1])


def test_align_translation_scale_recovers_a_known_similarity():
    generator = torch.Generator().manual_seed(3)
    gt = torch.rand(400, 3, generator=generator, dtype=torch.float64) * torch.tensor(
        [0.6, 0.3, 0.4], dtype=torch.float64
    )
    shift = torch.tensor([0.02, -0.01, 0.015], dtype=torch.float64)
    pred = 1.08 * (gt - gt.mean(0)) + gt.mean(0) + shift
    aligned = align_translation_scale(pred, gt)
    assert torch.allclose(aligned.points, gt, atol=1e-9)
    assert float(aligned.scale) == pytest.approx(1 / 1.08, abs=1e-9)
    # the scale acts about the prediction's centroid, so the translation is the plain shift back
    assert torch.allclose(aligned.translation, -shift, atol=1e-9)


def test_align_translation_only_on_two_samplings_of_a_sphere():
    generator = torch.Generator().manual_seed(4)

    def sphere(count):
        points = torch.randn(count, 3, generator=generator, dtype=torch.float64)
        return 0.3 * points / points.norm(dim=1, keepdim=True)

    shift = torch.tensor([0.05, -0.03, 0.02], dtype=torch.float64)
    gt, pred = sphere(4000), sphere(3000) + shift
    aligned = align_translation_scale(pred, gt, fit_scale=False)
    assert float(aligned.scale) == 1.0
    assert (aligned.translation + shift).abs().max() < 5e-3  # sampling noise of two different samplings
    before = reconstruction_metrics(pred, torch.zeros(3000, dtype=torch.long), gt, torch.zeros(4000, dtype=torch.long))
    after = reconstruction_metrics(
        aligned.points, torch.zeros(3000, dtype=torch.long), gt, torch.zeros(4000, dtype=torch.long)
    )
    assert float(after["cd"]) < 0.1 * float(before["cd"])


def test_align_translation_scale_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"pred, gt: expected \[N,3\] and \[M,3\] points, got \(5, 2\)"):
        align_translation_scale(torch.zeros(5, 2), torch.zeros(4, 3))


@pytest.mark.parametrize("fit_scale", [True, False])
def test_similarity_from_pairs_is_the_least_squares_solution(fit_scale):
    rng = np.random.default_rng(5)
    source, target, centre = rng.normal(size=(50, 3)), rng.normal(size=(50, 3)), rng.normal(size=3)
    # independent reference: b = s (a - c) + u as one linear least-squares problem in (s, u), u = c + t
    if fit_scale:
        design = np.zeros((150, 4))
        design[:, 0] = (source - centre).reshape(-1)
        design[:, 1:] = np.tile(np.eye(3), (50, 1))
        solution = np.linalg.lstsq(design, target.reshape(-1), rcond=None)[0]
        expected_scale, expected_translation = solution[0], solution[1:] - centre
    else:
        expected_scale, expected_translation = 1.0, (target - (source - centre)).mean(0) - centre
    scale, translation = similarity_from_pairs(
        torch.from_numpy(source), torch.from_numpy(target), torch.from_numpy(centre), fit_scale
    )
    assert float(scale) == pytest.approx(expected_scale, abs=1e-12)
    np.testing.assert_allclose(translation.numpy(), expected_translation, atol=1e-12)
