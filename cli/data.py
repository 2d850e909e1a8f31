"""``p2m-geo data``: generate, convert and inspect datasets."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click
from tqdm import tqdm

from p2m_geo.cli.errors import friendly_errors

log = logging.getLogger("p2m_geo.cli.data")


@click.group()
def data() -> None:
    """Dataset tools: procedural data, R2N2 conversion, contact sheets."""


@data.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-class", type=click.IntRange(min=2), default=24, show_default=True, help="Shapes per class.")
@click.option("--views", type=click.IntRange(1, 24), default=4, show_default=True, help="Renderings per shape.")
@click.option(
    "--extra-train",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="More training shapes per class after the --per-class ones (the test views stay the same).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Processes.")
@click.option("--categories", default="all", show_default=True, help="Comma-separated class names, or 'all'.")
@click.option(
    "--version",
    "version",
    type=click.Choice(["1", "2", "3"]),
    default="2",
    show_default=True,
    help="Dataset version: 2 = curved shapes, palette colours, textures, random lighting; 1 = flat-shaded primitives;"
    " 3 = version 1 with biplanes among the airplanes.",
)
@click.option(
    "--contact-sheet",
    "sheet",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a PNG with one row per class.",
)
@friendly_errors
def synth(
    out: Path,
    per_class: int,
    views: int,
    extra_train: int,
    seed: int,
    workers: int,
    categories: str,
    version: str,
    sheet: Path | None,
) -> None:
    """Generate the procedural 13-class dataset into OUT (ShapeNetP2M layout)."""
    from p2m_geo.data.synth import CATEGORIES, SynthSpec, contact_sheet, generate_dataset

    names = tuple(CATEGORIES) if categories == "all" else tuple(c.strip() for c in categories.split(",") if c.strip())
    spec = SynthSpec(
        per_class=per_class, views=views, seed=seed, categories=names, version=int(version), extra_train=extra_train
    )
    total = spec.num_views
    start = time.perf_counter()
    with tqdm(total=total, unit="view", desc="synth") as bar:
        counts = generate_dataset(out, spec, workers=workers, progress=bar.update)
    elapsed = time.perf_counter() - start
    log.info(
        "wrote %d train / %d test views to %s (%.1f views/s)", counts["train"], counts["test"], out, total / elapsed
    )
    if sheet is not None:
        log.info("contact sheet: %s", contact_sheet(out, sheet))


@data.command("convert-r2n2")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--synset", default=None, help="8-digit synset when SOURCE's folders do not name it.")
@friendly_errors
def convert_r2n2_command(source: Path, out: Path, synset: str | None) -> None:
    """Convert raw ShapeNet models (model_normal.xyz + R2N2 rendering/) into ShapeNetP2M .dat files."""
    from p2m_geo.data.r2n2 import convert_r2n2
    from p2m_geo.io_utils import atomic_write_bytes

    lines = convert_r2n2(source, out, synset, progress=lambda items: tqdm(items, unit="model", desc="convert"))
    atomic_write_bytes(out / "file_list.txt", ("\n".join(lines) + "\n").encode())
    log.info("wrote %d views to %s (list: %s)", len(lines), out, out / "file_list.txt")


@data.command("contact-sheet")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--list", "file_list", default="train_list.txt", show_default=True)
@click.option("--columns", type=click.IntRange(min=1), default=8, show_default=True)
@friendly_errors
def contact_sheet_command(root: Path, out: Path, file_list: str, columns: int) -> None:
    """Write a PNG with one row per class of ROOT's renderings."""
    from p2m_geo.data.synth import contact_sheet

    log.info("contact sheet: %s", contact_sheet(root, out, columns=columns, file_list=file_list))


@data.command("mesh-quality")
@click.argument("meshes", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@friendly_errors
def mesh_quality_command(meshes) -> None:
    """Print % self-intersecting faces and roughness (mean dihedral angle) of mesh files."""
    import numpy as np
    import open3d as o3d
    import torch

    from p2m_geo.mesh_quality import dihedral_roughness, face_adjacency, self_intersecting_fraction

    click.echo("| mesh | vertices | faces | self-intersecting faces % | roughness ° |\n|---|---|---|---|---|")
    fractions, clouds = [], []
    for path in meshes:
        mesh = o3d.io.read_triangle_mesh(str(path))
        vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
        if len(faces) == 0:
            raise click.BadParameter(f"expected a triangle mesh, got no faces in {path}", param_hint="MESHES")
        face = torch.from_numpy(faces).t().long()
        roughness = dihedral_roughness(
            torch.from_numpy(vertices), face, face_adjacency(face), torch.zeros(face.size(1), dtype=torch.long), 1
        ).item()
        fractions.append(100 * self_intersecting_fraction(vertices, faces))
        clouds.append(torch.from_numpy(vertices))
        click.echo(f"| {path.name} | {len(vertices)} | {len(faces)} | {fractions[-1]:.2f} | {roughness:.1f} |")
    click.echo(f"| **mean** | | | {np.mean(fractions):.2f} | |")
    if len(clouds) > 1 and len({len(c) for c in clouds}) == 1:
        from p2m_geo.metrics import image_sensitivity

        click.echo(
            f"mean pairwise CD x1000 between these meshes' vertices (predictions for different images: "
            f"0 = the same mesh for all): {image_sensitivity(torch.stack(clouds)):.3f}"
        )
