"""close.segment inside real Blender: labels as attributes and vertex groups, re-runs,
nothing else touched, and bad input that changes nothing."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from conftest import SHARED

pytestmark = [pytest.mark.blender, pytest.mark.slow]

RYOTA = SHARED / "real_inputs" / "pifu_ryota" / "result_ryota.obj"
GARMENTS = "Body,Hoodies,Pants,Shoes,Hair"


@pytest.fixture(scope="module")
def checkpoint(closenet_reference) -> str:
    # Random (untrained) weights of the published layout: enough to drive the pipeline.
    return str(closenet_reference / "closenet.pth")


def _import_obj(path):
    import bpy

    bpy.ops.wm.obj_import(filepath=str(path))
    obj = bpy.context.selected_objects[0]
    bpy.context.view_layer.objects.active = obj
    return obj


_ATTR_LAYOUT = {"FLOAT_COLOR": ("color", 4), "BYTE_COLOR": ("color", 4),
                "FLOAT_VECTOR": ("vector", 3), "FLOAT2": ("vector", 2),
                "QUATERNION": ("value", 4), "INT32_2D": ("value", 2)}


def _snapshot(obj) -> dict:
    """Everything about the object that is not CloSe data."""
    mesh = obj.data
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    attrs = {}
    for attr in mesh.attributes:
        if attr.name.startswith(("close_", ".")):
            continue
        key, width = _ATTR_LAYOUT.get(attr.data_type, ("value", 1))
        buf = np.empty(len(attr.data) * width, np.float64)
        attr.data.foreach_get(key, buf)
        attrs[attr.name] = buf
    groups = {g.name: g.index for g in obj.vertex_groups if not g.name.startswith("CloSe_")}
    return {"co": co, "attrs": attrs, "groups": groups, "matrix": [list(r) for r in obj.matrix_world],
            "name": obj.name, "materials": [m.name if m else None for m in mesh.materials],
            "modifiers": [m.name for m in obj.modifiers], "n_faces": len(mesh.polygons)}


def _assert_same(before: dict, after: dict) -> None:
    assert np.array_equal(before["co"], after["co"])
    assert before["attrs"].keys() == after["attrs"].keys()
    for name, data in before["attrs"].items():
        assert np.array_equal(data, after["attrs"][name]), name
    for key in ("groups", "matrix", "name", "materials", "modifiers", "n_faces"):
        assert before[key] == after[key], key


def _labels_and_groups(obj) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    mesh = obj.data
    n = len(mesh.vertices)
    labels = np.empty(n, np.int32)
    mesh.attributes["close_label"].data.foreach_get("value", labels)
    members: dict[str, list[int]] = {}
    index_to_name = {g.index: g.name for g in obj.vertex_groups if g.name.startswith("CloSe_")}
    for v in mesh.vertices:
        for ge in v.groups:
            name = index_to_name.get(ge.group)
            if name is not None and ge.weight > 0:
                members.setdefault(name, []).append(v.index)
    return labels, {k: np.array(v) for k, v in members.items()}


def _assert_consistent(obj) -> np.ndarray:
    from close_blender.labels import CLASS_NAMES, PALETTE

    labels, groups = _labels_and_groups(obj)
    present = sorted(set(labels.tolist()))
    assert set(groups) == {f"CloSe_{CLASS_NAMES[i]}" for i in present}
    for i in present:
        assert np.array_equal(groups[f"CloSe_{CLASS_NAMES[i]}"], np.flatnonzero(labels == i))
    mesh = obj.data
    colors = np.empty(len(labels) * 4, np.float32)
    mesh.attributes["close_label_color"].data.foreach_get("color_srgb", colors)
    assert np.allclose(colors.reshape(-1, 4)[:, :3], PALETTE[labels] / 255.0, atol=2e-3)
    assert mesh.color_attributes.active_color.name == "close_label_color"
    conf = np.empty(len(labels), np.float32)
    mesh.attributes["close_confidence"].data.foreach_get("value", conf)
    assert ((conf > 0) & (conf <= 1.0 + 1e-6)).all()
    return labels


def test_segment_real_scan_twice_and_nothing_else_changes(clean_scene, checkpoint) -> None:
    import bpy

    from close_blender.labels import garments_from_names

    obj = _import_obj(RYOTA)
    obj.vertex_groups.new(name="artist_group").add([0, 1, 2], 0.5, "REPLACE")
    before = _snapshot(obj)
    assert "UNDO" in bpy.types.CLOSE_OT_segment.bl_options

    assert bpy.ops.close.segment(checkpoint=checkpoint, garments=GARMENTS) == {"FINISHED"}
    labels = _assert_consistent(obj)
    assert len(labels) == len(obj.data.vertices) == 41622
    allowed = np.flatnonzero(garments_from_names(GARMENTS))
    assert np.isin(labels, allowed).all()
    _assert_same(before, _snapshot(obj))
    assert len(obj.close_blender.stats) == len(set(labels.tolist()))

    # A second run replaces the first exactly (same options -> same seed -> same labels).
    assert bpy.ops.close.segment(checkpoint=checkpoint, garments=GARMENTS) == {"FINISHED"}
    labels2 = _assert_consistent(obj)
    assert np.array_equal(labels, labels2)
    # A run with fewer classes removes the groups of classes that are gone.
    assert bpy.ops.close.segment(checkpoint=checkpoint, garments="Body,Pants") == {"FINISHED"}
    labels3 = _assert_consistent(obj)
    assert set(labels3.tolist()) <= {1, 8}
    _assert_same(before, _snapshot(obj))


def _expect_error(op, match: str, **kwargs) -> None:
    with pytest.raises(RuntimeError, match=match):
        op(**kwargs)


def test_bad_input_changes_nothing(clean_scene, checkpoint) -> None:
    import bpy

    # Nothing selected.
    _expect_error(bpy.ops.close.segment, "Nothing selected", checkpoint=checkpoint)
    # A non-mesh.
    empty = bpy.data.objects.new("an_empty", None)
    clean_scene.collection.objects.link(empty)
    bpy.context.view_layer.objects.active = empty
    empty.select_set(True)
    _expect_error(bpy.ops.close.segment, "not a mesh", checkpoint=checkpoint)
    empty.select_set(False)
    # An empty mesh.
    mesh = bpy.data.meshes.new("empty_mesh")
    obj = bpy.data.objects.new("empty_scan", mesh)
    clean_scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    _expect_error(bpy.ops.close.segment, "no vertices", checkpoint=checkpoint)
    # A real scan, no garment ticked.
    scan = _import_obj(RYOTA)
    before = _snapshot(scan)
    settings = clean_scene.close_blender
    settings.auto_garments = False
    saved = list(settings.garments)
    settings.garments = [False] * 18
    try:
        _expect_error(bpy.ops.close.segment, "No garment", checkpoint=checkpoint)
    finally:
        settings.garments = saved
        settings.auto_garments = True
    # A missing checkpoint.
    _expect_error(bpy.ops.close.segment, "No checkpoint file",
                  checkpoint="/nonexistent/model.safetensors", garments=GARMENTS)
    assert "close_label" not in scan.data.attributes
    assert not any(g.name.startswith("CloSe_") for g in scan.vertex_groups)
    _assert_same(before, _snapshot(scan))


def test_worker_killed_mid_job_changes_nothing(clean_scene, checkpoint, blender_ext) -> None:
    import bpy

    scan = _import_obj(RYOTA)
    before = _snapshot(scan)
    session = blender_ext.operators.worker_session
    client = session.get_client()
    client.start()
    killer = threading.Timer(1.5, client.kill)
    killer.start()
    started = time.monotonic()
    try:
        _expect_error(bpy.ops.close.segment, "failed", checkpoint=checkpoint, garments=GARMENTS)
    finally:
        killer.cancel()
    assert time.monotonic() - started < 60
    assert "close_label" not in scan.data.attributes
    _assert_same(before, _snapshot(scan))
    # The next job starts a new worker.
    info = session.get_client().check(timeout=120, torch=False)
    assert info["python"]


class _DoneJob:
    """A finished worker job (for testing what operators do with results)."""

    def __init__(self, fields: dict, arrays: dict) -> None:
        self.fields, self.arrays = fields, arrays
        self.progress = (1.0, "Done")

    def done(self) -> bool:
        return True

    def cancel(self) -> bool:
        return False

    def result(self, timeout=None):
        return self.fields, self.arrays


def _fake_worker(monkeypatch, blender_ext, answer, on_submit=None) -> list:
    """Replace the worker: ``answer(name, params, arrays)`` gives (fields, arrays)."""
    submitted: list = []

    def submit(name, params, arrays, context=None):
        submitted.append((name, params))
        if on_submit is not None:
            on_submit(len(submitted))
        return _DoneJob(*answer(name, params, arrays))

    monkeypatch.setattr(blender_ext.operators.job_runner.worker_session, "submit", submit)
    return submitted


def _segment_answer(name, params, arrays):
    n = len(arrays["vertices"])
    fields = {"garments": ["Body"], "checkpoint": {"path": params["checkpoint"]},
              "fit": {"ok": True, "message": "fit ok"}}
    return fields, {"labels": np.ones(n, np.int64), "confidence": np.full(n, 0.5, np.float32)}


def _cubes(n: int) -> list:
    import bpy

    objs = []
    for i in range(n):
        bpy.ops.mesh.primitive_cube_add(location=(3 * i, 0, 0))
        objs.append(bpy.context.active_object)
    for o in objs:
        o.select_set(True)
    return objs


def test_several_objects_written_all_or_none(clean_scene, blender_ext, monkeypatch) -> None:
    """An object renamed, deleted or edited while the jobs ran: nothing is written to any
    (before, the earlier objects were labelled and the operator still said CANCELLED)."""
    import bmesh
    import bpy

    a, b = _cubes(2)

    def edit_b(count: int) -> None:  # the user edits b while the jobs run
        if count == 2:
            bm = bmesh.new()
            bm.from_mesh(b.data)
            bm.verts.ensure_lookup_table()
            bmesh.ops.delete(bm, geom=[bm.verts[0]], context="VERTS")
            bm.to_mesh(b.data)
            bm.free()

    _fake_worker(monkeypatch, blender_ext, _segment_answer, edit_b)
    _expect_error(bpy.ops.close.segment, "vertices now but 8", checkpoint="default",
                  garments="Body")
    assert "close_label" not in a.data.attributes and "close_label" not in b.data.attributes
    assert len(a.close_blender.stats) == 0

    def rename_a(count: int) -> None:
        if count == 2:
            a.name = "renamed"

    a.name, b.name = "a", "b"
    _fake_worker(monkeypatch, blender_ext, _segment_answer, rename_a)
    b.select_set(True)
    a.select_set(True)
    _expect_error(bpy.ops.close.segment, "renamed or deleted", checkpoint="default",
                  garments="Body")
    assert not any("close_label" in o.data.attributes for o in bpy.data.objects)

    # Both unchanged: both written, each with its table.
    _fake_worker(monkeypatch, blender_ext, _segment_answer)
    assert bpy.ops.close.segment(checkpoint="default", garments="Body") == {"FINISHED"}
    for o in (a, b):
        assert "close_label" in o.data.attributes
        assert [(r.index, r.count) for r in o.close_blender.stats] == [(1, len(o.data.vertices))]
        assert o.close_blender.stats[0].mean_confidence == pytest.approx(0.5)


def test_unexpected_failure_while_writing_is_reported(clean_scene, blender_ext,
                                                      monkeypatch, capsys) -> None:
    import bpy

    (cube,) = _cubes(1)

    def broken(name, params, arrays):
        fields, out = _segment_answer(name, params, arrays)
        del out["confidence"]
        return fields, out

    _fake_worker(monkeypatch, blender_ext, broken)
    _expect_error(bpy.ops.close.segment, "failed while writing the result: KeyError",
                  checkpoint="default", garments="Body")
    assert "Traceback" in capsys.readouterr().out


def test_show_fitted_body_reuses_its_object(clean_scene, blender_ext, monkeypatch) -> None:
    """Run twice, its collection excluded in between: one body object, no orphan mesh."""
    import bpy

    (cube,) = _cubes(1)

    def fit(name, params, arrays):
        assert name == "fit_body"
        verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
        return ({"fit": {"ok": True, "message": "fit ok"}},
                {"body_vertices": verts, "body_faces": np.array([[0, 1, 2]])})

    _fake_worker(monkeypatch, blender_ext, fit)
    assert bpy.ops.close.fit_body() == {"FINISHED"}
    body = bpy.data.objects[f"{cube.name}_body"]
    bodies = bpy.data.collections["CloSe Bodies"]
    bpy.context.view_layer.layer_collection.children[bodies.name].exclude = True
    orphans = sum(1 for m in bpy.data.meshes if m.users == 0)
    assert bpy.ops.close.fit_body() == {"FINISHED"}
    assert not bpy.context.view_layer.layer_collection.children[bodies.name].exclude
    assert [o.name for o in bpy.data.objects if o.name.startswith(f"{cube.name}_body")] \
        == [body.name]
    assert sum(1 for m in bpy.data.meshes if m.users == 0) == orphans
    assert body.close_blender.body_fit == cube.close_blender.body_fit == "fit ok"


def test_blend_relative_checkpoint_is_sent_absolute(clean_scene, blender_ext, monkeypatch,
                                                    tmp_path, checkpoint) -> None:
    """A ``//`` path is relative to the .blend; the worker runs elsewhere, so it must get
    the absolute path (it got '/models/...' before)."""
    import os
    import shutil
    from pathlib import Path

    import bpy

    current = blender_ext.panels.preferences.current_checkpoint
    models = tmp_path / "models"
    models.mkdir()
    for suffix in (".pth", "_cfg.yaml"):
        shutil.copy(Path(checkpoint).with_name(f"closenet{suffix}"), models)
    (cube,) = _cubes(1)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"), check_existing=False)
    settings = clean_scene.close_blender
    settings.checkpoint = "//models/closenet.pth"
    try:
        expected = str(models / "closenet.pth")
        assert current(bpy.context) == expected
        assert current(bpy.context, "default") == "default"  # names stay names
        assert current(bpy.context, "rel/x.pth") == os.path.abspath("rel/x.pth")
        submitted = _fake_worker(monkeypatch, blender_ext, _segment_answer)
        assert bpy.ops.close.segment(garments="Body") == {"FINISHED"}
        assert submitted[-1][1]["checkpoint"] == expected
        assert cube.close_blender.checkpoint == expected
        settings.checkpoint = "//models/missing.pth"
        _expect_error(bpy.ops.close.segment,
                      re.escape(f"No checkpoint file at {models / 'missing.pth'}"),
                      garments="Body")
    finally:
        settings.checkpoint = ""


def test_poll_says_why_in_edit_mode(clean_scene, blender_ext) -> None:
    import bpy

    (cube,) = _cubes(1)
    messages: list[str] = []
    fake = type("Op", (), {"poll_message_set": staticmethod(messages.append)})
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        for op in (bpy.types.CLOSE_OT_segment, bpy.types.CLOSE_OT_fit_body,
                   bpy.types.CLOSE_OT_export_closed, bpy.types.CLOSE_OT_save_correction,
                   bpy.types.CLOSE_OT_separate_garments):
            assert op.poll.__func__(fake, bpy.context) is False, op
            assert "Object Mode" in messages.pop(), op
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
    assert bpy.types.CLOSE_OT_segment.poll.__func__(fake, bpy.context) is True
    bpy.context.view_layer.objects.active = None
    assert bpy.types.CLOSE_OT_export_closed.poll.__func__(fake, bpy.context) is False
    assert "mesh" in messages.pop()
