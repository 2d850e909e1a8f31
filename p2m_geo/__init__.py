"""p2m-geo: Pixel2Mesh (single image -> triangle mesh) on batched PyTorch Geometric graphs.

The top-level names are imported lazily, so ``import p2m_geo`` (and the CLI's start-up)
does not pay for torch / torch_geometric until a model or config is used.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Pixel2Mesh", "Pixel2MeshOutput", "Config", "ModelConfig", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Pixel2Mesh", "Pixel2MeshOutput"):
        from p2m_geo.models import pixel2mesh

        return getattr(pixel2mesh, name)
    if name in ("Config", "ModelConfig"):
        from p2m_geo import config

        return getattr(config, name)
    raise AttributeError(f"module 'p2m_geo' has no attribute {name!r}")
