"""Label-editing operators inside real Blender: each one changes only Blender data,
keeps labels, colours and CloSe groups in agreement, and is undoable (UNDO flag)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from test_mesh_labels import check_contract, make_object

from close_blender.labels import PALETTE, class_index

pytestmark = pytest.mark.blender

SHIRT, JACKET, BODY, PANTS, HAT = (class_index(n) for n in ("Shirt", "Jacket", "Body", "Pants", "Hat"))


@pytest.fixture(scope="module")
def ops(blender_ext):
    """The editing operators module; the extension registers its classes."""
    import bpy

    mod = importlib.import_module(blender_ext.__name__ + ".operators.editing")
    for cls in mod.classes:
        assert hasattr(bpy.types, cls.__name__), f"{cls.__name__} is not registered"
    return mod


@pytest.fixture
def ml(blender_ext):
    return importlib.import_module(blender_ext.__name__ + ".operators.mesh_labels")


@pytest.fixture
def scan(ml, ops, clean_scene):
    """A 12 x 10 grid: left half Body, right half Shirt, one Hat vertex island."""
    obj = make_object(12, 10)
    n = len(obj.data.vertices)
    xs = np.arange(n) % 12
    labels = np.where(xs < 6, BODY, SHIRT)
    labels[5 * 12 + 9] = HAT
    conf = np.full(n, 0.5, np.float32)
    ml.write_labels(obj, labels, confidence=conf)
    return obj


def select(ml, obj, idx) -> None:
    mask = np.zeros(len(obj.data.vertices), bool)
    mask[idx] = True
    ml.write_selection(obj.data, mask)


def test_every_operator_is_undoable_and_described(ops) -> None:
    import bpy

    assert len(ops.classes) == len({c.bl_idname for c in ops.classes})
    for cls in ops.classes:
        assert cls.bl_options >= {"REGISTER", "UNDO"}, cls.bl_idname
        assert cls.bl_description, cls.bl_idname
        rna = getattr(bpy.ops.close, cls.bl_idname.split(".")[1]).get_rna_type()
        for prop in rna.properties:
            if prop.identifier != "rna_type":
                assert prop.description, f"{cls.bl_idname}.{prop.identifier}"


def test_assign_label_in_edit_mode(ml, scan) -> None:
    import bpy

    select(ml, scan, [0, 1, 2, 100])
    bpy.ops.object.mode_set(mode="EDIT")
    assert bpy.ops.close.assign_label(label="Jacket") == {"FINISHED"}
    assert scan.mode == "EDIT"
    bpy.ops.object.mode_set(mode="OBJECT")
    labels = ml.read_labels(scan.data)
    assert labels[[0, 1, 2, 100]].tolist() == [JACKET] * 4
    check_contract(ml, scan, labels)
    conf = ml.read_confidence(scan.data)
    assert conf[[0, 1, 2, 100]].tolist() == [1.0] * 4 and conf[3] == 0.5


def test_assign_needs_selection_and_labels_from_scratch(ml, ops, clean_scene) -> None:
    import bpy

    obj = make_object(4, 4)
    select(ml, obj, [])
    # an ERROR report cancels the operator; called from Python it raises
    with pytest.raises(RuntimeError, match="no vertex is selected"):
        bpy.ops.close.assign_label(label="Hat")
    assert ml.read_labels(obj.data) is None
    select(ml, obj, [0])
    with pytest.raises(RuntimeError, match="has no CloSe labels"):
        bpy.ops.close.majority_vote()
    select(ml, obj, [0, 5])
    assert bpy.ops.close.assign_label(label="Hat") == {"FINISHED"}
    labels = ml.read_labels(obj.data)
    assert labels[[0, 5]].tolist() == [HAT, HAT] and (np.delete(labels, [0, 5]) == -1).all()
    assert [g.name for g in obj.vertex_groups] == ["CloSe_Hat"]


def test_majority_replace_smooth_islands(ml, scan) -> None:
    import bpy

    n = len(scan.data.vertices)
    select(ml, scan, [4, 5, 6, 7, 8])  # 2 Body, 3 Shirt
    assert bpy.ops.close.majority_vote() == {"FINISHED"}
    labels = ml.read_labels(scan.data)
    assert labels[[4, 5, 6, 7, 8]].tolist() == [SHIRT] * 5
    assert bpy.ops.close.replace_label(from_label="Shirt", to_label="Pants") == {"FINISHED"}
    labels = ml.read_labels(scan.data)
    assert SHIRT not in labels and PANTS in labels
    check_contract(ml, scan, labels)
    assert bpy.ops.close.remove_islands(min_size=3) == {"FINISHED"}
    labels = ml.read_labels(scan.data)
    assert HAT not in labels and labels[5 * 12 + 9] == PANTS
    assert "CloSe_Hat" not in scan.vertex_groups
    assert bpy.ops.close.smooth_labels(iterations=3) == {"FINISHED"}
    labels = ml.read_labels(scan.data)
    assert labels[4] == BODY  # the notch from the majority vote partly smoothed away
    check_contract(ml, scan, labels)
    assert len(labels) == n


def test_selection_tools(ml, scan) -> None:
    import bpy

    assert bpy.ops.close.select_label(label="Hat") == {"FINISHED"}
    assert np.flatnonzero(ml.read_selection(scan.data)).tolist() == [5 * 12 + 9]
    assert bpy.ops.close.select_label(label="Body", extend=True) == {"FINISHED"}
    assert ml.read_selection(scan.data).sum() == 61
    select(ml, scan, [0])
    bpy.ops.object.mode_set(mode="EDIT")
    assert bpy.ops.close.grow_selection(mode="SAME_LABEL") == {"FINISHED"}
    bpy.ops.object.mode_set(mode="OBJECT")
    sel = ml.read_selection(scan.data)
    assert np.array_equal(sel, ml.read_labels(scan.data) == BODY)
    select(ml, scan, [0])
    assert bpy.ops.close.grow_selection(mode="RADIUS", radius=1.0) == {"FINISHED"}
    assert np.flatnonzero(ml.read_selection(scan.data)).tolist() == [0, 1, 12]


def test_select_by_color(ml, scan) -> None:
    import bpy

    mesh = scan.data
    n = len(mesh.vertices)
    col = np.tile(np.array([0.2, 0.3, 0.4, 1.0], np.float32), (n, 1))
    col[np.arange(n) % 12 >= 8] = (0.9, 0.1, 0.1, 1.0)
    attr = mesh.color_attributes.new("Col", "BYTE_COLOR", "POINT")
    attr.data.foreach_set("color_srgb", col.reshape(-1))
    select(ml, scan, [0])
    assert bpy.ops.close.select_by_color(tolerance=0.05) == {"FINISHED"}
    assert np.array_equal(ml.read_selection(mesh), np.arange(n) % 12 < 8)
    select(ml, scan, [0, 11])  # one vertex of each colour: any-seed matching takes both
    assert bpy.ops.close.select_by_color(tolerance=0.05, match="ANY", connected=False) == {"FINISHED"}
    assert ml.read_selection(mesh).all()
    # the labels' own colour attribute is never taken for the scan's colours
    assert mesh.color_attributes.active_color_name == "close_label_color"


def test_paint_and_sync_round_trip(ml, ops, scan) -> None:
    import bpy

    assert bpy.ops.close.paint_labels(label="Jacket") == {"FINISHED"}
    assert scan.mode == "VERTEX_PAINT"
    vp = bpy.context.scene.tool_settings.vertex_paint
    assert vp.palette.name == ops.PALETTE_NAME and len(vp.palette.colors) == 18
    from mathutils import Color

    def shown(struct) -> np.ndarray:  # the colour as the user sees it, sRGB
        c = Color(struct.color)
        if struct.bl_rna.properties["color"].subtype != "COLOR_GAMMA":
            c = c.from_scene_linear_to_srgb()
        return np.array(c)

    assert np.allclose(shown(vp.palette.colors[HAT]), PALETTE[HAT] / 255.0, atol=2e-3)
    assert np.allclose(shown(vp.unified_paint_settings), PALETTE[JACKET] / 255.0, atol=2e-3)
    bpy.ops.object.mode_set(mode="OBJECT")
    mesh = scan.data
    before = ml.read_labels(mesh)
    # "paint": two vertices Jacket (one with a soft-brush blend), one Pants
    rgba = ml.read_color_attribute(mesh, "close_label_color")
    rgba[0, :3] = PALETTE[JACKET] / 255.0
    rgba[1, :3] = 0.9 * PALETTE[JACKET] / 255.0 + 0.1 * PALETTE[BODY] / 255.0
    rgba[119, :3] = PALETTE[PANTS] / 255.0
    mesh.attributes["close_label_color"].data.foreach_set("color_srgb", rgba.reshape(-1))
    bpy.ops.object.mode_set(mode="VERTEX_PAINT")
    assert bpy.ops.close.sync_from_paint() == {"FINISHED"}
    bpy.ops.object.mode_set(mode="OBJECT")
    labels = ml.read_labels(mesh)
    want = before.copy()
    want[[0, 1]] = JACKET
    want[119] = PANTS
    assert np.array_equal(labels, want)
    check_contract(ml, scan, labels)  # colours snapped back to exact class colours


def test_groups_sync_round_trip(ml, scan) -> None:
    import bpy

    before = ml.read_labels(scan.data)
    jacket = scan.vertex_groups.new(name="CloSe_Jacket")
    jacket.add([0, 1], 1.0, "REPLACE")            # ties with Body -> Jacket
    jacket.add([2], 0.3, "REPLACE")               # lower than Body -> stays Body
    scan.vertex_groups["CloSe_Body"].remove([3])  # in no group -> keeps Body
    scan.vertex_groups["CloSe_Shirt"].add([4], 1.0, "REPLACE")  # Body + Shirt tie -> Shirt
    bpy.ops.object.mode_set(mode="WEIGHT_PAINT")  # where weight-painting users call it
    assert bpy.ops.close.sync_from_groups() == {"FINISHED"}
    assert scan.mode == "WEIGHT_PAINT"
    bpy.ops.object.mode_set(mode="OBJECT")
    labels = ml.read_labels(scan.data)
    want = before.copy()
    want[[0, 1]] = JACKET
    want[4] = SHIRT
    assert np.array_equal(labels, want)
    check_contract(ml, scan, labels)


def test_label_overlay_is_display_only(ml, scan) -> None:
    import bpy

    before = ml.read_labels(scan.data)
    assert bpy.ops.close.label_overlay(strength=1.0) == {"FINISHED"}
    mesh = scan.data
    assert mesh.color_attributes.active_color_name == "close_label_overlay"
    over = ml.read_color_attribute(mesh, "close_label_overlay")
    assert np.allclose(over[:, :3], PALETTE[before] / 255.0, atol=1e-3)
    assert np.array_equal(ml.read_labels(mesh), before)
    # an edit while the overlay is shown refreshes it and keeps it shown
    select(ml, scan, [0])
    assert bpy.ops.close.assign_label(label="Jacket") == {"FINISHED"}
    assert mesh.color_attributes.active_color_name == "close_label_overlay"
    over = ml.read_color_attribute(mesh, "close_label_overlay")
    assert np.allclose(over[0, :3], PALETTE[JACKET] / 255.0, atol=1e-3)
    assert bpy.ops.close.paint_labels() == {"FINISHED"}  # paints the labels, not the overlay
    assert mesh.color_attributes.active_color_name == "close_label_color"
    bpy.ops.object.mode_set(mode="OBJECT")
