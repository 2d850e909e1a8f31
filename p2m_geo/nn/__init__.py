"""Graph layers of Pixel2Mesh: perceptual feature pooling, unpooling, the deformation blocks
of the G-ResNet."""

from p2m_geo.nn.gresnet import DeformationBlock, FusedGraphConv, GResBlock, GResNet, ResidualPair
from p2m_geo.nn.projection import GraphProjection
from p2m_geo.nn.unpooling import GraphUnpooling

__all__ = [
    "GraphProjection",
    "GraphUnpooling",
    "DeformationBlock",
    "ResidualPair",
    "FusedGraphConv",
    "GResNet",
    "GResBlock",
]
