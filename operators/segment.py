"""``close.segment`` and ``close.fit_body``: from a scan to labels (or a fitted body).

``execute`` (scripts, ``blender -b``) runs to completion; ``invoke`` (the UI)
runs modal with progress in the status bar and Esc to cancel (see
``job_runner``). The network runs in the worker process; objects are written
only after every job succeeded, in one undo step.
"""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np

from ..close_blender.errors import CloseError
from ..close_blender.labels import CLASS_NAMES, DISPLAY_NAMES
from ..panels.preferences import current_checkpoint, is_checkpoint_path
from . import mesh_labels, worker_session
from .collections import scene_collection
from .job_runner import Task, WorkerJobOperator
from .scan_data import Z_UP_TO_Y_UP, ScanInput, check_target, read_scan
from .scan_jobs import body_params

BODY_ITEMS = (
    ("PANEL", "From Panel", "Use the body source chosen in the CloSe panel"),
    ("ANNY", "Automatic (Anny)", "Fit the free Anny body automatically"),
    ("SMPL", "SMPL registration", "Use your SMPL model files and a registration of this scan"),
)
BODY_COLLECTION = "CloSe Bodies"


def target_objects(context: bpy.types.Context, use_selected: bool) -> list[bpy.types.Object]:
    """The active object, or every selected mesh when asked to and several are selected."""
    selected = [o for o in context.selected_objects if o.type == "MESH"] if use_selected else []
    if len(selected) > 1:
        return selected
    active = context.active_object
    return [active] if active is not None else selected


def checkpoint_problem(checkpoint: str) -> str | None:
    """A quick check of a checkpoint given as a path (as ``current_checkpoint`` returns it,
    absolute); names like ``default`` are resolved by the worker."""
    if not is_checkpoint_path(checkpoint):
        return None
    path = Path(checkpoint)
    if not path.is_file():
        return f"No checkpoint file at {path}: choose an existing .pth or .safetensors file"
    if path.suffix == ".pth" and not path.with_name(path.stem + "_cfg.yaml").is_file():
        return (f"{path.name} has no {path.stem}_cfg.yaml beside it: "
                "a published checkpoint needs its config file")
    return None


def job_params(op, context: bpy.types.Context) -> tuple[dict, str | None]:
    """Worker parameters from the operator's options, the panel and the preferences,
    and the reason they cannot be used (None when they can)."""
    settings = context.scene.close_blender
    checkpoint = current_checkpoint(context, op.checkpoint)
    spec = op.garments.strip() or ("auto" if settings.auto_garments
                                    else ",".join(settings.garment_names()))
    garments: list[str] | str = "auto" if spec.lower() == "auto" else [
        g.strip() for g in spec.split(",") if g.strip()]
    params = {
        **body_params(context, op.body),
        "checkpoint": checkpoint, "garments": garments, "passes": op.passes or settings.passes,
        "auto_min_share": settings.auto_min_share,
    }
    if not garments:
        return params, "No garment ticked: tick the classes on the scan, or use Auto-detect"
    if garments != "auto":
        unknown = [g for g in garments if g.lower() not in {c.lower() for c in CLASS_NAMES}]
        if unknown:
            return params, f"Unknown classes {', '.join(unknown)}: use {', '.join(CLASS_NAMES)}"
    if params["body"] == "smpl" and not (params["smpl_model_dir"] and params["registration"]):
        return params, "SMPL body chosen: set the SMPL model folder and the registration file"
    return params, checkpoint_problem(checkpoint)


def scan_tasks(op, context: bpy.types.Context, job: str, params: dict) -> list[Task] | None:
    """One task per target object, or None after reporting why there is none."""
    objects = target_objects(context, op.use_selected)
    if not objects:
        op.report({"ERROR"}, "Nothing selected: select a scan (a mesh object)")
        return None
    for obj in objects:
        problem = check_target(obj)
        if problem:
            op.report({"ERROR"}, problem)
            return None
    tasks = []
    for obj in objects:
        try:
            scan = read_scan(obj, context)
        except CloseError as exc:
            op.report({"ERROR"}, str(exc))
            return None
        for warning in scan.warnings:
            op.report({"WARNING"}, warning)
        tasks.append(Task(obj.name, job, params, scan.worker_arrays(), data=scan))
    return tasks


