"""Every panel and the preferences draw without errors, in this Blender and in the oldest
one the manifest claims, against a layout stand-in that checks every call."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from fake_layout import FakeLayout, draw_all, draw_panel, panel_classes

from conftest import ADDON_MODULE, REPO

pytestmark = pytest.mark.blender

OLDEST_PYTHON = REPO / ".venv-blender42" / "bin" / "python"


def test_fake_layout_rejects_what_blender_would(blender_ext) -> None:
    import bpy

    layout = FakeLayout()
    row = layout.row(align=True)
    row.enabled = False
    row.label(text="fine", icon="INFO")
    assert layout.labels() == ["fine"] and row.enabled is False
    with pytest.raises(AttributeError):
        layout.lable(text="typo")
    with pytest.raises(AttributeError):
        layout.enabeld = True
    with pytest.raises(TypeError, match="icon"):
        layout.label(text="x", icon="NOT_AN_ICON")
    with pytest.raises(TypeError, match="keyword"):
        layout.label(txt="x")
    with pytest.raises(AttributeError, match="no property"):
        layout.prop(bpy.context.scene.close_blender, "no_such_setting")
    with pytest.raises(AssertionError, match="unregistered"):
        layout.operator("close.no_such_operator")
    op = layout.operator("close.remove_correction")
    op.index = -1
    with pytest.raises(AttributeError):
        op.no_such_option = 1


def _labelled_cube(blender_ext):
    import bpy

    bpy.ops.mesh.primitive_cube_add()
    obj = bpy.context.active_object
    labels = np.arange(len(obj.data.vertices)) % 3
    blender_ext.operators.mesh_labels.write_labels(obj, labels)
    blender_ext.operators.mesh_labels.write_stats(obj, labels)
    obj.close_blender.body_fit = "body fit ok"
    obj.close_blender.checkpoint = "/models/x.safetensors"
    return obj


def test_every_panel_draws(clean_scene, blender_ext) -> None:
    import bpy

    context = bpy.context
    prefs = context.preferences.addons[ADDON_MODULE].preferences
    settings = clean_scene.close_blender
    names = {c.__name__ for c in panel_classes(blender_ext)}
    assert {"ClosePreferences", "CLOSE_PT_main", "CLOSE_PT_model", "CLOSE_PT_garments",
            "CLOSE_PT_body", "CLOSE_PT_result", "CLOSE_PT_fix_labels", "CLOSE_PT_handoff",
            "CLOSE_PT_corrections"} <= names
    drawn: set[str] = set()

    # Nothing selected: the sidebar asks for a scan; panels needing a mesh do not draw.
    layouts = draw_all(blender_ext, context)
    drawn |= {n for n, lay in layouts.items() if lay is not None}
    assert "Select a scan (a mesh object)" in layouts["CLOSE_PT_main"].labels()
    assert layouts["CLOSE_PT_result"] is None and layouts["CLOSE_PT_fix_labels"] is None

    # A labelled mesh, every option that changes what is drawn switched on.
    _labelled_cube(blender_ext)
    old = (prefs.python_source, prefs.python_path, prefs.last_check, settings.body_source,
           settings.auto_garments, settings.checkpoint)
    try:
        prefs.python_source = "CUSTOM"
        prefs.last_check = "Python 3.11\ntorch missing; devices: cpu\nAll packages present"
        settings.body_source = "SMPL"
        settings.auto_garments = False
        context.window_manager.close_blender_status = "CloSe: cube: Segmenting (40%)"
        layouts = draw_all(blender_ext, context)
        drawn |= {n for n, lay in layouts.items() if lay is not None}
        main = layouts["CLOSE_PT_main"]
        assert "CloSe: cube: Segmenting (40%)" in main.labels()
        assert main.operators()[:2] == ["close.segment", "close.cancel"]
        assert "python_path" in layouts["ClosePreferences"].props()
        assert "torch missing; devices: cpu" in layouts["ClosePreferences"].labels()
        assert {"smpl_model_dir", "smpl_registration"} <= set(layouts["CLOSE_PT_body"].props())
        assert "body fit ok" in layouts["CLOSE_PT_body"].labels()
        assert "Model: /models/x.safetensors" in layouts["CLOSE_PT_result"].labels()
        assert layouts["CLOSE_PT_garments"].props().count("garments") == 18
        # The scene's checkpoint field set: no "Using:" line.
        settings.checkpoint = "default"
        model = draw_panel(bpy.types.CLOSE_PT_model, context)
        assert not any(t.startswith("Using:") for t in model.labels())
    finally:
        (prefs.python_source, prefs.python_path, prefs.last_check, settings.body_source,
         settings.auto_garments, settings.checkpoint) = old
        context.window_manager.close_blender_status = ""
    assert drawn == names


def test_status_is_not_saved_in_the_blend(clean_scene, blender_ext, tmp_path) -> None:
    """The live status lives on the window manager, which a .blend does not keep."""
    import bpy

    assert "status" not in clean_scene.close_blender.bl_rna.properties
    wm = bpy.context.window_manager
    wm.close_blender_status = "CloSe: working"
    try:
        assert "CloSe: working" in draw_panel(bpy.types.CLOSE_PT_main, bpy.context).labels()
    finally:
        wm.close_blender_status = ""
    assert draw_panel(bpy.types.CLOSE_PT_main, bpy.context).labels()[0] != "CloSe: working"


@pytest.mark.slow
def test_every_panel_draws_in_the_oldest_blender(extension_zip) -> None:
    if not OLDEST_PYTHON.exists():
        pytest.fail(f"{OLDEST_PYTHON} is missing: run `make setup`")
    result = subprocess.run(
        [str(OLDEST_PYTHON), str(REPO / "tests" / "fake_layout.py"), str(extension_zip)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["blender"].startswith("4.2")
    assert set(out["drawn"]) == set(out["panels"]), out
    assert all(n > 0 for n in out["drawn"].values()), out


def test_version_metrics_are_named_for_what_they_are(blender_ext) -> None:
    import types

    lines = blender_ext.panels.corrections.metric_lines(types.SimpleNamespace(
        metrics_before={"replay": {"miou_strict": 0.51}, "heldout": {"accuracy": 0.9}},
        metrics_after={"replay": {"miou_strict": 0.523}, "heldout": {"accuracy": 0.92}}))
    assert lines == ["heldout: accuracy 90.0 -> 92.0", "replay: mIoU 51.0 -> 52.3"]
