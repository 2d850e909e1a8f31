"""``p2m-geo models``: the bundled pretrained models (list, export)."""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
from pathlib import Path

import click

from p2m_geo.cli.errors import friendly_errors

log = logging.getLogger("p2m_geo.cli.models")


@click.group(invoke_without_command=True)
@click.pass_context
@friendly_errors
def models(ctx: click.Context) -> None:
    """List the models bundled with the package (the one `predict` uses without --checkpoint first)."""
    if ctx.invoked_subcommand is not None:
        return
    from p2m_geo.pretrained import DEFAULT_MODEL, bundled_models

    found = bundled_models()
    if not found:
        click.echo("no bundled models in this installation")
    for model in found:
        meta = model.metadata
        default = " (default)" if model.name == DEFAULT_MODEL else ""
        click.echo(f"{model.name}{default}: {model.path} ({model.size_mb:.1f} MB)")
        click.echo(f"  trained by: {meta.get('command', '?')}")
        click.echo(f"  data: {meta.get('data', '?')}; commit {meta.get('commit', '?')}; {meta.get('date', '?')}")
        for key, value in sorted(meta.get("metrics", {}).items()):
            click.echo(f"  {key}: {value}")


@models.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--command", "command", required=True, help="The command that trained CHECKPOINT.")
@click.option("--data", "data", required=True, help="The data it was trained on (e.g. synth-v2-pc24-views4-seed0).")
@click.option(
    "--metrics",
    "metrics_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON object of figures to store (e.g. real-object F@tau).",
)
@click.option("--commit", default=None, help="Commit it was trained at [default: git rev-parse HEAD].")
@friendly_errors
def export_command(
    checkpoint: Path, out: Path, command: str, data: str, metrics_file: Path | None, commit: str | None
) -> None:
    """Write CHECKPOINT's model in half precision with its metadata to OUT (for p2m_geo/pretrained/)."""
    from p2m_geo.pretrained import export_bundled

    if out.suffix != ".pt":
        raise click.BadParameter(f"expected a .pt file, got {out}", param_hint="OUT")
    metrics = json.loads(metrics_file.read_text()) if metrics_file else {}
    if not isinstance(metrics, dict):
        raise click.BadParameter(f"expected a JSON object, got {type(metrics).__name__}", param_hint="--metrics")
    if commit is None:
        commit = (
            subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
        )
    metadata = {
        "name": out.stem,
        "command": command,
        "data": data,
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "metrics": metrics,
    }
    export_bundled(checkpoint, out, metadata)
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
