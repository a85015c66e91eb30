"""Shared test set-up: repo paths, shared fixtures, and the extension inside real Blender.

Blender runs in this process through the ``bpy`` module. Its user folder is
pointed at a temporary directory before ``bpy`` is first imported, so tests
never touch a real Blender configuration.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ADDON_MODULE = "bl_ext.user_default.close_blender"

if str(REPO) not in sys.path:  # the core and inference packages as top-level packages
    sys.path.insert(0, str(REPO))

# Must happen before anything imports bpy.
_BLENDER_USER = tempfile.mkdtemp(prefix="close-blender-user-")
os.environ["BLENDER_USER_RESOURCES"] = _BLENDER_USER
atexit.register(shutil.rmtree, _BLENDER_USER, ignore_errors=True)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared fixtures folder {SHARED} is missing")
    return SHARED


@pytest.fixture(scope="session")
def closenet_reference(shared: Path) -> Path:
    """Folder with closenet.pth, closenet_cfg.yaml and cases.npz."""
    return shared / "fixtures" / "closenet_reference"


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The extension zip, built and validated by Blender's own extension tool."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from build_extension import build
    finally:
        sys.path.remove(str(REPO / "tools"))
    return build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def blender_ext(extension_zip: Path):
    """The extension installed from its zip into real Blender and enabled.

    Yields the extension's package module (e.g. ``blender_ext.operators``).
    """
    import bpy

    result = bpy.ops.extensions.package_install_files(
        filepath=str(extension_zip), repo="user_default", enable_on_install=True)
    assert result == {"FINISHED"}, result
    assert ADDON_MODULE in bpy.context.preferences.addons, "the extension did not enable"
    # Tests use this venv's Python for the worker (it has torch and the other packages).
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.python_source = "CUSTOM"
    prefs.python_path = sys.executable
    yield sys.modules[ADDON_MODULE]
    if ADDON_MODULE in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_disable(module=ADDON_MODULE)


@pytest.fixture
def clean_scene(blender_ext):
    """An empty scene (objects and meshes removed), the extension still enabled."""
    import bpy

    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    for mesh in list(bpy.data.meshes):
        bpy.data.meshes.remove(mesh)
    return bpy.context.scene
