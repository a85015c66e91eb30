"""Atomic writes: replace or never overwrite, file modes, and file systems without hard links."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest

from close_blender import fileio
from close_blender.fileio import atomic_path, save_npz_atomic, write_bytes_atomic


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_overwrite_replaces_and_never_overwrite_refuses(tmp_path) -> None:
    f = tmp_path / "sub" / "a.bin"
    write_bytes_atomic(f, b"one")
    write_bytes_atomic(f, b"two")
    assert f.read_bytes() == b"two"
    with pytest.raises(FileExistsError):
        write_bytes_atomic(f, b"three", overwrite=False)
    assert f.read_bytes() == b"two" and leftovers(f.parent) == []


def test_a_failed_write_leaves_nothing(tmp_path) -> None:
    f = tmp_path / "a.bin"
    with pytest.raises(RuntimeError), atomic_path(f) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash while writing")
    assert not f.exists() and leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_new_files_follow_the_umask(tmp_path) -> None:
    f = tmp_path / "a.npz"
    save_npz_atomic(f, {"x": np.arange(3)})
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~fileio._UMASK
    current = os.umask(0o022)
    os.umask(current)
    assert fileio._UMASK == current  # read once at import, not changed since


def refuse_links(monkeypatch, code: int = errno.EPERM) -> None:
    """os.link as on exFAT/FAT or a network share without hard links."""
    def no_link(src, dst, *args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_link)


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP])
def test_never_overwrite_without_hard_links(tmp_path, monkeypatch, code) -> None:
    """exFAT/FAT and some network shares refuse os.link; an exclusive create stands in."""
    refuse_links(monkeypatch, code)
    f = tmp_path / "v001.safetensors"
    write_bytes_atomic(f, b"first", overwrite=False)
    assert f.read_bytes() == b"first" and leftovers(tmp_path) == []
    with pytest.raises(FileExistsError):
        write_bytes_atomic(f, b"second", overwrite=False)
    assert f.read_bytes() == b"first" and leftovers(tmp_path) == []


def test_a_file_that_appears_while_writing_is_kept(tmp_path, monkeypatch) -> None:
    """The name is checked again when the file is published, with and without links."""
    f = tmp_path / "v001.safetensors"
    for has_link in (True, False):
        if not has_link:
            refuse_links(monkeypatch)
        f.unlink(missing_ok=True)
        with pytest.raises(FileExistsError), atomic_path(f, overwrite=False) as tmp:
            tmp.write_bytes(b"mine")
            f.write_bytes(b"theirs")  # another writer got there first
        assert f.read_bytes() == b"theirs" and leftovers(tmp_path) == []
