"""The corrections library: scans an artist corrected, kept as CloSe-D ``.npz`` files.

A correction is a CloSe-D scan (see :mod:`scan_io`) whose ``labels`` are the
artist's, plus three keys that say what the network got wrong:

=================  ==========  =================================================
key                shape       meaning
=================  ==========  =================================================
predicted_labels   (N,) i64    what the network said at segment time
changed            (N,) bool   ``labels != predicted_labels``
provenance         () str      JSON: source, checkpoint path + sha256, counts,
                               from->to changes, creation time, object name
=================  ==========  =================================================

Files live in ``<data_dir>/corrections/`` and are never overwritten; removing
one moves it into ``corrections/.trash/``, so nothing is lost. Listing reads
only the small ``provenance`` key of each file, and a corrupt or partial file
is listed as broken with its reason instead of raising. ``train`` and
``finetune`` read the folder, or the zip :func:`export_corrections` writes,
directly.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CloseError, ScanError
from .fileio import atomic_path, save_npz_atomic
from .labels import CLASS_NAMES, N_CLASSES, garments_from_labels
from .scan_io import check_scan

CORRECTIONS_DIR = "corrections"
TRASH_DIR = ".trash"
FORMAT = "close-blender-correction"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("points", "normals", "colors", "canon_pose", "labels")


@dataclass
class CorrectionInfo:
    """One file of the corrections folder, as the panel and the jobs see it."""

    path: Path
    ok: bool
    problem: str = ""                 # why it cannot be used (broken files only)
    n_points: int = 0
    n_changed: int = 0
    classes: list[str] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)  # {"from", "to", "count"}
    source: str = ""
    object_name: str = ""
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    created: str = ""
    size: int = 0

    @property
    def name(self) -> str:
        return self.path.name


def corrections_dir(data_dir: str | os.PathLike) -> Path:
    """``<data_dir>/corrections`` (not created)."""
    return Path(data_dir) / CORRECTIONS_DIR


def safe_name(name: str, fallback: str = "scan") -> str:
    """A file-name-safe version of an object name (letters, digits, ``-_.``; at most 60)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._-")
    return text[:60] or fallback


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


