"""Networks: the image encoders, the image-reconstruction decoder and Pixel2Mesh."""
from p2m_geo.models.encoders import CNN18, ResNet50Trunk, VGG16Trunk, build_encoder
from p2m_geo.models.image_decoder import ImageDecoder, image_reconstruction_loss
from p2m_geo.models.pixel2mesh import Pixel2Mesh, Pixel2MeshOutput

__all__ = [
    "CNN18", "VGG16Trunk", "ResNet50Trunk", "build_encoder",
    "ImageDecoder", "image_reconstruction_loss", "Pixel2Mesh", "Pixel2MeshOutput",
]
