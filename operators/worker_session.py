"""The one worker process of this Blender session, started on demand.

Blender never imports torch: jobs go to a worker process through
``close_blender.worker_client``. This module keeps that client, restarts it
when the chosen Python changes, and tracks running jobs so they can be
cancelled from anywhere in the UI.
"""

from __future__ import annotations

from ..close_blender.worker_client import Job, WorkerClient
from ..panels.preferences import EXTENSION_ROOT, get_prefs, packages_dir, worker_python

_client: WorkerClient | None = None
_client_key: tuple | None = None
_jobs: list[Job] = []


def worker_env(prefs) -> dict[str, str]:
    """Extra environment for the worker: the packages installed for Blender's Python.
    (The device is not part of it: every job names its device, so changing it never
    restarts the worker.)"""
    if prefs.python_source == "BLENDER":
        return {"PYTHONPATH": str(packages_dir())}
    return {}


def get_client(context=None) -> WorkerClient:
    """The worker client for the current preferences (the process starts on the first job).

    Raises CloseError when the preferences name no usable Python. A new client (and
    process) only when the chosen Python changes, which stops running jobs.
    """
    global _client, _client_key
    prefs = get_prefs(context)
    python = worker_python(prefs)
    key = (python, prefs.python_source)
    if _client is not None and _client_key != key:
        _client.stop()
        _client = None
    if _client is None:
        _client = WorkerClient(python, EXTENSION_ROOT, env=worker_env(prefs))
        _client_key = key
    return _client


def submit(name: str, params: dict, arrays: dict, context=None) -> Job:
    """Submit a job to the worker and track it for ``cancel_all``."""
    prefs = get_prefs(context)
    job = get_client(context).submit(name, params, arrays, timeout=prefs.job_timeout)
    _jobs[:] = [j for j in _jobs if not j.done()] + [job]
    return job


def cancel_all() -> int:
    """Cancel every running job; returns how many were asked to stop."""
    return sum(1 for job in _jobs if job.cancel())


def stop() -> None:
    """Stop the worker process, if any (on unregister, or from the UI)."""
    global _client, _client_key
    if _client is not None:
        _client.stop()
    _client = None
    _client_key = None
    _jobs.clear()