def change_counts(predicted: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """How many vertices went from each class to each other class, most first."""
    predicted = np.asarray(predicted, np.int64)
    labels = np.asarray(labels, np.int64)
    changed = predicted != labels
    if not changed.any():
        return []
    src = predicted[changed]
    src = np.where((src < 0) | (src >= N_CLASSES), N_CLASSES, src)  # N_CLASSES: "None"
    pair = src * (N_CLASSES + 1) + labels[changed]
    counts = np.bincount(pair, minlength=(N_CLASSES + 1) ** 2)
    names = (*CLASS_NAMES, "None")
    rows = [{"from": names[p // (N_CLASSES + 1)], "to": names[p % (N_CLASSES + 1)],
             "count": int(counts[p])} for p in np.flatnonzero(counts)]
    return sorted(rows, key=lambda r: -r["count"])


def build_correction(arrays: dict[str, np.ndarray],
                     provenance: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Check a corrected scan and add ``garments``, ``changed`` and ``provenance``.

    ``arrays`` needs points, normals, colors, canon_pose, labels (every vertex
    labelled) and predicted_labels; faces, scale, centers and ``body_*`` fit
    parameters are kept when given.
    """
    out = {k: np.asarray(v) for k, v in arrays.items() if k not in ("changed", "provenance")}
    check_scan(out, REQUIRED_KEYS, source="correction")
    labels = out["labels"].astype(np.int64)
    n = len(labels)
    if "predicted_labels" not in out:
        raise ScanError("the correction has no predicted labels",
                        "segment the scan first, so the network's labels are known")
    predicted = out["predicted_labels"].astype(np.int64).reshape(-1)
    if predicted.shape != (n,):
        raise ScanError(f"predicted labels have shape {predicted.shape}, expected ({n},)",
                        "the mesh changed since it was segmented: segment it again")
    out["labels"] = labels
    out["predicted_labels"] = predicted
    out["garments"] = garments_from_labels(labels)
    changed = predicted != labels
    out["changed"] = changed
    prov = dict(provenance or {})
    prov.update({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "n_points": int(n),
        "changed": int(changed.sum()),
        "changes": change_counts(predicted, labels),
        "classes": [CLASS_NAMES[c] for c in np.unique(labels)],
    })
    prov.setdefault("created", _utc_now().isoformat())
    out["provenance"] = np.array(json.dumps(prov, sort_keys=True))
    return out


def save_correction(data_dir: str | os.PathLike, arrays: dict[str, np.ndarray],
                    provenance: dict[str, Any] | None = None) -> Path:
    """Write a correction as ``<data_dir>/corrections/<object>-<UTC time>.npz``.

    ``provenance`` may hold ``source``, ``object_name``, ``checkpoint``,
    ``checkpoint_sha256`` and anything else JSON-able; counts and the creation
    time are added. The file is written atomically and never overwrites another
    (a suffix ``-2``, ``-3``... is added when the name is taken). Returns its path.
    """
    prov = dict(provenance or {})
    now = _utc_now()
    prov.setdefault("created", now.isoformat())
    out = build_correction(arrays, prov)
    folder = corrections_dir(data_dir)
    stem = f"{safe_name(prov.get('object_name') or prov.get('source') or 'scan')}-" \
           f"{now.strftime('%Y%m%dT%H%M%SZ')}"
    for i in range(1, 1000):
        path = folder / (f"{stem}.npz" if i == 1 else f"{stem}-{i}.npz")
        if path.exists():
            continue
        try:
            save_npz_atomic(path, out, overwrite=False)
        except FileExistsError:
            continue
        return path
    raise CloseError(f"could not find a free file name for {stem} in {folder}",
                     "remove old corrections or choose another data folder")


def read_info(path: str | os.PathLike) -> CorrectionInfo:
    """What a correction file holds, from its zip directory and ``provenance`` key only.

    Never raises for a bad file: it comes back with ``ok=False`` and the reason.
    """
    p = Path(path)
    info = CorrectionInfo(path=p, ok=False)
    try:
        info.size = p.stat().st_size
        with np.load(p, allow_pickle=False) as data:
            keys = set(data.files)
            missing = [k for k in REQUIRED_KEYS if k not in keys]
            if missing:
                info.problem = f"lacks {', '.join(missing)}"
                return info
            prov: dict[str, Any] = {}
            if "provenance" in keys:
                prov = json.loads(str(data["provenance"][()]))
                if not isinstance(prov, dict):
                    raise ValueError("provenance is not a JSON object")
            else:  # a plain CloSe-D scan dropped into the folder: count what it holds
                labels = np.asarray(data["labels"])
                prov = {"n_points": int(len(labels)), "changed": 0, "changes": [],
                        "classes": [CLASS_NAMES[c] for c in np.unique(labels)
                                    if 0 <= c < N_CLASSES],
                        "source": "CloSe-D file"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
            json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        info.problem = f"unreadable ({reason})"
        return info
    except Exception as exc:  # noqa: BLE001 - a listing must survive any broken file
        info.problem = f"unreadable ({type(exc).__name__}: {exc})"
        return info
    info.ok = True
    info.n_points = int(prov.get("n_points", 0))
    info.n_changed = int(prov.get("changed", 0))
    info.classes = [str(c) for c in prov.get("classes", [])]
    info.changes = list(prov.get("changes", []))
    info.source = str(prov.get("source", ""))
    info.object_name = str(prov.get("object_name", ""))
    info.checkpoint = str(prov.get("checkpoint", ""))
    info.checkpoint_sha256 = str(prov.get("checkpoint_sha256", ""))
    info.created = str(prov.get("created", ""))
    return info


def list_corrections(data_dir: str | os.PathLike) -> list[CorrectionInfo]:
    """Every ``.npz`` of the corrections folder (oldest first), broken ones included."""
    folder = corrections_dir(data_dir)
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.glob("*.npz") if p.is_file() and not p.name.startswith("."))
    infos = [read_info(p) for p in files]
    return sorted(infos, key=lambda i: (i.created or "~", i.name))


def usable_paths(data_dir: str | os.PathLike) -> tuple[list[Path], list[CorrectionInfo]]:
    """(paths of readable corrections, broken ones) of the corrections folder."""
    infos = list_corrections(data_dir)
    return [i.path for i in infos if i.ok], [i for i in infos if not i.ok]


def remove_correction(path: str | os.PathLike) -> Path:
    """Move a correction into ``.trash/`` beside it (never deleted); returns the new path."""
    p = Path(path)
    if not p.is_file():
        raise CloseError(f"no correction at {p}", "refresh the list: it may have been removed")
    trash = p.parent / TRASH_DIR
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / p.name
    i = 2
    while target.exists():
        target = trash / f"{p.stem}-{i}{p.suffix}"
        i += 1
    shutil.move(str(p), str(target))
    return target


@dataclass
class ExportResult:
    path: Path
    files: list[str]
    skipped: list[str]  # broken files left out, with their reason


def export_corrections(data_dir: str | os.PathLike, zip_path: str | os.PathLike) -> ExportResult:
    """Pack every readable correction into one zip that ``train``/``finetune`` read directly.

    The zip holds the ``.npz`` files at its top level and a ``manifest.json``
    with each file's provenance summary. Broken files are left out and named in
    the result. Written atomically.
    """
    paths, broken = usable_paths(data_dir)
    if not paths:
        raise CloseError(f"no usable corrections in {corrections_dir(data_dir)}",
                         "save a correction first (Corrections > Save Correction)")
    target = Path(zip_path)
    if target.suffix.lower() != ".zip":
        target = target.with_name(target.name + ".zip")
    manifest = {"format": "close-blender-corrections", "format_version": FORMAT_VERSION,
                "created": _utc_now().isoformat(), "files": []}
    with atomic_path(target) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for p in paths:
                zf.write(p, arcname=p.name)  # npz members are already compressed
                info = read_info(p)
                manifest["files"].append({"name": p.name, "n_points": info.n_points,
                                          "changed": info.n_changed, "classes": info.classes,
                                          "source": info.source, "created": info.created,
                                          "checkpoint_sha256": info.checkpoint_sha256})
            zf.writestr("manifest.json", json.dumps(manifest, indent=1))
    return ExportResult(target, [p.name for p in paths],
                        [f"{b.name}: {b.problem}" for b in broken])
