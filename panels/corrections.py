"""Sidebar sub-panel "Corrections & Versions": the corrections library, fine-tuning,
and the model versions with their metrics.

The panel redraws often; folder listings are cached and read again only when
the folder's modification time changes (adding, removing or renaming a file
changes it), so a redraw costs a few ``stat`` calls.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bpy

from ..close_blender import corrections as corr
from ..close_blender import model_versions as mv
from ..close_blender.labels import CLASS_NAMES, DISPLAY_NAMES
from .base import SubPanel
from .preferences import data_dir, get_prefs

MAX_ROWS = 12

_cache: dict[tuple[str, str], tuple[Any, Any]] = {}


def _stamp(*paths: Path) -> tuple:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _cached(kind: str, folder: Path, stamp: tuple, read) -> Any:
    key = (kind, str(folder))
    hit = _cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = read()
    _cache[key] = (stamp, value)
    return value


def cached_corrections(folder: Path) -> list[corr.CorrectionInfo]:
    cdir = corr.corrections_dir(folder)
    return _cached("corrections", cdir, _stamp(cdir), lambda: corr.list_corrections(folder))


def cached_versions(folder: Path) -> list[mv.VersionInfo]:
    mdir = mv.models_dir(folder)
    return _cached("versions", mdir, _stamp(mdir), lambda: mv.list_versions(mdir))


def cached_active(folder: Path) -> mv.ActiveVersion | None:
    path = folder / mv.ACTIVE_FILE
    return _cached("active", path, _stamp(path), lambda: mv.active_version(folder))


def _display(name: str) -> str:
    return DISPLAY_NAMES[CLASS_NAMES.index(name)] if name in CLASS_NAMES else name


METRIC_KEYS = (("miou_strict", "mIoU"), ("miou", "mIoU"), ("accuracy", "accuracy"))


def _metric(m: Any) -> tuple[str, str]:
    """(name, value in points) of one set's metrics: strict mIoU, else mIoU, else accuracy."""
    if isinstance(m, dict):
        for key, name in METRIC_KEYS:
            if isinstance(m.get(key), (int, float)):
                return name, f"{100 * m[key]:.1f}"
        return "", "?"
    if isinstance(m, (int, float)):
        return "", f"{100 * m:.1f}"
    return "", "-"


def metric_lines(info: mv.VersionInfo) -> list[str]:
    """'replay: mIoU 51.0 -> 52.3' per evaluated set (strict mIoU in points, else mIoU,
    else accuracy, named as what it is)."""
    lines = []
    for split in sorted(set(info.metrics_before) | set(info.metrics_after)):
        before = info.metrics_before.get(split)
        after = info.metrics_after.get(split)
        if before is None and after is None:
            continue  # not evaluated in this run (e.g. no held-out corrections)
        (name_b, value_b), (name_a, value_a) = _metric(before), _metric(after)
        if name_b and name_a and name_b != name_a:
            lines.append(f"{split}: {name_b} {value_b} -> {name_a} {value_a}")
        else:
            lines.append(f"{split}: {name_b or name_a or 'mIoU'} {value_b} -> {value_a}")
    return lines


class CLOSE_PT_corrections(SubPanel, bpy.types.Panel):
    bl_idname = "CLOSE_PT_corrections"
    bl_label = "Corrections & Versions"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        folder = data_dir(get_prefs(context))
        layout.operator("close.save_correction", icon="FILE_TICK")

        infos = cached_corrections(folder)
        box = layout.box()
        usable = sum(1 for i in infos if i.ok)
        box.label(text=f"Corrections: {usable}" + (f" ({len(infos) - usable} broken)"
                                                   if usable != len(infos) else ""),
                  icon="OUTLINER_COLLECTION")
        start = max(0, len(infos) - MAX_ROWS)
        if start:
            box.label(text=f"... {start} older not shown")
        for index in range(start, len(infos)):
            info = infos[index]
            row = box.row(align=True)
            if info.ok:
                classes = ", ".join(_display(c) for c in info.classes[:4])
                if len(info.classes) > 4:
                    classes += ", ..."
                row.label(text=f"{info.object_name or info.path.stem}: "
                               f"{info.n_changed:,} changed", icon="MESH_DATA")
                row.label(text=classes)
            else:
                row.alert = True
                row.label(text=f"{info.name}: {info.problem}", icon="ERROR")
            op = row.operator("close.remove_correction", text="", icon="X")
            op.path = str(info.path)
            op.index = -1
        row = layout.row(align=True)
        row.operator("close.export_corrections", icon="EXPORT")
        sub = row.row(align=True)
        sub.enabled = usable > 0
        sub.operator("close.finetune", icon="PLAY")
        sub.prop(context.scene.close_blender, "finetune_layers", text="")

        versions = cached_versions(folder)
        active = cached_active(folder)
        box = layout.box()
        if active is None:
            box.label(text="Active: base checkpoint", icon="CHECKMARK")
        elif not active.exists:
            box.alert = True
            box.label(text=f"Active version missing: {active.path.name} (base is used)",
                      icon="ERROR")
        else:
            box.label(text=f"Active: {active.path.stem}", icon="CHECKMARK")
            if context.scene.close_blender.checkpoint:
                note = box.row()
                note.alert = True
                note.label(text="The scene's Checkpoint field overrides it", icon="INFO")
        for info in versions[-MAX_ROWS:]:
            is_active = active is not None and info.ok and info.sha256 == active.sha256
            col = box.column(align=True)
            row = col.row(align=True)
            if not info.ok:
                row.alert = True
                row.label(text=f"{info.path.name}: {info.problem}", icon="ERROR")
                continue
            icon = "RADIOBUT_ON" if is_active else "RADIOBUT_OFF"
            tags = [tag for tag, on in (("gated", info.gated), ("flagged", info.flagged)) if on]
            row.label(text=info.name + "".join(f" ({t})" for t in tags), icon=icon)
            if not is_active:
                op = row.operator("close.activate_version", text="", icon="CHECKMARK")
                op.path = str(info.path)
            for line in metric_lines(info):
                col.label(text="    " + line)
            if info.flagged:
                warn = col.row()
                warn.alert = True
                warn.label(text="    " + info.flag_reason, icon="ERROR")
        if not versions:
            box.label(text="No fine-tuned versions yet")
        row = box.row(align=True)
        row.operator("close.rollback_version", icon="LOOP_BACK")
        op = row.operator("close.activate_version", text="Use Base", icon="FILE_REFRESH")
        op.path = ""


classes = (CLOSE_PT_corrections,)
