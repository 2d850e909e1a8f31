"""``p2m-geo``: the command-line entry point."""

from __future__ import annotations

import logging
import sys
import warnings

import click

# torch_geometric scripts a helper at import time; the deprecation is torch's, not actionable here.
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
# PyG's EdgeIndex matmul goes through torch's (beta) sparse CSC kernels; the notices are not actionable.
warnings.filterwarnings("ignore", message=r"Sparse (invariant checks|CSC tensor support)", category=UserWarning)

from p2m_geo import __version__
from p2m_geo.cli.errors import RegistryChoice, encoder_names


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="p2m-geo")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logging.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Pixel2Mesh on PyTorch Geometric: one RGB image -> a closed triangle mesh."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@cli.command()
@click.option("--hidden", type=int, default=None, help="G-ResNet width (default 192).")
@click.option("--backbone", type=RegistryChoice(encoder_names), default="cnn18")
def info(hidden: int | None, backbone: str) -> None:
    """Print versions, the mesh hierarchy and the model's parameter count."""
    import torch
    import torch_geometric

    from p2m_geo import ModelConfig, Pixel2Mesh
    from p2m_geo.mesh import ellipsoid_hierarchy

    config = ModelConfig(backbone=backbone, **({"hidden": hidden} if hidden else {}))
    model = Pixel2Mesh(config)
    click.echo(f"p2m-geo {__version__}, torch {torch.__version__}, torch_geometric {torch_geometric.__version__}")
    click.echo(f"cuda available: {torch.cuda.is_available()}")
    for level, mesh in enumerate(ellipsoid_hierarchy().levels, start=1):
        click.echo(
            f"level {level}: {mesh.num_nodes} vertices, {mesh.edge_index.size(1) // 2} edges, {mesh.face.size(1)} faces"
        )
    click.echo(f"parameters ({backbone}, hidden {config.hidden}): {sum(p.numel() for p in model.parameters()):,}")


from p2m_geo.cli.data import data  # noqa: E402
from p2m_geo.cli.evaluate import evaluate_command  # noqa: E402
from p2m_geo.cli.models import models  # noqa: E402
from p2m_geo.cli.predict import predict  # noqa: E402
from p2m_geo.cli.train import train  # noqa: E402

for command in (train, evaluate_command, predict, data, models):
    cli.add_command(command)

if __name__ == "__main__":
    cli()