def result_object(task: Task, what: str) -> bpy.types.Object:
    """The task's object if it is still the mesh the job read; raises CloseError naming
    what changed (deleted, renamed, vertices added or removed) otherwise."""
    obj = bpy.data.objects.get(task.object_name)
    hint = f"run {what} again"
    if obj is None or obj.type != "MESH":
        raise CloseError(f"'{task.object_name}' was renamed or deleted during {what}; "
                         "nothing was changed", hint)
    if len(obj.data.vertices) != len(task.data.vertices):
        raise CloseError(f"'{obj.name}' has {len(obj.data.vertices):,} vertices now but "
                         f"{len(task.data.vertices):,} when {what} started; nothing was changed",
                         f"the mesh changed while it ran: {hint}")
    return obj


def write_segmentation(obj: bpy.types.Object, scan: ScanInput, fields: dict,
                       arrays: dict[str, np.ndarray]) -> None:
    """Labels, confidence, label colours, groups and the result table onto ``obj``
    (checked by ``result_object``)."""
    labels = np.asarray(arrays["labels"], dtype=np.int64)
    confidence = np.asarray(arrays["confidence"], dtype=np.float32)
    mesh_labels.write_labels(obj, labels, confidence)
    mesh_labels.write_predicted(obj.data, labels)
    mesh_labels.write_stats(obj, labels, confidence)
    result = obj.close_blender
    checkpoint = fields.get("checkpoint") or {}
    result.checkpoint = str(checkpoint.get("path", ""))
    result.checkpoint_sha256 = str(checkpoint.get("sha256") or "")
    result.garments = ",".join(fields.get("garments", []))
    result.body_fit = str((fields.get("fit") or {}).get("message", ""))
    result.gate = str(fields.get("gate") or "")
    result.color_source = scan.color_source


def show_label_colors(context: bpy.types.Context) -> None:
    """Switch solid-mode viewports to show the active colour attribute (the labels)."""
    screen = getattr(context, "screen", None)
    for area in screen.areas if screen is not None else ():
        if area.type == "VIEW_3D":
            shading = area.spaces.active.shading
            if shading.type == "SOLID":
                shading.color_type = "VERTEX"


def summary(obj: bpy.types.Object) -> str:
    rows = sorted(obj.close_blender.stats, key=lambda r: -r.count)
    text = f"{obj.name}: " + ", ".join(f"{DISPLAY_NAMES[r.index]} {r.count:,}" for r in rows[:6])
    gate = obj.close_blender.gate
    if gate:  # a gated fine-tuned version: say which of its weights labelled the scan
        text += (" (the version's tuned weights)" if gate == "tuned"
                 else " (the weights the version started from: surer on this scan)")
    return text


class _ScanJobOptions:
    checkpoint: bpy.props.StringProperty(
        name="Checkpoint",
        description="Checkpoint to use; empty: the panel's Checkpoint field, else the active "
                    "model version, else the preferences' default",
        default="")
    garments: bpy.props.StringProperty(
        name="Garments",
        description="Comma-separated classes present on the scan, or 'auto' to detect them; "
                    "empty: the panel's settings",
        default="")
    passes: bpy.props.IntProperty(
        name="Passes",
        description="Random chunkings averaged together (0: the panel's setting)",
        default=0, min=0, max=16)
    body: bpy.props.EnumProperty(name="Body", description="Body model source", items=BODY_ITEMS,
                                 default="PANEL")
    use_selected: bpy.props.BoolProperty(
        name="All Selected",
        description="Work on every selected mesh, not only the active object",
        default=True)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if context.mode != "OBJECT":
            cls.poll_message_set("Switch to Object Mode to segment")
            return False
        return True


