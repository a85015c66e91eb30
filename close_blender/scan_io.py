"""CloSe-D scan files (``.npz``): reading with clear checks, atomic writing.

Keys (N points, F faces); every key but ``points`` is optional on disk, and
each consumer says which ones it requires:

=============  ===========  =====================================================
key            shape/dtype  meaning
=============  ===========  =====================================================
points         (N, 3) f32   xyz normalized: bounding-box centre at 0, / largest side
normals        (N, 3) f32   unit vertex normals (same frame as points)
colors         (N, 3)       rgb, 0-255 (uint8 or float) or 0-1 floats
faces          (F, 3) i64   triangles over the points (optional)
labels         (N,) i64     class per point, 18-class CloSe order
garments       (18,) i32    1 where a class is present in the scan
canon_pose     (N, 3) f32   canonical body coordinate of each point
scale          () f64       largest bounding-box side of the original mesh (m)
centers        (3,) f64     bounding-box centre of the original mesh (m)
=============  ===========  =====================================================

``original = points * scale + centers`` recovers the input mesh coordinates.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from .errors import ScanError
from .fileio import save_npz_atomic
from .labels import CLASS_NAMES, N_CLASSES

PREDICT_KEYS = ("points", "colors", "normals", "canon_pose", "garments")
LABELLED_KEYS = PREDICT_KEYS + ("labels",)

_POINTWISE3 = ("points", "normals", "colors", "canon_pose")


def normalize_points(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Normalize like CloSe-D: bbox centre to the origin, divided by the largest side.

    Returns ``(points float32, centers (3,), scale)``.
    """
    v = np.asarray(vertices, dtype=np.float64)
    lo, hi = v.min(axis=0), v.max(axis=0)
    centers = (lo + hi) / 2.0
    scale = float((hi - lo).max())
    if not np.isfinite(scale) or scale <= 0:
        raise ScanError("the scan has no extent (all points coincide)",
                        "check that the mesh has more than one distinct vertex")
    return ((v - centers) / scale).astype(np.float32), centers, scale


def colors_to_unit(colors: np.ndarray) -> np.ndarray:
    """Colours as float32 in [0, 1], accepting 0-255 (any dtype) or 0-1 floats."""
    c = np.asarray(colors)
    if c.dtype == np.uint8 or (c.size and float(np.nanmax(c)) > 1.0 + 1e-6):
        return (c.astype(np.float32) / 255.0).clip(0.0, 1.0)
    return c.astype(np.float32).clip(0.0, 1.0)


def check_scan(arrays: dict[str, np.ndarray], require: Iterable[str] = PREDICT_KEYS,
               source: str = "scan") -> None:
    """Raise ScanError naming the first problem: missing key, shape, NaN, empty."""
    missing = [k for k in require if k not in arrays]
    if missing:
        raise ScanError(f"{source} lacks {', '.join(missing)}",
                        f"a CloSe-D scan needs {', '.join(require)}; "
                        "make one with `close-blender prepare MESH`")
    if "points" not in arrays:
        raise ScanError(f"{source} has no 'points'", "it is not a CloSe-D scan")
    points = np.asarray(arrays["points"])
    if points.ndim != 2 or points.shape[1] != 3:
        raise ScanError(f"{source}: 'points' has shape {points.shape}, expected (N, 3)")
    n = len(points)
    if n == 0:
        raise ScanError(f"{source} has no points (N = 0)", "give a scan with at least one point")
    for key in _POINTWISE3:
        if key in arrays:
            a = np.asarray(arrays[key])
            if a.shape != (n, 3):
                raise ScanError(f"{source}: '{key}' has shape {a.shape}, expected ({n}, 3)")
            if not np.isfinite(a.astype(np.float64)).all():
                bad = int((~np.isfinite(a.astype(np.float64))).any(axis=1).sum())
                raise ScanError(f"{source}: '{key}' holds NaN or inf in {bad} of {n} points",
                                "repair or remove those vertices first")
    if "labels" in arrays:
        labels = np.asarray(arrays["labels"])
        if labels.shape != (n,):
            raise ScanError(f"{source}: 'labels' has shape {labels.shape}, expected ({n},)")
        if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
            raise ScanError(f"{source}: 'labels' outside 0..{N_CLASSES - 1}")
    if "garments" in arrays:
        g = np.asarray(arrays["garments"]).reshape(-1)
        if g.shape != (N_CLASSES,):
            raise ScanError(f"{source}: 'garments' has shape {np.shape(arrays['garments'])}, "
                            f"expected ({N_CLASSES},)")
        if not np.isfinite(g.astype(np.float64)).all() or not np.isin(g, (0, 1)).all():
            raise ScanError(f"{source}: 'garments' must hold only 0 and 1")
        if not g.any():
            raise ScanError(f"{source}: no garment class is set (all-zero 'garments')",
                            "set at least one of: " + ", ".join(CLASS_NAMES))
    if "faces" in arrays:
        f = np.asarray(arrays["faces"])
        if f.size and (f.ndim != 2 or f.shape[1] != 3 or f.min() < 0 or f.max() >= n):
            raise ScanError(f"{source}: 'faces' must be (F, 3) indices below {n}")


