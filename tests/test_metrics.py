"""Evaluation metrics against brute-force float64 references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from p2m_geo.mesh import ellipsoid_hierarchy
from p2m_geo.metrics import reconstruction_metrics, sample_points_on_faces


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
    pos = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 1, 1],
                        [0, 0, 5], [1, 0, 5], [0, 1, 5]], dtype=torch.float64)
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
