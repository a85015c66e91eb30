"""CloSe-D ``.npz`` files from and to Blender: ``close.export_closed`` and
``close.import_closed_labels``.

Export writes the active scan the way CloSe-D stores scans, so ``predict``,
``evaluate`` and ``train`` read it: the evaluated mesh in world space, y up,
normalized (``points``, with ``scale`` and ``centers`` to undo it), colours
0-255, normals, triangles, labels and the garments present, and, unless
skipped, the body fit from the worker's ``fit_body`` job: ``canon_pose`` and
the fit itself as ``body_*`` keys (``body_model``, ``body_message``,
``body_phenotypes``, ``body_pose``, ... - what ``close.bind_to_body`` reads
back as a fit file).

Import puts a file's labels onto the active mesh only when the file is that
mesh: same vertex count, and the file's points (de-normalized) on the mesh's
vertices in the y-up world frame. A mesh moved or uniformly scaled since the
export still matches after normalizing both; anything else is refused with
the counts or the largest distance, and nothing is changed.
"""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
from bpy_extras.io_utils import ExportHelper, ImportHelper

from ..close_blender.errors import CloseError, ScanError
from ..close_blender.scan_io import load_scan, normalize_points, save_scan
from . import mesh_labels
from .job_runner import WorkerJobOperator
from .scan_data import active_mesh_in_object_mode, check_target, read_scan
from .scan_jobs import fit_body_task, read_closed_scan

# largest allowed point distance, as a fraction of the scan's size (float32 storage
# of normalized points is exact to ~1e-7)
ORDER_TOLERANCE = 1e-4


