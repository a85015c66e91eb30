"""Label-editing operators: thin wrappers over ``close_blender.editing``.

Each one reads the labels and the vertex selection of the active mesh (from
Edit mode when it is in Edit mode), runs a pure-numpy algorithm, and writes
the result back with ``mesh_labels.write_labels`` so the ``close_label``
attribute, the label colours and the ``CloSe_<Class>`` groups stay in
agreement. Vertices an edit changes get confidence 1.0 (a person decided).
All of them are undoable (bl_options UNDO): every change lives in Blender data.
"""

from __future__ import annotations

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from mathutils import Color

from ..close_blender import editing
from ..close_blender.errors import CloseError
from ..close_blender.labels import CLASS_NAMES, DISPLAY_NAMES, PALETTE, class_index
from . import mesh_labels

OVERLAY_STRENGTH_KEY = "close_overlay_strength"
PALETTE_NAME = "CloSe Classes"

CLASS_ITEMS = [(name, DISPLAY_NAMES[i], f"CloSe class {DISPLAY_NAMES[i]} (index {i})", i)
               for i, name in enumerate(CLASS_NAMES)]


def _class_prop(name: str, description: str, default: str = "Body") -> EnumProperty:
    return EnumProperty(name=name, description=description, items=CLASS_ITEMS, default=default)


class _MeshOperator:
    """Shared poll, error reporting and Edit-mode round trip."""

    bl_options = {"REGISTER", "UNDO"}
    needs_labels = True
    needs_selection = False

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        obj = context.active_object
        if obj is None or obj.type != "MESH":
            cls.poll_message_set("Select a mesh object (the scan)")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        obj = context.active_object
        try:
            with mesh_labels.in_object_mode(context, obj):
                mesh = obj.data
                labels = mesh_labels.read_labels(mesh)
                if labels is None and self.needs_labels:
                    raise CloseError(f"'{obj.name}' has no CloSe labels",
                                     "segment it first, or assign a class to a selection")
                selection = mesh_labels.read_selection(mesh)
                if self.needs_selection and not selection.any():
                    raise CloseError("no vertex is selected",
                                     "select vertices in Edit mode first")
                message = self.edit(context, obj, labels, selection)
        except CloseError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"{self.bl_label}: {message}")
        return {"FINISHED"}

    def edit(self, context: bpy.types.Context, obj: bpy.types.Object,
             labels: np.ndarray | None, selection: np.ndarray) -> str:
        raise NotImplementedError


def apply_labels(obj: bpy.types.Object, old: np.ndarray | None, new: np.ndarray,
                 report: editing.ChangeReport) -> str:
    """Write edited labels (changed vertices get confidence 1.0); return the summary."""
    mesh = obj.data
    n = len(mesh.vertices)
    old = np.full(n, -1, np.int64) if old is None else old
    if report.n_changed or mesh_labels.read_labels(mesh) is None:
        conf = mesh_labels.read_confidence(mesh)
        if conf is None or conf.shape != (n,):
            conf = np.ones(n, np.float32)
        conf[new != old] = 1.0
        showing_overlay = mesh.color_attributes.active_color_name == mesh_labels.OVERLAY_ATTR
        mesh_labels.write_labels(obj, new, confidence=conf)
        if showing_overlay:  # keep showing the overlay, now of the new labels
            write_overlay(obj, new, float(mesh.get(OVERLAY_STRENGTH_KEY, 0.5)))
    return report.summary()


def write_overlay(obj: bpy.types.Object, labels: np.ndarray, strength: float) -> None:
    """Blend the label colours over the scan's colours into ``close_label_overlay``
    and show it (display only; the strength is remembered on the mesh)."""
    mesh = obj.data
    name = mesh_labels.scan_color_name(mesh)
    n = len(mesh.vertices)
    scan = (mesh_labels.read_color_attribute(mesh, name) if name
            else np.full((n, 4), 0.8, np.float32))
    rgba = editing.overlay_colors(scan, labels, strength)
    attr = mesh.attributes.get(mesh_labels.OVERLAY_ATTR)
    if attr is not None and (attr.domain != "POINT" or attr.data_type != "FLOAT_COLOR"):
        mesh.attributes.remove(attr)
        attr = None
    if attr is None:
        attr = mesh.color_attributes.new(mesh_labels.OVERLAY_ATTR, "FLOAT_COLOR", "POINT")
    attr.data.foreach_set("color_srgb", rgba.reshape(-1))
    mesh.color_attributes.active_color = mesh.color_attributes[mesh_labels.OVERLAY_ATTR]
    mesh[OVERLAY_STRENGTH_KEY] = float(strength)
    mesh.update_tag()


