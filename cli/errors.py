"""Turn expected failures into one-line CLI errors (tracebacks only with ``--debug``)."""

from __future__ import annotations

import errno
import functools
import logging
import re
from typing import Callable

import click

log = logging.getLogger("p2m_geo.cli")


def one_line(error: BaseException) -> str:
    """The line a user needs. An error raised inside a DataLoader worker arrives re-raised as
    ``Caught X in DataLoader worker process N.`` plus the worker's traceback: its last line
    is the original message."""
    text = str(error)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].startswith("Caught ") and "DataLoader worker" in lines[0] and len(lines) > 1:
        last = lines[-1]
        head, _, tail = last.partition(": ")
        return tail if tail and re.fullmatch(r"[\w.]+", head) else last
    return lines[0]


def friendly_errors(command: Callable) -> Callable:
    """Run ``command``; a ValueError/OSError becomes ``Error: <message>`` and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except click.exceptions.ClickException:
            raise
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None
        except (ValueError, OSError, RuntimeError) as error:
            context = click.get_current_context(silent=True)
            if context is not None and (context.find_root().obj or {}).get("debug"):
                raise
            message = one_line(error)
            if isinstance(error, OSError) and error.errno == errno.ENOSPC and "disk" not in message:
                message = f"{error.filename or 'output'}: expected room to write, got a full disk (ENOSPC)"
            elif isinstance(error, OSError) and error.filename and str(error.filename) not in message:
                message = f"{error.filename}: {message}"
            raise click.ClickException(message) from None

    return wrapper


class RegistryChoice(click.Choice):
    """A ``click.Choice`` whose names are read from a registry each time (so an encoder
    registered after import is accepted)."""

    def __init__(self, names: Callable[[], tuple]) -> None:
        self._names = names
        super().__init__([])  # read on use: the registry's module (and torch) load only when needed

    @property
    def choices(self):  # type: ignore[override]
        return list(self._names())

    @choices.setter
    def choices(self, value) -> None:
        pass


def encoder_names() -> tuple:
    """The registered backbones (imports the encoder registry, and so torch, on first call)."""
    from p2m_geo.models.encoders import encoder_names as registered

    return registered()
