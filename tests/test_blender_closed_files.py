"""CloSe-D files from and to real Blender: the export reads back like the generator's
own npz (points, colours, faces, labels, garments, scale/centers), the CLI tools'
loader accepts it, labels come back only onto the same mesh in the same order, and
a wrong file changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.blender]


@pytest.fixture(scope="module")
def synth_file(tmp_path_factory):
    from inference.synth.generator import generate_scan, write_scan

    scan = generate_scan(5, n_points=2500)
    out = tmp_path_factory.mktemp("synth_closed")
    write_scan(out, "scan", scan, mesh_format="ply")
    return out / "scan.ply", scan


def _import(path):
    import bpy

    bpy.ops.wm.ply_import(filepath=str(path), forward_axis="NEGATIVE_Z", up_axis="Y")
    obj = bpy.context.selected_objects[0]
    bpy.context.view_layer.objects.active = obj
    return obj


def _labels(obj) -> np.ndarray:
    out = np.empty(len(obj.data.vertices), np.int32)
    obj.data.attributes["close_label"].data.foreach_get("value", out)
    return out


def test_export_matches_the_closed_layout(clean_scene, blender_ext, synth_file, tmp_path) -> None:
    import bpy

    from close_blender.scan_io import LABELLED_KEYS, load_scan

    path, scan = synth_file
    obj = _import(path)
    blender_ext.operators.mesh_labels.write_labels(obj, scan["labels"])
    out = tmp_path / "export.npz"
    assert bpy.ops.close.export_closed(filepath=str(out), include_body=False) == {"FINISHED"}
    data = load_scan(out, require=("points", "labels", "garments", "colors", "normals", "faces"))
    assert np.allclose(data["points"], scan["points"], atol=1e-6)
    assert np.isclose(float(data["scale"]), float(scan["scale"]), rtol=1e-6)
    assert np.allclose(data["centers"], scan["centers"], atol=1e-6)
    assert data["colors"].dtype == np.uint8
    assert np.array_equal(data["colors"], scan["colors"])
    assert np.array_equal(data["faces"], scan["faces"])
    assert np.array_equal(data["labels"], scan["labels"])
    assert np.array_equal(data["garments"], scan["garments"])
    assert np.allclose(np.linalg.norm(data["normals"], axis=1), 1.0, atol=1e-4)
    # the CLI's "labelled scan" contract lacks only the body coordinates
    assert set(LABELLED_KEYS) - set(data) == {"canon_pose"}


def test_export_with_body_fit(clean_scene, blender_ext, synth_file, tmp_path) -> None:
    """canon_pose and the body_* keys come from the worker's fit_body job."""
    import bpy

    pytest.importorskip("inference.body.prepare")
    from close_blender.scan_io import LABELLED_KEYS, load_scan

    path, scan = synth_file
    obj = _import(path)
    blender_ext.operators.mesh_labels.write_labels(obj, scan["labels"])
    out = tmp_path / "with_body.npz"
    assert bpy.ops.close.export_closed(filepath=str(out)) == {"FINISHED"}
    data = load_scan(out, require=LABELLED_KEYS)
    assert data["canon_pose"].shape == data["points"].shape
    for key in ("body_model", "body_phenotypes", "body_pose", "body_frame_rotation"):
        assert key in data, key
    # a plausible fit: canonical coordinates near the generator's (clothing shifts some)
    err = np.linalg.norm(data["canon_pose"] - scan["canon_pose"], axis=1)
    assert np.median(err) < 0.1
    # the exported fit binds without fitting again
    assert bpy.ops.close.bind_to_body(fit_file=str(out)) == {"FINISHED"}
    assert bpy.data.objects[f"{obj.name}_rig"].type == "ARMATURE"


def test_labels_round_trip_and_moved_mesh(clean_scene, blender_ext, synth_file, tmp_path) -> None:
    import bpy

    path, scan = synth_file
    obj = _import(path)
    blender_ext.operators.mesh_labels.write_labels(obj, scan["labels"])
    out = tmp_path / "labels.npz"
    assert bpy.ops.close.export_closed(filepath=str(out), include_body=False) == {"FINISHED"}

    fresh = _import(path)
    assert "UNDO" in bpy.types.CLOSE_OT_import_closed_labels.bl_options
    assert bpy.ops.close.import_closed_labels(filepath=str(out)) == {"FINISHED"}
    assert np.array_equal(_labels(fresh), scan["labels"])
    groups = {g.name for g in fresh.vertex_groups}
    assert groups == {f"CloSe_{n}" for n in blender_ext.operators.mesh_labels.present_classes(
        scan["labels"])}
    assert sum(r.count for r in fresh.close_blender.stats) == len(scan["labels"])

    # moved and scaled since the export: same vertices in the same order still match
    moved = _import(path)
    moved.location = (1.0, 2.0, 0.5)
    moved.scale = (1.5, 1.5, 1.5)
    bpy.context.view_layer.update()
    assert bpy.ops.close.import_closed_labels(filepath=str(out)) == {"FINISHED"}
    assert np.array_equal(_labels(moved), scan["labels"])

    # the generator's own npz is a CloSe-D file of the same mesh
    other = _import(path)
    assert bpy.ops.close.import_closed_labels(filepath=str(path.with_suffix(".npz"))) \
        == {"FINISHED"}
    assert np.array_equal(_labels(other), scan["labels"])