def apply_selection(obj: bpy.types.Object, mask: np.ndarray,
                    report: editing.SelectionReport) -> str:
    mesh_labels.write_selection(obj.data, mask)
    return report.summary()


# --- label edits ---------------------------------------------------------------------------

class CLOSE_OT_assign_label(_MeshOperator, bpy.types.Operator):
    bl_idname = "close.assign_label"
    bl_label = "Assign Label"
    bl_description = "Give the chosen class to every selected vertex"
    needs_labels = False
    needs_selection = True

    label: _class_prop("Class", "Class to give to the selected vertices")

    def edit(self, context, obj, labels, selection):
        base = np.full(len(selection), -1, np.int64) if labels is None else labels
        new, report = editing.assign(base, selection, class_index(self.label))
        return apply_labels(obj, labels, new, report)


class CLOSE_OT_majority_vote(_MeshOperator, bpy.types.Operator):
    bl_idname = "close.majority_vote"
    bl_label = "Majority Vote"
    bl_description = ("Give the selected vertices the class most of them already have "
                      "(ties: the first class in CloSe order)")
    needs_selection = True

    def edit(self, context, obj, labels, selection):
        new, report = editing.majority_in_selection(labels, selection)
        return apply_labels(obj, labels, new, report)


class CLOSE_OT_replace_label(_MeshOperator, bpy.types.Operator):
    bl_idname = "close.replace_label"
    bl_label = "Replace Label"
    bl_description = "Change every vertex of one class to another class"

    from_label: _class_prop("From", "Class to replace", "Shirt")
    to_label: _class_prop("To", "Class that replaces it", "Jacket")
    only_selected: BoolProperty(name="Only Selected",
                                description="Change only selected vertices of that class",
                                default=False)

    def edit(self, context, obj, labels, selection):
        mask = selection if self.only_selected else None
        new, report = editing.replace_label(labels, class_index(self.from_label),
                                            class_index(self.to_label), mask=mask)
        return apply_labels(obj, labels, new, report)


class CLOSE_OT_smooth_labels(_MeshOperator, bpy.types.Operator):
    bl_idname = "close.smooth_labels"
    bl_label = "Smooth Labels"
    bl_description = ("Smooth ragged label borders: each vertex takes the class most common "
                      "among itself and its neighbours, repeated a few times")

    iterations: IntProperty(name="Iterations", description="How many smoothing passes",
                            default=2, min=1, max=100)
    only_selected: BoolProperty(name="Only Selected",
                                description="Change only selected vertices (all still vote)",
                                default=False)

    def edit(self, context, obj, labels, selection):
        adj = mesh_labels.read_adjacency(obj.data)
        mask = selection if self.only_selected else None
        new, report = editing.smooth_labels(adj, labels, self.iterations, mask=mask)
        return apply_labels(obj, labels, new, report)


class CLOSE_OT_remove_islands(_MeshOperator, bpy.types.Operator):
    bl_idname = "close.remove_islands"
    bl_label = "Remove Islands"
    bl_description = ("Relabel connected patches of one class smaller than a size: each takes "
                      "the class most common around it")

    min_size: IntProperty(name="Minimum Size",
                          description="Patches with fewer vertices than this are relabelled",
                          default=50, min=1, soft_max=10000)
    only_selected: BoolProperty(name="Only Selected",
                                description="Relabel only patches lying wholly in the selection",
                                default=False)

    def edit(self, context, obj, labels, selection):
        adj = mesh_labels.read_adjacency(obj.data)
        mask = selection if self.only_selected else None
        new, report = editing.remove_islands(adj, labels, self.min_size, mask=mask)
        return apply_labels(obj, labels, new, report)


# --- selection tools -----------------------------------------------------------------------

class CLOSE_OT_select_label(_MeshOperator, bpy.types.Operator):
    bl_idname = "close.select_label"
    bl_label = "Select Label"
    bl_description = "Select the vertices of a class"

    label: _class_prop("Class", "Class whose vertices to select")
    extend: BoolProperty(name="Extend", description="Add to the current selection",
                         default=False)

    def edit(self, context, obj, labels, selection):
        mask, report = editing.select_label(labels, class_index(self.label), mask=selection,
                                            extend=self.extend)
        return apply_selection(obj, mask, report)


