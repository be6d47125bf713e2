"""Atomic file writes: a temp file beside the target, fsync, then os.replace."""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

from core.errors import MixqError, ModelFileError


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[BinaryIO], None],
    error: type[MixqError] = ModelFileError,
    what: str = "",
) -> None:
    """Call ``write(f)`` on a temp file next to ``path``, fsync it and ``os.replace`` it
    onto ``path``.  On any error the temp file is removed (and re-raised; an ``OSError``
    becomes ``error`` (ModelFileError by default), its message naming ``what`` and the path); an
    existing file at ``path`` is left untouched. Every file mixq writes for users goes through here."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    label = f"{what} " if what else ""
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    except OSError as e:
        raise error(f"cannot write {label}{path!r}: {e}") from e
    try:
        try:
            mode = os.stat(path).st_mode & 0o777
        except OSError:
            mode = 0o644
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise error(f"cannot write {label}{path!r}: {e}") from e
        raise
    # Make the rename itself durable (best effort: not every platform can open a directory).
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def sha256_file(path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
