"""Headless Blender with this extension installed, for the demo and the benchmarks.

``start()`` points Blender's user folder at a temporary directory (before
``bpy`` is imported), builds and installs the extension zip, enables it, and
sets this environment's Python as the worker's.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ADDON_MODULE = "bl_ext.user_default.close_blender"


def start(verbose: bool = True):
    """(bpy, the extension's package module)."""
    if "bpy" in sys.modules:
        raise RuntimeError("start() must run before bpy is imported")
    user = tempfile.mkdtemp(prefix="close-headless-user-")
    os.environ["BLENDER_USER_RESOURCES"] = user
    atexit.register(shutil.rmtree, user, ignore_errors=True)
    sys.path.insert(0, str(REPO / "tools"))
    import bpy
    from build_extension import build

    zip_path = build(REPO / "dist")
    result = bpy.ops.extensions.package_install_files(
        filepath=str(zip_path), repo="user_default", enable_on_install=True)
    if result != {"FINISHED"} or ADDON_MODULE not in bpy.context.preferences.addons:
        raise SystemExit("the extension did not install/enable")
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.python_source = "CUSTOM"
    prefs.python_path = sys.executable
    ext = sys.modules[ADDON_MODULE]
    atexit.register(ext.operators.worker_session.stop)
    if verbose:
        print(f"Blender {bpy.app.version_string}: installed {zip_path.name}, "
              f"worker Python {sys.executable}")
    return bpy, ext


def import_scan(bpy, path: Path, clear: bool = True):
    """Import a y-up scan (PLY as the synthetic generator writes, OBJ, glTF) as the active object."""
    if clear:
        for obj in list(bpy.data.objects):
            bpy.data.objects.remove(obj)
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        bpy.ops.wm.ply_import(filepath=str(path), forward_axis="NEGATIVE_Z", up_axis="Y")
    elif suffix == ".obj":
        bpy.ops.wm.obj_import(filepath=str(path), forward_axis="NEGATIVE_Z", up_axis="Y")
    elif suffix in (".glb", ".gltf"):
        bpy.ops.import_scene.gltf(filepath=str(path))
    else:
        raise SystemExit(f"cannot import {path}: use .ply, .obj or .glb")
    meshes = [o for o in bpy.context.selected_objects if o.type == "MESH"]
    obj = meshes[0]
    bpy.context.view_layer.objects.active = obj
    return obj
