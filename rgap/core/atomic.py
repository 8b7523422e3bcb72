"""The one way this project writes a file: to a temporary file next to it, then renamed over it.

A reader never sees half a file, a killed writer leaves at most a temporary file (which every reader ignores),
and a failed write (full disk, read-only directory) removes its temporary file and raises
:class:`~rgap.core.errors.OutputWriteError`, which says what could not be written, where, and why.
"""

from __future__ import annotations

import csv
import errno
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from rgap.core.errors import OutputWriteError

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a component of the path is a file, not a directory",
}


def temporary_path(path: Path) -> Path:
    """The temporary name ``path`` is written under before the rename (hidden, per process)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_error(path: str | os.PathLike, exc: OSError) -> OutputWriteError:
    """An ``OutputWriteError`` for ``path`` that names the cause in words."""
    why = _REASONS.get(exc.errno or -1, exc.strerror or str(exc))
    return OutputWriteError(
        f"Could not write {path}: {why} ({type(exc).__name__}: errno {exc.errno}). Results written before this "
        "are intact. Free space or choose a writable location (e.g. paths.results=/some/writable/dir), then run "
        "the same command again: finished trials are kept and skipped."
    )


def make_dirs(directory: str | os.PathLike) -> Path:
    """``mkdir -p directory``; an ``OSError`` becomes ``OutputWriteError``."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(directory, exc) from exc
    return directory


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], mode: str = "w") -> Path:
    """Call ``write(handle)`` on a temporary file and rename it to ``path``; never leave the temporary file.

    ``mode`` is ``"w"`` (text, newline left to the writer) or ``"wb"``.
    """
    kwargs = {"newline": ""} if "b" not in mode else {}

    def save(tmp: Path) -> None:
        with open(tmp, mode, **kwargs) as handle:
            write(handle)

    return _replace(Path(path), temporary_path(Path(path)), save)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(text))


def atomic_save(path: str | os.PathLike, save: Callable[[Path], None]) -> Path:
    """For writers that want a path (``torch.save``, ``savefig``): ``save(tmp)`` then rename to ``path``."""
    path = Path(path)
    return _replace(path, path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}"), save)  # savefig reads it


def _replace(path: Path, tmp: Path, save: Callable[[Path], None]) -> Path:
    """``save(tmp)``, then rename ``tmp`` over ``path``; on any failure remove ``tmp`` (an ``OSError`` becomes an
    ``OutputWriteError`` naming ``path``)."""
    make_dirs(path.parent)
    try:
        save(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value)


def write_csv(rows: Iterable[Mapping[str, Any]] | Iterable[tuple], columns: tuple[str, ...],
              path: str | os.PathLike) -> Path:
    """Write ``rows`` (mappings or tuples in ``columns`` order) under a header, atomically (None -> empty cell)."""

    def write(handle: Any) -> None:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            values = [row.get(c) for c in columns] if isinstance(row, Mapping) else list(row)
            writer.writerow([_cell(v) for v in values])

    return atomic_write(path, write)
