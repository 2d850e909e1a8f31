"""``p2m-geo predict``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

import click

from p2m_geo.cli.errors import friendly_errors

log = logging.getLogger("p2m_geo.cli.predict")
MESH_FORMATS = (".ply", ".obj", ".off", ".glb")


def newest_best_checkpoint(runs: Path = Path("runs")) -> Path | None:
    """The newest ``runs/*/best.pt``, or None."""
    candidates = sorted(runs.glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def choose_checkpoint(checkpoint: Path | None, model_name: str | None) -> tuple:
    """``(path, how it was chosen)``: --checkpoint, else --model, else the newest
    runs/*/best.pt, else the default bundled model."""
    from p2m_geo.pretrained import DEFAULT_MODEL, bundled_path

    if checkpoint is not None and model_name is not None:
        raise click.UsageError("give --checkpoint or --model, not both")
    if checkpoint is not None:
        return checkpoint, "--checkpoint"
    if model_name is None:
        newest = newest_best_checkpoint()
        if newest is not None:
            return newest, "the newest runs/*/best.pt"
    try:
        return bundled_path(model_name or DEFAULT_MODEL), f"bundled model {model_name or DEFAULT_MODEL}"
    except FileNotFoundError as error:
        raise click.BadParameter(
            str(error).split(": ", 1)[1] + "; run `p2m-geo train` or pass --checkpoint FILE", param_hint="--model"
        ) from None


def output_paths(images: List[Path], out: Path) -> List[Path]:
    """``-o``: a mesh file for one image; otherwise a folder, ``<stem>.ply`` per image. A name with
    any other suffix is a folder only where it exists (``runs/v1.2/``); else it is refused, since
    it may be a misspelt mesh file (``car.pyl``) or an image."""
    if out.is_dir():
        return _folder_paths(images, out)
    if len(images) == 1 and out.suffix.lower() in MESH_FORMATS:
        if not out.parent.is_dir():
            raise click.BadParameter(
                f"expected an existing folder for {out}, got no such folder: {out.parent}", param_hint="-o"
            )
        return [out]
    if out.suffix.lower() in MESH_FORMATS:
        raise click.BadParameter(f"expected a folder for {len(images)} images, got a file name {out}", param_hint="-o")
    if out.suffix:
        raise click.BadParameter(
            f"expected a {'/'.join(MESH_FORMATS)} file or an existing folder, got {out.suffix!r}", param_hint="-o"
        )
    return _folder_paths(images, out)


def _folder_paths(images: List[Path], out: Path) -> List[Path]:
    names = [p.stem for p in images]
    if len(set(names)) != len(names):
        raise click.BadParameter("expected images with distinct file names, got duplicates", param_hint="IMAGES")
    return [out / f"{p.stem}.ply" for p in images]


def level_path(target: Path, level: int) -> Path:
    """Where ``--all-levels`` writes mesh level ``level`` (0, 1, 2) of ``target``."""
    return target if level == 2 else target.with_name(f"{target.stem}_level{level + 1}{target.suffix}")


def check_outputs(images: List[Path], targets: List[Path], all_levels: bool, preview) -> List[Path]:
    """Every path this run will write, refused before any work when two collide, when one is an
    input, or when the preview is not a new .png beside the meshes."""
    written = [level_path(t, level) for t in targets for level in (range(3) if all_levels else [2])]
    resolved = [p.resolve() for p in written]
    if len(set(resolved)) != len(resolved):
        duplicate = next(p for p in written if resolved.count(p.resolve()) > 1)
        raise click.BadParameter(
            f"expected distinct output files, got {duplicate} twice (rename an image)", param_hint="-o"
        )
    inputs = {p.resolve() for p in images}
    clobbered = [p for p in written if p.resolve() in inputs]
    if clobbered:
        raise click.BadParameter(f"expected outputs that are not inputs, got {clobbered[0]}", param_hint="-o")
    if preview is not None:
        if preview.suffix.lower() != ".png":
            raise click.BadParameter(f"expected a .png file, got {preview}", param_hint="--preview")
        if preview.resolve() in inputs or preview.resolve() in set(resolved):
            raise click.BadParameter(
                f"expected a new file, got {preview}, which is an input or an output of this command",
                param_hint="--preview",
            )
        if not preview.parent.is_dir():
            raise click.BadParameter(
                f"expected an existing folder for {preview}, got no such folder: {preview.parent}",
                param_hint="--preview",
            )
    return written


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Mesh file (.ply/.obj/.off/.glb) for one image, or a folder for several.",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint [default: the newest runs/*/best.pt, else the bundled model].",
)
@click.option("--model", "model_name", default=None, help="A bundled model by name (see `p2m-geo models`).")
@click.option(
    "--focal",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Focal length in pixels of the 224 input [default: 248, the ShapeNet renderings'].",
)
@click.option(
    "--principal",
    type=(float, float),
    default=None,
    metavar="CX CY",
    help="Principal point in pixels of the 224 input [default: 111.5 111.5].",
)
@click.option("--all-levels", is_flag=True, help="Also write the 156- and 618-vertex meshes (_level1, _level2).")
@click.option("--preview", type=click.Path(dir_okay=False, path_type=Path), help="PNG: input beside the rendered mesh.")
@click.option(
    "--smooth",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Taubin smoothing iterations on each written mesh (open3d filter_smooth_taubin; 0: off).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@friendly_errors
def predict(images, out, checkpoint, model_name, focal, principal, all_levels, preview, smooth, device) -> None:
    """Reconstruct a mesh from each image (PNG/JPEG, RGB or RGBA; centre-cropped and resized to 224)."""
    import torch

    from p2m_geo.camera import SHAPENET_CENTER, SHAPENET_FOCAL, default_intrinsics
    from p2m_geo.checkpoint import load_checkpoint, model_from_checkpoint
    from p2m_geo.data.images import load_image
    from p2m_geo.runtime import setup_runtime
    from p2m_geo.mesh import graph_mesh
    from p2m_geo.mesh_io import write_mesh

    images = list(images)
    targets = output_paths(images, out)
    check_outputs(images, targets, all_levels, preview)
    pixels = torch.stack([load_image(p) for p in images])  # fails before any output is written
    checkpoint, chosen = choose_checkpoint(checkpoint, model_name)
    runtime = setup_runtime(device, retain_cpu_memory=False)
    torch_device = runtime.device
    model = runtime.place(model_from_checkpoint(load_checkpoint(checkpoint), str(checkpoint))).eval()
    log.info("model: %s (%s)", checkpoint, chosen)
    intrinsics = default_intrinsics(
        len(images), focal or SHAPENET_FOCAL, principal or SHAPENET_CENTER, device=torch_device
    )
    with torch.no_grad():
        output = model(pixels.to(torch_device), intrinsics)
    for level, mesh in enumerate(output.meshes):
        if not bool(torch.isfinite(mesh.pos).all()):
            raise click.ClickException(
                f"prediction: expected finite vertices, got NaN/Inf at level {level + 1} "
                f"from {checkpoint}; nothing was written"
            )
    if targets[0] != out:  # folder mode: create the folder only now that the work is done
        out.mkdir(parents=True, exist_ok=True)
    preview_rows = []
    for index, target in enumerate(targets):
        levels = range(3) if all_levels else [2]
        for level in levels:
            vertices, faces = graph_mesh(output.meshes[level], index)
            vertices, faces = vertices.cpu().double().numpy(), faces.cpu().numpy()
            if smooth:
                from p2m_geo.mesh_quality import taubin_smooth

                vertices = taubin_smooth(vertices, faces, smooth)
            path = level_path(target, level)
            write_mesh(path, vertices, faces)
            log.info("wrote %s (%d vertices, %d faces)", path, len(vertices), len(faces))
            if level == 2 and preview is not None:
                from p2m_geo.render import preview_row

                preview_rows.append(preview_row(pixels[index], vertices, faces))
    if preview is not None:
        from p2m_geo.render import write_preview_png

        write_preview_png(preview_rows, preview)
        log.info("preview: %s", preview)
