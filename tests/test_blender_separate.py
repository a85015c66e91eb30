"""close.separate_garments inside real Blender: one object per class, every face in
exactly one piece, attributes / UVs / materials / groups carried over, the original
untouched, and the class-colour and strict-border options."""

from __future__ import annotations

import numpy as np
import pytest
from fake_layout import draw_panel

pytestmark = [pytest.mark.blender]


@pytest.fixture(scope="module")
def synth_scan(tmp_path_factory):
    """A small synthetic scan (PLY, y up) and its npz arrays with true labels."""
    from inference.synth.generator import generate_scan, write_scan

    scan = generate_scan(3, n_points=3000)
    out = tmp_path_factory.mktemp("synth_separate")
    write_scan(out, "scan", scan, mesh_format="ply")
    return out / "scan.ply", scan


def _import_labelled(blender_ext, synth_scan):
    """The scan imported, labelled with its true labels, plus a UV map, two
    materials, a face-varying material index and an artist vertex group."""
    import bpy

    path, scan = synth_scan
    bpy.ops.wm.ply_import(filepath=str(path), forward_axis="NEGATIVE_Z", up_axis="Y")
    obj = bpy.context.selected_objects[0]
    bpy.context.view_layer.objects.active = obj
    mesh = obj.data
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    corner = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("vertex_index", corner)
    uv = mesh.uv_layers.new(name="ScanUV")
    uv.uv.foreach_set("vector", co[corner][:, :2].reshape(-1))
    for name in ("skin_mat", "cloth_mat"):
        mesh.materials.append(bpy.data.materials.get(name) or bpy.data.materials.new(name))
    mesh.polygons.foreach_set("material_index",
                              (np.arange(len(mesh.polygons)) % 2).astype(np.int32))
    obj.vertex_groups.new(name="artist").add([0, 1, 2, 3], 0.25, "REPLACE")
    blender_ext.operators.mesh_labels.write_labels(
        obj, scan["labels"], np.linspace(0.5, 1.0, len(scan["labels"]), dtype=np.float32))
    return obj


def _arrays(obj) -> dict:
    mesh = obj.data
    out = {}
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    out["co"] = co.reshape(-1, 3)
    corner = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("vertex_index", corner)
    out["corner"] = corner
    for name, key, width in (("Col", "color", 4), ("close_label", "value", 1),
                             ("close_confidence", "value", 1), ("ScanUV", "vector", 2),
                             ("material_index", "value", 1), ("custom_normal", "value", 2)):
        attr = mesh.attributes.get(name)
        if attr is None:
            continue
        buf = np.empty(len(attr.data) * width, np.float64)
        attr.data.foreach_get(key, buf)
        out[name] = buf.reshape(len(attr.data), width)
    return out


def _face_label_majority(labels: np.ndarray, corner: np.ndarray) -> np.ndarray:
    tri = labels[corner.reshape(-1, 3)]
    counts = np.stack([(tri == c).sum(1) for c in range(18)], 1)
    return counts.argmax(1)


def test_separate_keeps_every_face_and_attribute(clean_scene, blender_ext, synth_scan) -> None:
    import bpy

    from close_blender.labels import CLASS_NAMES

    assert "UNDO" in bpy.types.CLOSE_OT_separate_garments.bl_options
    obj = _import_labelled(blender_ext, synth_scan)
    before = _arrays(obj)
    labels = before["close_label"][:, 0].astype(int)
    n_faces = len(obj.data.polygons)

    assert bpy.ops.close.separate_garments() == {"FINISHED"}

    coll = bpy.data.collections[f"{obj.name} Garments"]
    pieces = sorted(coll.objects, key=lambda o: o.name)
    face_class = _face_label_majority(labels, before["corner"])
    present = sorted(set(face_class.tolist()))
    assert sorted(o.name for o in pieces) == sorted(f"{obj.name}_{CLASS_NAMES[c]}" for c in present)
    # every face in exactly one piece; border vertices duplicated once per extra piece
    assert sum(len(o.data.polygons) for o in pieces) == n_faces
    face_of_corner = np.repeat(np.arange(n_faces), 3)
    pairs = np.unique(before["corner"] * 32 + face_class[face_of_corner])
    loose = len(before["co"]) - len(np.unique(before["corner"]))  # go to their label's piece
    assert sum(len(o.data.vertices) for o in pieces) == len(pairs) + loose

    # attributes follow their vertices / corners; the vertex position is the key
    index = {tuple(p): i for i, p in enumerate(before["co"].tolist())}
    for piece in pieces:
        after = _arrays(piece)
        src = np.array([index[tuple(p)] for p in after["co"].tolist()])
        c = CLASS_NAMES.index(piece.name.rsplit("_", 1)[1])
        assert piece.matrix_world == obj.matrix_world
        for name in ("Col", "close_label", "close_confidence"):
            assert np.array_equal(after[name], before[name][src]), (piece.name, name)
        # corners: each piece face is a face of the scan with the same UVs, material, normals
        src_corners = src[after["corner"]].reshape(-1, 3)
        faces_of_class = np.flatnonzero(face_class == c)
        key = {tuple(before["corner"].reshape(-1, 3)[f]): f for f in faces_of_class}
        src_faces = np.array([key[tuple(t)] for t in src_corners.tolist()])
        loops = (src_faces[:, None] * 3 + np.arange(3)).reshape(-1)
        assert np.array_equal(after["ScanUV"], before["ScanUV"][loops])
        assert np.array_equal(after["custom_normal"], before["custom_normal"][loops])
        assert np.array_equal(after["material_index"][:, 0], before["material_index"][src_faces, 0])
        assert [m.name for m in piece.data.materials] == ["skin_mat", "cloth_mat"]
        assert piece.data.uv_layers.active.name == "ScanUV"
        groups = {g.name for g in piece.vertex_groups}
        assert "artist" in groups
        assert {g for g in groups if g.startswith("CloSe_")} == {
            f"CloSe_{CLASS_NAMES[k]}" for k in set(after["close_label"][:, 0].astype(int))}

    # the original is untouched and hidden
    after = _arrays(obj)
    for name, data in before.items():
        assert np.array_equal(data, after[name]), name
    assert obj.hide_get()
    assert obj.name in bpy.data.objects