def test_wrong_files_change_nothing(clean_scene, blender_ext, synth_file, tmp_path) -> None:
    import bpy

    path, scan = synth_file
    obj = _import(path)
    keys = {k: scan[k] for k in ("points", "labels", "scale", "centers")}

    fewer = tmp_path / "fewer.npz"
    np.savez(fewer, **{**keys, "points": scan["points"][:-5], "labels": scan["labels"][:-5]})
    n = len(scan["points"])
    with pytest.raises(RuntimeError, match=f"{n - 5:,} points but '{obj.name}' has {n:,}"):
        bpy.ops.close.import_closed_labels(filepath=str(fewer))

    rng = np.random.default_rng(0)
    perm = rng.permutation(n)
    shuffled = tmp_path / "shuffled.npz"
    np.savez(shuffled, **{**keys, "points": scan["points"][perm], "labels": scan["labels"][perm]})
    with pytest.raises(RuntimeError, match="largest distance"):
        bpy.ops.close.import_closed_labels(filepath=str(shuffled))

    no_labels = tmp_path / "no_labels.npz"
    np.savez(no_labels, points=scan["points"])
    with pytest.raises(RuntimeError, match="lacks labels"):
        bpy.ops.close.import_closed_labels(filepath=str(no_labels))

    assert "close_label" not in obj.data.attributes
    assert not obj.vertex_groups

    # export refuses vertices without a label
    labels = scan["labels"].copy()
    labels[:3] = -1
    blender_ext.operators.mesh_labels.write_labels(obj, labels)
    out = tmp_path / "partial.npz"
    with pytest.raises(RuntimeError, match="3 of .* have no label"):
        bpy.ops.close.export_closed(filepath=str(out), include_body=False)
    assert not out.exists()


def test_exported_fit_is_a_bind_fit_file(blender_ext, tmp_path) -> None:
    """The body_* keys written from a fit_body answer are what body_rig reads back."""
    from inference.rig_jobs import FIT_KEYS, load_fit_file

    results = {"canon_pose": np.zeros((4, 3), np.float32),
               **{f"param_{k}": np.full(3, i, np.float32) for i, k in enumerate(FIT_KEYS)}}
    fields = {"fit": {"body": "anny", "ok": True, "message": "body fit ok"}}
    arrays = blender_ext.operators.closed_files.fit_arrays(fields, results)
    path = tmp_path / "fit.npz"
    np.savez(path, points=np.zeros((4, 3), np.float32), **arrays)
    fit = load_fit_file(str(path))
    assert fit.body == "anny" and fit.message == "body fit ok"
    for i, k in enumerate(FIT_KEYS):
        assert np.array_equal(fit.params[k], np.full(3, i, np.float32)), k


def test_exported_fit_keeps_text_parameters(blender_ext) -> None:
    """Text parameters of a fit (an SMPL registration's gender) come back as plain fields
    and are stored as ``body_<name>`` beside the numeric ones."""
    results = {"canon_pose": np.zeros((2, 3), np.float32), "param_betas": np.ones(10)}
    fields = {"fit": {"body": "smpl", "ok": True, "message": "ok"},
              "params": {"gender": "female", "scale": 1.0, "betas": "not this one"}}
    arrays = blender_ext.operators.closed_files.fit_arrays(fields, results)
    assert str(arrays["body_gender"]) == "female"
    assert np.array_equal(arrays["body_betas"], np.ones(10))  # numeric array wins
    assert "body_scale" not in arrays  # numbers travel as arrays, not as fields


def test_export_from_the_ui_runs_modal(blender_ext, monkeypatch) -> None:
    """After the file browser Blender calls execute(): from the UI it must start the modal
    job (a body fit takes long), from scripts it runs to completion."""
    import types

    op_cls = blender_ext.operators.closed_files.CLOSE_OT_export_closed
    calls: list[str] = []
    fake = types.SimpleNamespace(start_modal=lambda context: calls.append("modal")
                                 or {"RUNNING_MODAL"})
    monkeypatch.setattr(blender_ext.operators.job_runner.WorkerJobOperator, "execute",
                        lambda self, context: calls.append("blocking") or {"FINISHED"})
    window = types.SimpleNamespace(window=object())
    assert op_cls.execute(fake, window) == {"FINISHED"} and calls == ["blocking"]
    fake._from_ui = True
    assert op_cls.execute(fake, window) == {"RUNNING_MODAL"} and calls[-1] == "modal"


def test_scan_colours_from_attributes(clean_scene, blender_ext) -> None:
    """Scan colours read through mesh_labels.read_color_attribute: sRGB, corner colours
    averaged per vertex, whatever the storage type."""
    import bpy

    bpy.ops.mesh.primitive_plane_add()
    obj = bpy.context.active_object
    mesh = obj.data
    srgb = np.array([[0.2, 0.4, 0.6, 1.0], [0.9, 0.1, 0.5, 1.0], [0.0, 1.0, 0.3, 1.0],
                     [0.7, 0.7, 0.7, 1.0]], np.float32)
    attr = mesh.color_attributes.new("scan_rgb", "FLOAT_COLOR", "POINT")
    attr.data.foreach_set("color_srgb", srgb.ravel())
    mesh.color_attributes.active_color = attr
    scan = blender_ext.operators.scan_data.read_scan(obj, bpy.context)
    assert scan.color_source == "attribute:scan_rgb"
    assert np.allclose(scan.colors, srgb[:, :3], atol=1e-4)  # Blender's sRGB conversion
    mesh.color_attributes.remove(attr)
    corner = mesh.color_attributes.new("scan_bytes", "BYTE_COLOR", "CORNER")
    verts = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("vertex_index", verts)
    corner.data.foreach_set("color_srgb", srgb[verts].ravel())
    mesh.color_attributes.active_color = corner
    scan = blender_ext.operators.scan_data.read_scan(obj, bpy.context)
    assert scan.color_source == "attribute:scan_bytes"
    assert np.allclose(scan.colors, srgb[:, :3], atol=1 / 255)
