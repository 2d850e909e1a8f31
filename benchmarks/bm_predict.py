"""Inference: single-image latency (model alone and the whole ``p2m-geo predict`` process)
and batched meshes/s.

Usage: python benchmarks/bm_predict.py [--preset full|cpu-quick] [--quick] [--amp] [--compile]
       [--no-channels-last] [--batch N] [--write]
On a GPU: python benchmarks/bm_predict.py --device cuda --amp --compile --batch 128 --write
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, mode_label, report, time_call  # noqa: E402

from p2m_geo.runtime import setup_runtime  # noqa: E402
from p2m_geo.camera import default_intrinsics  # noqa: E402
from p2m_geo.checkpoint import save_checkpoint  # noqa: E402
from p2m_geo.config import Config, from_dict, preset_dict, to_dict  # noqa: E402
from p2m_geo.models import Pixel2Mesh  # noqa: E402

log = logging.getLogger("bm_predict")
EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "examples" / "chair.png"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=["full", "cpu-quick"])
    parser.add_argument("--batch", type=int, default=32, help="batch size for meshes/s")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, B = 8 (< 1 min)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder and deformation blocks")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="NCHW encoder")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    repeats = 3 if args.quick else 10
    batch = 8 if args.quick else args.batch
    runtime = setup_runtime(args.device, channels_last=args.channels_last)  # as p2m-geo train and eval
    device = runtime.device
    config = from_dict(Config, preset_dict(args.preset))
    model = runtime.place(Pixel2Mesh(config.model)).eval()
    if args.compile:
        model.compile_submodules()

    images = torch.rand(batch, 3, 224, 224, device=device)
    intrinsics = default_intrinsics(batch, device=device)

    def run(count: int):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            return model(images[:count], intrinsics[:count])

    with torch.inference_mode():
        single_ms, single_iqr = time_call(lambda: run(1), device, repeats, warmup=3)
        batch_ms, _ = time_call(lambda: run(batch), device, max(2, repeats // 2), warmup=3)
    log.info("model alone: %.1f ms/image, %.1f meshes/s at B=%d", single_ms, batch * 1000 / batch_ms, batch)

    process = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.pt"
        save_checkpoint(checkpoint, {"model_config": to_dict(config.model), "model": model.cpu().state_dict()})
        command = [
            sys.executable,
            "-m",
            "p2m_geo.cli.main",
            "predict",
            str(EXAMPLE),
            "-o",
            str(Path(tmp) / "out.ply"),
            "--checkpoint",
            str(checkpoint),
            "--device",
            args.device,
        ]
        for _ in range(3 if args.quick else 5):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            process.append(time.perf_counter() - start)
    process_s = statistics.median(process)
    log.info("whole predict process: %.2f s", process_s)
    mode = mode_label(
        [("bf16 autocast", args.amp), ("torch.compile", args.compile), ("channels-last", args.channels_last)]
    )
    body = (
        f"Machine: {machine_description(device)}\n\nPreset `{args.preset}` (random weights), {mode}; the predict "
        f"process runs the CLI defaults (fp32, channels-last, eager).\n\n"
        "| measure | value |\n|---|---|\n"
        f"| model alone, one image (median, IQR) | {single_ms:.1f} ms ({single_iqr:.1f}) |\n"
        f"| model alone, batch of {batch} | {batch * 1000 / batch_ms:.1f} meshes/s |\n"
        f"| whole `p2m-geo predict` process, one image (import, checkpoint load, PLY write; median of {len(process)}) | {process_s:.2f} s |\n"
    )
    report(f"Inference ({args.preset}, {mode}, {device.type})", body, args.write)


if __name__ == "__main__":
    main()
