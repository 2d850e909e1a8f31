"""Reliability and security: crashes, bad input, untrusted files, fuzzing, determinism."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_MODEL, CreatesFileWhenUnpickled
from p2m_geo.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from p2m_geo.data import ImageFileError, load_image
from p2m_geo.models import Pixel2Mesh


def cli(*args, cwd=None, timeout=300):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "p2m_geo.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


# -------------------------------------------------------------------------- checkpoints
def test_failure_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model_config": {}, "model": {"w": torch.ones(3)}, "epoch": 1})

    def broken_save(obj, target, *args, **kwargs):
        Path(target).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model_config": {}, "model": {"w": torch.zeros(3)}, "epoch": 2})
    monkeypatch.undo()
    checkpoint = load_checkpoint(path)
    assert checkpoint["epoch"] == 1 and torch.equal(checkpoint["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


@pytest.mark.slow
def test_malicious_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model_config": {}, "model": CreatesFileWhenUnpickled(str(marker))}, path)
    with pytest.raises(CheckpointError, match="unsafe or foreign file"):
        load_checkpoint(path)
    assert not marker.exists()
    result = cli("predict", tmp_path / "x.png", "-o", tmp_path / "x.ply", "--checkpoint", path)
    assert result.returncode != 0 and not marker.exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    os.replace(path, run / "last.pt")
    result = cli("train", "--resume", run, "--quiet")
    assert result.returncode != 0
    assert "checkpoint: expected a p2m-geo checkpoint, got an unsafe or foreign file" in result.stderr
    assert "Traceback" not in result.stderr and not marker.exists()


def test_checkpoint_version_and_config_mismatch(tmp_path, tiny_checkpoint):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({**checkpoint, "format_version": 99}, tmp_path / "v99.pt")
    with pytest.raises(CheckpointError, match="expected format_version 1, got 99"):
        load_checkpoint(tmp_path / "v99.pt")
    from p2m_geo.checkpoint import model_from_checkpoint

    other = {**checkpoint, "model_config": {**checkpoint["model_config"], "hidden": 32}}
    with pytest.raises(CheckpointError, match="expected weights matching its model config, got a mismatch"):
        model_from_checkpoint(other)


def test_loader_gives_the_same_batches_in_process_and_with_workers(tiny_data):
    """cpu-quick loads in the training process (workers 0) since round 11: the batches, and so
    the run, are those a worker process gives."""
    from p2m_geo.data import ShapeNetP2M
    from p2m_geo.data.factory import make_loader
    from p2m_geo.runtime import DistributedContext

    dataset = ShapeNetP2M(tiny_data, tiny_data / "train_list.txt")
    in_process_targets = []
    for epoch in (0, 1):
        batches = [list(make_loader(dataset, 2, True, workers, 3, epoch, DistributedContext())) for workers in (0, 1)]
        assert len(batches[0]) == len(batches[1]) > 0
        for in_process, from_worker in zip(*batches):
            torch.testing.assert_close(in_process.images, from_worker.images, rtol=0, atol=0)
            torch.testing.assert_close(in_process.target.pos, from_worker.target.pos, rtol=0, atol=0)
            torch.testing.assert_close(in_process.intrinsics, from_worker.intrinsics, rtol=0, atol=0)
        in_process_targets.append([batch.target.pos for batch in batches[0]])
    first, other_epoch = in_process_targets
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(first, other_epoch))  # shuffled per epoch


# --------------------------------------------------------------------------- non-finite
def test_non_finite_steps_are_skipped_then_training_stops(tiny_data):
    from p2m_geo.data import ShapeNetP2M
    from p2m_geo.data.factory import make_loader
    from p2m_geo.runtime import DistributedContext
    from p2m_geo.training import ModelWithLoss, TrainingStopped, TrainState, train_one_epoch
    from p2m_geo.losses import P2MLoss

    dataset = ShapeNetP2M(tiny_data, tiny_data / "train_list.txt")
    loader = make_loader(dataset, 2, True, 0, 0, 0, DistributedContext())
    model = Pixel2Mesh(TINY_MODEL)
    calls = {"n": 0}

    class FlakyLoss(P2MLoss):
        def forward(self, *args, **kwargs):
            total, terms = super().forward(*args, **kwargs)
            calls["n"] += 1
            return (total * float("nan") if calls["n"] in (2, 3) else total), terms

    wrapped = ModelWithLoss(model, FlakyLoss())
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    state = TrainState()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = train_one_epoch(wrapped, loader, optimizer, torch.device("cpu"), state, False, max_bad_steps=5, quiet=True)
    assert state.bad_steps_total == 2 and state.step == len(loader) - 2 and stats["train_steps"] == len(loader) - 2
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    class AlwaysNaN(P2MLoss):
        def forward(self, *args, **kwargs):
            total, terms = super().forward(*args, **kwargs)
            return total * float("inf") * 0, terms

    with pytest.raises(TrainingStopped, match=r"training diverged at step 1 \(.* in 3 steps in a row\); lower --lr"):
        train_one_epoch(
            ModelWithLoss(model, AlwaysNaN()),
            loader,
            optimizer,
            torch.device("cpu"),
            TrainState(),
            False,
            max_bad_steps=3,
            quiet=True,
        )


# ------------------------------------------------------------------------ crash safety
@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tiny_data, tiny_config, tmp_path):
    common = [
        "train",
        "--preset",
        "cpu-quick",
        "--config",
        tiny_config,
        "--data",
        tiny_data,
        "--out",
        tmp_path,
        "--epochs",
        3,
        "--device",
        "cpu",
        "--quiet",
    ]
    straight = cli(*common, "--name", "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        [sys.executable, "-m", "p2m_geo.cli.main", *map(str, common), "--name", "killed"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # the run's own progress (epoch 1's checkpoint) triggers the kill
    process.wait()
    assert load_checkpoint(last)["train_state"]["epoch"] < 3, "the run finished before it was killed"
    resumed = cli("train", "--resume", tmp_path / "killed", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(last)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # same seed, same curve (timing columns aside)
    columns = ("epoch", "step", "train_total", "train_chamfer", "val_cd", "val_f@0.0001")
    rows_a = [[r[c] for c in columns] for r in csv.DictReader(open(tmp_path / "straight" / "metrics.csv"))]
    rows_b = [[r[c] for c in columns] for r in csv.DictReader(open(tmp_path / "killed" / "metrics.csv"))]
    assert rows_a == rows_b
    assert not list((tmp_path / "killed").glob(".*tmp*"))


# ----------------------------------------------------------------------- bad input matrix
def _bad_inputs(folder: Path) -> dict:
    folder.mkdir(exist_ok=True)
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image")
    data = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "adir.png").mkdir(exist_ok=True)
    return {
        "missing": (folder / "missing.png", "no such file"),
        "directory": (folder / "adir.png", "got a directory"),
        "empty": (folder / "empty.png", "expected a PNG or JPEG image"),
        "text": (folder / "text.png", "expected a PNG or JPEG image"),
        "truncated": (folder / "truncated.png", "truncated.png"),
    }


@pytest.mark.slow
def test_predict_bad_input_matrix(tmp_path, tiny_checkpoint):
    cases = _bad_inputs(tmp_path / "in")
    for name, (image, message) in cases.items():
        out = tmp_path / f"{name}.ply"
        result = cli("predict", image, "-o", out, "--checkpoint", tiny_checkpoint, "--device", "cpu")
        assert result.returncode != 0, name
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("Error:") and message in lines[-1], (name, result.stderr)
        assert "Traceback" not in result.stderr, name
        assert not out.exists(), name
    good = tmp_path / "in" / "good.png"
    # output folder that does not exist
    result = cli("predict", good, "-o", tmp_path / "nowhere" / "x.ply", "--checkpoint", tiny_checkpoint)
    assert result.returncode != 0 and "expected an existing folder" in result.stderr
    # unwritable output
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
            target = good / "x.ply"
        else:
            target = locked / "x.ply"
        result = cli("predict", good, "-o", target, "--checkpoint", tiny_checkpoint)
        assert result.returncode != 0 and "Error:" in result.stderr and "Traceback" not in result.stderr
    finally:
        locked.chmod(0o700)
    # checkpoint of another format version; --debug shows the traceback
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({**checkpoint, "format_version": 0}, tmp_path / "v0.pt")
    result = cli("predict", good, "-o", tmp_path / "v0.ply", "--checkpoint", tmp_path / "v0.pt")
    assert result.returncode != 0 and "expected format_version 1, got 0" in result.stderr
    result = cli("--debug", "predict", good, "-o", tmp_path / "v0.ply", "--checkpoint", tmp_path / "v0.pt")
    assert "Traceback" in result.stderr
    # the good image works: a full mesh is written
    result = cli("predict", good, "-o", tmp_path / "good.ply", "--checkpoint", tiny_checkpoint)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "good.ply").stat().st_size > 0


def test_image_modes_and_huge_image(tmp_path):
    gray = (np.arange(100 * 80) % 256).reshape(80, 100).astype(np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(gray, "L").convert("P").save(tmp_path / "p.png")
    Image.fromarray(np.stack([gray] * 3, -1)).convert("CMYK").save(tmp_path / "c.jpg")
    for name in ("g.png", "g16.png", "p.png", "c.jpg"):
        assert load_image(tmp_path / name).shape == (3, 224, 224), name


def _peak_rss_growth_mb(function) -> float:
    """Peak-RSS growth of ``function()`` run in a fresh process (ru_maxrss never goes down)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_measure_in_child, (function,))


def _measure_in_child(function) -> float:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    function()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def _load_and_check(path):
    assert load_image(path).shape == (3, 224, 224)


def _load_expecting_refusal(path):
    with pytest.raises(ImageFileError, match=r"expected at most 64,000,000 pixels, got 10000x10000"):
        load_image(path)


@pytest.mark.slow
def test_image_pixel_limit_is_checked_before_decoding_and_large_images_stay_small(tmp_path):
    from p2m_geo.data.images import MAX_IMAGE_PIXELS

    assert MAX_IMAGE_PIXELS == 64_000_000  # the README's figure
    # 100 MP: over the limit, refused from the header alone (a decode would need 400 MB RGBA)
    Image.new("L", (10000, 10000)).save(tmp_path / "huge.png", optimize=False, compress_level=1)
    assert _peak_rss_growth_mb(partial(_load_expecting_refusal, tmp_path / "huge.png")) < 100
    # 49 MP, under the limit: decoded, then reduced in 8 bits (no 600 MB float copy)
    Image.new("RGBA", (7000, 7000), (10, 200, 30, 128)).save(tmp_path / "big.png", compress_level=1)
    assert _peak_rss_growth_mb(partial(_load_and_check, tmp_path / "big.png")) < 700


def test_exif_orientation_is_applied(tmp_path):
    # a 40x20 image whose left half is black; EXIF orientation 6 = rotate 90 deg clockwise to display
    array = np.full((20, 40, 3), 255, np.uint8)
    array[:, :20] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(array).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    shown = load_image(tmp_path / "rotated.jpg", size=20)  # displayed as 20 wide, 40 tall -> centre crop
    # displayed upright: the black half is on top, so the centre crop's top rows are darker than its bottom
    assert shown[:, :5].mean() < 0.5 < shown[:, -5:].mean()


