"""The main job on the bundled defaults: install the built extension into a
headless Blender (a temporary user folder), enable it and show what it registered.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ADDON_MODULE = "bl_ext.user_default.close_blender"


def main() -> int:
    sys.path.insert(0, str(REPO / "tools"))
    from build_extension import build

    zip_path = build(REPO / "dist")
    print(f"built {zip_path.relative_to(REPO)} ({zip_path.stat().st_size / 1024:.0f} KiB)")
    user = tempfile.mkdtemp(prefix="close-demo-user-")
    os.environ["BLENDER_USER_RESOURCES"] = user
    try:
        import bpy

        result = bpy.ops.extensions.package_install_files(
            filepath=str(zip_path), repo="user_default", enable_on_install=True)
        if result != {"FINISHED"} or ADDON_MODULE not in bpy.context.preferences.addons:
            print("the extension did not install/enable", file=sys.stderr)
            return 1
        ext = sys.modules[ADDON_MODULE]
        print(f"Blender {bpy.app.version_string}: enabled {ADDON_MODULE}")
        for cls in ext.classes:
            idname = getattr(cls, "bl_idname", "")
            kind = cls.__mro__[1].__name__
            print(f"  {kind:<16} {idname or cls.__name__}")
        bpy.ops.preferences.addon_disable(module=ADDON_MODULE)
        print("disabled cleanly")
    finally:
        shutil.rmtree(user, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
