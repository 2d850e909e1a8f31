"""Atomic file writing: a temp file in the target folder, then ``os.replace``."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_path", "atomic_write_bytes", "folder_lock", "FolderBusyError", "remove_stale_temp_files"]


@contextmanager
def atomic_path(path: Union[str, os.PathLike], mode: int = 0o644) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on error it is removed.

    Keeps the file's extension at the end of the temp name so writers that pick the format
    by extension (PIL, open3d) still work.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Union[str, os.PathLike], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class FolderBusyError(RuntimeError):
    """Another live process holds the folder's lock."""


@contextmanager
def folder_lock(folder: Union[str, os.PathLike]) -> Iterator[Path]:
    """Hold ``folder/.lock`` (created exclusively, holding our pid) while the block runs.

    A lock left by a process that no longer exists (killed) is taken over; one held by a
    live process raises :class:`FolderBusyError` naming it.
    """
    lock = Path(folder) / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise FolderBusyError(
                    f"{folder}: expected a run folder no other process writes to, got one in use by process {pid}"
                ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
    else:
        raise FolderBusyError(f"{folder}: expected to take its lock, got a lock that keeps coming back")
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: Union[str, os.PathLike]) -> int:
    """Delete the temp files :func:`atomic_path` leaves when its process is killed mid-write
    (``.<stem>.<random>.tmp<suffix>``); call while holding the folder's lock."""
    removed = 0
    for path in Path(folder).glob(".*.tmp*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed
