"""Model versions made by fine-tuning, and which one segmentation uses.

Fine-tuning writes each run as a new native checkpoint into
``<data_dir>/models/`` and never overwrites one. This module lists them from
their safetensors headers alone (an 8-byte little-endian length, then a JSON
header whose ``__metadata__["close_blender"]`` is the checkpoint's metadata:
see ``inference/checkpoints.py``), without torch, and keeps the active
version in ``<data_dir>/active.json`` (written atomically). No active version
means: the base checkpoint chosen in the preferences.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, CloseError
from .fileio import write_bytes_atomic

MODELS_DIR = "models"
ACTIVE_FILE = "active.json"
META_KEY = "close_blender"  # safetensors metadata key of our JSON; inference.checkpoints uses it
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the header size

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


@dataclass
class VersionInfo:
    """One checkpoint file of the versions folder."""

    path: Path
    ok: bool
    problem: str = ""
    sha256: str = ""
    parent_sha256: str = ""
    created: str = ""
    source: str = ""
    metrics_before: dict[str, Any] = field(default_factory=dict)
    metrics_after: dict[str, Any] = field(default_factory=dict)
    flagged: bool = False
    flag_reason: str = ""
    gated: bool = False  # keeps its starting weights; each scan goes to the surer of the two
    data: dict[str, Any] = field(default_factory=dict)  # the training data used, as recorded
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem


@dataclass
class ActiveVersion:
    """The active pointer: the checkpoint segmentation uses instead of the preferences'."""

    path: Path
    sha256: str
    activated: str
    exists: bool


