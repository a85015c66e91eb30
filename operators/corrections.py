"""Corrections and model versions from Blender.

``close.save_correction`` stores the active scan, as the artist corrected it,
in the corrections library of the data folder (see
``close_blender/corrections.py``); ``close.remove_correction`` moves one into
the library's trash; ``close.export_corrections`` packs the library into one
zip for training elsewhere. ``close.finetune`` trains a new model version in
the worker from the library (modal with progress, Esc cancels; the previous
model stays active unless the run succeeds and is not flagged);
``close.activate_version`` and ``close.rollback_version`` choose which version
segmentation uses. All of them write files only: Blender data is not changed,
so none of them is an undo step.
"""

from __future__ import annotations

import json
from pathlib import Path

import bpy
import numpy as np
from bpy_extras.io_utils import ExportHelper

from ..close_blender import corrections as corr
from ..close_blender import model_versions as mv
from ..close_blender.errors import CloseError
from ..panels.preferences import current_checkpoint, data_dir, get_prefs
from . import mesh_labels
from .closed_files import fit_arrays
from .job_runner import Task, WorkerJobOperator
from .scan_data import active_mesh_in_object_mode, check_target
from .scan_jobs import fit_body_task, read_closed_scan


def _blend_name() -> str:
    return Path(bpy.data.filepath).name if bpy.data.filepath else "unsaved .blend"


class CLOSE_OT_save_correction(WorkerJobOperator, bpy.types.Operator):
    """Store the active scan with your corrected labels in the corrections library
    (with the network's labels, what you changed, and the body fit), for fine-tuning"""

    bl_idname = "close.save_correction"
    bl_label = "Save Correction"
    bl_options = {"REGISTER"}  # writes a file; Blender data is not changed
    job_label = "Saving the correction"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return active_mesh_in_object_mode(cls, context)

    def prepare(self, context: bpy.types.Context) -> bool:
        obj = context.active_object
        problem = check_target(obj)
        if problem:
            self.report({"ERROR"}, problem)
            return False
        if mesh_labels.read_labels(obj.data) is None:
            self.report({"ERROR"}, f"'{obj.name}' has no labels: segment it first, then "
                                   "correct the labels and save")
            return False
        predicted = mesh_labels.read_predicted(obj.data)
        if predicted is None:
            self.report({"ERROR"}, f"'{obj.name}' has no network labels to compare with: "
                                   "segment it (again) before correcting, then save")
            return False
        read = read_closed_scan(self, context, obj)
        if read is None:
            return False
        scan, arrays = read
        arrays["predicted_labels"] = predicted
        result = obj.close_blender
        self._arrays = arrays
        self._provenance = {
            "source": f"Blender object '{obj.name}' in {_blend_name()}",
            "object_name": obj.name,
            "blend_file": bpy.data.filepath,
            "checkpoint": result.checkpoint,
            "checkpoint_sha256": result.checkpoint_sha256,
            "garments": result.garments,
            "color_source": scan.color_source,
            "blender": bpy.app.version_string,
        }
        self.tasks = [fit_body_task(context, obj.name, scan)]
        return True

    def apply(self, context: bpy.types.Context) -> set[str]:
        arrays = dict(self._arrays)
        task = self.tasks[0]
        arrays.update(fit_arrays(task.fields, task.results))
        provenance = dict(self._provenance)
        provenance["body_fit"] = str((task.fields.get("fit") or {}).get("message", ""))
        folder = data_dir(get_prefs(context))
        try:
            path = corr.save_correction(folder, arrays, provenance)
        except OSError as exc:
            self.report({"ERROR"}, f"Could not write the correction into {folder}: {exc}")
            return {"CANCELLED"}
        changed = int(np.count_nonzero(arrays["labels"] != arrays["predicted_labels"]))
        self.report({"INFO"}, f"Saved {path.name}: {changed:,} of {len(arrays['labels']):,} "
                              "vertices corrected")
        if not changed:
            self.report({"WARNING"}, "No label differs from the network's: the correction "
                                     "only confirms the prediction")
        return {"FINISHED"}


