"""Networks: the image encoders, the image-reconstruction decoder and Pixel2Mesh."""

from p2m_geo.models.encoders import (
    CNN18,
    ENCODERS,
    Encoder,
    ResNet50Trunk,
    VGG16Trunk,
    build_encoder,
    encoder_names,
    register_encoder,
)
from p2m_geo.models.image_decoder import ImageDecoder
from p2m_geo.models.pixel2mesh import Pixel2Mesh, Pixel2MeshOutput

__all__ = [
    "CNN18",
    "VGG16Trunk",
    "ResNet50Trunk",
    "Encoder",
    "ENCODERS",
    "build_encoder",
    "encoder_names",
    "register_encoder",
    "ImageDecoder",
    "Pixel2Mesh",
    "Pixel2MeshOutput",
]
