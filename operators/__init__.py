"""bpy operators: thin; they gather data, call the core or the worker, write results."""

from __future__ import annotations

from . import closed_files, corrections, editing, rigging, segment, separate, worker, worker_session

classes: tuple[type, ...] = (*worker.classes, *segment.classes, *editing.classes,
                             *separate.classes, *rigging.classes,
                             *closed_files.classes, *corrections.classes)


def shutdown() -> None:
    """Stop the worker when the extension is disabled or Blender quits."""
    worker_session.stop()
