"""Run inside the oldest Blender the manifest claims (a separate Python with that bpy).

Installs the extension zip into a temporary user folder, segments a scan with
the worker on another Python, checks labels and groups, disables and enables
the extension again. Prints one JSON line; exit status 0 when all is well.

    python blender_oldest_smoke.py ZIP SCAN.ply CHECKPOINT WORKER_PYTHON
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

ADDON = "bl_ext.user_default.close_blender"


def main(zip_path: str, scan: str, checkpoint: str, worker_python: str) -> int:
    os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="close-oldest-")
    import bpy
    import numpy as np

    out: dict = {"blender": bpy.app.version_string}
    assert bpy.ops.extensions.package_install_files(
        filepath=zip_path, repo="user_default", enable_on_install=True) == {"FINISHED"}
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.python_source = "CUSTOM"
    prefs.python_path = worker_python
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    bpy.ops.wm.ply_import(filepath=scan, forward_axis="NEGATIVE_Z", up_axis="Y")
    obj = bpy.context.selected_objects[0]
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.close.segment(checkpoint=checkpoint, garments="auto") == {"FINISHED"}
    mesh = obj.data
    labels = np.empty(len(mesh.vertices), np.int32)
    mesh.attributes["close_label"].data.foreach_get("value", labels)
    groups = {g.index: g.name for g in obj.vertex_groups}
    counts: dict[str, int] = {}
    for v in mesh.vertices:
        for ge in v.groups:
            counts[groups[ge.group]] = counts.get(groups[ge.group], 0) + 1
    out["vertices"] = len(labels)
    out["groups"] = counts
    out["label_counts"] = {int(k): int(c) for k, c in zip(*np.unique(labels, return_counts=True),
                                                           strict=True)}
    bpy.ops.close.worker_stop()
    bpy.ops.preferences.addon_disable(module=ADDON)
    assert not hasattr(bpy.types, "CLOSE_PT_main")
    bpy.ops.preferences.addon_enable(module=ADDON)
    assert hasattr(bpy.types, "CLOSE_PT_main")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
