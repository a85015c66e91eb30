"""``close.bind_to_body``: an armature from the fitted body, the scan or its garments
skinned to it.

The worker (job ``body_rig``, ``inference/rig_jobs.py``) fits the body (or
reads a saved fit), returns its posed skeleton in the scan's world frame and,
for every vertex to bind, the few most influential bones with weights taken
from the body's skinning weights at the nearest body surface point. Here the
skeleton becomes an Armature object (``<scan>_rig`` in "CloSe Bodies", its
rest pose is the scan's pose) and each target mesh gets one vertex group per
influencing bone plus an Armature modifier "CloSe Rig". Garments cut by
Separate Garments are bound against the body fitted to their source scan
(``close_source``); when that scan is gone, against all of them together.

Vertex positions are read from the mesh data (no modifiers), so binding again
after posing works; the fit reads the evaluated scan, so bind in rest pose.
Weights are written quantized to 1/1024 (grouped into few
``VertexGroup.add`` calls); the Armature modifier normalizes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np
from mathutils import Matrix

from ..close_blender.errors import CloseError
from .collections import scene_collection
from .job_runner import Task, WorkerJobOperator
from .scan_data import Z_UP_TO_Y_UP, check_target, read_scan
from .scan_jobs import body_params
from .segment import BODY_COLLECTION, BODY_ITEMS

MODIFIER_NAME = "CloSe Rig"
WEIGHT_STEPS = 1024


@dataclass
class BindTarget:
    name: str
    count: int


def world_yup_vertices(obj: bpy.types.Object) -> np.ndarray:
    """(V, 3) vertex positions of the mesh data (no modifiers), world space, y up."""
    mesh = obj.data
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    world = np.array(obj.matrix_world, dtype=np.float64)
    v = co.reshape(-1, 3).astype(np.float64) @ world[:3, :3].T + world[:3, 3]
    return (v @ Z_UP_TO_Y_UP.T).astype(np.float32)


def bind_groups(context: bpy.types.Context, objects: list[bpy.types.Object]
                ) -> dict[str, list[bpy.types.Object]]:
    """Targets grouped by the scan whose body they bind to."""
    groups: dict[str, list[bpy.types.Object]] = {}
    for obj in objects:
        source = obj.get("close_source")
        key = source if isinstance(source, str) and source else obj.name
        groups.setdefault(key, []).append(obj)
    return groups


def _scan_arrays(context: bpy.types.Context, source: str,
                 targets: list[bpy.types.Object]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays the body is fitted to: the source scan, else its pieces together."""
    obj = bpy.data.objects.get(source)
    scans = [read_scan(obj, context)] if obj is not None and obj.type == "MESH" else \
        [read_scan(t, context) for t in targets]
    offsets = np.cumsum([0] + [len(s.vertices) for s in scans])[:-1]
    arrays = {
        "vertices": np.concatenate([s.vertices for s in scans]),
        "faces": np.concatenate([s.faces + o for s, o in zip(scans, offsets, strict=True)]),
        "colors": np.concatenate([s.colors for s in scans]),
        "normals": np.concatenate([s.normals for s in scans]),
    }
    return arrays, [w for s in scans for w in s.warnings]


def build_armature(context: bpy.types.Context, name: str, names: list[str],
                   matrices: np.ndarray, lengths: np.ndarray, parents: np.ndarray
                   ) -> bpy.types.Object:
    """An Armature object ``name`` whose rest pose is the given skeleton (y-up world
    frame, converted to Blender's z-up); an existing one of that name is rebuilt.

    The object must be in the view layer to enter Edit mode: that is ensured (the
    "CloSe Bodies" collection shown, a rig moved out of the layer linked back into
    it) before anything is changed.
    """
    to_zup = Z_UP_TO_Y_UP.T
    collection = scene_collection(context, BODY_COLLECTION)
    obj = bpy.data.objects.get(name)
    if obj is not None and obj.type == "ARMATURE":
        if obj.name not in context.view_layer.objects:
            collection.objects.link(obj)
        arm = bpy.data.armatures.new(name)
        old = obj.data
        obj.data = arm
        if old.users == 0:
            bpy.data.armatures.remove(old)
    else:
        arm = bpy.data.armatures.new(name)
        obj = bpy.data.objects.new(name, arm)
        collection.objects.link(obj)
    obj.matrix_world = Matrix.Identity(4)
    arm.display_type = "STICK"
    obj.show_in_front = True
    view_layer = context.view_layer
    previous = view_layer.objects.active
    hidden, disabled = obj.hide_get(), obj.hide_viewport
    obj.hide_set(False)
    obj.hide_viewport = False
    view_layer.objects.active = obj
    with context.temp_override(active_object=obj, object=obj, selected_objects=[obj]):
        bpy.ops.object.mode_set(mode="EDIT")
        try:
            bones = []
            for j, bone_name in enumerate(names):
                eb = arm.edit_bones.new(bone_name)
                m = np.eye(4)
                m[:3, :3] = to_zup @ matrices[j, :3, :3]
                m[:3, 3] = to_zup @ matrices[j, :3, 3]
                eb.head = m[:3, 3]
                eb.tail = m[:3, 3] + m[:3, 1] * float(lengths[j])
                eb.matrix = Matrix(m.tolist())  # sets the roll from the bone's x/z axes
                eb.length = float(lengths[j])
                bones.append(eb)
            for j, p in enumerate(parents.tolist()):
                if p >= 0:
                    bones[j].parent = bones[p]
                    bones[j].use_connect = False
        finally:
            bpy.ops.object.mode_set(mode="OBJECT")
    view_layer.objects.active = previous
    obj.hide_set(hidden)
    obj.hide_viewport = disabled
    return obj


