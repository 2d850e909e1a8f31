"""Turn expected failures into one-line CLI errors (tracebacks only with ``--debug``)."""
from __future__ import annotations

import functools
import logging
from typing import Callable

import click

log = logging.getLogger("p2m_geo.cli")


def friendly_errors(command: Callable) -> Callable:
    """Run ``command``; a ValueError/OSError becomes ``Error: <message>`` and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except click.exceptions.ClickException:
            raise
        except (ValueError, OSError, RuntimeError) as error:
            context = click.get_current_context(silent=True)
            if context is not None and (context.find_root().obj or {}).get("debug"):
                raise
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
                message = f"{error.filename}: {message}"
            raise click.ClickException(message) from None

    return wrapper