def fit_arrays(fields: dict, results: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``canon_pose`` and the ``body_*`` keys from a ``fit_body`` job's answer."""
    fit = fields.get("fit") or {}
    out: dict[str, np.ndarray] = {
        "canon_pose": np.asarray(results["canon_pose"], np.float32),
        "body_model": np.array(str(fit.get("body") or "anny")),
        "body_ok": np.array(bool(fit.get("ok", False))),
        "body_message": np.array(str(fit.get("message", ""))),
    }
    for key, value in results.items():
        if key.startswith("param_"):
            out["body_" + key[len("param_"):]] = np.asarray(value)
    # text parameters (e.g. an SMPL registration's gender) come as plain fields
    for key, value in (fields.get("params") or {}).items():
        if isinstance(value, str) and f"body_{key}" not in out:
            out[f"body_{key}"] = np.array(value)
    return out


class CLOSE_OT_export_closed(ExportHelper, WorkerJobOperator, bpy.types.Operator):
    """Save the scan with its labels (and body fit) as a CloSe-D .npz for the
    command-line tools (predict, evaluate, train)"""

    bl_idname = "close.export_closed"
    bl_label = "Export CloSe-D (.npz)"
    bl_options = {"REGISTER"}  # writes a file; Blender data is not changed
    job_label = "Export"

    filename_ext = ".npz"
    filter_glob: bpy.props.StringProperty(default="*.npz", options={"HIDDEN"})
    include_body: bpy.props.BoolProperty(
        name="Body Fit",
        description="Fit the body (or reuse the worker's last fit of this scan) and store the "
                    "canonical coordinates (canon_pose) and the fit; needed by predict and train",
        default=True)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return active_mesh_in_object_mode(cls, context)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        self._from_ui = True  # the file browser calls execute(), which then runs modal
        return ExportHelper.invoke(self, context, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        if getattr(self, "_from_ui", False) and context.window is not None:
            return self.start_modal(context)  # the body fit must not freeze Blender
        return WorkerJobOperator.execute(self, context)

    def prepare(self, context: bpy.types.Context) -> bool:
        obj = context.active_object
        read = read_closed_scan(self, context, obj)
        if read is None:
            return False
        scan, self._arrays = read
        self.tasks = [fit_body_task(context, obj.name, scan)] if self.include_body else []
        return True

    def apply(self, context: bpy.types.Context) -> set[str]:
        arrays = dict(self._arrays)
        for task in self.tasks:
            arrays.update(fit_arrays(task.fields, task.results))
        path = Path(bpy.path.abspath(self.filepath))
        if path.suffix.lower() != ".npz":
            path = path.with_suffix(".npz")
        try:
            save_scan(path, arrays)
        except (ScanError, OSError) as exc:
            self.report({"ERROR"}, f"Could not write {path}: {exc}")
            return {"CANCELLED"}
        what = "labels" if "labels" in arrays else "no labels"
        body = ", body fit" if "canon_pose" in arrays else ""
        self.report({"INFO"}, f"Wrote {path.name}: {len(arrays['points']):,} points, "
                              f"{what}{body}")
        return {"FINISHED"}


def match_points(file_arrays: dict[str, np.ndarray], vertices: np.ndarray, name: str,
                 source: str) -> str:
    """Check that a file's points are ``vertices`` (y-up world) in the same order.

    Returns a note ("" or why a looser match was used); raises CloseError naming
    the counts or the largest distance otherwise.
    """
    points = np.asarray(file_arrays["points"], np.float64)
    if len(points) != len(vertices):
        raise CloseError(f"{source} has {len(points):,} points but '{name}' has "
                         f"{len(vertices):,} vertices; no labels were loaded",
                         "load labels onto the mesh the file was made from")
    v = np.asarray(vertices, np.float64)
    size = float(np.ptp(v, axis=0).max()) or 1.0
    if "scale" in file_arrays and "centers" in file_arrays:
        original = points * float(file_arrays["scale"]) + np.asarray(file_arrays["centers"])
        dist = float(np.linalg.norm(original - v, axis=1).max())
        if dist <= ORDER_TOLERANCE * size:
            return ""
    else:
        dist = np.inf
    normalized, _, _ = normalize_points(v)
    dist_norm = float(np.linalg.norm(points - normalized, axis=1).max())
    if dist_norm <= ORDER_TOLERANCE:
        return "" if not np.isfinite(dist) else \
            f"'{name}' was moved or scaled since the export; its vertex order matches"
    shown = dist if np.isfinite(dist) else dist_norm * size
    raise CloseError(f"the points of {source} do not lie on the vertices of '{name}' in order "
                     f"(largest distance {shown:.4g} m over {len(v):,} vertices); "
                     "no labels were loaded",
                     "the mesh was edited or its vertices reordered since the file was made: "
                     "load labels onto the exact mesh the file came from")


class CLOSE_OT_import_closed_labels(ImportHelper, bpy.types.Operator):
    """Load the labels of a CloSe-D .npz onto the active mesh (the file must be this
    mesh: same vertices in the same order)"""

    bl_idname = "close.import_closed_labels"
    bl_label = "Load Labels from CloSe-D (.npz)"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".npz"
    filter_glob: bpy.props.StringProperty(default="*.npz", options={"HIDDEN"})

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return active_mesh_in_object_mode(cls, context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        obj = context.active_object
        problem = check_target(obj)
        if problem:
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        path = Path(bpy.path.abspath(self.filepath))
        try:
            arrays = load_scan(path, require=("points", "labels"))
            scan = read_scan(obj, context)
            note = match_points(arrays, scan.vertices, obj.name, path.name)
        except CloseError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        labels = np.asarray(arrays["labels"], np.int64)
        mesh_labels.write_labels(obj, labels, np.ones(len(labels), np.float32))
        mesh_labels.write_stats(obj, labels)
        result = obj.close_blender
        result.checkpoint = f"file: {path.name}"
        result.checkpoint_sha256 = ""
        result.garments = ",".join(mesh_labels.present_classes(labels))
        if note:
            self.report({"INFO"}, note)
        self.report({"INFO"}, f"Loaded {len(labels):,} labels from {path.name} onto '{obj.name}'")
        return {"FINISHED"}


classes = (CLOSE_OT_export_closed, CLOSE_OT_import_closed_labels)
