from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real-format fixtures in ``../shared/data`` (skip when absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present next to the repository")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
    yield


class CreatesFileWhenUnpickled:
    """A pickle payload that creates ``path`` if (and only if) unpickling executes code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


TINY = {
    "model": {"encoder_width": 0.125, "hidden": 16, "num_residual": 1, "image_branch": True},
    # a constant learning rate (the step schedule without milestones), so a run resumed with more
    # epochs is the longer run (cpu-quick's linear decay would start in a 1-epoch run's only epoch)
    "train": {
        "batch_size": 2,
        "workers": 0,
        "preview_samples": 2,
        "lr": 1e-3,
        "lr_schedule": "step",
        "lr_milestones": [],
    },
}


def train_args(data: Path, config: Path, out: Path, name: str, epochs: int) -> list:
    """``p2m-geo train`` arguments for the TINY config on CPU, quiet."""
    return [
        "train",
        "--preset",
        "cpu-quick",
        "--config",
        config,
        "--data",
        data,
        "--out",
        out,
        "--name",
        name,
        "--epochs",
        epochs,
        "--device",
        "cpu",
        "--quiet",
    ]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from p2m_geo.data.synth import SynthSpec, generate_dataset

    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, SynthSpec(per_class=3, views=2, seed=3, categories=("chair", "table")), workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


from p2m_geo.config import ModelConfig  # noqa: E402

TINY_MODEL = ModelConfig(**TINY["model"])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised checkpoint of the TINY model."""
    from p2m_geo.checkpoint import save_checkpoint
    from p2m_geo.config import to_dict
    from p2m_geo.models import Pixel2Mesh

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.manual_seed(0)
    save_checkpoint(path, {"model_config": to_dict(TINY_MODEL), "model": Pixel2Mesh(TINY_MODEL).state_dict()})
    return path
