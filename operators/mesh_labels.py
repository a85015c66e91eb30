"""Per-vertex CloSe labels on a Blender mesh: reading and writing them fast.

The data contract (issue 7 writes it, the editing tools keep it in agreement):

* ``close_label``        INT point attribute, class index 0..17;
* ``close_confidence``   FLOAT point attribute;
* ``close_label_color``  FLOAT_COLOR point attribute, the class palette
  (``labels.PALETTE`` as sRGB / 255, alpha 1, written through ``color_srgb`` so
  the viewport shows exactly the palette), made the active colour attribute;
* one vertex group ``CloSe_<Class>`` per present class holding exactly the
  vertices of that label with weight 1.0.

Everything goes through ``foreach_get``/``foreach_set`` and per-class index
lists (``VertexGroup.add``), never a Python loop per vertex on the write path.
All functions expect the object in Object mode (``in_object_mode`` helps);
in Edit mode the mesh data is a stale copy of the edit mesh.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import bpy
import numpy as np

from ..close_blender.labels import (
    CLASS_NAMES,
    N_CLASSES,
    UNLABELLED_COLOR,
    class_from_group,
    group_name,
    label_colors,
)
from ..close_blender.mesh_graph import Adjacency

LABEL_ATTR = "close_label"
CONFIDENCE_ATTR = "close_confidence"
COLOR_ATTR = "close_label_color"
OVERLAY_ATTR = "close_label_overlay"  # display-only blend of labels over scan colours
PREDICTED_ATTR = "close_label_predicted"  # what the network said, to know what artists changed



def _palette_rgba() -> np.ndarray:
    """(18, 4) class colours as sRGB floats, alpha 1."""
    return label_colors(np.arange(N_CLASSES), alpha=True)


def _mesh_of(obj_or_mesh: bpy.types.Object | bpy.types.Mesh) -> bpy.types.Mesh:
    if isinstance(obj_or_mesh, bpy.types.Mesh):
        return obj_or_mesh
    if obj_or_mesh is None or obj_or_mesh.type != "MESH":
        raise TypeError("expected a mesh object or a mesh")
    return obj_or_mesh.data


def _object_of(obj_or_mesh: bpy.types.Object | bpy.types.Mesh) -> bpy.types.Object | None:
    """The object for vertex groups: the given one, or the first user of a mesh."""
    if isinstance(obj_or_mesh, bpy.types.Object):
        return obj_or_mesh
    for obj in bpy.data.objects:
        if obj.data == obj_or_mesh:
            return obj
    return None


@contextlib.contextmanager
def in_object_mode(context: bpy.types.Context, obj: bpy.types.Object) -> Iterator[bool]:
    """Leave Edit mode (flushing the edit mesh into the mesh data) for the
    duration of the block and go back to it afterwards. Yields whether the
    object was in Edit mode."""
    was_edit = obj.mode == "EDIT"
    if was_edit:
        with context.temp_override(active_object=obj, object=obj):
            bpy.ops.object.mode_set(mode="OBJECT")
    try:
        yield was_edit
    finally:
        if was_edit:
            with context.temp_override(active_object=obj, object=obj):
                bpy.ops.object.mode_set(mode="EDIT")


def _point_attr(mesh: bpy.types.Mesh, name: str, data_type: str) -> bpy.types.Attribute:
    """The named point attribute of this type, (re)created when absent or different."""
    attr = mesh.attributes.get(name)
    if attr is not None and (attr.domain != "POINT" or attr.data_type != data_type):
        mesh.attributes.remove(attr)
        attr = None
    if attr is None:
        attr = mesh.attributes.new(name, data_type, "POINT")
    return attr


# --- reading ---------------------------------------------------------------------------------

def read_labels(mesh: bpy.types.Mesh) -> np.ndarray | None:
    """``close_label`` as an int64 (V,) array (values outside 0..17 become -1),
    or None when the mesh has no point attribute of that name."""
    mesh = _mesh_of(mesh)
    attr = mesh.attributes.get(LABEL_ATTR)
    n = len(mesh.vertices)
    if attr is None or attr.domain != "POINT":
        return None
    if attr.data_type in ("INT", "INT8", "BOOLEAN"):
        out = np.empty(n, np.int32)
        attr.data.foreach_get("value", out)
    elif attr.data_type == "FLOAT":
        raw = np.empty(n, np.float32)
        attr.data.foreach_get("value", raw)
        out = np.rint(np.nan_to_num(raw, nan=-1.0)).astype(np.int32)
    else:
        return None
    labels = out.astype(np.int64)
    labels[(labels < 0) | (labels >= N_CLASSES)] = -1
    return labels


def read_confidence(mesh: bpy.types.Mesh) -> np.ndarray | None:
    """``close_confidence`` as float32 (V,), or None when absent."""
    mesh = _mesh_of(mesh)
    attr = mesh.attributes.get(CONFIDENCE_ATTR)
    if attr is None or attr.domain != "POINT" or attr.data_type != "FLOAT":
        return None
    out = np.empty(len(mesh.vertices), np.float32)
    attr.data.foreach_get("value", out)
    return out


def read_color_attribute(mesh: bpy.types.Mesh, name: str | None = None) -> np.ndarray | None:
    """(V, 4) float32 sRGB colours in [0, 1] of a colour attribute, or None.

    ``name`` None reads the active colour attribute. FLOAT_COLOR (stored
    linear) and BYTE_COLOR (stored sRGB bytes) both come back as sRGB through
    ``color_srgb``; a face-corner attribute is averaged over each vertex's
    corners (a vertex with no corner reads black, alpha 1).
    """
    mesh = _mesh_of(mesh)
    attr = mesh.color_attributes.get(name) if name else mesh.color_attributes.active_color
    if attr is None or attr.data_type not in ("FLOAT_COLOR", "BYTE_COLOR"):
        return None
    n = len(mesh.vertices)
    if attr.domain == "POINT":
        out = np.empty(n * 4, np.float32)
        attr.data.foreach_get("color_srgb", out)
        return out.reshape(n, 4)
    if attr.domain == "CORNER":
        nc = len(mesh.loops)
        corner = np.empty(nc * 4, np.float32)
        attr.data.foreach_get("color_srgb", corner)
        corner = corner.reshape(nc, 4)
        verts = _corner_verts(mesh)
        count = np.bincount(verts, minlength=n).astype(np.float32)
        out = np.zeros((n, 4), np.float32)
        for k in range(4):
            out[:, k] = np.bincount(verts, weights=corner[:, k], minlength=n)
        has = count > 0
        out[has] /= count[has, None]
        out[~has, 3] = 1.0
        return out
    return None


def read_groups(obj: bpy.types.Object) -> np.ndarray:
    """(V, 18) float32 weights of the ``CloSe_<Class>`` vertex groups (0 where a
    vertex is not in a group, or no group of that class exists)."""
    mesh = _mesh_of(obj)
    n = len(mesh.vertices)
    weights = np.zeros((n, N_CLASSES), np.float32)
    cls_of = {g.index: c for g in obj.vertex_groups
              if (c := class_from_group(g.name)) is not None}
    if not cls_of:
        return weights
    rows, cols, vals = [], [], []
    # no bulk accessor exists for deform weights: one pass over the vertices
    for v in mesh.vertices:
        for ge in v.groups:
            c = cls_of.get(ge.group)
            if c is not None:
                rows.append(v.index)
                cols.append(c)
                vals.append(ge.weight)
    if rows:
        weights[np.asarray(rows), np.asarray(cols)] = np.asarray(vals, np.float32)
    return weights


def read_points(mesh: bpy.types.Mesh) -> np.ndarray:
    """(V, 3) float64 vertex positions in object space."""
    mesh = _mesh_of(mesh)
    out = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", out)
    return out.reshape(-1, 3).astype(np.float64)


def _edge_verts(mesh: bpy.types.Mesh) -> np.ndarray:
    """(E, 2) int32 vertex pairs of the edges (raw layer, fast)."""
    out = np.empty(len(mesh.edges) * 2, np.int32)
    attr = mesh.attributes.get(".edge_verts")
    if attr is not None and attr.data_type == "INT32_2D":
        attr.data.foreach_get("value", out)
    else:
        mesh.edges.foreach_get("vertices", out)
    return out.reshape(-1, 2)


def _corner_verts(mesh: bpy.types.Mesh) -> np.ndarray:
    out = np.empty(len(mesh.loops), np.int32)
    attr = mesh.attributes.get(".corner_vert")
    if attr is not None and attr.data_type == "INT":
        attr.data.foreach_get("value", out)
    else:
        mesh.loops.foreach_get("vertex_index", out)
    return out


def read_adjacency(mesh: bpy.types.Mesh) -> Adjacency:
    """Vertex graph from the mesh edges (polygon sides and loose edges)."""
    mesh = _mesh_of(mesh)
    return Adjacency.from_edges(_edge_verts(mesh), len(mesh.vertices))


_SELECT_LAYERS = ((".select_vert", "POINT"), (".select_edge", "EDGE"), (".select_poly", "FACE"))


def read_selection(mesh: bpy.types.Mesh) -> np.ndarray:
    """(V,) bool vertex selection (as flushed from Edit mode)."""
    mesh = _mesh_of(mesh)
    out = np.zeros(len(mesh.vertices), bool)
    attr = mesh.attributes.get(".select_vert")
    if attr is None:  # nothing selected
        return out
    if attr.data_type == "BOOLEAN" and attr.domain == "POINT":
        attr.data.foreach_get("value", out)
    else:
        mesh.vertices.foreach_get("select", out)
    return out


def write_selection(mesh: bpy.types.Mesh, mask: np.ndarray) -> None:
    """Select exactly the masked vertices (hidden ones never), and the edges
    and faces they span entirely (so Edit mode shows the same selection in
    every select mode).

    Writes the boolean selection layers directly: ``foreach_set("select")``
    on the element collections is ~50x slower. A layer of the wrong type is
    replaced (bpy 5.0.1 can leave a non-boolean ``.select_edge`` after edges
    are computed by from_pydata / update; writing bools into it crashes).
    """
    mesh = _mesh_of(mesh)
    m = np.asarray(mask, bool)
    if m.shape != (len(mesh.vertices),):
        raise ValueError(f"mask has shape {m.shape}, the mesh has {len(mesh.vertices)} vertices")
    hidden = mesh.attributes.get(".hide_vert")
    if hidden is not None and hidden.data_type == "BOOLEAN" and hidden.domain == "POINT":
        hide = np.zeros(len(m), bool)
        hidden.data.foreach_get("value", hide)
        m = m & ~hide
    values = {".select_vert": m}
    if len(mesh.edges):
        values[".select_edge"] = m[_edge_verts(mesh)].all(axis=1)
    if len(mesh.polygons):
        starts = np.empty(len(mesh.polygons), np.int32)
        mesh.polygons.foreach_get("loop_start", starts)
        order = np.argsort(starts, kind="stable")
        face_sel = np.empty(len(starts), bool)
        face_sel[order] = np.logical_and.reduceat(m[_corner_verts(mesh)], starts[order])
        values[".select_poly"] = face_sel
    for name, domain in _SELECT_LAYERS:
        attr = mesh.attributes.get(name)
        if attr is not None and (attr.data_type != "BOOLEAN" or attr.domain != domain):
            mesh.attributes.remove(attr)
            attr = None
        if name not in values:
            continue
        if attr is None:
            attr = mesh.attributes.new(name, "BOOLEAN", domain)
        attr.data.foreach_set("value", values[name])
    mesh.update_tag()


# --- writing ---------------------------------------------------------------------------------

def write_labels(obj_or_mesh: bpy.types.Object | bpy.types.Mesh, labels: np.ndarray,
                 confidence: np.ndarray | None = None) -> None:
    """Write labels in every form of the contract, keeping them in agreement.

    ``close_label`` and ``close_label_color`` always; ``close_confidence`` when
    given (else an existing one stays, a missing one is created at 1.0); the
    ``CloSe_<Class>`` vertex groups are rebuilt (groups of absent classes are
    removed; other vertex groups and the active group stay). For a bare mesh
    the groups go on its first user object, if any. Vertices labelled -1 are
    in no group and show mid grey.
    """
    mesh = _mesh_of(obj_or_mesh)
    n = len(mesh.vertices)
    lab = np.asarray(labels).astype(np.int64)
    if lab.shape != (n,):
        raise ValueError(f"labels have shape {lab.shape}, the mesh has {n} vertices")
    if lab.size and (lab.min() < -1 or lab.max() >= N_CLASSES):
        raise ValueError(f"labels must lie in 0..{N_CLASSES - 1} (or -1 for none)")
    valid = lab >= 0

    _point_attr(mesh, LABEL_ATTR, "INT").data.foreach_set("value", lab.astype(np.int32))

    conf_attr = mesh.attributes.get(CONFIDENCE_ATTR)
    if confidence is not None or conf_attr is None or conf_attr.domain != "POINT" \
            or conf_attr.data_type != "FLOAT":
        conf = np.ones(n, np.float32) if confidence is None else \
            np.asarray(confidence, np.float32).reshape(-1)
        if conf.shape != (n,):
            raise ValueError(f"confidence has shape {conf.shape}, the mesh has {n} vertices")
        _point_attr(mesh, CONFIDENCE_ATTR, "FLOAT").data.foreach_set("value", conf)

    rgba = np.empty((n, 4), np.float32)
    rgba[valid] = _palette_rgba()[lab[valid]]
    rgba[~valid] = (*UNLABELLED_COLOR, 1.0)
    color = _point_attr(mesh, COLOR_ATTR, "FLOAT_COLOR")
    color.data.foreach_set("color_srgb", rgba.reshape(-1))
    mesh.color_attributes.active_color = mesh.color_attributes[COLOR_ATTR]

    obj = _object_of(obj_or_mesh)
    if obj is not None:
        _write_groups(obj, lab, n)
    mesh.update_tag()


def _write_groups(obj: bpy.types.Object, lab: np.ndarray, n: int) -> None:
    groups = obj.vertex_groups
    active = groups.active.name if groups.active is not None else None
    present = np.zeros(N_CLASSES, bool)
    present[np.unique(lab[lab >= 0])] = True
    everything: list[int] | None = None
    for g in list(groups):
        c = class_from_group(g.name)
        if c is None:
            continue
        if not present[c]:
            groups.remove(g)
        else:
            if everything is None:
                everything = list(range(n))
            g.remove(everything)
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(N_CLASSES + 1))
    for c in np.flatnonzero(present):
        name = group_name(int(c))
        g = groups.get(name)
        if g is None:
            g = groups.new(name=name)
        g.add(order[bounds[c]:bounds[c + 1]].tolist(), 1.0, "REPLACE")
    if active is not None and active in groups:
        groups.active_index = groups[active].index


def clear_labels(obj: bpy.types.Object) -> None:
    """Remove the label attributes and the ``CloSe_<Class>`` groups (nothing else)."""
    mesh = _mesh_of(obj)
    for name in (LABEL_ATTR, CONFIDENCE_ATTR, COLOR_ATTR):
        attr = mesh.attributes.get(name)
        if attr is not None:
            mesh.attributes.remove(attr)
    if isinstance(obj, bpy.types.Object):
        for g in list(obj.vertex_groups):
            if class_from_group(g.name) is not None:
                obj.vertex_groups.remove(g)
    mesh.update_tag()


def write_stats(obj: bpy.types.Object, labels: np.ndarray,
                confidence: np.ndarray | None = None) -> None:
    """The per-class result table of the sidebar (``obj.close_blender.stats``): vertices
    and mean confidence per present class (confidence 1 where none is given)."""
    lab = np.asarray(labels, dtype=np.int64)
    valid = (lab >= 0) & (lab < N_CLASSES)
    lab = lab[valid]
    conf = np.ones(len(lab)) if confidence is None else \
        np.asarray(confidence, dtype=np.float64)[valid]
    counts = np.bincount(lab, minlength=N_CLASSES)
    sums = np.bincount(lab, weights=conf, minlength=N_CLASSES)
    stats = obj.close_blender.stats
    stats.clear()
    for i in np.flatnonzero(counts):
        row = stats.add()
        row.index = int(i)
        row.count = int(counts[i])
        row.mean_confidence = float(sums[i] / counts[i])


def present_classes(labels: np.ndarray) -> list[str]:
    """Names of the classes present in a label array, in class order."""
    lab = np.asarray(labels)
    return [CLASS_NAMES[c] for c in np.unique(lab[(lab >= 0) & (lab < N_CLASSES)])]


def scan_color_name(mesh: bpy.types.Mesh, preferred: str = "") -> str | None:
    """Name of the scan's own colour attribute: ``preferred`` if it exists, else
    the active colour attribute unless it is one of ours (label colours,
    overlay), else the first one that is not ours."""
    if preferred and preferred in mesh.color_attributes:
        return preferred
    ours = {COLOR_ATTR, OVERLAY_ATTR}
    active = mesh.color_attributes.active_color
    if active is not None and active.name not in ours:
        return active.name
    for attr in mesh.color_attributes:
        if attr.name not in ours:
            return attr.name
    return None


def write_predicted(mesh: bpy.types.Mesh, labels: np.ndarray) -> None:
    """Keep the network's labels beside ``close_label``, so corrections know what changed."""
    attr = _point_attr(mesh, PREDICTED_ATTR, "INT")
    attr.data.foreach_set("value", np.asarray(labels, dtype=np.int32))


def read_predicted(mesh: bpy.types.Mesh) -> np.ndarray | None:
    """The network's labels of the last segmentation, or None."""
    attr = mesh.attributes.get(PREDICTED_ATTR)
    if attr is None or attr.domain != "POINT" or len(attr.data) != len(mesh.vertices):
        return None
    out = np.empty(len(attr.data), np.int32)
    attr.data.foreach_get("value", out)
    return out.astype(np.int64)
