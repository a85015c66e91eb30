"""The worker from Blender's side: one process per chosen Python (not per device), a
missing "Other Python" reported, Check Worker as a job."""

from __future__ import annotations

import sys

import pytest

from conftest import ADDON_MODULE

pytestmark = pytest.mark.blender


@pytest.fixture
def prefs(blender_ext):
    import bpy

    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    old = (prefs.python_source, prefs.python_path, prefs.device, prefs.last_check)
    yield prefs
    prefs.python_source, prefs.python_path, prefs.device, prefs.last_check = old


def test_changing_the_device_keeps_the_worker(blender_ext, prefs) -> None:
    """The device goes with every job; changing it must not restart the worker (which
    cancelled a running fine-tune or segmentation)."""
    session = blender_ext.operators.worker_session
    prefs.python_source = "CUSTOM"
    prefs.python_path = sys.executable
    prefs.device = "CPU"
    client = session.get_client()
    prefs.device = "CUDA"
    assert session.get_client() is client
    assert "CLOSE_DEVICE" not in client.env
    prefs.python_source = "BLENDER"
    assert session.get_client() is not client  # another Python: another worker
    assert session.worker_env(prefs)["PYTHONPATH"]


def test_other_python_without_a_path_is_reported(clean_scene, blender_ext, prefs) -> None:
    import bpy

    CloseError = blender_ext.close_blender.errors.CloseError  # the extension's own copy  # noqa: N806
    prefs.python_source = "CUSTOM"
    prefs.python_path = ""
    with pytest.raises(CloseError, match="set the Python executable"):
        blender_ext.operators.worker_session.get_client()
    bpy.ops.mesh.primitive_cube_add()
    with pytest.raises(RuntimeError, match="set the Python executable"):
        bpy.ops.close.segment(checkpoint="default", garments="Body")
    with pytest.raises(RuntimeError, match="set the Python executable"):
        bpy.ops.close.worker_check()
    assert "set the Python executable" in prefs.last_check


def test_check_worker_runs_as_a_job(blender_ext, prefs) -> None:
    import bpy

    prefs.python_source = "CUSTOM"
    prefs.python_path = sys.executable
    op = blender_ext.operators.worker.CLOSE_OT_worker_check
    assert issubclass(op, blender_ext.operators.job_runner.WorkerJobOperator)  # modal in the UI
    assert bpy.ops.close.worker_check() == {"FINISHED"}
    lines = prefs.last_check.splitlines()
    assert lines[0].startswith("Python ") and sys.executable in lines[0]
    assert lines[1].startswith("torch ") and "cpu" in lines[1]


def test_install_log_last_line(blender_ext, tmp_path) -> None:
    last_line = blender_ext.operators.worker._last_line
    log = tmp_path / "pip.log"
    log.write_bytes(b"Collecting torch\n  Downloading torch-2.13.whl (900 MB)\n\n")
    assert last_line(log) == "Downloading torch-2.13.whl (900 MB)"
    assert last_line(tmp_path / "missing.log") == ""
