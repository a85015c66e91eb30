"""Operators that manage the worker process: check, stop, install packages, data folder."""

from __future__ import annotations

import subprocess
import sys

import bpy

from ..close_blender.errors import CloseError
from ..close_blender.worker_client import install_command
from ..panels.preferences import data_dir, get_prefs, packages_dir
from . import worker_session

WORKER_REQUIREMENTS = (
    "torch==2.13.0", "anny==0.6.2", "trimesh==5.2.0", "scipy==1.17.1", "safetensors==0.8.0",
    "smplx==0.1.28", "pyyaml==6.0.3", "pillow==13.0.0",
)


class CLOSE_OT_worker_check(bpy.types.Operator):
    """Start the worker with the chosen Python and show what it has (torch, devices, packages)"""

    bl_idname = "close.worker_check"
    bl_label = "Check Worker"
    bl_options = {"REGISTER"}

    timeout: bpy.props.FloatProperty(
        name="Timeout", description="Seconds to wait for the worker to answer", default=120.0, min=1.0,
    )

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = get_prefs(context)
        try:
            client = worker_session.get_client(context)
            info = client.check(timeout=self.timeout)
        except Exception as exc:  # the worker's Python may be anything: report, never crash
            prefs.last_check = f"Worker failed: {exc}"
            self.report({"ERROR"}, f"Worker check failed: {exc}")
            return {"CANCELLED"}
        devices = ", ".join(info.get("devices", []))
        lines = [f"Python {info.get('python', '?')} ({info.get('executable', '?')})",
                 f"torch {info.get('torch') or 'missing'}; devices: {devices}"]
        missing = [name for name, pkg in info.get("packages", {}).items()
                   if not pkg.get("present")]
        lines.append("Missing: " + ", ".join(missing) if missing else "All packages present")
        prefs.last_check = "\n".join(lines)
        self.report({"INFO"}, "; ".join(lines))
        return {"FINISHED"}


class CLOSE_OT_worker_stop(bpy.types.Operator):
    """Stop the worker process and free its memory (the next job starts a new one)"""

    bl_idname = "close.worker_stop"
    bl_label = "Stop Worker"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        worker_session.stop()
        self.report({"INFO"}, "Worker stopped")
        return {"FINISHED"}


class CLOSE_OT_install_packages(bpy.types.Operator):
    """Install the worker's packages (torch, anny, ...) for Blender's Python into this
    extension's user folder. Needs Online Access to be allowed in Blender's preferences"""

    bl_idname = "close.install_packages"
    bl_label = "Install Packages"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return bool(bpy.app.online_access)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_confirm(
            self, event, title="Install Packages",
            message=f"Download about 1 GB of packages into {packages_dir()}?")

    def execute(self, context: bpy.types.Context) -> set[str]:
        target = packages_dir()
        try:
            cmd = install_command(sys.executable, target, list(WORKER_REQUIREMENTS),
                                  online_access=bpy.app.online_access)
        except CloseError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, "Installing packages (see the console)...")
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stdout, result.stderr, sep="\n")
            self.report({"ERROR"}, "pip failed: " + (result.stderr.strip().splitlines() or ["?"])[-1])
            return {"CANCELLED"}
        worker_session.stop()
        self.report({"INFO"}, f"Packages installed in {target}")
        return {"FINISHED"}


class CLOSE_OT_open_data_folder(bpy.types.Operator):
    """Open the folder where corrections and model versions are stored"""

    bl_idname = "close.open_data_folder"
    bl_label = "Open Data Folder"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        folder = data_dir(get_prefs(context))
        folder.mkdir(parents=True, exist_ok=True)
        bpy.ops.wm.path_open(filepath=str(folder))
        return {"FINISHED"}


classes = (
    CLOSE_OT_worker_check,
    CLOSE_OT_worker_stop,
    CLOSE_OT_install_packages,
    CLOSE_OT_open_data_folder,
)
