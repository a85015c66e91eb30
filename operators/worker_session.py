"""The one worker process of this Blender session, started on demand.

Blender never imports torch: jobs go to a worker process through
``close_blender.worker_client``. This module keeps that client and restarts it
when the chosen Python changes.
"""

from __future__ import annotations

import os

from ..panels.preferences import EXTENSION_ROOT, get_prefs, packages_dir, worker_python

_client = None
_client_key: tuple | None = None


def worker_env(prefs) -> dict[str, str]:
    """Environment for the worker: packages installed for Blender's Python, device choice."""
    env = dict(os.environ)
    paths = [str(EXTENSION_ROOT)]
    if prefs.python_source == "BLENDER":
        paths.append(str(packages_dir()))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["CLOSE_DEVICE"] = prefs.device.lower()
    return env


def get_client(context=None):
    """The worker client for the current preferences (the process starts on the first job)."""
    global _client, _client_key
    from ..close_blender.worker_client import WorkerClient

    prefs = get_prefs(context)
    python = worker_python(prefs)
    key = (python, prefs.python_source, prefs.device)
    if _client is not None and _client_key != key:
        _client.stop()
        _client = None
    if _client is None:
        _client = WorkerClient(python, EXTENSION_ROOT, env=worker_env(prefs))
        _client_key = key
    return _client


def current_client():
    """The client if one exists (never starts one)."""
    return _client


def stop() -> None:
    """Stop the worker process, if any (on unregister, or from the UI)."""
    global _client, _client_key
    if _client is not None:
        _client.stop()
    _client = None
    _client_key = None
