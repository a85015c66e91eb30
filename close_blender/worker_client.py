"""Blender's side of the worker process: start it, send jobs, follow them. No bpy, no torch.

Blender never imports torch: :class:`WorkerClient` starts ``python -X utf8 -u
-m inference.worker`` with the Python chosen in the preferences (a plain
``subprocess``, so it works the same on Windows, macOS and Linux), lazily on
the first job, and talks to it with close_blender.worker_protocol over its
pipes. A crash, an out-of-memory kill or a hang of the worker fails the jobs
it had with :class:`WorkerDied`; Blender keeps running and the next job starts
a new worker.

Usage from a Blender modal operator (never blocks the UI)::

    job = client.submit("segment", params, {"vertices": v, "colors": c})
    # in the modal timer:
    state = job.poll()                 # "queued" | "running" | "done" | "failed" | "cancelled"
    fraction, stage = job.progress
    if state == "done": fields, arrays = job.result()
    if state == "failed": report(job.error.message, job.error.hint); print(job.error.details)
    # on Esc:
    job.cancel()                       # the worker stops between steps and answers "cancelled"

Threads: one reader (messages -> job states), one stderr drain (kept as a tail
for error reports and echoed to the console so the pipe never fills) and one
watchdog (kills a worker whose running job sent nothing for ``timeout``
seconds, or that does not start) per worker process. Every public method is
thread-safe.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Cancelled, CloseError
from .worker_protocol import (
    CANCEL,
    CANCELLED,
    ERROR,
    PROGRESS,
    READY,
    RESULT,
    RUN,
    SHUTDOWN,
    STARTED,
    Message,
    MessageWriter,
    ProtocolError,
    read_message,
    wire_array,
)

DEFAULT_TIMEOUT = 600.0   # seconds a running job may stay silent (no progress) before the kill
STARTUP_TIMEOUT = 120.0   # seconds the worker may take to say "ready"
CANCEL_GRACE = 10.0       # seconds a cancelled job may take to stop before its worker is killed
STDERR_TAIL_LINES = 200

QUEUED, RUNNING, DONE, FAILED, CANCELLED_STATE = "queued", "running", "done", "failed", "cancelled"
FINISHED = frozenset((DONE, FAILED, CANCELLED_STATE))


class WorkerError(CloseError):
    """A job could not run or failed in the worker. ``details`` is console text (traceback, output)."""

    def __init__(self, message: str, hint: str = "", details: str = "") -> None:
        super().__init__(message, hint)
        self.details = details


class WorkerStartError(WorkerError):
    """The worker process could not be started (bad Python path, not executable)."""


class WorkerDied(WorkerError):
    """The worker process ended while it had jobs: crashed, killed, out of memory, or timed out."""

    def __init__(self, message: str, hint: str = "", *, exit_code: int | None = None,
                 stderr_tail: list[str] | None = None) -> None:
        self.exit_code = exit_code
        self.stderr_tail = list(stderr_tail or [])
        super().__init__(message, hint, "\n".join(self.stderr_tail))


class WorkerTimeout(WorkerDied):
    """The worker was killed because a job sent nothing for too long (or it never started)."""


class JobError(WorkerError):
    """The job raised in the worker. ``user`` is True for bad input (a CloseError there),
    ``kind`` is the exception's class name and ``traceback`` its formatted traceback."""

    def __init__(self, message: str, hint: str = "", *, kind: str = "", traceback: str = "",
                 user: bool = False) -> None:
        super().__init__(message, hint, traceback)
        self.kind = kind
        self.traceback = traceback
        self.user = user


def describe_exit(code: int | None) -> str:
    """'exit code 3', 'killed by signal SIGKILL (9)', ... for a process return code."""
    if code is None:
        return "still running"
    if code < 0:
        import signal

        try:
            return f"killed by signal {signal.Signals(-code).name} ({-code})"
        except ValueError:
            return f"killed by signal {-code}"
    if code > 0xFFFF:  # Windows NTSTATUS, e.g. 0xC0000005 access violation
        return f"exit code {code:#x}"
    return f"exit code {code}"


