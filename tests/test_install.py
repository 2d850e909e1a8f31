"""A non-editable install (wheel) carries the CLI, the mesh assets and the bundled model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

IGNORED = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", "runs", ".pytest_cache", ".venv*"
)


@pytest.mark.slow
def test_wheel_install_has_cli_and_meshes(tmp_path: Path):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=IGNORED)
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
    )
    (wheel,) = wheels.glob("p2m_geo-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True
    )

    env = {**os.environ, "PYTHONPATH": str(site)}
    check = (
        "import p2m_geo, p2m_geo.cli.main, p2m_geo.meshes;"
        "from p2m_geo.mesh import ellipsoid_hierarchy;"
        f"assert p2m_geo.__file__.startswith({str(site)!r}), p2m_geo.__file__;"
        f"assert p2m_geo.meshes.__file__.startswith({str(site)!r});"
        "h = ellipsoid_hierarchy();"
        "from p2m_geo.pretrained import bundled_path, load_bundled;"
        f"assert str(bundled_path()).startswith({str(site)!r});"
        "load_bundled();"
        "import p2m_geo.ops, p2m_geo.data.factory;"
        "print([d.num_nodes for d in h.levels])"
    )
    out = subprocess.run([sys.executable, "-c", check], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[156, 618, 2466]"

    script = site / "bin" / "p2m-geo"
    help_text = subprocess.run([str(script), "--help"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert help_text.returncode == 0, help_text.stderr
    assert "Pixel2Mesh" in help_text.stdout


def test_the_cli_parses_arguments_without_importing_torch():
    """``p2m-geo --help`` and argument errors stay fast: torch (and the encoder registry) load
    only when a command runs or a ``--backbone`` is checked."""
    code = "import sys, p2m_geo.cli.main; print(sorted({'torch', 'numpy', 'torch_geometric'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
