"""Command-line interface (installed as ``p2m_geo.cli``; entry point ``p2m-geo``)."""
