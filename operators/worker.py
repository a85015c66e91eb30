"""Operators that manage the worker process: check, stop, install packages, data folder.

Check Worker and Install Packages can take long (importing torch, a ~1 GB
download): from the UI both run modal, Blender stays responsive and Esc stops
them; from scripts (``execute``) they block.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import bpy

from ..close_blender.errors import Cancelled, CloseError
from ..close_blender.worker_client import install_command
from ..panels.preferences import data_dir, get_prefs, packages_dir
from . import worker_session
from .job_runner import Task, WorkerJobOperator, set_status

WORKER_REQUIREMENTS = (
    "torch==2.13.0", "anny==0.6.2", "trimesh==5.2.0", "scipy==1.17.1", "safetensors==0.8.0",
    "smplx==0.1.28", "pyyaml==6.0.3", "pillow==13.0.0",
)


def check_summary(info: dict) -> list[str]:
    """The lines shown for a worker check: Python, torch and devices, missing packages."""
    devices = ", ".join(info.get("devices", []))
    lines = [f"Python {info.get('python', '?')} ({info.get('executable', '?')})",
             f"torch {info.get('torch') or 'missing'}; devices: {devices}"]
    missing = [name for name, pkg in info.get("packages", {}).items() if not pkg.get("present")]
    lines.append("Missing: " + ", ".join(missing) if missing else "All packages present")
    return lines


class CLOSE_OT_worker_check(WorkerJobOperator, bpy.types.Operator):
    """Start the worker with the chosen Python and show what it has (torch, devices, packages)"""

    bl_idname = "close.worker_check"
    bl_label = "Check Worker"
    bl_options = {"REGISTER"}
    job_label = "Worker check"

    def prepare(self, context: bpy.types.Context) -> bool:
        self.tasks = [Task("worker", "check", {"torch": True}, {})]
        return True

    def _report_failure(self, task: Task, exc: BaseException) -> None:
        # the worker's Python may be anything: show why in the preferences too
        if not isinstance(exc, Cancelled):
            get_prefs().last_check = f"Worker failed: {exc}"
        super()._report_failure(task, exc)

    def apply(self, context: bpy.types.Context) -> set[str]:
        lines = check_summary(self.tasks[0].fields)
        get_prefs(context).last_check = "\n".join(lines)
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


def _last_line(path: Path) -> str:
    """The last non-empty line of a log file ("" when none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


class CLOSE_OT_install_packages(bpy.types.Operator):
    """Install the worker's packages (torch, anny, ...) for Blender's Python into this
    extension's user folder. Needs Online Access to be allowed in Blender's preferences"""

    bl_idname = "close.install_packages"
    bl_label = "Install Packages"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not bpy.app.online_access:
            cls.poll_message_set("Allow Online Access in Preferences > System > Network first")
            return False
        return True

    def _command(self) -> list[str] | None:
        try:
            return install_command(sys.executable, packages_dir(), list(WORKER_REQUIREMENTS),
                                   online_access=bpy.app.online_access)
        except CloseError as exc:
            self.report({"ERROR"}, str(exc))
            return None

    def _finish(self, returncode: int, log: str, last: str) -> set[str]:
        if returncode != 0:
            print(f"CloSe: pip failed (exit code {returncode}):\n{log}")
            self.report({"ERROR"}, f"pip failed: {last or f'exit code {returncode}'} "
                                   "(details in the console)")
            return {"CANCELLED"}
        worker_session.stop()  # the next job starts a worker that sees the new packages
        self.report({"INFO"}, f"Packages installed in {packages_dir()}")
        return {"FINISHED"}

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        self._from_ui = True  # Blender calls execute() after the confirmation
        return context.window_manager.invoke_confirm(
            self, event, title="Install Packages",
            message=f"Download about 1 GB of packages into {packages_dir()}?")

    def execute(self, context: bpy.types.Context) -> set[str]:
        cmd = self._command()
        if cmd is None:
            return {"CANCELLED"}
        if getattr(self, "_from_ui", False) and context.window is not None:
            return self._start_modal(context, cmd)
        result = subprocess.run(cmd, capture_output=True, text=True)
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        return self._finish(result.returncode, result.stdout + "\n" + result.stderr,
                            lines[-1] if lines else "")

    # -- UI: pip in the background, its last output line in the status bar --------------
    def _start_modal(self, context: bpy.types.Context, cmd: list[str]) -> set[str]:
        handle, name = tempfile.mkstemp(prefix="close-pip-", suffix=".log")
        self._log_path = Path(name)
        self._log = open(handle, "wb")  # noqa: SIM115 - closed in _cleanup
        try:
            self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        except OSError as exc:
            self._cleanup(context)
            self.report({"ERROR"}, f"Could not start pip: {exc}")
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.5, window=context.window)
        wm.modal_handler_add(self)
        self._status(context, "CloSe: installing packages (Esc to stop)...")
        return {"RUNNING_MODAL"}

    def _status(self, context: bpy.types.Context, text: str) -> None:
        set_status(context, text)

    def _cleanup(self, context: bpy.types.Context) -> str:
        """Stop the timer, close the log; returns the log's text."""
        if getattr(self, "_timer", None) is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        self._status(context, "")
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()
        text = ""
        path = getattr(self, "_log_path", None)
        if path is not None:
            try:
                text = path.read_text("utf-8", "replace")
                path.unlink()
            except OSError:
                pass
        return text

    def _kill(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if event.type == "ESC" and event.value == "PRESS":
            self._kill()
            self._cleanup(context)
            self.report({"WARNING"}, "Package installation stopped; run it again to finish")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        code = self._proc.poll()
        if code is None:
            last = _last_line(self._log_path)[:120]
            self._status(context, f"CloSe: installing packages: {last or 'starting pip'} "
                                  "(Esc to stop)")
            return {"PASS_THROUGH"}
        last = _last_line(self._log_path)
        return self._finish(code, self._cleanup(context), last)

    def cancel(self, context: bpy.types.Context) -> None:
        """Blender ends the modal run (file load, quit): stop pip."""
        self._kill()
        self._cleanup(context)


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
