"""Ellipsoid mesh assets (installed as ``p2m_geo.meshes``); see ``build_ellipsoid.py``."""
