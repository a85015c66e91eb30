"""``close.separate_garments``: one object per labelled class, built with numpy.

Each piece is assembled straight from the labelled mesh's arrays
(``foreach_get`` -> index arrays -> ``foreach_set``), never by duplicating
the scan and deleting, so a 300k-face scan separates in about a second.

How faces and vertices are shared out:

* With *tidy borders* (the default) each face goes to the class most of its
  corners carry (ties: the lowest class index; unlabelled corners only count
  when a face has no labelled corner). Every face lands in exactly one piece,
  so the pieces' face totals add up to the scan's and the borders follow the
  faces, without single-triangle teeth.
* Without it a face goes to a piece only when all its corners carry that
  class; mixed border faces are left out (reported).
* A vertex is copied into every piece that uses it: vertices on a border
  between two pieces are duplicated (so the vertex total of the pieces is the
  scan's plus one per extra piece a border vertex touches). Loose vertices
  (no face) go to the piece of their own label.

Kept per piece: positions, every generic attribute on points, faces and
corners (UV maps, colour attributes, ``material_index``, sharp faces, the
``close_*`` labels ...) with the active UV map / colour attribute, the
material slots, the object transform and the ``CloSe_<Class>`` groups.
Edge attributes (creases, sharp edges, seams) are not carried over, since the
edges are rebuilt; other vertex groups are copied with a per-vertex loop,
which is the slow part when a scan has many of them. The original object is
never modified: it is hidden (``keep_original``) or removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from ..close_blender.labels import (
    CLASS_NAMES,
    GROUP_PREFIX,
    N_CLASSES,
    PALETTE,
    UNLABELLED_COLOR,
)
from . import mesh_labels
from .collections import show_in_view_layer
from .scan_data import active_mesh_in_object_mode

UNLABELLED = "Unlabelled"

# Attribute data type -> (foreach key, components, numpy dtype).
_LAYOUT: dict[str, tuple[str, int, type]] = {
    "FLOAT": ("value", 1, np.float32),
    "INT": ("value", 1, np.int32),
    "INT8": ("value", 1, np.int32),
    "BOOLEAN": ("value", 1, bool),
    "FLOAT_VECTOR": ("vector", 3, np.float32),
    "FLOAT2": ("vector", 2, np.float32),
    "FLOAT_COLOR": ("color", 4, np.float32),
    "BYTE_COLOR": ("color_srgb", 4, np.float32),  # sRGB bytes round-trip exactly
    "QUATERNION": ("value", 4, np.float32),
    "INT32_2D": ("value", 2, np.int32),
    "INT16_2D": ("value", 2, np.int32),
    "FLOAT4X4": ("value", 16, np.float32),
}
_DOMAINS = ("POINT", "FACE", "CORNER")


@dataclass
class MeshArrays:
    """The parts of a mesh a piece is cut from (all numpy, read once)."""

    co: np.ndarray            # (V, 3) float32
    loop_start: np.ndarray    # (F,) int64
    loop_total: np.ndarray    # (F,) int64
    corner_vert: np.ndarray   # (L,) int64
    labels: np.ndarray        # (V,) int64, -1 unlabelled
    attributes: dict[str, tuple[str, str, np.ndarray]]  # name -> (domain, type, data)


def read_mesh(mesh: bpy.types.Mesh, labels: np.ndarray) -> MeshArrays:
    """Positions, topology and every copyable attribute of ``mesh`` as arrays."""
    nv, nf, nl = len(mesh.vertices), len(mesh.polygons), len(mesh.loops)
    co = np.empty(nv * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    start = np.empty(nf, np.int32)
    mesh.polygons.foreach_get("loop_start", start)
    total = np.empty(nf, np.int32)
    mesh.polygons.foreach_get("loop_total", total)
    corner = np.empty(nl, np.int32)
    mesh.loops.foreach_get("vertex_index", corner)
    size = {"POINT": nv, "FACE": nf, "CORNER": nl}
    attributes = {}
    for attr in mesh.attributes:
        if attr.name.startswith(".") or attr.name == "position" or attr.domain not in _DOMAINS:
            continue
        layout = _LAYOUT.get(attr.data_type)
        if layout is None:
            continue
        key, width, dtype = layout
        data = np.empty(size[attr.domain] * width, dtype)
        attr.data.foreach_get(key, data)
        attributes[attr.name] = (attr.domain, attr.data_type, data.reshape(size[attr.domain], width))
    return MeshArrays(co.reshape(-1, 3), start.astype(np.int64), total.astype(np.int64),
                      corner.astype(np.int64), np.asarray(labels, np.int64), attributes)


def face_labels(arrays: MeshArrays, tidy: bool) -> np.ndarray:
    """(F,) class of each face: majority of its corners (tidy), or the shared class
    of all its corners and -2 for mixed faces (not tidy). -1: no labelled corner."""
    nf = len(arrays.loop_start)
    if nf == 0:
        return np.zeros(0, np.int64)
    face_of_loop = np.repeat(np.arange(nf), arrays.loop_total)
    loops = _face_ordered_loops(arrays)
    corner_label = arrays.labels[arrays.corner_vert[loops]]  # -1..17
    counts = np.bincount(face_of_loop * (N_CLASSES + 1) + corner_label + 1,
                         minlength=nf * (N_CLASSES + 1)).reshape(nf, N_CLASSES + 1)
    if tidy:
        labelled = counts[:, 1:]
        best = labelled.argmax(axis=1)  # ties: lowest class index
        return np.where(labelled.max(axis=1) > 0, best, -1).astype(np.int64)
    single = (counts > 0).sum(axis=1) == 1
    return np.where(single, counts.argmax(axis=1) - 1, -2).astype(np.int64)


def _face_ordered_loops(arrays: MeshArrays) -> np.ndarray:
    """Loop indices face by face (face 0's corners, then face 1's ...)."""
    total = arrays.loop_total
    if len(total) == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(total) - total
    within = np.arange(int(total.sum())) - np.repeat(offsets, total)
    return np.repeat(arrays.loop_start, total) + within


@dataclass
class Piece:
    """Index arrays of one piece into the source mesh."""

    label: int                # class index, -1 for unlabelled
    verts: np.ndarray         # source vertex of each new vertex
    faces: np.ndarray         # source face of each new face
    loops: np.ndarray         # source loop of each new loop (face by face)
    corner_vert: np.ndarray   # new vertex of each new loop
    loop_total: np.ndarray    # corners of each new face


def cut_pieces(arrays: MeshArrays, tidy: bool = True) -> tuple[list[Piece], int]:
    """The pieces, one per class present (class order), and the faces left out."""
    flab = face_labels(arrays, tidy)
    loops_all = _face_ordered_loops(arrays)
    face_of_loop = np.repeat(np.arange(len(flab)), arrays.loop_total)
    nv = len(arrays.co)
    has_face = np.zeros(nv, bool)
    has_face[arrays.corner_vert] = True
    loose = ~has_face
    pieces = []
    for c in range(-1, N_CLASSES):
        fmask = flab == c
        lmask = fmask[face_of_loop]
        loose_c = np.flatnonzero(loose & (arrays.labels == c))
        if not fmask.any() and not len(loose_c):
            continue
        loops = loops_all[lmask]
        src_corner = arrays.corner_vert[loops]
        used = np.zeros(nv, bool)
        used[src_corner] = True
        used[loose_c] = True
        verts = np.flatnonzero(used)
        remap = np.full(nv, -1, np.int64)
        remap[verts] = np.arange(len(verts))
        faces = np.flatnonzero(fmask)
        pieces.append(Piece(c, verts, faces, loops, remap[src_corner],
                            arrays.loop_total[faces]))
    return pieces, int((flab == -2).sum())


def build_mesh(name: str, arrays: MeshArrays, piece: Piece) -> bpy.types.Mesh:
    """A new mesh holding one piece with its attributes."""
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(piece.verts))
    mesh.vertices.foreach_set("co", arrays.co[piece.verts].reshape(-1))
    mesh.loops.add(len(piece.loops))
    mesh.loops.foreach_set("vertex_index", piece.corner_vert.astype(np.int32))
    mesh.polygons.add(len(piece.faces))
    starts = np.cumsum(piece.loop_total) - piece.loop_total
    mesh.polygons.foreach_set("loop_start", starts.astype(np.int32))
    mesh.update(calc_edges=True)
    index = {"POINT": piece.verts, "FACE": piece.faces, "CORNER": piece.loops}
    for attr_name, (domain, data_type, data) in arrays.attributes.items():
        attr = mesh.attributes.get(attr_name)
        if attr is None or attr.domain != domain or attr.data_type != data_type:
            if attr is not None:
                mesh.attributes.remove(attr)
            try:
                attr = mesh.attributes.new(attr_name, data_type, domain)
            except (RuntimeError, TypeError):
                continue  # a built-in name this Blender does not allow to create
        key = _LAYOUT[data_type][0]
        attr.data.foreach_set(key, data[index[domain]].reshape(-1))
    for name in (".select_vert", ".select_edge", ".select_poly"):  # start unselected
        attr = mesh.attributes.get(name)
        if attr is not None:
            mesh.attributes.remove(attr)
    mesh.update()
    return mesh


def _copy_active_layers(src: bpy.types.Mesh, dst: bpy.types.Mesh) -> None:
    """Same active / render UV map and colour attribute as the source."""
    if src.uv_layers.active is not None and src.uv_layers.active.name in dst.uv_layers:
        dst.uv_layers.active = dst.uv_layers[src.uv_layers.active.name]
    for uv in src.uv_layers:
        if uv.active_render and uv.name in dst.uv_layers:
            dst.uv_layers[uv.name].active_render = True
    colors = src.color_attributes
    if colors.active_color is not None and colors.active_color.name in dst.color_attributes:
        dst.color_attributes.active_color = dst.color_attributes[colors.active_color.name]
    default = colors.default_color_name if hasattr(colors, "default_color_name") else ""
    if default and default in dst.color_attributes:
        dst.color_attributes.default_color_name = default


def class_material(label: int) -> bpy.types.Material:
    """The shared material ``CloSe_<Class>`` in the class palette colour."""
    name = GROUP_PREFIX + (CLASS_NAMES[label] if label >= 0 else UNLABELLED)
    mat = bpy.data.materials.get(name)
    srgb = PALETTE[label] / 255.0 if label >= 0 else np.array(UNLABELLED_COLOR)
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    rgba = (*linear.tolist(), 1.0)
    if mat is None:
        mat = bpy.data.materials.new(name)
        if bpy.app.version < (5, 0):  # node materials are the default from 5.0 on
            mat.use_nodes = True
    mat.diffuse_color = rgba
    if mat.node_tree is not None:
        for node in mat.node_tree.nodes:
            if node.type == "BSDF_PRINCIPLED":
                node.inputs["Base Color"].default_value = rgba
    return mat


def _copy_other_groups(src: bpy.types.Object, dst: bpy.types.Object, verts: np.ndarray) -> None:
    """Vertex groups that are not CloSe's, restricted to the piece's vertices."""
    others = [g for g in src.vertex_groups if not g.name.startswith(GROUP_PREFIX)]
    if not others:
        return
    new = {g.index: dst.vertex_groups.new(name=g.name) for g in others}
    members: dict[tuple[int, float], list[int]] = {}
    mesh = src.data
    for new_i, old_i in enumerate(verts.tolist()):
        for ge in mesh.vertices[old_i].groups:
            if ge.group in new:
                members.setdefault((ge.group, ge.weight), []).append(new_i)
    for (group, weight), ids in members.items():
        new[group].add(ids, weight, "REPLACE")


def piece_name(scan: str, label: int) -> str:
    return f"{scan}_{CLASS_NAMES[label] if label >= 0 else UNLABELLED}"


def garments_collection(context: bpy.types.Context, scan: bpy.types.Object) -> bpy.types.Collection:
    """A fresh collection ``<scan> Garments``, shown in the view layer (so the pieces can
    be selected); an earlier one for this scan is emptied and reused."""
    name = f"{scan.name} Garments"
    coll = bpy.data.collections.get(name)
    reuse = coll is not None and coll.get("close_source") == scan.name
    if not reuse:
        coll = bpy.data.collections.new(name)
        coll["close_source"] = scan.name
    show_in_view_layer(context, coll)
    if reuse:
        for obj in list(coll.objects):
            mesh = obj.data
            bpy.data.objects.remove(obj)
            if mesh is not None and mesh.users == 0:
                bpy.data.meshes.remove(mesh)
    return coll


def separate(context: bpy.types.Context, obj: bpy.types.Object, tidy: bool = True,
             class_colors: bool = False) -> tuple[list[bpy.types.Object], int]:
    """Build the pieces of ``obj`` into a new collection: (objects, faces left out)."""
    mesh = obj.data
    labels = mesh_labels.read_labels(mesh)
    if labels is None:
        raise ValueError(f"'{obj.name}' has no CloSe labels: run Segment first")
    arrays = read_mesh(mesh, labels)
    pieces, left_out = cut_pieces(arrays, tidy)
    coll = garments_collection(context, obj)
    has_other_groups = any(not g.name.startswith(GROUP_PREFIX) for g in obj.vertex_groups)
    objects = []
    for piece in pieces:
        name = piece_name(obj.name, piece.label)
        new_mesh = build_mesh(name, arrays, piece)
        _copy_active_layers(mesh, new_mesh)
        if class_colors:
            new_mesh.materials.append(class_material(piece.label))
            mi = new_mesh.attributes.get("material_index")
            if mi is not None:
                new_mesh.attributes.remove(mi)
        else:
            for mat in mesh.materials:
                new_mesh.materials.append(mat)
        new_obj = bpy.data.objects.new(name, new_mesh)
        new_obj.matrix_world = obj.matrix_world
        coll.objects.link(new_obj)
        if has_other_groups:
            _copy_other_groups(obj, new_obj, piece.verts)
        piece_labels = labels[piece.verts]
        if (piece_labels >= 0).any():
            conf = arrays.attributes.get(mesh_labels.CONFIDENCE_ATTR)
            mesh_labels.write_labels(
                new_obj, piece_labels,
                None if conf is None else conf[2].reshape(-1)[piece.verts])
            if mesh.color_attributes.active_color is not None and \
                    mesh.color_attributes.active_color.name in new_mesh.color_attributes:
                new_mesh.color_attributes.active_color = \
                    new_mesh.color_attributes[mesh.color_attributes.active_color.name]
        new_obj["close_label"] = piece.label
        new_obj["close_source"] = obj.name
        objects.append(new_obj)
    return objects, left_out


class CLOSE_OT_separate_garments(bpy.types.Operator):
    """Split the segmented scan into one object per class, in a new collection"""

    bl_idname = "close.separate_garments"
    bl_label = "Separate Garments"
    bl_options = {"REGISTER", "UNDO"}

    tidy_borders: bpy.props.BoolProperty(
        name="Tidy Borders",
        description="Give each face to the class most of its corners carry, so every face "
                    "lands in exactly one piece and borders have no single-triangle teeth; "
                    "off: only faces whose corners all agree (mixed faces are left out)",
        default=True)
    keep_original: bpy.props.BoolProperty(
        name="Keep Original",
        description="Keep the scan (hidden, unchanged); off: delete it",
        default=True)
    class_colors: bpy.props.BoolProperty(
        name="Class Colours",
        description="Give each piece a material in its class colour instead of the scan's "
                    "materials",
        default=False)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return active_mesh_in_object_mode(cls, context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        obj = context.active_object
        if obj is None or obj.type != "MESH":
            self.report({"ERROR"}, "Select a segmented scan (a mesh object)")
            return {"CANCELLED"}
        if mesh_labels.read_labels(obj.data) is None:
            self.report({"ERROR"}, f"'{obj.name}' has no CloSe labels: run Segment first")
            return {"CANCELLED"}
        objects, left_out = separate(context, obj, self.tidy_borders, self.class_colors)
        for o in context.selected_objects:
            o.select_set(False)
        for o in objects:
            o.select_set(True)
        if objects:
            context.view_layer.objects.active = objects[0]
        if self.keep_original:
            obj.hide_set(True)
        else:
            mesh = obj.data
            bpy.data.objects.remove(obj)
            if mesh.users == 0:
                bpy.data.meshes.remove(mesh)
        note = f"; {left_out:,} mixed border faces left out" if left_out else ""
        self.report({"INFO"}, f"{len(objects)} pieces: "
                              + ", ".join(o.name for o in objects) + note)
        return {"FINISHED"}


classes = (CLOSE_OT_separate_garments,)
