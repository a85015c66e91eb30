"""bpy operators: thin; they gather data, call the core or the worker, write results."""

from __future__ import annotations

from . import editing, segment, worker, worker_session

classes: tuple[type, ...] = (*worker.classes, *segment.classes, *editing.classes)


def shutdown() -> None:
    """Stop the worker when the extension is disabled or Blender quits."""
    worker_session.stop()
