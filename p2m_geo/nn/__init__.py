"""Graph layers of Pixel2Mesh: perceptual feature pooling, unpooling, G-ResNet."""
from p2m_geo.nn.gresnet import GResBlock, GResNet, FusedGraphConv
from p2m_geo.nn.projection import GraphProjection
from p2m_geo.nn.unpooling import GraphUnpooling

__all__ = ["GraphProjection", "GraphUnpooling", "GResBlock", "GResNet", "FusedGraphConv"]