class Job:
    """A future-like handle on one job. Use :meth:`poll` from timers; :meth:`result` blocks."""

    def __init__(self, worker: _WorkerProcess, job_id: str, name: str, timeout: float | None) -> None:
        self.id = job_id
        self.name = name
        self.timeout = timeout
        self.created = time.monotonic()
        self._worker = worker
        self._cond = threading.Condition()
        self._state = QUEUED
        self._fraction = 0.0
        self._stage = "Waiting for the worker"
        self._fields: dict[str, Any] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self._error: WorkerError | None = None
        self._last_activity = self.created
        self.cancel_requested: float | None = None  # monotonic time of the cancel request

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.name} {self._state} {self._fraction:.0%}>"

    # queries -----------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    def poll(self) -> str:
        """The current state, without blocking: queued, running, done, failed or cancelled."""
        return self._state

    @property
    def progress(self) -> tuple[float, str]:
        """(fraction 0-1, stage text) from the latest progress message."""
        with self._cond:
            return self._fraction, self._stage

    @property
    def error(self) -> WorkerError | None:
        """Why the job failed (``.message``, ``.hint``, ``.details``), else None."""
        return self._error

    def done(self) -> bool:
        return self._state in FINISHED

    def running(self) -> bool:
        return self._state == RUNNING

    def cancelled(self) -> bool:
        return self._state == CANCELLED_STATE

    def result(self, timeout: float | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Wait for the job: (fields, arrays); raises its WorkerError, Cancelled, or
        TimeoutError when ``timeout`` seconds pass first (the job keeps running)."""
        with self._cond:
            if not self._cond.wait_for(self.done, timeout):
                raise TimeoutError(f"job {self.name!r} still {self._state} after {timeout} s")
        if self._state == CANCELLED_STATE:
            raise Cancelled(f"job {self.name!r} was cancelled")
        if self._error is not None:
            raise self._error
        return self._fields, self._arrays

    def cancel(self) -> bool:
        """Ask the worker to stop this job between steps; False if it already finished."""
        with self._cond:
            if self.done():
                return False
            if self.cancel_requested is None:
                self.cancel_requested = time.monotonic()
            self._stage = "Cancelling"
        self._worker.send_quietly(CANCEL, self.id)
        return True

    # updates from the reader thread ----------------------------------------
    def _touch(self, state: str | None = None, fraction: float | None = None,
               stage: str | None = None) -> None:
        with self._cond:
            if self.done():
                return
            if state is not None:
                self._state = state
            if fraction is not None:
                self._fraction = fraction
            if stage is not None and self.cancel_requested is None:
                self._stage = stage
            self._last_activity = time.monotonic()

    def _finish(self, state: str, fields: dict | None = None, arrays: dict | None = None,
                error: WorkerError | None = None) -> None:
        with self._cond:
            if self.done():
                return
            self._fields = fields or {}
            self._arrays = arrays or {}
            self._error = error
            if state == DONE:
                self._fraction, self._stage = 1.0, "Done"
            elif state == CANCELLED_STATE:
                self._stage = "Cancelled"
            else:
                self._stage = "Failed"
            self._state = state
            self._cond.notify_all()

    def _silent_for(self, now: float) -> float:
        with self._cond:
            return now - self._last_activity


class _WorkerProcess:
    """One worker process and its threads; a dead one is never reused."""

    def __init__(self, popen: subprocess.Popen, *, startup_timeout: float, cancel_grace: float,
                 echo: Callable[[str], None] | None) -> None:
        self.proc = popen
        self.pid = popen.pid
        self.writer = MessageWriter(popen.stdin)
        self.started = time.monotonic()
        self.startup_timeout = startup_timeout
        self.cancel_grace = cancel_grace
        self.echo = echo
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.dead = False
        self.ready = threading.Event()
        self.exited = threading.Event()
        self.info: dict[str, Any] = {}
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._kill_reason: tuple[Job | None, WorkerDied] | None = None
        self.exit_code: int | None = None
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True,
                                               name=f"close-worker-{self.pid}-stderr")
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"close-worker-{self.pid}-reader")
        self._watchdog = threading.Thread(target=self._watch, daemon=True,
                                          name=f"close-worker-{self.pid}-watchdog")
        for thread in (self._stderr_thread, self._reader, self._watchdog):
            thread.start()

    @property
    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def register(self, job: Job) -> bool:
        with self.lock:
            if self.dead:
                return False
            self.jobs[job.id] = job
            return True

    def unregister(self, job: Job) -> None:
        with self.lock:
            self.jobs.pop(job.id, None)

    def send_quietly(self, type: str, job: str | None = None) -> None:
        """Send a small control message; a dead pipe is handled by the reader's EOF."""
        try:
            self.writer.send(type, job)
        except (OSError, ValueError):
            pass

    # threads ---------------------------------------------------------------
    def _drain_stderr(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.stderr_tail.append(line)
            if self.echo is not None:
                try:
                    self.echo(line)
                except Exception:  # noqa: BLE001 - a closed console must not stop the drain
                    pass

    def _read(self) -> None:
        problem = None
        try:
            while True:
                message = read_message(self.proc.stdout)
                if message is None:
                    break
                self._dispatch(message)
        except (ProtocolError, OSError, ValueError) as exc:
            problem = exc
        except Exception as exc:  # noqa: BLE001 - e.g. MemoryError on a corrupt size: never hang jobs
            problem = exc
        if problem is not None and self.proc.poll() is None:
            self.kill(None, WorkerDied(f"the worker sent something unreadable and was stopped: {problem}",
                                       "this is a bug; please report it with the console output"))
        self._on_exit()

    def _dispatch(self, message: Message) -> None:
        if message.type == READY:
            self.info = dict(message.fields)
            self.ready.set()
            return
        with self.lock:
            job = self.jobs.get(message.job or "")
        if job is None:
            return
        f = message.fields
        if message.type == STARTED:
            job._touch(RUNNING, stage="Starting")
        elif message.type == PROGRESS:
            job._touch(RUNNING, float(f.get("fraction", 0.0)), str(f.get("stage", "")))
        elif message.type in (RESULT, ERROR, CANCELLED):
            self.unregister(job)
            if message.type == RESULT:
                job._finish(DONE, f, message.arrays)
            elif message.type == CANCELLED:
                job._finish(CANCELLED_STATE)
            else:
                job._finish(FAILED, error=JobError(
                    str(f.get("message", "the job failed")), str(f.get("hint", "")),
                    kind=str(f.get("kind", "")), traceback=str(f.get("traceback", "")),
                    user=bool(f.get("user", False))))

    def _watch(self) -> None:
        while not self.exited.wait(0.1):
            now = time.monotonic()
            if not self.ready.is_set():
                if self.startup_timeout and now - self.started > self.startup_timeout:
                    self.kill(None, WorkerTimeout(
                        f"the worker did not start within {self.startup_timeout:.0f} s",
                        "check the Python chosen in the add-on preferences (Check)"))
                    return
                continue
            with self.lock:
                jobs = list(self.jobs.values())
            for job in jobs:
                asked = job.cancel_requested
                if asked is not None and job.state == RUNNING and now - asked > self.cancel_grace:
                    self.kill(job, WorkerDied(
                        f"job {job.name!r} did not stop within {self.cancel_grace:.0f} s of the "
                        "cancel, so its worker was stopped", "the next job starts a new worker"))
                    return
                if job.state != RUNNING or not job.timeout:
                    continue
                silent = job._silent_for(now)
                if silent > job.timeout:
                    self.kill(job, WorkerTimeout(
                        f"job {job.name!r} sent nothing for {silent:.0f} s and its worker was stopped",
                        "the next job starts a new worker; raise the timeout for very large scans"))
                    return

    def _on_exit(self) -> None:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # stdout closed but still running: not ours to keep
            self.proc.kill()
            code = self.proc.wait()
        self._stderr_thread.join(timeout=2)
        with self.lock:
            self.exit_code = code
            self.dead = True
            jobs = list(self.jobs.values())
            self.jobs.clear()
        self.exited.set()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        for job in jobs:
            if job.cancel_requested is not None:  # what the user asked for, if not how
                job._finish(CANCELLED_STATE)
            else:
                job._finish(FAILED, error=self.death_error(job))

    def death_error(self, job: Job) -> WorkerDied:
        """The WorkerDied that ``job`` fails with, once this process has ended."""
        code, tail = self.exit_code, list(self.stderr_tail)
        how = describe_exit(code)
        last = next((line.strip() for line in reversed(tail) if line.strip()), "")
        if self._kill_reason is not None:
            culprit, reason = self._kill_reason
            if culprit is None or culprit is job:
                return type(reason)(reason.message, reason.hint, exit_code=code, stderr_tail=tail)
            return WorkerDied(f"job {job.name!r} was lost: the worker was stopped because "
                              f"{reason.message}", "run the job again", exit_code=code,
                              stderr_tail=tail)
        if not self.ready.is_set():
            msg = f"the worker stopped while starting ({how})" + (f": {last}" if last else "")
            hint = ("check the Python chosen in the add-on preferences (Check); "
                    "it needs numpy and, for segmenting, torch")
        else:
            msg = f"the worker process ended ({how}) during job {job.name!r}"
            msg += f"; last output: {last}" if last else ""
            hint = ("it crashed or was killed, perhaps out of memory (try the CPU or fewer points); "
                    "the scan is unchanged and the next job starts a new worker")
        return WorkerDied(msg, hint, exit_code=code, stderr_tail=tail)

    # control ---------------------------------------------------------------
    def kill(self, culprit: Job | None = None, reason: WorkerDied | None = None) -> None:
        with self.lock:
            if reason is not None and self._kill_reason is None:
                self._kill_reason = (culprit, reason)
        try:
            self.proc.kill()
        except OSError:
            pass

    def shutdown(self, timeout: float) -> None:
        """Ask the worker to exit (it cancels what it has), kill it if it does not."""
        self.send_quietly(SHUTDOWN)
        try:
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(None, WorkerDied("the worker did not stop when asked and was killed"))
        self.join(timeout + 5)

    def join(self, timeout: float | None = None) -> None:
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout)


def _console_echo(line: str) -> None:
    stream = sys.stderr
    if stream is not None:
        stream.write(f"[CloSe worker] {line}\n")
        stream.flush()


class WorkerClient:
    """Starts the worker with ``python`` on demand and runs jobs in it.

    ``extension_root`` is the folder holding the ``close_blender`` and
    ``inference`` packages; ``env`` adds environment variables (its
    ``PYTHONPATH`` entries come after the extension root, e.g. a folder of
    packages installed for the add-on). ``echo_stderr`` prints the worker's
    output to the console. Paths in job params should be absolute: the worker
    runs in ``extension_root``.
    """

    def __init__(self, python: str, extension_root: Path, env: dict | None = None, *,
                 echo_stderr: bool | Callable[[str], None] = True,
                 startup_timeout: float = STARTUP_TIMEOUT,
                 cancel_grace: float = CANCEL_GRACE) -> None:
        self.python = str(python)
        self.extension_root = Path(extension_root).resolve()
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.cancel_grace = cancel_grace
        if callable(echo_stderr):
            self._echo = echo_stderr
        else:
            self._echo = _console_echo if echo_stderr else None
        self._lock = threading.RLock()
        self._worker: _WorkerProcess | None = None
        self._last: _WorkerProcess | None = None  # kept for stderr_tail after a death
        self._ids = itertools.count(1)
        self.starts = 0  # how many worker processes this client started

    # state -------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """True while a worker process is running."""
        w = self._worker
        return w is not None and w.alive

    @property
    def pid(self) -> int | None:
        w = self._worker
        return w.pid if w is not None and w.alive else None

    @property
    def info(self) -> dict[str, Any]:
        """What the running worker said on start-up (pid, python, versions), else {}."""
        w = self._worker
        return dict(w.info) if w is not None and w.alive else {}

    @property
    def stderr_tail(self) -> list[str]:
        """The last lines the current (or last) worker wrote to stderr."""
        w = self._last
        return list(w.stderr_tail) if w is not None else []

    # starting ----------------------------------------------------------------
    def command(self) -> list[str]:
        return [self.python, "-X", "utf8", "-u", "-m", "inference.worker"]

    def environment(self) -> dict[str, str]:
        """The worker's environment: this one without Blender's PYTHONHOME/PYTHONPATH, plus ``env``."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
        extra = {k: str(v) for k, v in self.env.items()}
        paths = [str(self.extension_root)]
        if extra.get("PYTHONPATH"):
            paths.append(extra.pop("PYTHONPATH"))
        env.update(extra)
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONIOENCODING"] = "utf-8"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _start(self) -> _WorkerProcess:
        python = self.python
        if not python or (not Path(python).is_file() and shutil.which(python) is None):
            raise WorkerStartError(f"the worker Python {python!r} does not exist",
                                   "choose a Python 3.11+ executable in the add-on preferences")
        if not (self.extension_root / "inference" / "worker.py").is_file():
            raise WorkerStartError(f"no inference/worker.py under {self.extension_root}",
                                   "reinstall the add-on")
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            popen = subprocess.Popen(
                self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, cwd=str(self.extension_root), env=self.environment(),
                close_fds=True, **kwargs)
        except OSError as exc:
            raise WorkerStartError(f"cannot start the worker Python {python!r}: {exc}",
                                   "choose a Python 3.11+ executable in the add-on preferences") from exc
        self.starts += 1
        return _WorkerProcess(popen, startup_timeout=self.startup_timeout,
                              cancel_grace=self.cancel_grace, echo=self._echo)

    def start(self) -> None:
        """Start the worker now (jobs start it anyway); raises WorkerStartError."""
        with self._lock:
            self._current()

    def _current(self) -> _WorkerProcess:
        w = self._worker
        if w is None or not w.alive:
            w = self._worker = self._last = self._start()
        return w

    # jobs ----------------------------------------------------------------
    def submit(self, name: str, params: dict | None = None,
               arrays: dict[str, np.ndarray] | None = None, *,
               timeout: float | None = DEFAULT_TIMEOUT) -> Job:
        """Queue job ``name`` in the worker (starting it if needed) and return its Job.

        ``timeout``: seconds the running job may go without a progress message
        before the worker is killed (None: never). Raises WorkerStartError,
        or TypeError for arrays/params that cannot travel.
        """
        wire = {str(k): wire_array(a) for k, a in (arrays or {}).items()}
        fields = {"name": name, "params": dict(params or {})}
        with self._lock:
            worker = self._current()
            job = Job(worker, f"j{next(self._ids)}", name, timeout)
        if not worker.register(job):  # it died at once (e.g. not a working Python)
            job._finish(FAILED, error=worker.death_error(job))
            return job
        try:
            worker.writer.send(RUN, job.id, fields, wire)
        except (OSError, ValueError):
            pass  # the worker died: its reader fails the job with WorkerDied
        except Exception:
            worker.unregister(job)
            raise
        return job

    def run(self, name: str, params: dict | None = None, arrays: dict | None = None, *,
            timeout: float | None = DEFAULT_TIMEOUT, wait: float | None = None):
        """Submit and wait: (fields, arrays). For scripts and tests, not for Blender's UI thread."""
        return self.submit(name, params, arrays, timeout=timeout).result(wait)

    def check(self, timeout: float = 120.0, *, torch: bool = True) -> dict[str, Any]:
        """Blocking "check" job: python/numpy/torch versions, devices, packages present.

        Importing torch can take seconds: from Blender's UI, ``submit("check")`` and poll
        instead. ``torch=False`` skips importing it (devices then list only the CPU).
        """
        fields, _ = self.run("check", {"torch": torch}, timeout=timeout, wait=timeout)
        return fields

    # stopping --------------------------------------------------------------
    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit (queued and running jobs end cancelled); kill it after ``timeout``."""
        with self._lock:
            w, self._worker = self._worker, None
        if w is not None:
            w.shutdown(timeout)

    def kill(self) -> None:
        """Kill the worker now; its jobs fail with WorkerDied. The next job starts a new one."""
        with self._lock:
            w, self._worker = self._worker, None
        if w is not None:
            w.kill(None, WorkerDied("the worker was stopped on request",
                                    "run the job again to start a new worker"))
            w.join(10)

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def install_command(python: str, target: Path, packages: list[str], *,
                    online_access: bool) -> list[str]:
    """The pip command that installs ``packages`` into ``target`` (the extension's user folder).

    Blender's ``bpy.app.online_access`` must be passed as ``online_access``: without
    it nothing is ever downloaded. Run the command only on an explicit user click, then
    give ``target`` to WorkerClient as ``env={"PYTHONPATH": str(target)}``.
    """
    if not online_access:
        raise CloseError("installing packages needs online access, which Blender does not allow",
                         "enable Preferences > System > Network > Allow Online Access, "
                         "or install the packages into the worker Python yourself")
    if not packages:
        raise CloseError("no packages to install")
    return [str(python), "-m", "pip", "install", "--upgrade", "--target", str(Path(target)),
            *packages]
