r"""Appearance randomisation for the procedural renderings (dataset version 2).

Real ShapeNet renderings are mostly grey, white or dark with a few muted colours, often
textured, under soft shading. Each shape draws a :class:`Material` per part (a base and a
second colour from :func:`palette_colour`, a procedural pattern mixing them) and each view a
:class:`Lighting`; :func:`shade` is Blinn-Phong:

.. math::
    c = \rho(p) \, (k_a + k_d \max(n \cdot l, 0)) + k_s \max(n \cdot h, 0)^{s},
    \qquad h = \frac{l + v}{\lVert l + v \rVert}

with the albedo :math:`\rho(p) = (1 - m(p)) \, c_1 + m(p) \, c_2` and :math:`m` a pattern in
:math:`[0, 1]` evaluated at the hit point in the object frame (so it sticks to the shape when
the camera moves): ``plain`` (0), ``noise`` (a sum of random sinusoids), ``stripes``,
``checker`` and ``grain`` (wood-like rings around a random axis).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

__all__ = [
    "PATTERNS",
    "Material",
    "Lighting",
    "palette_colour",
    "random_material",
    "random_lighting",
    "pattern_value",
    "mix",
    "part_materials",
    "shade",
]

PATTERNS = ("plain", "noise", "stripes", "checker", "grain")
_PATTERN_PROBABILITIES = (0.4, 0.2, 0.15, 0.1, 0.15)


def palette_colour(rng: np.random.Generator) -> np.ndarray:
    """One RGB colour in ``[0, 1]``: 65% neutral (greys from near-black to near-white), 35%
    muted colours (saturation 0.15-0.55), like the materials of ShapeNet models."""
    if rng.random() < 0.65:
        value = rng.choice([rng.uniform(0.08, 0.3), rng.uniform(0.3, 0.7), rng.uniform(0.7, 0.95)], p=[0.3, 0.4, 0.3])
        hue, saturation = rng.random(), rng.uniform(0.0, 0.08)
    else:
        hue, saturation, value = rng.random(), rng.uniform(0.15, 0.55), rng.uniform(0.3, 0.85)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value))


@dataclass(frozen=True)
class Material:
    """Two colours mixed by a pattern: ``pattern`` in :data:`PATTERNS`, ``frequency`` in
    cycles per unit length (shapes have diagonal 1), ``direction`` a unit vector, ``phases``
    and ``waves`` the random sinusoids of ``noise``."""

    colour: Tuple[float, float, float]
    second: Tuple[float, float, float]
    pattern: str = "plain"
    frequency: float = 8.0
    direction: Tuple[float, float, float] = (1.0, 0.0, 0.0)
    waves: Tuple[Tuple[float, float, float, float], ...] = ()


def random_material(rng: np.random.Generator, base: np.ndarray | None = None) -> Material:
    """A material whose first colour is ``base`` (or a palette colour); the second is a
    lighter/darker shade of it or another palette colour."""
    colour = palette_colour(rng) if base is None else np.asarray(base, float)
    if rng.random() < 0.6:
        second = np.clip(colour * rng.uniform(0.55, 1.45), 0, 1)
    else:
        second = palette_colour(rng)
    pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=_PATTERN_PROBABILITIES))]
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    waves = tuple(
        tuple(float(x) for x in (*(rng.normal(size=3) * rng.uniform(3, 12)), rng.uniform(0, 2 * np.pi)))
        for _ in range(3)
    )
    return Material(
        tuple(colour.tolist()),
        tuple(second.tolist()),
        pattern,
        float(rng.uniform(4, 16)),
        tuple(direction.tolist()),
        waves,
    )


def pattern_value(material: Material, points: np.ndarray) -> np.ndarray:
    """The mixing weight :math:`m(p) \\in [0, 1]` at object-frame ``points`` ``[N,3]``."""
    f, d = material.frequency, np.asarray(material.direction)
    if material.pattern == "plain":
        return np.zeros(len(points))
    if material.pattern == "noise":
        total = sum(np.sin(points @ np.asarray(w[:3]) + w[3]) for w in material.waves)
        return np.clip(0.5 + total / 3.0, 0, 1)
    if material.pattern == "stripes":
        return (np.sin(2 * np.pi * f * (points @ d)) > 0).astype(float)
    if material.pattern == "checker":
        return (np.floor(points * f).astype(np.int64).sum(1) % 2).astype(float)
    if material.pattern == "grain":
        radial = np.linalg.norm(points - np.outer(points @ d, d), axis=1)
        wobble = 0.02 * np.sin(points @ np.asarray(material.waves[0][:3]))
        return 0.5 + 0.5 * np.sin(2 * np.pi * 2 * f * (radial + wobble))
    raise ValueError(f"pattern: expected one of {', '.join(PATTERNS)}, got {material.pattern!r}")


@dataclass(frozen=True)
class Lighting:
    """Directional light (camera frame, unit) and Blinn-Phong strengths."""

    direction: Tuple[float, float, float]
    ambient: float
    diffuse: float
    specular: float
    shininess: float


def random_lighting(rng: np.random.Generator) -> Lighting:
    """A light from the camera's side of the object, 10-80 degrees above the view axis plane,
    up to 80 degrees left or right; ambient 0.2-0.5, diffuse 0.35-0.8, specular 0-0.45."""
    azimuth, elevation = np.radians(rng.uniform(-80, 80)), np.radians(rng.uniform(10, 80))
    direction = np.array([np.sin(azimuth) * np.cos(elevation), np.sin(elevation), np.cos(azimuth) * np.cos(elevation)])
    return Lighting(
        tuple(direction.tolist()),
        float(rng.uniform(0.2, 0.5)),
        float(rng.uniform(0.35, 0.8)),
        float(rng.uniform(0.0, 0.45)),
        float(rng.uniform(5, 60)),
    )


def shade(albedo: np.ndarray, normals: np.ndarray, view: np.ndarray, lighting: Lighting) -> np.ndarray:
    """Blinn-Phong colours ``[N,3]`` in ``[0, 1]``.

    Args:
        albedo: ``[N,3]`` surface colours.
        normals: ``[N,3]`` unit normals facing the viewer.
        view: ``[N,3]`` unit directions from the surface point to the camera.
        lighting: light direction (unit, pointing to the light) and strengths.
    """
    light = np.asarray(lighting.direction, dtype=albedo.dtype)
    diffuse = np.clip(normals @ light, 0, 1)
    half = view + light
    half /= np.maximum(np.linalg.norm(half, axis=1, keepdims=True), 1e-12)
    specular = np.clip((normals * half).sum(1), 0, 1) ** lighting.shininess * (diffuse > 0)
    colour = albedo * (lighting.ambient + lighting.diffuse * diffuse)[:, None] + lighting.specular * specular[:, None]
    return np.clip(colour, 0, 1)


def mix(material: Material, points: np.ndarray) -> np.ndarray:
    """Albedo ``[N,3]`` of ``material`` at object-frame ``points``."""
    m = pattern_value(material, points)[:, None]
    return (1 - m) * np.asarray(material.colour) + m * np.asarray(material.second)


def part_materials(rng: np.random.Generator, parts: int) -> Sequence[Material]:
    """Materials for ``parts`` parts: half the shapes one material for all, the others two or
    three materials assigned to parts at random."""
    if parts == 1 or rng.random() < 0.5:
        return [random_material(rng)] * parts
    options = [random_material(rng) for _ in range(int(rng.integers(2, 4)))]
    return [options[int(k)] for k in rng.integers(0, len(options), size=parts)]
