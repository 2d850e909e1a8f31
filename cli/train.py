"""``p2m-geo train``."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any, Dict, Optional

import click

from p2m_geo.cli.errors import RegistryChoice, encoder_names, friendly_errors
from p2m_geo.config import PRESETS

log = logging.getLogger("p2m_geo.cli.train")


def default_preset() -> str:
    import torch

    return "full" if torch.cuda.is_available() else "cpu-quick"


def build_config(preset: str, config_file: Optional[Path], overrides: Dict[str, Dict[str, Any]]):
    """defaults <- preset <- YAML file <- command-line options (strict keys throughout)."""
    from p2m_geo.config import Config, from_dict, merge_dicts, preset_dict, read_yaml_dict

    values = preset_dict(preset)
    if config_file is not None:
        values = merge_dicts(values, read_yaml_dict(config_file))
    values = merge_dicts(
        values, {section: {k: v for k, v in items.items() if v is not None} for section, items in overrides.items()}
    )
    return from_dict(Config, values)


def _new_run_dir(out: Path, preset: str, ctx) -> Path:
    """A fresh date-time run folder, created by rank 0 (see :func:`_fresh_run_dir`); under
    torchrun its path is broadcast so all ranks agree."""
    run_dir = _fresh_run_dir(out, f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{preset}") if ctx.is_main else None
    if ctx.enabled:
        import torch.distributed as dist

        holder = [str(run_dir) if run_dir else ""]
        dist.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
    return run_dir


def _fresh_run_dir(out: Path, name: str) -> Path:
    """``out/name``, or ``out/name-2``, ``-3``, ... : created here, exclusively, so two runs
    started in the same second never share a folder."""
    out.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        run_dir = out / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise click.BadParameter(f"expected a free run name under {out}, got none after 999 tries", param_hint="--out")


@click.command()
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default=None,
    help="Architecture + schedule preset [default: full with a GPU, cpu-quick without].",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML config (sections model/loss/train/data); unknown keys are an error.",
)
@click.option(
    "--data",
    "data_root",
    type=click.Path(file_okay=False, path_type=Path),
    help="ShapeNetP2M-layout folder [default: the generated procedural dataset].",
)
@click.option("--train-list", help="Training file list, relative to --data [default: train_list.txt].")
@click.option("--val-list", help="Validation file list, relative to --data [default: test_list.txt].")
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--lr", type=click.FloatRange(min=0, min_open=True))
@click.option("--hidden", type=click.IntRange(min=1), help="G-ResNet width (192 / 256).")
@click.option("--backbone", type=RegistryChoice(encoder_names))
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False), help="Local trunk weights file.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes.")
@click.option("--seed", type=int)
@click.option("--max-steps", type=click.IntRange(min=0), help="Stop after this many optimiser steps.")
@click.option("--on-bad-sample", type=click.Choice(["fail", "skip"]))
@click.option("--amp/--no-amp", default=None, help="bfloat16 autocast for the network (losses stay float32).")
@click.option(
    "--compile/--no-compile",
    "compile_model",
    default=None,
    help="torch.compile the encoder and deformation blocks (for GPUs).",
)
@click.option("--channels-last/--no-channels-last", default=None, help="NHWC encoder convolutions [default: on].")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Folder that holds the run folders.",
)
@click.option("--name", help="Run folder name [default: date-time and preset].")
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Continue the run in this folder from its last.pt.",
)
@click.option("--quiet", is_flag=True, help="No progress bars; warnings only.")
@friendly_errors
def train(
    preset,
    config_file,
    data_root,
    train_list,
    val_list,
    epochs,
    batch_size,
    lr,
    hidden,
    backbone,
    backbone_weights,
    device,
    workers,
    seed,
    max_steps,
    on_bad_sample,
    amp,
    compile_model,
    channels_last,
    out,
    name,
    resume_dir,
    quiet,
) -> None:
    """Train Pixel2Mesh; with no options, on the procedural dataset (generated once, cached)."""
    from p2m_geo.engine import run_training
    from p2m_geo.runtime import init_distributed

    if quiet:
        logging.getLogger().setLevel(logging.WARNING)
    overrides = {
        "model": {"hidden": hidden, "backbone": backbone, "backbone_weights": backbone_weights},
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "device": device,
            "workers": workers,
            "seed": seed,
            "max_steps": max_steps,
            "amp": amp,
            "compile": compile_model,
            "channels_last": channels_last,
        },
        "data": {
            "root": str(data_root) if data_root else None,
            "train_list": train_list,
            "val_list": val_list,
            "on_bad_sample": on_bad_sample,
        },
    }
    if resume_dir is not None:
        if preset is not None or config_file is not None:
            raise click.UsageError("--resume takes the run's own config.yaml; do not combine it with --preset/--config")
        if not (resume_dir / "last.pt").is_file():
            raise click.BadParameter(
                f"expected {resume_dir / 'last.pt'} to exist, got no such file", param_hint="--resume"
            )
        config = build_config("full", resume_dir / "config.yaml", overrides)
        run_dir = resume_dir
    else:
        preset = preset or default_preset()
        config = build_config(preset, config_file, overrides)
        if name:
            run_dir = out / name
            if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
                raise click.BadParameter(
                    f"expected a new or empty run folder, got {run_dir}, which holds files "
                    f"(use --resume {run_dir} or another --name)",
                    param_hint="--name",
                )
        else:
            run_dir = _new_run_dir(out, preset, init_distributed(config.train.device))
    log.info("run folder: %s", run_dir)
    try:
        row = run_training(config, run_dir, resume=resume_dir is not None, quiet=quiet).metrics
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; resume with --resume {run_dir}") from None
    if row and "val_cd" in row:
        views = f" ({row['val_views']:.0f} views)" if "val_views" in row else ""  # rows of older runs lack it
        click.echo(
            f"{run_dir}: epoch {row['epoch']}, validation{views} CD "
            f"{row.get('val_cd', float('nan')):.3f}, F@1e-4 {row.get('val_f@0.0001', float('nan')):.2f}%"
        )