def test_fully_transparent_image_warns(tmp_path, caplog):
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp_path / "empty.png")
    with caplog.at_level("WARNING"):
        image = load_image(tmp_path / "empty.png")
    assert torch.all(image == 1.0)
    assert "fully transparent (no foreground)" in caplog.text


# -------------------------------------------------------------------------- file lists
@pytest.mark.slow
def test_bad_lists_and_corrupt_sample_through_cli(tmp_path, tiny_data, tiny_config, tiny_checkpoint):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = cli("eval", "--checkpoint", tiny_checkpoint, "--data", tiny_data, "--list", empty)
    assert result.returncode != 0 and "expected at least one sample line" in result.stderr
    malformed = tmp_path / "bad.txt"
    malformed.write_text("not/a/valid\n")
    result = cli("eval", "--checkpoint", tiny_checkpoint, "--data", tiny_data, "--list", malformed)
    assert result.returncode != 0 and "bad.txt:1: expected" in result.stderr
    # one corrupt .dat: fail names the file, skip goes on
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    victim = sorted(copy.rglob("00.dat"))[0]
    victim.write_bytes(b"garbage")
    result = cli("eval", "--checkpoint", tiny_checkpoint, "--data", copy, "--list", "train_list.txt", "--workers", 0)
    assert result.returncode != 0 and victim.name in result.stderr and "corrupt pickle" in result.stderr
    assert "Traceback" not in result.stderr
    result = cli(
        "eval",
        "--checkpoint",
        tiny_checkpoint,
        "--data",
        copy,
        "--list",
        "train_list.txt",
        "--workers",
        0,
        "--on-bad-sample",
        "skip",
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------- fuzz
FUZZ_SCRIPT = r"""
import pickle, random, sys
from pathlib import Path
import numpy as np
from PIL import Image
from p2m_geo.data import DatFileError, ImageFileError, load_dat, load_image

folder = Path(sys.argv[1])
rng = random.Random(1234)
dat_seeds = [pickle.dumps(np.zeros((20, 6), np.float32), protocol=p) for p in (2, 4, 5)]
Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(folder / "seed.png")
Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "seed.jpg")
image_seeds = [(folder / "seed.png").read_bytes(), (folder / "seed.jpg").read_bytes()]

def mutate(data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if choice < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.7 and data:
            start = rng.randrange(len(data))
            del data[start:start + rng.randint(1, 16)]
        else:
            at = rng.randrange(len(data) + 1)
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(data)

accepted = rejected = 0
path = folder / "fuzz.dat"
for i in range(300):
    data = mutate(rng.choice(dat_seeds)) if i % 3 else bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    path.write_bytes(data)
    try:
        array = load_dat(path)
        assert array.dtype == np.float32 and array.ndim == 2 and array.shape[1] == 6
        accepted += 1
    except DatFileError:
        rejected += 1
for i in range(200):
    path = folder / ("fuzz.png" if i % 2 == 0 else "fuzz.jpg")
    path.write_bytes(mutate(image_seeds[i % 2]))
    try:
        assert load_image(path).shape == (3, 224, 224)
        accepted += 1
    except ImageFileError:
        rejected += 1
print(accepted, rejected)
"""


@pytest.mark.slow
def test_fuzz_dat_and_image_readers(tmp_path):
    """Mutated and random bytes: only the readers' own errors, no crash, no hang (the child
    process is killed after a generous time limit, which would fail the test)."""
    result = subprocess.run(
        [sys.executable, "-c", FUZZ_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    accepted, rejected = map(int, result.stdout.split())
    assert accepted + rejected == 500 and rejected > 100


def test_keep_freed_cpu_memory_stops_page_faults_on_reallocation():
    """Large tensors are allocated again every training step: after the allocator setting
    they reuse the process's memory (steady state, after a few rounds) instead of being
    faulted in from the OS each time. Judged by the median round, so one round that the
    kernel makes fault in again (seen once in CI: reclaim under memory pressure) does not
    decide the outcome."""
    script = (
        "import resource, statistics, torch\n"
        "from p2m_geo.allocator import keep_freed_cpu_memory\n"
        "def median_faults_per_round():\n"
        "    for _ in range(10):\n"  # warm-up: the heap settles after a few rounds
        "        torch.empty(64 * 2**20 // 4).fill_(1.0)\n"
        "    rounds = []\n"
        "    for _ in range(10):\n"
        "        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "        torch.empty(64 * 2**20 // 4).fill_(1.0)\n"
        "        rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)\n"
        "    return statistics.median(rounds)\n"
        "before = median_faults_per_round()\n"
        "applied = keep_freed_cpu_memory()\n"
        "after = median_faults_per_round()\n"
        "print(applied, before, after)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    applied, before, after = result.stdout.split()
    assert applied == "True"
    pages_per_tensor = 64 * 2**20 // 4096
    assert float(before) > 0.9 * pages_per_tensor  # glibc mmaps and unmaps each 64 MB tensor
    assert float(after) < 0.05 * pages_per_tensor


# ------------------------------------------------------------ outputs checked before the work
def test_predict_output_paths_file_or_folder(tmp_path):
    """``-o``: a mesh file for one image, else a folder, also one whose name has a dot."""
    from click import BadParameter

    from p2m_geo.cli.predict import output_paths

    one, two = [Path("img/car.png")], [Path("img/car.png"), Path("b/chair.png")]
    assert output_paths(one, tmp_path / "car.obj") == [tmp_path / "car.obj"]
    assert output_paths(two, tmp_path / "new") == [tmp_path / "new" / "car.ply", tmp_path / "new" / "chair.ply"]
    dotted = tmp_path / "ex_0.3x"
    dotted.mkdir()
    assert output_paths(one, dotted) == [dotted / "car.ply"]
    assert output_paths(two, dotted) == [dotted / "car.ply", dotted / "chair.ply"]
    for images, out, message in (
        (one, tmp_path / "car.pyl", "expected a .ply/.obj/.off/.glb file or an existing folder, got '.pyl'"),
        (two, tmp_path / "v1.2", "expected a .ply/.obj/.off/.glb file or an existing folder, got '.2'"),
        (two, tmp_path / "car.ply", "expected a folder for 2 images, got a file name"),
        (one, tmp_path / "nodir" / "car.ply", "expected an existing folder"),
    ):
        with pytest.raises(BadParameter, match=re.escape(message)):
            output_paths(images, out)


@pytest.mark.slow
def test_predict_refuses_colliding_or_clobbering_outputs_before_any_work(tmp_path, shared_data, tiny_checkpoint):
    source = shared_data / "examples" / "chair.png"
    photo = tmp_path / "img" / "victim.png"
    photo.parent.mkdir()
    photo.write_bytes(source.read_bytes())
    original = photo.read_bytes()
    (tmp_path / "out").mkdir()
    # the preview may not be an input, an output, or anything but .png
    for preview, message in (
        (photo, "--preview: expected a new file"),
        (tmp_path / "out" / "same.ply", "--preview: expected a .png file"),
    ):
        result = cli(
            "predict",
            photo,
            "-o",
            tmp_path / "out" / "same.ply",
            "--preview",
            preview,
            "--checkpoint",
            tiny_checkpoint,
            "--device",
            "cpu",
        )
        assert result.returncode != 0 and message in result.stderr, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and message in errors[0]  # one line says it all
    assert photo.read_bytes() == original and not (tmp_path / "out" / "same.ply").exists()
    result = cli("predict", photo, "-o", tmp_path / "out" / "v.png", "--checkpoint", tiny_checkpoint)
    assert result.returncode != 0 and "-o: expected a .ply/.obj/.off/.glb file or an existing folder" in result.stderr
    # --all-levels: a_level1.png's mesh and a.png's level-1 mesh would share a name
    a, b = tmp_path / "img" / "a.png", tmp_path / "img" / "a_level1.png"
    a.write_bytes(original)
    b.write_bytes(original)
    folder = tmp_path / "deep" / "a" / "b"
    result = cli("predict", a, b, "--all-levels", "-o", folder, "--checkpoint", tiny_checkpoint, "--device", "cpu")
    assert result.returncode != 0 and "expected distinct output files, got" in result.stderr, result.stderr
    assert not (tmp_path / "deep").exists()  # nothing created, not even the folder
    # a bad preview folder is found before the model runs, and leaves no mesh behind
    result = cli(
        "predict",
        a,
        "-o",
        tmp_path / "out" / "a.ply",
        "--preview",
        tmp_path / "nodir" / "p.png",
        "--checkpoint",
        tiny_checkpoint,
        "--device",
        "cpu",
    )
    assert result.returncode != 0 and "--preview: expected an existing folder" in result.stderr
    assert not (tmp_path / "out" / "a.ply").exists()


@pytest.mark.slow
def test_nan_weights_are_refused_at_load_naming_the_tensor(tmp_path, shared_data, tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    name = "blocks.1.conv_in.lin_rel.weight"
    checkpoint["model"][name][0, 0] = float("nan")
    bad = tmp_path / "nan.pt"
    save_checkpoint(bad, checkpoint)
    result = cli("predict", shared_data / "examples" / "car.png", "-o", tmp_path / "car.ply", "--checkpoint", bad)
    assert result.returncode != 0
    assert f"checkpoint: expected finite weights, got NaN/Inf in {name}" in result.stderr, result.stderr
    assert not (tmp_path / "car.ply").exists()


# --------------------------------------------------------------------- run folders and lists
def _train(tiny_data, tiny_config, out, *extra):
    return cli(
        "train",
        "--config",
        tiny_config,
        "--data",
        tiny_data,
        "--out",
        out,
        "--epochs",
        1,
        "--max-steps",
        1,
        "--device",
        "cpu",
        "--quiet",
        *extra,
    )


@pytest.mark.slow
def test_run_folders_are_never_shared_or_overwritten(tmp_path, tiny_data, tiny_config):
    from p2m_geo.io_utils import FolderBusyError, folder_lock

    # a folder with files but no last.pt is not overwritten
    kept = tmp_path / "runs" / "kept"
    kept.mkdir(parents=True)
    (kept / "metrics.csv").write_text("epoch\n1\n")
    result = _train(tiny_data, tiny_config, tmp_path / "runs", "--name", "kept")
    assert result.returncode != 0 and "--name: expected a new or empty run folder" in result.stderr
    assert (kept / "metrics.csv").read_text() == "epoch\n1\n" and sorted(p.name for p in kept.iterdir()) == [
        "metrics.csv"
    ]
    # two runs without --name started in the same second get two folders
    from p2m_geo.cli.train import _fresh_run_dir

    first, second = _fresh_run_dir(tmp_path / "auto", "same"), _fresh_run_dir(tmp_path / "auto", "same")
    assert first.name == "same" and second.name == "same-2"
    # a live process's lock keeps a second training out; a dead one's is taken over
    busy = tmp_path / "runs" / "busy"
    busy.mkdir()
    with folder_lock(busy):
        with pytest.raises(FolderBusyError, match=f"in use by process {os.getpid()}"):
            with folder_lock(busy):
                pass
    # resuming a folder a killed run left: its stale lock is taken over, its temp file removed
    result = _train(tiny_data, tiny_config, tmp_path / "runs", "--name", "killed")
    assert result.returncode == 0, result.stderr[-2000:]
    killed = tmp_path / "runs" / "killed"
    (killed / ".lock").write_text("999999999\n")  # a pid that does not exist
    (killed / ".last.abc123.tmp.pt").write_bytes(b"")  # what a SIGKILL mid-save leaves
    result = cli("train", "--resume", killed, "--epochs", 2, "--max-steps", 2, "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (killed / ".lock").exists() and not list(killed.glob(".*.tmp*"))
    assert load_checkpoint(killed / "last.pt")["train_state"]["epoch"] == 2


def test_list_entries_outside_the_root_are_refused():
    from p2m_geo.data import FileListError, read_file_list

    with pytest.raises(FileListError, match="<list>:1: expected a path inside the data root"):
        read_file_list(["../outside/rendering/00.dat"])
    with pytest.raises(FileListError, match="<list>:2: expected a path inside the data root"):
        read_file_list(["02691156/m/rendering/00.dat", "02691156/../rendering/00.dat"])


def test_relative_list_names_are_relative_to_the_data_root(tmp_path, monkeypatch):
    from p2m_geo.data.factory import resolve_list

    monkeypatch.chdir(tmp_path)
    (tmp_path / "test_list.txt").write_text("decoy\n")  # a list in the working directory ...
    root = tmp_path / "data"
    assert resolve_list(root, "test_list.txt") == root / "test_list.txt"  # ... never replaces the data set's
    assert resolve_list(root, "./test_list.txt") == Path("./test_list.txt")
    assert resolve_list(root, str(tmp_path / "x.txt")) == tmp_path / "x.txt"


@pytest.mark.slow
def test_resume_after_editing_the_config_names_the_changed_keys(tmp_path, tiny_data, tiny_config):
    result = _train(tiny_data, tiny_config, tmp_path, "--name", "edited")
    assert result.returncode == 0, result.stderr[-2000:]
    config = tmp_path / "edited" / "config.yaml"
    config.write_text(config.read_text().replace("hidden: 16", "hidden: 24"))
    result = cli("train", "--resume", tmp_path / "edited", "--epochs", 2, "--quiet")
    assert result.returncode != 0
    assert "config.yaml to match last.pt, got changed keys: model.hidden" in result.stderr, result.stderr[-2000:]


def test_diverged_predictions_are_skipped_not_a_search_error():
    from torch_geometric.data import Batch, Data

    from p2m_geo.camera import default_intrinsics
    from p2m_geo.losses import P2MLoss

    model = Pixel2Mesh(TINY_MODEL)
    with torch.no_grad():
        model.blocks[0].conv_out.lin_rel.bias.fill_(float("inf"))
    output = model(torch.rand(1, 3, 224, 224), default_intrinsics(1))
    target = Batch.from_data_list([Data(pos=torch.randn(50, 3), normal=torch.randn(50, 3))])
    total, _ = P2MLoss()(output, target)
    assert not torch.isfinite(total)


def test_full_disk_during_a_checkpoint_save_says_so_and_keeps_the_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model_config": {}, "model": {"w": torch.ones(3)}, "epoch": 1})

    def full_disk(obj, target, *args, **kwargs):
        Path(target).write_bytes(b"PK")  # torch.save's own words for ENOSPC:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        OSError,
        match=r"checkpoint: expected to write .*last.pt, got a full disk \(ENOSPC\); "
        r"the earlier checkpoints are kept",
    ):
        save_checkpoint(path, {"model_config": {}, "model": {"w": torch.zeros(3)}, "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1 and not list(tmp_path.glob(".*tmp*"))


def test_errors_from_dataloader_workers_and_interrupts_read_as_one_line():
    from p2m_geo.cli.errors import one_line

    wrapped = ValueError(
        "Caught DatFileError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        'last):\n  File "x.py", line 1, in f\np2m_geo.data.dat.DatFileError: bad.dat: expected a '
        "float32 array, got a str"
    )
    assert one_line(wrapped) == "bad.dat: expected a float32 array, got a str"
    assert one_line(ValueError("plain message\nmore")) == "plain message"


@pytest.mark.slow
def test_a_bad_sample_in_a_dataloader_worker_reads_as_the_same_one_line(tmp_path, tiny_data, tiny_checkpoint):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    first = (data / "test_list.txt").read_text().split()[0]
    bad = data / first.replace("Data/ShapeNetP2M/", "")
    bad.write_bytes(b"\x80\x04not a pickle at all")
    for workers in ("0", "1"):
        result = cli("eval", "--checkpoint", tiny_checkpoint, "--data", data, "--workers", workers, "--no-quality")
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and bad.name in errors[0] and "DataLoader worker" not in errors[0], result.stderr