def test_rerun_replaces_pieces_and_class_colours(clean_scene, blender_ext, synth_scan) -> None:
    import bpy

    from close_blender.labels import CLASS_NAMES, PALETTE

    obj = _import_labelled(blender_ext, synth_scan)
    assert bpy.ops.close.separate_garments() == {"FINISHED"}
    first = len(bpy.data.collections[f"{obj.name} Garments"].objects)
    bpy.context.view_layer.objects.active = obj
    obj.hide_set(False)
    assert bpy.ops.close.separate_garments(class_colors=True) == {"FINISHED"}
    coll = bpy.data.collections[f"{obj.name} Garments"]
    assert len(coll.objects) == first  # replaced, not doubled
    for piece in coll.objects:
        cls = piece.name.rsplit("_", 1)[1]
        assert [m.name for m in piece.data.materials] == [f"CloSe_{cls}"]
        srgb = PALETTE[CLASS_NAMES.index(cls)] / 255.0
        linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
        assert np.allclose(piece.data.materials[0].diffuse_color[:3], linear, atol=1e-4)


def _layer(coll):
    import bpy

    def find(layer):
        if layer.collection == coll:
            return layer
        return next((f for c in layer.children if (f := find(c)) is not None), None)

    return find(bpy.context.view_layer.layer_collection)


def test_rerun_into_an_excluded_collection(clean_scene, blender_ext, synth_scan) -> None:
    """The reused "<scan> Garments" collection excluded from the view layer: pieces could
    not be selected, and Blender raised after they were built. Now it is shown again."""
    import bpy

    obj = _import_labelled(blender_ext, synth_scan)
    assert bpy.ops.close.separate_garments() == {"FINISHED"}
    coll = bpy.data.collections[f"{obj.name} Garments"]
    first = sorted(o.name for o in coll.objects)
    _layer(coll).exclude = True
    bpy.context.view_layer.objects.active = obj
    obj.hide_set(False)
    n_meshes = len(bpy.data.meshes)
    assert bpy.ops.close.separate_garments() == {"FINISHED"}
    assert not _layer(coll).exclude
    assert sorted(o.name for o in coll.objects) == first
    assert all(o.select_get() for o in coll.objects)
    assert bpy.context.view_layer.objects.active.name in first
    assert len(bpy.data.meshes) == n_meshes  # old pieces' meshes removed, not orphaned
    # Unlinked from the scene altogether: linked back.
    bpy.context.scene.collection.children.unlink(coll)
    bpy.context.view_layer.objects.active = obj
    obj.hide_set(False)
    assert bpy.ops.close.separate_garments() == {"FINISHED"}
    assert coll.name in bpy.context.scene.collection.children
    assert all(o.select_get() for o in coll.objects)


def test_strict_borders_and_delete_original(clean_scene, blender_ext, synth_scan) -> None:
    import bpy

    obj = _import_labelled(blender_ext, synth_scan)
    name = obj.name
    before = _arrays(obj)
    tri_labels = before["close_label"][:, 0].astype(int)[before["corner"].reshape(-1, 3)]
    pure = (tri_labels == tri_labels[:, :1]).all(1)
    assert bpy.ops.close.separate_garments(tidy_borders=False, keep_original=False) == {"FINISHED"}
    assert name not in bpy.data.objects
    pieces = bpy.data.collections[f"{name} Garments"].objects
    assert sum(len(o.data.polygons) for o in pieces) == int(pure.sum())


def test_needs_labels(clean_scene, blender_ext, synth_scan) -> None:
    import bpy

    path, _ = synth_scan
    bpy.ops.wm.ply_import(filepath=str(path), forward_axis="NEGATIVE_Z", up_axis="Y")
    obj = bpy.context.selected_objects[0]
    bpy.context.view_layer.objects.active = obj
    n_objects = len(bpy.data.objects)
    with pytest.raises(RuntimeError, match="no CloSe labels"):
        bpy.ops.close.separate_garments()
    assert len(bpy.data.objects) == n_objects


def test_handoff_panel(clean_scene, blender_ext, synth_scan) -> None:
    import bpy

    panel = bpy.types.CLOSE_PT_handoff
    assert panel.bl_parent_id == "CLOSE_PT_main" and panel.bl_category == "CloSe"
    _import_labelled(blender_ext, synth_scan)
    ops = draw_panel(blender_ext.panels.handoff.CLOSE_PT_handoff, bpy.context).operators()
    assert ops == ["close.separate_garments", "close.bind_to_body", "close.export_closed",
                   "close.import_closed_labels"]
    for idname in ops:
        module, name = idname.split(".")
        assert hasattr(getattr(bpy.ops, module), name)
