"""p2m-geo: Pixel2Mesh (single image -> triangle mesh) on batched PyTorch Geometric graphs."""
from p2m_geo.config import Config, ModelConfig
from p2m_geo.models.pixel2mesh import Pixel2Mesh, Pixel2MeshOutput

__version__ = "0.1.0"
__all__ = ["Pixel2Mesh", "Pixel2MeshOutput", "Config", "ModelConfig", "__version__"]