class CLOSE_OT_grow_selection(_MeshOperator, bpy.types.Operator):
    bl_idname = "close.grow_selection"
    bl_label = "Grow Selection"
    bl_description = ("Grow the selection over connected vertices of the same class, "
                      "or to every vertex within a distance")
    needs_selection = True

    mode: EnumProperty(
        name="Mode", description="How to grow",
        items=(("SAME_LABEL", "Same Label", "All connected vertices sharing a selected class"),
               ("RADIUS", "Radius", "All vertices within the radius of a selected vertex")),
        default="SAME_LABEL")
    radius: FloatProperty(name="Radius", description="Distance to grow by (object space)",
                          default=0.02, min=0.0, soft_max=1.0, subtype="DISTANCE")
    same_label_only: BoolProperty(
        name="Same Label Only", description="In Radius mode, add only vertices of a selected class",
        default=False)

    def edit(self, context, obj, labels, selection):
        if self.mode == "SAME_LABEL":
            adj = mesh_labels.read_adjacency(obj.data)
            mask, report = editing.grow_same_label(adj, labels, selection)
        else:
            pts = mesh_labels.read_points(obj.data)
            mask, report = editing.grow_radius(pts, selection, self.radius,
                                               labels=labels if self.same_label_only else None)
        return apply_selection(obj, mask, report)


class CLOSE_OT_select_by_color(_MeshOperator, bpy.types.Operator):
    bl_idname = "close.select_by_color"
    bl_label = "Select by Texture Colour"
    bl_description = ("Select vertices whose scan colour is close to the selection's mean colour "
                      "(texture similarity)")
    needs_labels = False
    needs_selection = True

    tolerance: FloatProperty(name="Tolerance",
                             description="Largest RGB distance (0-1 per channel) still similar",
                             default=0.08, min=0.0, max=1.8)
    radius: FloatProperty(name="Radius",
                          description="Only within this distance of the selection (0: anywhere)",
                          default=0.0, min=0.0, soft_max=1.0, subtype="DISTANCE")
    match: EnumProperty(
        name="Match",
        description="What a vertex's colour is compared with",
        items=(("MEAN", "Mean Colour", "The mean colour of the selection (plain fabric)"),
               ("ANY", "Any Selected Colour", "The colour of any selected vertex "
                                              "(patterned fabric)")),
        default="MEAN")
    connected: BoolProperty(name="Connected",
                            description="Only similar vertices connected to the selection",
                            default=True)
    color_attribute: StringProperty(
        name="Colour Attribute",
        description="The scan's colour attribute (empty: the first one that is not a label colour)",
        default="")

    def edit(self, context, obj, labels, selection):
        mesh = obj.data
        name = mesh_labels.scan_color_name(mesh, self.color_attribute)
        if name is None:
            raise CloseError(f"'{obj.name}' has no scan colours",
                             "import the scan with its vertex colours")
        colors = mesh_labels.read_color_attribute(mesh, name)
        pts = mesh_labels.read_points(mesh) if self.radius > 0 else None
        adj = mesh_labels.read_adjacency(mesh) if self.connected else None
        mask, report = editing.select_by_color(
            colors, selection, self.tolerance, points=pts,
            radius=self.radius if self.radius > 0 else None, adjacency=adj,
            match=self.match.lower())
        return apply_selection(obj, mask, report)


# --- painting and sync ---------------------------------------------------------------------

def paint_color(struct: bpy.types.bpy_struct, prop: str, cls: int) -> tuple[float, float, float]:
    """Class ``cls``'s colour in the space of ``struct.prop``: sRGB for a
    gamma-corrected property, scene linear otherwise (brush and palette
    colours are scene linear in Blender 5), so painting stores exactly the
    class colour."""
    rgb = Color(tuple(float(c) / 255.0 for c in PALETTE[cls]))
    if struct.bl_rna.properties[prop].subtype != "COLOR_GAMMA":
        rgb = rgb.from_srgb_to_scene_linear()
    return tuple(rgb)


def class_palette() -> bpy.types.Palette:
    """The 18-colour palette of the classes (created or refreshed)."""
    palette = bpy.data.palettes.get(PALETTE_NAME) or bpy.data.palettes.new(PALETTE_NAME)
    while len(palette.colors) > len(CLASS_NAMES):
        palette.colors.remove(palette.colors[-1])
    while len(palette.colors) < len(CLASS_NAMES):
        palette.colors.new()
    for cls, color in enumerate(palette.colors):
        color.color = paint_color(color, "color", cls)
    return palette