def models_dir(data_dir: str | os.PathLike) -> Path:
    """``<data_dir>/models`` (not created): where fine-tuning writes versions."""
    return Path(data_dir) / MODELS_DIR


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (path, size, mtime): versions never change."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``close_blender`` metadata of a ``.safetensors`` file, read from its header only.

    Raises CheckpointError naming what is wrong (truncated, not safetensors, no metadata).
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{p.name} is truncated (no header)")
            (length,) = struct.unpack("<Q", head)
            size = p.stat().st_size
            if length <= 0 or length > MAX_HEADER or 8 + length > size:
                raise CheckpointError(f"{p.name} is not a complete safetensors file")
            header = json.loads(fh.read(length).decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{p.name} cannot be read ({exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{p.name}: the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{p.name}: the safetensors header is not a JSON object")
    extra = header.get("__metadata__") or {}
    if META_KEY not in extra:
        raise CheckpointError(f"{p.name} has no CloSe metadata",
                              "versions are written by fine-tuning in this project")
    try:
        meta = json.loads(extra[META_KEY])
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{p.name}: the CloSe metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{p.name}: the CloSe metadata is not a JSON object")
    return meta


def _first(*values: Any) -> Any:
    for v in values:
        if v not in (None, "", {}):
            return v
    return None


def version_info(path: str | os.PathLike) -> VersionInfo:
    """What a version file says about itself; a broken file comes back with ``ok=False``."""
    p = Path(path)
    info = VersionInfo(path=p, ok=False)
    try:
        meta = read_metadata(p)
        info.sha256 = file_sha256(p)
    except CheckpointError as exc:
        info.problem = exc.message
        return info
    except OSError as exc:
        info.problem = f"cannot be read ({exc})"
        return info
    prov = meta.get("provenance") or {}
    tune = meta.get("finetune") or {}
    metrics = _first(tune.get("metrics"), prov.get("metrics")) or {}
    info.ok = True
    info.meta = meta
    info.parent_sha256 = str(_first(prov.get("parent_sha256"), tune.get("parent_sha256")) or "")
    info.created = str(_first(prov.get("date"), tune.get("created")) or "")
    info.source = str(prov.get("source") or "")
    info.data = dict(_first(prov.get("training_data"), tune.get("data")) or {})
    if isinstance(metrics, dict):
        info.metrics_before = dict(metrics.get("before") or {})
        info.metrics_after = dict(metrics.get("after") or {})
    flagged = _first(tune.get("flagged"), prov.get("flagged"), meta.get("flagged"),
                     metrics.get("flagged") if isinstance(metrics, dict) else None)
    if isinstance(flagged, str):
        info.flagged, info.flag_reason = True, flagged
    elif isinstance(flagged, dict):
        info.flagged = bool(flagged.get("flagged", True))
        info.flag_reason = str(flagged.get("reason", ""))
    else:
        info.flagged = bool(flagged)
    if info.flagged and not info.flag_reason:
        info.flag_reason = str(_first(tune.get("flag_reason"), prov.get("flag_reason"),
                                      metrics.get("flag_reason") if isinstance(metrics, dict)
                                      else None) or "the replay set got worse")
    info.gated = bool(tune.get("gated"))
    return info


def list_versions(models: str | os.PathLike) -> list[VersionInfo]:
    """Every ``.safetensors`` in the versions folder, oldest first; broken ones included."""
    folder = Path(models)
    if not folder.is_dir():
        return []
    infos = [version_info(p) for p in sorted(folder.glob("*.safetensors"))
             if p.is_file() and not p.name.startswith(".")]
    return sorted(infos, key=lambda i: (i.created or "~", i.name))


def find_version(models: str | os.PathLike, sha256: str) -> VersionInfo | None:
    """The readable version whose file has this sha256, if any."""
    if not sha256:
        return None
    for info in list_versions(models):
        if info.ok and info.sha256 == sha256:
            return info
    return None


# ---------------------------------------------------------------- the active pointer


def _active_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / ACTIVE_FILE


def _read_active(data_dir: str | os.PathLike) -> dict[str, Any]:
    p = _active_path(data_dir)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_active(data_dir: str | os.PathLike, data: dict[str, Any]) -> None:
    write_bytes_atomic(_active_path(data_dir), json.dumps(data, indent=1).encode("utf-8"))


def active_version(data_dir: str | os.PathLike) -> ActiveVersion | None:
    """The active version, or None when the base checkpoint (preferences) is in use.

    A pointer to a file that has gone comes back with ``exists=False``.
    """
    data = _read_active(data_dir)
    if not data.get("path"):
        return None
    path = Path(data["path"])
    return ActiveVersion(path=path, sha256=str(data.get("sha256", "")),
                         activated=str(data.get("activated", "")), exists=path.is_file())


def active_checkpoint(data_dir: str | os.PathLike) -> str | None:
    """The checkpoint path segmentation should use, or None for the preferences' default.

    A pointer to a missing or changed file is ignored (None), never an error.
    """
    active = active_version(data_dir)
    if active is None or not active.exists:
        return None
    if active.sha256:
        try:
            if file_sha256(active.path) != active.sha256:
                return None
        except OSError:
            return None
    return str(active.path)


def activate(data_dir: str | os.PathLike, path: str | os.PathLike | None) -> ActiveVersion | None:
    """Make ``path`` the active checkpoint (None: back to the preferences' base checkpoint).

    A version file must be readable; its sha256 is recorded, so a file swapped
    behind the pointer's back is not used. The previous pointer is kept in a
    short history.
    """
    data = _read_active(data_dir)
    history = list(data.get("history") or [])
    if data.get("path"):
        history.append({"path": data["path"], "sha256": data.get("sha256", ""),
                        "activated": data.get("activated", "")})
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
    if path is None:
        _write_active(data_dir, {"path": None, "sha256": "", "activated": now,
                                 "history": history[-20:]})
        return None
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise CloseError(f"no model version at {p}", "refresh the list of versions")
    if p.suffix == ".safetensors":
        info = version_info(p)
        if not info.ok:
            raise CheckpointError(f"{p.name} cannot be activated: {info.problem}",
                                  "pick another version")
        sha = info.sha256
    else:
        sha = file_sha256(p)
    _write_active(data_dir, {"path": str(p), "sha256": sha, "activated": now,
                             "history": history[-20:]})
    return ActiveVersion(path=p, sha256=sha, activated=now, exists=True)


def rollback(data_dir: str | os.PathLike) -> ActiveVersion | None:
    """Activate the parent of the active version; when the parent is not one of the
    versions (the base checkpoint), go back to the preferences' checkpoint (None)."""
    active = active_version(data_dir)
    if active is None:
        raise CloseError("no fine-tuned version is active", "the base checkpoint is in use")
    parent_sha = ""
    if active.exists:
        info = version_info(active.path)
        parent_sha = info.parent_sha256 if info.ok else ""
    parent = find_version(models_dir(data_dir), parent_sha)
    return activate(data_dir, parent.path if parent is not None else None)