class CLOSE_OT_segment(_ScanJobOptions, WorkerJobOperator, bpy.types.Operator):
    """Label every vertex of the scan with a clothing class (runs the network in the worker)"""

    bl_idname = "close.segment"
    bl_label = "Segment"
    bl_options = {"REGISTER", "UNDO"}
    job_label = "Segmentation"

    def prepare(self, context: bpy.types.Context) -> bool:
        params, problem = job_params(self, context)
        if problem:
            self.report({"ERROR"}, problem)
            return False
        tasks = scan_tasks(self, context, "segment", params)
        if tasks is None:
            return False
        self.tasks = tasks
        return True

    def apply(self, context: bpy.types.Context) -> set[str]:
        objects = []
        for task in self.tasks:  # check every object before writing any
            obj = result_object(task, "segmentation")
            if len(task.results["labels"]) != len(obj.data.vertices):
                raise CloseError(f"the worker returned {len(task.results['labels']):,} labels "
                                 f"for the {len(obj.data.vertices):,} vertices of "
                                 f"'{obj.name}'; nothing was changed", "run Segment again")
            objects.append(obj)
        for obj, task in zip(objects, self.tasks, strict=True):
            write_segmentation(obj, task.data, task.fields, task.results)
        if context.scene.close_blender.show_label_colors:
            show_label_colors(context)
        for obj in objects:
            self.report({"INFO"}, summary(obj))
        return {"FINISHED"}


class CLOSE_OT_fit_body(_ScanJobOptions, WorkerJobOperator, bpy.types.Operator):
    """Fit the body model to the scan and show it as a separate object"""

    bl_idname = "close.fit_body"
    bl_label = "Show Fitted Body"
    bl_options = {"REGISTER", "UNDO"}
    job_label = "Body fit"

    def prepare(self, context: bpy.types.Context) -> bool:
        params, problem = job_params(self, context)
        params["garments"] = "auto"
        if params["body"] == "smpl" and problem:
            self.report({"ERROR"}, problem)
            return False
        tasks = scan_tasks(self, context, "fit_body", params)
        if tasks is None:
            return False
        self.tasks = tasks
        return True

    def apply(self, context: bpy.types.Context) -> set[str]:
        scans = [result_object(task, "the body fit") for task in self.tasks]
        collection = scene_collection(context, BODY_COLLECTION)
        for scan, task in zip(scans, self.tasks, strict=True):
            verts = np.asarray(task.results["body_vertices"], np.float64) @ Z_UP_TO_Y_UP
            faces = np.asarray(task.results["body_faces"], np.int64)
            name = f"{task.object_name}_body"
            old = bpy.data.objects.get(name)
            mesh = bpy.data.meshes.new(name)
            mesh.from_pydata(verts.tolist(), [], faces.tolist())
            mesh.update()
            if old is not None and old.type == "MESH":
                previous = old.data
                old.data = mesh
                if previous.users == 0:  # else each run would leave an orphan mesh
                    bpy.data.meshes.remove(previous)
                obj = old
            else:
                obj = bpy.data.objects.new(name, mesh)
                collection.objects.link(obj)
            obj.display_type = "WIRE"
            message = str((task.fields.get("fit") or {}).get("message", ""))
            obj.close_blender.body_fit = message
            scan.close_blender.body_fit = message
            level = "INFO" if (task.fields.get("fit") or {}).get("ok") else "WARNING"
            self.report({level}, f"{task.object_name}: {message}")
        return {"FINISHED"}


class CLOSE_OT_cancel(bpy.types.Operator):
    """Cancel the worker's running jobs (the scans are left unchanged)"""

    bl_idname = "close.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        if not worker_session.cancel_all():
            self.report({"INFO"}, "No running job")
            return {"CANCELLED"}
        self.report({"INFO"}, "Cancelling...")
        return {"FINISHED"}


classes = (CLOSE_OT_segment, CLOSE_OT_fit_body, CLOSE_OT_cancel)
