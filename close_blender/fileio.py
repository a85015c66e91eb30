"""Atomic file writing: a crash or a full disk never leaves a half-written file."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def _read_umask() -> int:
    """The process umask. Linux shows it in /proc without changing it; elsewhere it is
    set and restored, which is why this runs once, at import, before worker threads."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
_FILE_MODE = 0o666 & ~_UMASK  # what open() would give a new file


def _publish_new(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` to ``target`` only if ``target`` does not exist.

    A hard link is atomic and refuses an existing name. exFAT/FAT and some
    network shares cannot link (EPERM, ENOTSUP, ...): there the name is claimed
    with an exclusive create, which is just as strict about an existing file,
    and the data replaces that empty placeholder.
    """
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _FILE_MODE)
        os.close(fd)
        try:
            os.replace(tmp, target)
        except BaseException:
            target.unlink(missing_ok=True)  # never leave the empty placeholder behind
            raise
    else:
        tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    With ``overwrite=False`` an existing file is never replaced (FileExistsError),
    which is how versioned checkpoints stay immutable.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and target.exists():
        raise FileExistsError(f"{target} exists and is never overwritten")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _FILE_MODE)  # mkstemp makes 0600; files follow the umask
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp_path, target)
        else:
            _publish_new(tmp_path, target)  # fails if target appeared meanwhile
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                    *, compressed: bool = True, overwrite: bool = True) -> None:
    """Save a dict of arrays as ``.npz`` atomically (no pickled objects)."""
    buffer = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    save(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    write_bytes_atomic(path, buffer.getvalue(), overwrite=overwrite)
