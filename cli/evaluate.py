"""``p2m-geo eval``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from p2m_geo.cli.errors import friendly_errors

log = logging.getLogger("p2m_geo.cli.eval")

#: column titles of the table
METRIC_LABELS = {
    "cd": "CD",
    "f@0.0001": "F@τ",
    "f@0.0002": "F@2τ",
    "chamfer_l2": "Chamfer-L2",
    "normal_consistency": "NC",
    "f1@0.1": "F1@0.1",
    "f1@0.3": "F1@0.3",
    "f1@0.5": "F1@0.5",
    "self_intersecting": "self-int. %",
    "roughness": "rough. °",
}


def format_table(evaluation) -> str:
    """Markdown table of an :class:`~p2m_geo.evaluation.Evaluation`: one row per category
    (+ mean); for each metric the model's value, then each baseline's."""
    from p2m_geo.mesh_quality import QUALITY_KEYS
    from p2m_geo.metrics import protocol_metric_keys

    tables = evaluation.tables
    methods = list(tables)
    keys = protocol_metric_keys(evaluation.protocol)
    header = "| category | n |" + "".join(f" {METRIC_LABELS.get(k, k)} {m} |" for k in keys for m in methods)
    lines = [header, "|---|---|" + "---|" * (len(keys) * len(methods))]
    categories = [c for c in tables[methods[0]] if c != "mean"] + ["mean"]
    quality_keys = list(QUALITY_KEYS) if evaluation.quality else []
    if quality_keys:
        lines[0] += "".join(f" {METRIC_LABELS.get(k, k)} model |" for k in quality_keys)
        lines[1] += "---|" * len(quality_keys)
    for category in categories:
        row = f"| {'**mean**' if category == 'mean' else category} | {int(tables[methods[0]][category]['count'])} |"
        for key in keys:
            digits = 3 if key in ("cd", "chamfer_l2", "normal_consistency") else 1
            row += "".join(f" {tables[m][category][key]:.{digits}f} |" for m in methods)
        for key in quality_keys:
            value = evaluation.quality.get(category, {}).get(key)
            row += " – |" if value is None else f" {value:.{3 if key == 'normal_consistency' else 1}f} |"
        lines.append(row)
    return "\n".join(lines)


@click.command("eval")
@click.option("--checkpoint", type=click.Path(dir_okay=True, path_type=Path), required=True)
@click.option("--data", "data_root", type=click.Path(path_type=Path), required=True, help="ShapeNetP2M-layout folder.")
@click.option("--list", "file_list", default="test_list.txt", show_default=True, help="File list, relative to --data.")
@click.option(
    "--protocol",
    type=click.Choice(["p2m", "meshrcnn"]),
    default="p2m",
    show_default=True,
    help="p2m: predicted vertices vs GT points, squared distances, tau = 1e-4; meshrcnn: Mesh R-CNN's "
    "compare_meshes (GT longest box edge scaled to 10, 10k surface samples, Chamfer-L2, normal "
    "consistency, F1 at 0.1/0.3/0.5).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--max-samples", type=click.IntRange(min=0), default=0, help="Evaluate at most this many views.")
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Also evaluate the image-blind baselines: the model fed a blank white image, and the ellipsoid.",
)
@click.option(
    "--smooth",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Taubin-smooth each predicted mesh with N iterations first (as predict --smooth).",
)
@click.option(
    "--quality/--no-quality",
    default=True,
    show_default=True,
    help="Mesh quality: normal consistency, % self-intersecting faces (open3d), roughness.",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the numbers as JSON."
)
@click.option("--on-bad-sample", type=click.Choice(["fail", "skip"]), default="fail", show_default=True)
@friendly_errors
def evaluate_command(
    checkpoint,
    data_root,
    file_list,
    protocol,
    batch_size,
    workers,
    device,
    max_samples,
    baseline,
    smooth,
    quality,
    json_path,
    on_bad_sample,
) -> None:
    """Per-category metrics of the model beside its image-blind baselines (blank image, ellipsoid),
    and its image sensitivity (mean pairwise CD between its predictions for different views)."""

    from p2m_geo.checkpoint import load_checkpoint, model_from_checkpoint
    from p2m_geo.data import ShapeNetP2M
    from p2m_geo.data.factory import make_loader, resolve_list
    from p2m_geo.runtime import DistributedContext, setup_runtime
    from p2m_geo.evaluation import BASELINES, evaluate
    from p2m_geo.io_utils import atomic_write_bytes

    if json_path is not None and not json_path.parent.is_dir():  # checked before any work
        raise click.BadParameter(
            f"expected an existing folder for {json_path}, got no such folder: {json_path.parent}", param_hint="--json"
        )
    runtime = setup_runtime(device)
    torch_device = runtime.device
    model = runtime.place(model_from_checkpoint(load_checkpoint(checkpoint), str(checkpoint)))
    dataset = ShapeNetP2M(data_root, resolve_list(Path(data_root), file_list), on_bad_sample=on_bad_sample)
    loader = make_loader(dataset, batch_size, False, workers, 0, 0, DistributedContext(), torch_device.type == "cuda")
    results = evaluate(
        model,
        loader,
        torch_device,
        protocol,
        baselines=BASELINES if baseline else (),
        max_samples=max_samples,
        quiet=False,
        quality="all" if quality else "none",
        smooth=smooth,
    )
    units = (
        "CD x1000, F-scores in %, NC = normal consistency, roughness = mean dihedral angle"
        if protocol == "p2m"
        else "Chamfer-L2 and F1 (%) at GT longest edge 10, NC = absolute normal consistency"
    )
    click.echo(
        f"protocol {protocol}, {results.tables['model']['mean']['count']} views, {units}; "
        f"columns: model, then {', '.join(m for m in results.tables if m != 'model') or 'no baseline'}"
    )
    click.echo(format_table(results))
    if results.image_sensitivity is not None:
        click.echo(
            f"image sensitivity (mean pairwise CD x1000 between predictions for different views; "
            f"0 = the model ignores its input): {results.image_sensitivity:.3f}"
        )
    if json_path is not None:
        atomic_write_bytes(
            json_path, json.dumps({"checkpoint": str(checkpoint), **results.to_dict()}, indent=2).encode()
        )