def load_scan(path: str | os.PathLike, require: Iterable[str] = PREDICT_KEYS) -> dict[str, np.ndarray]:
    """Read a CloSe-D ``.npz`` (never unpickling objects) and check it."""
    p = Path(path)
    if not p.is_file():
        raise ScanError(f"no scan file at {p}", "check the path")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ScanError(f"{p} is not a readable .npz file ({exc})",
                        "a CloSe-D scan is a numpy .npz archive") from None
    check_scan(arrays, require, source=p.name)
    return arrays


def save_scan(path: str | os.PathLike, arrays: dict[str, np.ndarray],
              require: Iterable[str] = ("points",)) -> None:
    """Check and write a CloSe-D ``.npz`` atomically."""
    check_scan(arrays, require, source=Path(path).name)
    save_npz_atomic(path, arrays)


def _extract_npz_members(path: Path, folder: Path) -> list[Path]:
    """Extract the ``.npz`` members of the zip ``path`` (e.g. an exported corrections
    library) flat into the existing ``folder``; a bad zip is a ScanError."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()
                       and m.filename.lower().endswith(".npz")
                       and not Path(m.filename).name.startswith(".")
                       and "__MACOSX" not in m.filename]
            out = []
            for i, m in enumerate(sorted(members, key=lambda m: m.filename)):
                name = Path(m.filename).name  # never a path outside the folder
                target = folder / name
                if target.exists():
                    target = folder / f"{i}-{name}"
                with zf.open(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                out.append(target)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ScanError(f"{path.name} is not a readable zip ({exc})",
                        "give the zip written by Export Corrections, or its .npz files") from None
    return out


def _unpack_zip_until_exit(path: Path) -> list[Path]:
    """Extract into a temporary folder removed when the interpreter exits normally."""
    import atexit

    folder = Path(tempfile.mkdtemp(prefix="close-zip-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return _extract_npz_members(path, folder)


def _expand(paths: Iterable[str | os.PathLike],
            unpack: Callable[[Path], list[Path]]) -> list[Path]:
    out: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(p.glob("*.npz")))
        elif p.is_file() and p.suffix.lower() == ".zip":
            out.extend(unpack(p))
        elif p.is_file():
            out.append(p)
        else:
            raise ScanError(f"no such file or directory: {p}")
    if not out:
        raise ScanError("no .npz scans found", "give CloSe-D .npz files or folders holding them")
    return out


@contextlib.contextmanager
def expanded_scan_paths(paths: Iterable[str | os.PathLike]) -> Iterator[list[Path]]:
    """Like :func:`scan_paths`, with zips extracted into a temporary folder that is
    removed when the ``with`` block ends (also on errors and cancel).

    Use it wherever zips may be read: the caller owns the files' lifetime, so
    nothing is left behind by a process that never exits normally (the worker
    ends with ``os._exit``) or that reads many archives.
    """
    with contextlib.ExitStack() as stack:
        root: Path | None = None  # made on the first zip only
        zips = 0

        def unpack(zip_path: Path) -> list[Path]:
            nonlocal root, zips
            if root is None:
                root = Path(stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="close-zip-", ignore_cleanup_errors=True)))
            zips += 1
            folder = root / str(zips)  # a folder per zip: equal member names never clash
            folder.mkdir()
            return _extract_npz_members(zip_path, folder)

        yield _expand(paths, unpack)


def scan_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, directories and ``.zip`` archives into a list of ``.npz`` files
    (sorted within each directory or zip).

    A zip's files stay until the interpreter exits normally, which suits a
    command-line run; everything else (the worker, long-lived code) must read
    zips through :func:`expanded_scan_paths`.
    """
    return _expand(paths, _unpack_zip_until_exit)
