"""Running worker jobs from operators: blocking for scripts, modal for the UI.

An operator using :class:`WorkerJobOperator` lists its jobs in ``prepare``
(returning False, after a report, on bad input) and writes every result in
``apply`` once all jobs have succeeded, so a failure or a cancel changes
nothing and the whole change is one undo step.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

import bpy
import numpy as np

from ..close_blender.errors import Cancelled, CloseError
from . import worker_session


def set_status(context: bpy.types.Context, text: str) -> None:
    """Live status in the status bar and the sidebar (kept on the window manager, which
    is never saved in the .blend); empty text clears it."""
    wm = context.window_manager
    if hasattr(wm, "close_blender_status"):
        wm.close_blender_status = text
    if context.workspace is not None:
        context.workspace.status_text_set(text or None)


@dataclass
class Task:
    """One job to run for one object."""

    object_name: str
    job: str
    params: dict[str, Any]
    arrays: dict[str, np.ndarray]
    data: Any = None                       # anything the operator needs back in apply()
    fields: dict[str, Any] = field(default_factory=dict)
    results: dict[str, np.ndarray] = field(default_factory=dict)


class WorkerJobOperator:
    """Mixin for operators whose work runs in the worker process."""

    tasks: list[Task]
    job_label = "Working"

    def prepare(self, context: bpy.types.Context) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, context: bpy.types.Context) -> set[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _report_failure(self, task: Task, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.report({"WARNING"}, f"{self.job_label} cancelled; nothing was changed")
            return
        detail = getattr(exc, "details", "") or getattr(exc, "traceback", "")
        if detail:
            print(f"CloSe: {self.job_label} of '{task.object_name}' failed:\n{detail}")
        self.report({"ERROR"}, f"{self.job_label} of '{task.object_name}' failed: {exc}")

    def _report_warnings(self, task: Task) -> None:
        for warning in task.fields.get("warnings", []) or []:
            self.report({"WARNING"}, f"{task.object_name}: {warning}")

    def _apply_all(self, context: bpy.types.Context) -> set[str]:
        """``apply`` checks everything before it writes; whatever still goes wrong is
        reported (traceback on the console), never raised into Blender's operator call."""
        try:
            return self.apply(context)
        except CloseError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except Exception as exc:  # noqa: BLE001 - a bug must end as a report, not a half-run
            print(f"CloSe: writing the result of {self.job_label} failed:\n"
                  + traceback.format_exc())
            self.report({"ERROR"}, f"{self.job_label} failed while writing the result: "
                                   f"{type(exc).__name__}: {exc} (details in the console)")
            return {"CANCELLED"}

    # -- scripts: run to completion ----------------------------------------------------
    def execute(self, context: bpy.types.Context) -> set[str]:
        if not self.prepare(context):
            return {"CANCELLED"}
        for task in self.tasks:
            try:
                job = worker_session.submit(task.job, task.params, task.arrays, context)
                task.fields, task.results = job.result()
            except Exception as exc:  # any worker failure leaves Blender data untouched
                self._report_failure(task, exc)
                return {"CANCELLED"}
            self._report_warnings(task)
        return self._apply_all(context)

    # -- UI: modal, progress in the status bar, Esc cancels ------------------------------
    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return self.start_modal(context)

    def start_modal(self, context: bpy.types.Context) -> set[str]:
        """Prepare, submit the first job and return RUNNING_MODAL: the jobs then run with
        progress in the status bar while Blender stays responsive. For ``invoke``, and for
        an ``execute`` that Blender calls after a file browser opened from the UI."""
        if not self.prepare(context):
            return {"CANCELLED"}
        if not self.tasks:  # nothing for the worker: write at once
            return self._apply_all(context)
        self._index = 0
        self._job = None
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 1000)
        if not self._submit_current(context):
            self._cleanup(context)
            return {"CANCELLED"}
        return {"RUNNING_MODAL"}

    def _submit_current(self, context: bpy.types.Context) -> bool:
        task = self.tasks[self._index]
        try:
            self._job = worker_session.submit(task.job, task.params, task.arrays, context)
        except Exception as exc:
            self._report_failure(task, exc)
            return False
        return True

    def _status(self, context: bpy.types.Context, text: str) -> None:
        set_status(context, text)

    def _cleanup(self, context: bpy.types.Context) -> None:
        wm = context.window_manager
        if getattr(self, "_timer", None) is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        self._status(context, "")

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if event.type == "ESC" and event.value == "PRESS":
            self._job.cancel()
            self._cleanup(context)
            self.report({"WARNING"}, f"{self.job_label} cancelled; nothing was changed")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        task = self.tasks[self._index]
        if not self._job.done():
            fraction, stage = self._job.progress
            overall = (self._index + fraction) / len(self.tasks)
            context.window_manager.progress_update(int(overall * 1000))
            self._status(context, f"CloSe: {task.object_name}: {stage} ({overall:.0%}), "
                                  "Esc to cancel")
            return {"PASS_THROUGH"}
        try:
            task.fields, task.results = self._job.result(timeout=0)
        except Exception as exc:
            self._cleanup(context)
            self._report_failure(task, exc)
            return {"CANCELLED"}
        self._report_warnings(task)
        self._index += 1
        if self._index < len(self.tasks):
            if not self._submit_current(context):
                self._cleanup(context)
                return {"CANCELLED"}
            return {"PASS_THROUGH"}
        self._cleanup(context)
        return self._apply_all(context)

    def cancel(self, context: bpy.types.Context) -> None:
        """Blender ends the modal run (file load, quit): stop the job, change nothing."""
        if getattr(self, "_job", None) is not None:
            self._job.cancel()
        self._cleanup(context)