class CLOSE_OT_remove_correction(bpy.types.Operator):
    """Remove a correction from the library (it is moved into the library's .trash
    folder, not deleted)"""

    bl_idname = "close.remove_correction"
    bl_label = "Remove Correction"
    bl_options = {"REGISTER"}

    index: bpy.props.IntProperty(
        name="Index", description="Position in the list of corrections (oldest first); "
                                  "-1: use the path", default=-1, min=-1)
    path: bpy.props.StringProperty(name="Path", description="The correction file to remove",
                                   default="", subtype="FILE_PATH")

    def execute(self, context: bpy.types.Context) -> set[str]:
        folder = data_dir(get_prefs(context))
        target = Path(bpy.path.abspath(self.path)) if self.path else None
        if target is None:
            infos = corr.list_corrections(folder)
            if not 0 <= self.index < len(infos):
                self.report({"ERROR"}, f"No correction number {self.index} "
                                       f"({len(infos)} in the library)")
                return {"CANCELLED"}
            target = infos[self.index].path
        elif target.resolve().parent != corr.corrections_dir(folder).resolve():
            self.report({"ERROR"}, f"{target} is not in the corrections library "
                                   f"({corr.corrections_dir(folder)})")
            return {"CANCELLED"}
        try:
            moved = corr.remove_correction(target)
        except (CloseError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Removed {target.name} (kept in {moved.parent})")
        return {"FINISHED"}


class CLOSE_OT_export_corrections(ExportHelper, bpy.types.Operator):
    """Pack every usable correction into one .zip that `close-blender train` and
    `finetune` read directly, for training on another machine"""

    bl_idname = "close.export_corrections"
    bl_label = "Export Corrections (.zip)"
    bl_options = {"REGISTER"}

    filename_ext = ".zip"
    filter_glob: bpy.props.StringProperty(default="*.zip", options={"HIDDEN"})

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if not self.filepath:
            self.filepath = "close_corrections.zip"
        return super().invoke(context, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        if not self.filepath:
            self.report({"ERROR"}, "No file chosen: give the .zip to write")
            return {"CANCELLED"}
        try:
            result = corr.export_corrections(data_dir(get_prefs(context)),
                                             bpy.path.abspath(self.filepath))
        except (CloseError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        for skipped in result.skipped:
            self.report({"WARNING"}, f"Left out a broken file: {skipped}")
        self.report({"INFO"}, f"Wrote {result.path.name}: {len(result.files)} corrections")
        return {"FINISHED"}


class CLOSE_OT_finetune(WorkerJobOperator, bpy.types.Operator):
    """Fine-tune the current model on the corrections library in the worker (Esc cancels);
    the new version becomes active unless it made the replay set worse"""

    bl_idname = "close.finetune"
    bl_label = "Fine-tune on Corrections"
    bl_options = {"REGISTER"}
    job_label = "Fine-tuning"

    checkpoint: bpy.props.StringProperty(
        name="Start From",
        description="Checkpoint to fine-tune; empty: the panel's Checkpoint field, else the "
                    "active model version, else the preferences' default", default="")
    epochs: bpy.props.IntProperty(
        name="Passes", description="Passes over the corrections (0: the fine-tune default)",
        default=0, min=0, max=100)
    hold_out: bpy.props.IntProperty(
        name="Hold Out",
        description="Newest corrections kept out of training and only scored before and "
                    "after, to measure the gain on scans the model did not learn from",
        default=0, min=0, max=20)
    auto_activate: bpy.props.BoolProperty(
        name="Activate", description="Make the new version active when it is not flagged",
        default=True)
    options: bpy.props.StringProperty(
        name="Options", description="Advanced fine-tune options as JSON (e.g. for tests)",
        default="", options={"HIDDEN", "SKIP_SAVE"})

    def prepare(self, context: bpy.types.Context) -> bool:
        prefs = get_prefs(context)
        folder = data_dir(prefs)
        usable, broken = corr.usable_paths(folder)
        for info in broken:
            self.report({"WARNING"}, f"Skipping a broken correction: {info.name} "
                                     f"({info.problem})")
        if not usable:
            self.report({"ERROR"}, "No usable corrections: save at least one corrected scan "
                                   "(Save Correction) first")
            return False
        try:
            options = json.loads(self.options) if self.options else {}
        except json.JSONDecodeError as exc:
            self.report({"ERROR"}, f"Options are not valid JSON: {exc}")
            return False
        if self.epochs:
            options["epochs"] = self.epochs
        options.setdefault("layers", context.scene.close_blender.finetune_layers)
        if self.hold_out:
            options["holdout"] = self.hold_out
        params = {"checkpoint": current_checkpoint(context, self.checkpoint),
                  "corrections": str(corr.corrections_dir(folder)),
                  "files": [str(p) for p in usable],
                  "models_dir": str(mv.models_dir(folder)),
                  "device": prefs.device.lower(), "options": options}
        self._data_dir = folder
        self.tasks = [Task("corrections", "finetune", params, {})]
        return True

    def apply(self, context: bpy.types.Context) -> set[str]:
        fields = self.tasks[0].fields
        path = Path(fields["path"])
        flagged = bool(fields.get("flagged"))
        summary = fields.get("summary") or ""
        self.report({"INFO"}, f"New model version {path.name}" + (f": {summary}" if summary
                                                                  else ""))
        if flagged:
            reason = fields.get("flag_reason") or "the replay set got worse"
            self.report({"WARNING"}, f"{path.name} is flagged ({reason}); it was not "
                                     "activated. Activate it from the versions list if you "
                                     "want it")
        elif self.auto_activate:
            try:
                mv.activate(self._data_dir, path)
            except CloseError as exc:
                self.report({"ERROR"}, f"{path.name} could not be activated: {exc}")
                return {"CANCELLED"}
            self.report({"INFO"}, f"{path.name} is now the active model")
        return {"FINISHED"}


class CLOSE_OT_activate_version(bpy.types.Operator):
    """Segment with this model version from now on (empty: the base checkpoint from the
    panel or the preferences)"""

    bl_idname = "close.activate_version"
    bl_label = "Activate Version"
    bl_options = {"REGISTER"}

    path: bpy.props.StringProperty(name="Version", description="The version file; empty: "
                                   "the base checkpoint", default="", subtype="FILE_PATH")

    def execute(self, context: bpy.types.Context) -> set[str]:
        folder = data_dir(get_prefs(context))
        try:
            active = mv.activate(folder, bpy.path.abspath(self.path) if self.path else None)
        except (CloseError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Active model: {active.path.name}" if active else
                    "Active model: the base checkpoint")
        return {"FINISHED"}


class CLOSE_OT_rollback_version(bpy.types.Operator):
    """Go back to the model the active version was fine-tuned from"""

    bl_idname = "close.rollback_version"
    bl_label = "Roll Back"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        from ..panels.corrections import cached_active  # cached: poll runs on every redraw

        try:
            return cached_active(data_dir(get_prefs(context))) is not None
        except Exception:  # noqa: BLE001 - poll must never raise (prefs missing while unregistering)
            return False

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            active = mv.rollback(data_dir(get_prefs(context)))
        except (CloseError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Rolled back to {active.path.name}" if active else
                    "Rolled back to the base checkpoint")
        return {"FINISHED"}


classes = (CLOSE_OT_save_correction, CLOSE_OT_remove_correction, CLOSE_OT_export_corrections,
           CLOSE_OT_finetune, CLOSE_OT_activate_version, CLOSE_OT_rollback_version)
