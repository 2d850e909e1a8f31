"""A real full disk (a small tmpfs) and a diverging run, through the CLI: one line that says
what happened, exit status 1, no traceback, nothing half-written, earlier files kept."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from p2m_geo.cli.main import cli

from conftest import TINY, train_args


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount; skipped where the machine cannot mount)."""
    mount_point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, leave_bytes: int) -> None:
    """Fill ``disk`` until about ``leave_bytes`` are free."""
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * max(free - leave_bytes, 0))


def run(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("suffix", [".ply", ".off", ".obj", ".glb"])
def test_predict_onto_a_full_disk_fails_in_one_line_and_keeps_the_old_mesh(
    small_disk, shared_data, tiny_checkpoint, suffix
):
    image = shared_data / "examples" / "car.png"
    target = small_disk / f"car{suffix}"
    first = run("predict", image, "-o", target, "--checkpoint", tiny_checkpoint, "--device", "cpu")
    assert first.exit_code == 0, first.output
    good = target.read_bytes()
    fill(small_disk, 20_000)  # a 2466-vertex mesh needs 60-200 kB
    result = run("predict", image, "-o", target, "--checkpoint", tiny_checkpoint, "--device", "cpu")
    assert result.exit_code == 1
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert "full" in result.output.lower() or "ENOSPC" in result.output or "No space" in result.output, result.output
    assert target.read_bytes() == good  # the earlier file is untouched
    assert sorted(p.name for p in small_disk.iterdir()) == sorted([target.name, "filler"])  # no temp files left


def test_training_onto_a_full_disk_says_so(small_disk, tiny_data, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    fill(small_disk, 40_000)  # config.yaml fits, a checkpoint does not
    result = run(*train_args(tiny_data, config, small_disk, "run", 1))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    # names the file it could not write and says why
    assert re.search(
        r"checkpoint: expected to write \S+/run/(best|last)\.pt, got a full disk \(ENOSPC\)", result.output
    )
    leftovers = sorted(p.name for p in (small_disk / "run").iterdir())
    # nothing half-written, and no metrics.csv row without a checkpoint
    assert leftovers == ["config.yaml"], leftovers


def test_diverging_training_stops_with_one_line(tiny_data, tmp_path):
    """GT coordinates of 1e20 make every loss infinite: the run stops after max_bad_steps
    non-finite steps in a row, says so in one line and writes no checkpoint."""
    from p2m_geo.data.dat import load_dat, save_dat

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for dat in data.glob("*/*/rendering/*.dat"):
        cloud = load_dat(dat)
        cloud[:, :3] *= np.float32(1e20)
        save_dat(dat, cloud)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "max_bad_steps": 2}}))
    result = run(*train_args(data, config, tmp_path / "runs", "run", 2))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert (
        "Error: training diverged at step 1 (loss/prediction not finite in 2 steps in a row); lower --lr"
        in result.output
    )
    assert not list((tmp_path / "runs" / "run").glob("*.pt"))
