"""The worker process: ``python -m inference.worker``, started by Blender's WorkerClient.

It owns torch and the loaded models so that a CUDA crash or an out-of-memory
error ends this process, never Blender. Protocol: close_blender.worker_protocol
over stdin (requests) and stdout (answers). A reader thread takes requests, so
a ``cancel`` arrives while a job runs; the main thread runs one job at a time
and answers ``started``, ``progress``..., then ``result``, ``error`` (with the
traceback) or ``cancelled``. Loaded checkpoints stay cached between jobs. It
exits on ``shutdown`` or when stdin closes (Blender quit or killed).

Anything the job code prints goes to stderr: stdout's file descriptor is
duplicated for messages and then pointed at stderr, so even native libraries
writing to fd 1 cannot corrupt the protocol.
"""

from __future__ import annotations

import os
import platform
import queue
import signal
import sys
import threading
import traceback
from typing import BinaryIO

from close_blender.errors import Cancelled, CloseError
from close_blender.memory import keep_freed_memory
from close_blender.worker_protocol import (
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
)

_STOP = object()


class _PipeGone(Exception):
    """Writing to Blender failed: our stdout pipe is closed, nobody is listening any more.

    Only the worker's own sends raise it, so an OSError that a job raises (a
    read-only or full data folder, a missing file) stays that job's error.
    """


def _take_std_streams() -> tuple[BinaryIO, BinaryIO]:
    """Private binary streams on the real stdin/stdout; fd 1 then writes to stderr, fd 0 reads nothing."""
    if sys.stdout is not None:
        sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    in_fd = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return os.fdopen(in_fd, "rb", buffering=1 << 16), os.fdopen(out_fd, "wb", buffering=1 << 16)


class Worker:
    """Request reader + job loop over one pair of binary streams."""

    def __init__(self, inp: BinaryIO, out: BinaryIO) -> None:
        from inference.jobs import ModelCache

        self.inp = inp
        self.writer = MessageWriter(out)
        self.requests: queue.Queue = queue.Queue()
        self.cache = ModelCache()
        self._lock = threading.Lock()
        self._cancelled: set[str] = set()
        self._stopping = False

    # reader thread ---------------------------------------------------------
    def read_requests(self) -> None:
        """Queue ``run`` requests, flag cancels at once; stop on shutdown or EOF."""
        try:
            while True:
                message = read_message(self.inp)
                if message is None or message.type == SHUTDOWN:
                    break
                if message.type == CANCEL and message.job is not None:
                    with self._lock:
                        self._cancelled.add(message.job)
                elif message.type == RUN:
                    self.requests.put(message)
                else:
                    print(f"close worker: ignoring message {message.type!r}", file=sys.stderr)
        except ProtocolError as exc:
            print(f"close worker: bad request stream, stopping: {exc}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - OSError on the pipe, MemoryError on a bad size
            print(f"close worker: request pipe failed, stopping: {exc!r}", file=sys.stderr)
        finally:
            with self._lock:  # whatever is queued or running stops at its next check
                self._stopping = True
            self.requests.put(_STOP)

    def send(self, type: str, job: str | None = None, fields: dict | None = None,
             arrays: dict | None = None) -> None:
        """Send one message to Blender; a failed write raises _PipeGone."""
        try:
            self.writer.send(type, job, fields, arrays)
        except OSError as exc:
            raise _PipeGone(f"{type!r} message could not be sent: {exc!r}") from exc

    def is_cancelled(self, job: str) -> bool:
        with self._lock:
            return self._stopping or job in self._cancelled

    # main thread -----------------------------------------------------------
    def serve(self) -> int:
        """Run jobs until shutdown/EOF; returns the process exit status."""
        import close_blender
        from close_blender.worker_protocol import PROTOCOL_VERSION

        threading.Thread(target=self.read_requests, name="close-worker-reader", daemon=True).start()
        try:
            self.send(READY, None, {
                "pid": os.getpid(), "python": platform.python_version(),
                "executable": sys.executable, "protocol": PROTOCOL_VERSION,
                "close_blender": close_blender.__version__})
            while True:
                message = self.requests.get()
                if message is _STOP:
                    return 0
                self.run_job(message)
        except _PipeGone as exc:  # Blender closed our stdout: nobody is listening any more
            print(f"close worker: {exc}; stopping", file=sys.stderr, flush=True)
            return 0

    def run_job(self, message: Message) -> None:
        from inference.jobs import JOBS, JobContext, free_accelerator_memory

        job_id = message.job or ""
        name = str(message.fields.get("name", ""))
        params = message.fields.get("params") or {}
        if self.is_cancelled(job_id):
            self.send(CANCELLED, job_id)
            return
        self.send(STARTED, job_id, {"name": name})
        ctx = JobContext(
            send_progress=lambda f, s: self.send(PROGRESS, job_id, {"fraction": f, "stage": s}),
            cancelled=lambda: self.is_cancelled(job_id), cache=self.cache)
        try:
            handler = JOBS.get(name)
            if handler is None:
                raise CloseError(f"the worker has no job {name!r}",
                                 f"known jobs: {', '.join(sorted(JOBS))}")
            out = handler(params, message.arrays, ctx)
            fields, arrays = out if isinstance(out, tuple) else (out, {})
            self.send(RESULT, job_id, fields or {}, arrays or {})
        except Cancelled:
            self.send(CANCELLED, job_id)
        except _PipeGone:
            raise
        except BaseException as exc:  # noqa: BLE001 - every job failure, OSError too, goes back to Blender
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self.send_error(job_id, name, exc)
            free_accelerator_memory()
        finally:
            with self._lock:
                self._cancelled.discard(job_id)

    def send_error(self, job_id: str, name: str, exc: BaseException) -> None:
        """Send the error with its traceback, and print the traceback to the console."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        user = isinstance(exc, CloseError)
        kind = type(exc).__name__
        if user:
            message, hint = exc.message, exc.hint
        else:
            message, hint = f"{kind}: {exc}", ""
            if isinstance(exc, MemoryError) or "OutOfMemory" in kind:
                hint = ("the worker ran out of memory; try a smaller chunk size, "
                        "fewer passes or the CPU device")
            print(f"close worker: job {name!r} failed:\n{text}", file=sys.stderr, flush=True)
        self.send(ERROR, job_id, {"message": message, "hint": hint, "kind": kind,
                                         "traceback": text, "user": user})


def main() -> int:
    # Ctrl+C in the terminal that runs Blender reaches this process too; Blender decides
    # what to do, and when it quits our stdin closes, which ends the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_freed_memory()  # before torch allocates anything (close_blender/memory.py)
    inp, out = _take_std_streams()
    code = Worker(inp, out).serve()
    # os._exit: the reader thread may still sit in a blocking read of stdin, which
    # can make normal interpreter shutdown hang or abort on the stream's lock.
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