class CLOSE_OT_paint_labels(_MeshOperator, bpy.types.Operator):
    bl_idname = "close.paint_labels"
    bl_label = "Paint Labels"
    bl_description = ("Paint labels with Blender's Vertex Paint: shows the label colours and "
                      "gives a palette of the class colours. Run Sync from Paint afterwards")
    needs_labels = False

    label: _class_prop("Class", "Class colour to start painting with")

    def execute(self, context):
        obj = context.active_object
        try:
            with mesh_labels.in_object_mode(context, obj):
                labels = mesh_labels.read_labels(obj.data)
                if labels is None:
                    raise CloseError(f"'{obj.name}' has no CloSe labels",
                                     "segment it first, or assign a class to a selection")
                # rewrite so the colours match the labels exactly before painting
                mesh_labels.write_labels(obj, labels)
        except CloseError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        mesh = obj.data
        mesh.color_attributes.active_color = mesh.color_attributes[mesh_labels.COLOR_ATTR]
        if obj.mode != "VERTEX_PAINT":
            with context.temp_override(active_object=obj, object=obj):
                bpy.ops.object.mode_set(mode="VERTEX_PAINT")
        vp = context.scene.tool_settings.vertex_paint
        vp.palette = class_palette()
        cls = class_index(self.label)
        ups = getattr(vp, "unified_paint_settings", None)
        if ups is not None:
            ups.use_unified_color = True
            ups.color = paint_color(ups, "color", cls)
        if vp.brush is not None:
            try:
                vp.brush.color = paint_color(vp.brush, "color", cls)
            except AttributeError:  # a read-only brush asset
                pass
        self.report({"INFO"}, f"{self.bl_label}: painting '{mesh_labels.COLOR_ATTR}' with "
                              f"{DISPLAY_NAMES[class_index(self.label)]}; "
                              "run Sync from Paint when done")
        return {"FINISHED"}


class CLOSE_OT_sync_from_paint(_MeshOperator, bpy.types.Operator):
    bl_idname = "close.sync_from_paint"
    bl_label = "Sync from Paint"
    bl_description = ("Snap painted label colours to the nearest class colour and update the "
                      "labels and vertex groups from them")

    max_distance: FloatProperty(
        name="Maximum Distance",
        description="Colours farther than this (RGB 0-1) from every class colour leave the "
                    "vertex's label unchanged (0: always snap)",
        default=0.0, min=0.0, max=1.8)

    def edit(self, context, obj, labels, selection):
        colors = mesh_labels.read_color_attribute(obj.data, mesh_labels.COLOR_ATTR)
        if colors is None:
            raise CloseError(f"'{obj.name}' has no '{mesh_labels.COLOR_ATTR}' colours",
                             "use Paint Labels first")
        new, report = editing.snap_paint(colors, labels,
                                         max_distance=self.max_distance or None)
        summary = apply_labels(obj, labels, new, report)
        # always rewrite: snaps half-painted colours back to exact class colours
        if not report.n_changed:
            mesh_labels.write_labels(obj, new)
        return summary


class CLOSE_OT_sync_from_groups(_MeshOperator, bpy.types.Operator):
    bl_idname = "close.sync_from_groups"
    bl_label = "Sync from Vertex Groups"
    bl_description = ("Update the labels from the CloSe_<Class> vertex groups: a vertex takes "
                      "its highest-weight group (ties: a group it was newly added to, then the "
                      "first class); a vertex in no group keeps its label")

    def edit(self, context, obj, labels, selection):
        weights = mesh_labels.read_groups(obj)
        new, report = editing.labels_from_groups(weights, labels)
        summary = apply_labels(obj, labels, new, report)
        if not report.n_changed:  # still restore exact one-group-per-vertex, weight 1
            mesh_labels.write_labels(obj, new)
        return summary


class CLOSE_OT_label_overlay(_MeshOperator, bpy.types.Operator):
    bl_idname = "close.label_overlay"
    bl_label = "Label Overlay"
    bl_description = ("Show the label colours blended over the scan's own colours "
                      "(display only; the labels do not change; edits keep it up to date "
                      "while it is shown)")

    strength: FloatProperty(name="Strength",
                            description="0 shows the scan's colours, 1 the label colours",
                            default=0.5, min=0.0, max=1.0, subtype="FACTOR")

    def edit(self, context, obj, labels, selection):
        write_overlay(obj, labels, self.strength)
        return f"strength {self.strength:.2f} shown in '{mesh_labels.OVERLAY_ATTR}'"


classes: tuple[type, ...] = (
    CLOSE_OT_assign_label,
    CLOSE_OT_majority_vote,
    CLOSE_OT_replace_label,
    CLOSE_OT_smooth_labels,
    CLOSE_OT_remove_islands,
    CLOSE_OT_select_label,
    CLOSE_OT_grow_selection,
    CLOSE_OT_select_by_color,
    CLOSE_OT_paint_labels,
    CLOSE_OT_sync_from_paint,
    CLOSE_OT_sync_from_groups,
    CLOSE_OT_label_overlay,
)
