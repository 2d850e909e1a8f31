"""Run by tests/test_engine.py under torchrun: train a tiny model, save each rank's weights."""

import os
import sys
from pathlib import Path

import torch

from p2m_geo.config import Config, from_dict

data_root, out = Path(sys.argv[1]), Path(sys.argv[2])
config = from_dict(
    Config,
    {
        "model": {"encoder_width": 0.125, "hidden": 16, "num_residual": 1},
        "train": {"epochs": 2, "batch_size": 2, "workers": 0, "device": "cpu", "preview_samples": 0, "lr": 1e-3},
        "data": {"root": str(data_root)},
    },
)

from p2m_geo.engine import run_training  # noqa: E402

result = run_training(config, out / "runs" / "ddp", quiet=True)
rank = int(os.environ["RANK"])
torch.save(result.model.state_dict(), out / f"weights_rank{rank}.pt")
torch.distributed.destroy_process_group()
