"""``p2m-geo eval``."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from p2m_geo.cli.errors import friendly_errors

log = logging.getLogger("p2m_geo.cli.eval")


@click.command("eval")
@click.option("--checkpoint", type=click.Path(dir_okay=True, path_type=Path), required=True)
@click.option("--data", "data_root", type=click.Path(path_type=Path), required=True, help="ShapeNetP2M-layout folder.")
@click.option("--list", "file_list", default="test_list.txt", show_default=True, help="File list, relative to --data.")
@click.option("--protocol", type=click.Choice(["p2m", "meshrcnn"]), default="p2m", show_default=True,
              help="p2m: predicted vertices vs GT points; meshrcnn: 10k points sampled on the predicted surface.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--max-samples", type=click.IntRange(min=0), default=0, help="Evaluate at most this many views.")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="Also evaluate the undeformed ellipsoid.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the numbers as JSON.")
@click.option("--on-bad-sample", type=click.Choice(["fail", "skip"]), default="fail", show_default=True)
@friendly_errors
def evaluate_command(checkpoint, data_root, file_list, protocol, batch_size, workers, device, max_samples, baseline,
                     json_path, on_bad_sample) -> None:
    """Per-category Chamfer distance (x1000) and F-scores at tau = 1e-4 and 2 tau (%)."""
    import torch

    from p2m_geo.checkpoint import load_checkpoint, model_from_checkpoint
    from p2m_geo.data import ShapeNetP2M
    from p2m_geo.engine import DistributedContext, evaluate, format_table, make_loader, resolve_device, resolve_list
    from p2m_geo.io_utils import atomic_write_bytes

    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        from p2m_geo.allocator import keep_freed_cpu_memory

        keep_freed_cpu_memory()
    model = model_from_checkpoint(load_checkpoint(checkpoint), str(checkpoint)).to(torch_device, memory_format=torch.channels_last)
    dataset = ShapeNetP2M(data_root, resolve_list(Path(data_root), file_list), on_bad_sample=on_bad_sample)
    loader = make_loader(dataset, batch_size, False, workers, 0, 0, DistributedContext(), torch_device.type == "cuda")
    results = evaluate(model, loader, torch_device, protocol, baseline=model if baseline else None,
                       max_samples=max_samples, quiet=False)
    click.echo(f"protocol {protocol}, {results['model']['mean']['count']} views, CD x1000, F-score in %")
    click.echo(format_table(results))
    if json_path is not None:
        atomic_write_bytes(json_path, json.dumps({"protocol": protocol, "checkpoint": str(checkpoint), **results},
                                                 indent=2).encode())
