"""Labels on a real Blender mesh: attributes, palette colours and CloSe_<Class> groups agree."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from test_mesh_graph import grid_mesh

from close_blender.labels import N_CLASSES, PALETTE, class_index, group_name

pytestmark = pytest.mark.blender

SHIRT, JACKET, BODY = (class_index(n) for n in ("Shirt", "Jacket", "Body"))


@pytest.fixture
def ml(blender_ext):
    return importlib.import_module(blender_ext.__name__ + ".operators.mesh_labels")


def make_object(w: int = 12, h: int = 10, name: str = "Scan"):
    """A grid mesh object linked to the scene and made active."""
    import bpy

    points, faces = grid_mesh(w, h)
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(points.tolist(), [], faces.tolist())
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj


def group_members(obj) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {g.name: set() for g in obj.vertex_groups}
    names = {g.index: g.name for g in obj.vertex_groups}
    for v in obj.data.vertices:
        for ge in v.groups:
            out[names[ge.group]].add(v.index)
            assert ge.weight == 1.0 or not names[ge.group].startswith("CloSe_")
    return out


def check_contract(ml, obj, labels: np.ndarray) -> None:
    mesh = obj.data
    assert np.array_equal(ml.read_labels(mesh), labels)
    assert mesh.attributes["close_label"].data_type == "INT"
    assert mesh.attributes["close_label"].domain == "POINT"
    assert mesh.attributes["close_confidence"].data_type == "FLOAT"
    color = mesh.attributes["close_label_color"]
    assert (color.data_type, color.domain) == ("FLOAT_COLOR", "POINT")
    assert mesh.color_attributes.active_color_name == "close_label_color"
    rgba = ml.read_color_attribute(mesh, "close_label_color")
    assert np.allclose(rgba[:, :3], PALETTE[labels] / 255.0, atol=1e-3)  # sRGB round trip
    assert np.allclose(rgba[:, 3], 1.0)
    members = group_members(obj)
    closes = {k: v for k, v in members.items() if k.startswith("CloSe_")}
    assert set(closes) == {group_name(c) for c in np.unique(labels)}
    for c in np.unique(labels):
        assert closes[group_name(c)] == set(np.flatnonzero(labels == c).tolist())
    w = ml.read_groups(obj)
    assert w.shape == (len(labels), N_CLASSES)
    assert np.array_equal(w.argmax(1), labels) and np.array_equal(w.sum(1), np.ones(len(labels)))


def test_write_read_round_trip_and_rewrite(ml, clean_scene) -> None:
    obj = make_object()
    n = len(obj.data.vertices)
    other = obj.vertex_groups.new(name="Spine")
    other.add([0, 1, 2], 0.25, "REPLACE")
    labels = np.full(n, BODY)
    labels[:30] = SHIRT
    conf = np.linspace(0, 1, n).astype(np.float32)
    ml.write_labels(obj, labels, confidence=conf)
    check_contract(ml, obj, labels)
    assert np.allclose(ml.read_confidence(obj.data), conf)
    # rewrite: Shirt disappears, Jacket appears; confidence left as it was
    obj.vertex_groups.active_index = other.index
    labels2 = labels.copy()
    labels2[:30] = JACKET
    labels2[50:55] = SHIRT - 0  # Shirt stays present, elsewhere
    ml.write_labels(obj, labels2)
    check_contract(ml, obj, labels2)
    assert np.allclose(ml.read_confidence(obj.data), conf)
    assert obj.vertex_groups.active.name == "Spine"
    spine = group_members(obj)["Spine"]
    assert spine == {0, 1, 2}
    assert obj.vertex_groups["Spine"].weight(1) == pytest.approx(0.25)
    labels3 = np.full(n, BODY)
    ml.write_labels(obj, labels3)
    check_contract(ml, obj, labels3)


def test_write_on_bare_mesh_and_bad_input(ml, clean_scene) -> None:
    obj = make_object()
    n = len(obj.data.vertices)
    labels = np.arange(n) % 3
    ml.write_labels(obj.data, labels)  # the groups go on the mesh's object
    check_contract(ml, obj, labels)
    with pytest.raises(ValueError):
        ml.write_labels(obj, labels[:-1])
    with pytest.raises(ValueError):
        ml.write_labels(obj, labels + 20)


def test_clear_labels_keeps_other_data(ml, clean_scene) -> None:
    obj = make_object()
    obj.vertex_groups.new(name="Keep")
    obj.data.attributes.new("my_attr", "FLOAT", "POINT")
    ml.write_labels(obj, np.zeros(len(obj.data.vertices), np.int64))
    ml.clear_labels(obj)
    assert ml.read_labels(obj.data) is None
    assert "close_label_color" not in obj.data.attributes
    assert [g.name for g in obj.vertex_groups] == ["Keep"]
    assert "my_attr" in obj.data.attributes


def test_read_labels_other_types_and_missing(ml, clean_scene) -> None:
    obj = make_object(3, 3)
    assert ml.read_labels(obj.data) is None
    assert ml.read_color_attribute(obj.data, "nope") is None
    attr = obj.data.attributes.new("close_label", "FLOAT", "POINT")
    attr.data.foreach_set("value", np.array([0, 1, 2, 2.0, 17, 18, -3, 5, 1], np.float32))
    assert ml.read_labels(obj.data).tolist() == [0, 1, 2, 2, 17, -1, -1, 5, 1]
    # a wrongly typed attribute is replaced on write
    ml.write_labels(obj, np.ones(9, np.int64))
    assert obj.data.attributes["close_label"].data_type == "INT"


def test_read_color_attribute_corner_and_byte(ml, clean_scene) -> None:
    obj = make_object(3, 2)  # 6 vertices, 4 triangles
    mesh = obj.data
    nc = len(mesh.loops)
    verts = np.empty(nc, np.int32)
    mesh.loops.foreach_get("vertex_index", verts)
    # corner colours: vertex v's corners all carry (v / 10, 0.5, 0.25, 1) in sRGB
    want = np.stack([np.arange(6) / 10, np.full(6, 0.5), np.full(6, 0.25), np.ones(6)], 1)
    corner = mesh.color_attributes.new("corner_col", "BYTE_COLOR", "CORNER")
    corner.data.foreach_set("color_srgb", want[verts].astype(np.float32).reshape(-1))
    got = ml.read_color_attribute(mesh, "corner_col")
    assert np.allclose(got, want, atol=1 / 255)
    point = mesh.color_attributes.new("point_col", "FLOAT_COLOR", "POINT")
    point.data.foreach_set("color_srgb", want.astype(np.float32).reshape(-1))
    assert np.allclose(ml.read_color_attribute(mesh, "point_col"), want, atol=1e-3)
    mesh.color_attributes.active_color = point
    assert np.allclose(ml.read_color_attribute(mesh), want, atol=1e-3)


def test_selection_and_graph_helpers(ml, clean_scene) -> None:
    obj = make_object(4, 4)
    mesh = obj.data
    mask = np.zeros(16, bool)
    mask[[0, 1, 4, 5]] = True  # one grid square = two triangles
    ml.write_selection(mesh, mask)
    assert np.array_equal(ml.read_selection(mesh), mask)
    sel_faces = np.empty(len(mesh.polygons), bool)
    mesh.polygons.foreach_get("select", sel_faces)
    assert sel_faces.sum() == 2
    mesh.vertices[1].hide = True  # hidden vertices are never selected
    ml.write_selection(mesh, mask)
    assert np.flatnonzero(ml.read_selection(mesh)).tolist() == [0, 4, 5]
    mesh.polygons.foreach_get("select", sel_faces)
    assert sel_faces.sum() == 1
    mesh.vertices[1].hide = False
    ml.write_selection(mesh, np.zeros(16, bool))
    assert not ml.read_selection(mesh).any()
    adj = ml.read_adjacency(mesh)
    assert adj.neighbors(0).tolist() == [1, 4, 5]
    assert ml.read_points(mesh).shape == (16, 3)


@pytest.mark.slow
def test_100k_vertices_six_classes(ml, clean_scene) -> None:
    """Correct on a scan-sized mesh (speed is measured in benchmarks/, not asserted)."""
    obj = make_object(320, 320)
    n = len(obj.data.vertices)
    labels = (np.arange(n) // 1000) % 6 * 3
    ml.write_labels(obj, labels)
    assert np.array_equal(ml.read_labels(obj.data), labels)
    w = ml.read_groups(obj)
    assert np.array_equal(w.argmax(1), labels)
    labels[::7] = JACKET
    ml.write_labels(obj, labels)
    assert np.array_equal(ml.read_groups(obj).argmax(1), labels)
    assert {g.name for g in obj.vertex_groups} == {group_name(c) for c in np.unique(labels)}