def write_weights(obj: bpy.types.Object, armature: bpy.types.Object, names: list[str],
                  bones: np.ndarray, weights: np.ndarray) -> int:
    """Bone vertex groups and the Armature modifier on ``obj``; returns groups written."""
    bone_names = set(names)
    for g in list(obj.vertex_groups):
        if g.name in bone_names:
            obj.vertex_groups.remove(g)
    n = len(bones)
    q = np.rint(weights * WEIGHT_STEPS).astype(np.int64)
    keep = q > 0
    rows = np.broadcast_to(np.arange(n)[:, None], bones.shape)[keep]
    b = bones[keep].astype(np.int64)
    w = q[keep]
    order = np.lexsort((rows, w, b))
    b, w, rows = b[order], w[order], rows[order]
    key = b * (WEIGHT_STEPS + 1) + w
    cuts = np.flatnonzero(np.diff(key)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(key)]])
    groups: dict[int, bpy.types.VertexGroup] = {}
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        bone = int(b[s])
        group = groups.get(bone)
        if group is None:
            group = groups[bone] = obj.vertex_groups.new(name=names[bone])
        group.add(rows[s:e].tolist(), float(w[s]) / WEIGHT_STEPS, "REPLACE")
    for mod in list(obj.modifiers):
        if mod.type == "ARMATURE" and mod.name == MODIFIER_NAME:
            obj.modifiers.remove(mod)
    mod = obj.modifiers.new(MODIFIER_NAME, "ARMATURE")
    mod.object = armature
    mod.use_vertex_groups = True
    mod.use_bone_envelopes = False
    return len(groups)


class CLOSE_OT_bind_to_body(WorkerJobOperator, bpy.types.Operator):
    """Build an armature from the fitted body and bind the scan (or its separated
    garments) to it with the body's skinning weights"""

    bl_idname = "close.bind_to_body"
    bl_label = "Bind to Body"
    bl_options = {"REGISTER", "UNDO"}
    job_label = "Binding"

    body: bpy.props.EnumProperty(name="Body", description="Body model source", items=BODY_ITEMS,
                                 default="PANEL")
    fit_file: bpy.props.StringProperty(
        name="Body Fit File",
        description="A CloSe-D .npz with a body fit (from Export CloSe-D) to bind to instead "
                    "of fitting again; empty: fit (or reuse the worker's last fit)",
        default="", subtype="FILE_PATH")
    top_k: bpy.props.IntProperty(
        name="Bones per Vertex", description="Most influential bones kept per vertex",
        default=4, min=1, max=8)
    use_selected: bpy.props.BoolProperty(
        name="All Selected", description="Bind every selected mesh, not only the active one",
        default=True)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.mode == "OBJECT"

    def _targets(self, context: bpy.types.Context) -> list[bpy.types.Object]:
        selected = [o for o in context.selected_objects if o.type == "MESH"] \
            if self.use_selected else []
        active = context.active_object
        if active is not None and active.type == "MESH" and active not in selected:
            selected.insert(0, active)
        return selected or ([active] if active is not None else [])

    def prepare(self, context: bpy.types.Context) -> bool:
        targets = self._targets(context)
        if not targets:
            self.report({"ERROR"}, "Nothing selected: select a scan or its separated garments")
            return False
        for obj in targets:
            problem = check_target(obj)
            if problem:
                self.report({"ERROR"}, problem)
                return False
        fit_file = bpy.path.abspath(self.fit_file) if self.fit_file else ""
        params = {**body_params(context, self.body), "garments": "auto", "top_k": self.top_k,
                  "fit_file": fit_file}
        self.tasks = []
        for source, objs in bind_groups(context, targets).items():
            try:
                arrays, warnings = _scan_arrays(context, source, objs)
            except CloseError as exc:
                self.report({"ERROR"}, str(exc))
                return False
            for w in warnings:
                self.report({"WARNING"}, w)
            points = [world_yup_vertices(o) for o in objs]
            arrays["query_points"] = np.concatenate(points)
            data = [BindTarget(o.name, len(p)) for o, p in zip(objs, points, strict=True)]
            self.tasks.append(Task(source, "body_rig", params, arrays, data=data))
        return True

    def apply(self, context: bpy.types.Context) -> set[str]:
        for task in self.tasks:  # check everything before changing anything
            for target in task.data:
                obj = bpy.data.objects.get(target.name)
                if obj is None or obj.type != "MESH" or len(obj.data.vertices) != target.count:
                    raise CloseError(f"'{target.name}' changed while binding; nothing was bound",
                                     "run Bind to Body again")
        for task in self.tasks:
            names = list(task.fields["bones"])
            res = task.results
            armature = build_armature(
                context, f"{task.object_name}_rig", names,
                np.asarray(res["bone_matrices"], np.float64),
                np.asarray(res["bone_lengths"], np.float64),
                np.asarray(res["bone_parents"], np.int64))
            bones = np.asarray(res["weight_bones"], np.int64)
            weights = np.asarray(res["weight_values"], np.float32)
            start = 0
            message = str((task.fields.get("fit") or {}).get("message", ""))
            for target in task.data:
                obj = bpy.data.objects[target.name]
                end = start + target.count
                write_weights(obj, armature, names, bones[start:end], weights[start:end])
                start = end
                if message:
                    obj.close_blender.body_fit = message
            self.report({"INFO"}, f"{armature.name}: {len(names)} bones, bound "
                                  + ", ".join(t.name for t in task.data))
        return {"FINISHED"}


classes = (CLOSE_OT_bind_to_body,)
