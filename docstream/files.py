"""The ground floor of docstream's writes: atomic files, non-blocking locks, JSON that names its file.

Every file docstream commits is written to a temp name beside it (``.NAME.tmp-PID``), fsynced, and
renamed over the final name, so a reader sees the old file or the whole new one. A failed write
removes its temp file and says which path failed; a full disk gets a one-line message.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from docstream.checksum import sha256_file

#: temp files docstream writes: ``.NAME.tmp-PID`` (the only names clean-up ever removes)
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write ran out of space (or quota); nothing committed before it was lost."""

    def __str__(self) -> str:
        return self.strerror  # the message names the file already: no "[Errno 28] ...: 'path'" around it


class DamagedFileError(ValueError):
    """A file docstream wrote earlier cannot be read back as written."""


def temp_path(path: Path) -> Path:
    """The temp name ``path`` is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temp file name docstream writes (``.NAME.tmp-PID``)."""
    return TEMP_NAME.match(name) is not None


def no_space(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-space (or out-of-quota) error."""
    return isinstance(err, OSError) and err.errno in _NO_SPACE


def disk_full(path: Path, err: OSError) -> DiskFullError:
    """The one-line error for a write to ``path`` that ran out of space."""
    full = DiskFullError(err.errno, f"no space left on the device writing {path}: free some space (or raise the "
                                    f"quota) and run the same command again; nothing already committed was lost")
    full.filename = str(path)
    return full


def atomic_write(path: Path, write: Callable[[Path], None], drop_cache: bool = False) -> None:
    """Call ``write(tmp)``, fsync ``tmp`` and rename it to ``path``, so ``path`` is whole or absent.

    ``drop_cache``: once durable, the file's pages leave the page cache (for big write-once files such
    as snapshot parts: later writes reuse those pages instead of taking fresh memory, which costs the
    kernel more CPU than the write itself on some machines, and other data keeps the cache).
    On any failure the temp file is removed; an out-of-space failure is raised as :class:`DiskFullError`.
    """
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
            if drop_cache and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if no_space(err):
            raise disk_full(path, err) from err
        raise
    fsync_dir(path.parent)


def atomic_write_hashed(path: Path, write: Callable[[Path], None]) -> str:
    """:func:`atomic_write`, returning the sha256 of the file as written (for the records that name it)."""
    digest = []

    def write_and_hash(tmp: Path) -> None:
        write(tmp)
        digest.append(sha256_file(tmp))

    atomic_write(path, write_and_hash)
    return digest[0]


def atomic_write_bytes(path: Path, data: bytes, drop_cache: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data), drop_cache)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def try_lock(path: Path) -> int | None:
    """Open ``path`` (created if needed) and take an exclusive ``flock`` on it without waiting: the
    open descriptor, or None when another process holds the lock. Closing the descriptor, or the
    process ending, releases it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


@contextmanager
def locked(directory: Path, exclusive: bool) -> Iterator[None]:
    """Hold ``directory/.lock`` (waiting for it): exclusively while updating, shared while reading.
    The lock dies with its holder."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_json(path: Path, what: str, fix: str) -> Any:
    """The JSON value in ``path``; :class:`DamagedFileError` naming the file, ``what`` it is and ``fix``
    when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise DamagedFileError(f"{path} ({what}) cannot be read: {err}; {fix}") from err
