"""The worker process and its client: real subprocesses with this venv's Python.

Covers start on demand, check, the array round trip, progress, cancel, errors
with tracebacks, crashes and kills (WorkerDied, then a fresh worker), timeouts,
stdin close, a bad Python path, and the framing and job logic in-process.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from close_blender.errors import Cancelled, CheckpointError, CloseError, ScanError
from close_blender.labels import CLASS_NAMES, N_CLASSES
from close_blender.worker_client import (
    JobError,
    WorkerClient,
    WorkerDied,
    WorkerStartError,
    WorkerTimeout,
    describe_exit,
)
from close_blender.worker_protocol import (
    Message,
    MessageWriter,
    ProtocolError,
    read_message,
    wire_array,
    write_message,
)

REPO = Path(__file__).resolve().parents[1]
POSIX = os.name == "posix"


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def client():
    lines: list[str] = []
    c = WorkerClient(sys.executable, REPO, echo_stderr=lines.append)
    c.lines = lines
    yield c
    c.stop()


@pytest.fixture(autouse=True)
def _no_cached_body_fits():
    """Forget inference.jobs' body fits around each test: a fit made by a stand-in
    prepare module must never answer a later test that sends the same arrays."""
    from inference.jobs import PREPARED

    PREPARED.clear()
    yield
    PREPARED.clear()


@pytest.fixture
def fresh():
    """A client of its own, for tests that kill or break its worker."""
    c = WorkerClient(sys.executable, REPO, echo_stderr=False)
    yield c
    c.kill()


# -- framing, in-process --------------------------------------------------------

ROUND_TRIP = {
    "f32": np.random.default_rng(0).random((7, 3), dtype=np.float32),
    "f64": np.linspace(0, 1, 5),
    "i64": np.arange(-3, 3, dtype=np.int64),
    "u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
    "bool": np.array([True, False, True]),
    "c64": np.array([1 + 2j, -3j], dtype=np.complex64),
    "empty": np.zeros((0, 3), np.float32),
    "scalar": np.array(2.5),
    "big_endian": np.arange(4, dtype=">i4"),
    "strided": np.arange(20, dtype=np.int16).reshape(4, 5)[:, ::2],
    "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
}


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert b.shape == a.shape
    assert b.dtype == a.dtype.newbyteorder("<") or b.dtype == a.dtype
    np.testing.assert_array_equal(b, a)


def test_framing_round_trip_in_memory():
    buf = io.BytesIO()
    write_message(buf, Message("result", "j1", {"n": np.int64(3), "x": [1.5, None]}, ROUND_TRIP))
    write_message(buf, Message("cancel", "j2"))
    buf.seek(0)
    first = read_message(buf)
    assert (first.type, first.job, first.fields) == ("result", "j1", {"n": 3, "x": [1.5, None]})
    for name, a in ROUND_TRIP.items():
        assert_same(a, first.arrays[name])
        assert first.arrays[name].flags.writeable
    second = read_message(buf)
    assert (second.type, second.job, second.arrays) == ("cancel", "j2", {})
    assert read_message(buf) is None


def test_framing_refuses_objects_and_garbage():
    with pytest.raises(TypeError):
        wire_array(np.array([{"a": 1}], dtype=object))
    with pytest.raises(TypeError):
        wire_array(np.array(["text"]))
    with pytest.raises(ProtocolError, match="something else wrote"):
        read_message(io.BytesIO(b"hello world, not a message"))
    buf = io.BytesIO()
    write_message(buf, Message("result", "j1", {}, {"a": np.ones(100)}))
    with pytest.raises(ProtocolError, match="ended"):
        read_message(io.BytesIO(buf.getvalue()[:-10]))
    with pytest.raises(TypeError):
        MessageWriter(io.BytesIO()).send("result", "j", {"bad": object()})


def test_describe_exit():
    assert describe_exit(3) == "exit code 3"
    if POSIX:
        assert "SIGKILL" in describe_exit(-9)


# -- a running worker ----------------------------------------------------------

def test_starts_on_demand_and_checks(client):
    assert not client.alive and client.starts == 0
    assert client.check(torch=False)["torch"] is None
    info = client.check()
    assert client.alive and client.starts == 1
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["numpy"] == np.__version__
    assert "cpu" in info["devices"]
    assert info["packages"]["numpy"]["present"]
    assert info["pid"] == client.pid == client.info["pid"]
    if info["packages"]["torch"]["present"]:
        import torch

        assert info["torch"] == torch.__version__


def test_echo_round_trip_all_dtypes(client):
    big = np.random.default_rng(1).random((1_000_000, 3), dtype=np.float32)
    fields, arrays = client.run("echo", {"tag": "x"}, {**ROUND_TRIP, "big": big}, wait=60)
    assert fields["params"] == {"tag": "x"}
    assert fields["arrays"]["big"] == {"dtype": "<f4", "shape": [1_000_000, 3]}
    for name, a in ROUND_TRIP.items():
        assert_same(a, arrays[name])
    np.testing.assert_array_equal(arrays["big"], big)
    assert arrays["scalar"].shape == ()


def test_prints_in_the_worker_do_not_corrupt_the_protocol(client):
    fields, arrays = client.run("echo", {"print": "noise from a job"}, {"a": np.ones(3)}, wait=30)
    np.testing.assert_array_equal(arrays["a"], np.ones(3))
    wait_until(lambda: any("noise from a job (fd 1)" in line for line in client.lines))
    assert any(line == "noise from a job" for line in client.lines)


def test_progress_is_seen(client):
    job = client.submit("sleep", {"steps": 20, "step_s": 0.03})
    seen = set()
    while not job.done():
        assert job.poll() in ("queued", "running")
        seen.add(job.progress)
        time.sleep(0.01)
    fields, _ = job.result()
    assert fields["steps"] == 20 and job.state == "done"
    fractions = sorted(f for f, _ in seen)
    assert any(0 < f < 1 for f in fractions)
    assert any(stage.startswith("Step ") for _, stage in seen)
    assert job.progress == (1.0, "Done")


def test_cancel_mid_job_keeps_the_worker(client):
    pid = client.check()["pid"]
    job = client.submit("sleep", {"steps": 200, "step_s": 0.05})
    wait_until(lambda: job.progress[0] > 0)
    assert job.cancel()
    with pytest.raises(Cancelled):
        job.result(timeout=10)
    assert job.cancelled() and job.error is None
    assert not job.cancel()  # already finished
    assert client.run("sleep", {"steps": 1, "step_s": 0}, wait=10)[0]["pid"] == pid


def test_jobs_from_many_threads(client):
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> bool:
        a = np.full((1000 + i, 3), i, np.int32)
        _, out = client.run("echo", {"i": i}, {"a": a}, wait=30)
        return bool((out["a"] == a).all())

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(one, range(16)))


def test_the_client_imports_neither_torch_nor_bpy():
    code = ("import sys; import close_blender.worker_client; "
            "assert 'torch' not in sys.modules and 'bpy' not in sys.modules, sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_cancel_a_queued_job(client):
    first = client.submit("sleep", {"steps": 10, "step_s": 0.03})
    second = client.submit("sleep", {"steps": 10, "step_s": 0.03})
    second.cancel()
    assert first.result(timeout=10)[0]["steps"] == 10
    with pytest.raises(Cancelled):
        second.result(timeout=10)


def test_job_error_returns_traceback_and_worker_stays(client):
    pid = client.check()["pid"]
    job = client.submit("sleep", {"steps": 5, "step_s": 0.01, "fail_at": 2})
    with pytest.raises(JobError) as info:
        job.result(timeout=10)
    err = info.value
    assert job.state == "failed" and job.error is err
    assert err.kind == "RuntimeError" and not err.user
    assert "simulated failure at step 2" in err.message
    assert "Traceback" in err.traceback and "jobs.py" in err.traceback
    assert err.details == err.traceback
    wait_until(lambda: any("simulated failure" in line for line in client.lines))  # on the console

    with pytest.raises(JobError) as info:
        client.run("sleep", {"steps": 2, "fail_at": 0, "error": "close"}, wait=10)
    assert info.value.user and info.value.hint == "this is what a hint looks like"
    assert isinstance(info.value, CloseError)

    with pytest.raises(JobError, match="no job 'nope'"):
        client.run("nope", wait=10)
    assert client.check()["pid"] == pid


def test_file_error_in_a_job_is_its_error_and_the_worker_goes_on(client):
    """A PermissionError (read-only or full data folder) is the job's error, not a closed pipe."""
    pid = client.check()["pid"]
    failing = client.submit("sleep", {"steps": 3, "step_s": 0.01, "fail_at": 1,
                                      "error": "permission"})
    queued = client.submit("sleep", {"steps": 2, "step_s": 0.01})
    with pytest.raises(JobError) as info:
        failing.result(timeout=10)
    err = info.value
    assert not isinstance(err, WorkerDied) and err.kind == "PermissionError" and not err.user
    assert "Permission denied" in err.message and "simulated/read-only.npz" in err.message
    assert "Traceback" in err.traceback
    fields, _ = queued.result(timeout=10)
    assert fields["steps"] == 2 and fields["pid"] == pid
    assert client.check()["pid"] == pid


class _ClosedPipe(io.RawIOBase):
    """A stdout whose reader has gone: every write fails like a closed pipe."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_only_a_failed_send_stops_the_worker():
    from inference.worker import Worker, _PipeGone

    out = io.BytesIO()
    worker = Worker(io.BytesIO(), out)
    worker.run_job(Message("run", "j1", {"name": "sleep", "params": {
        "steps": 2, "step_s": 0, "fail_at": 0, "error": "permission"}}))
    out.seek(0)
    started, error = read_message(out), read_message(out)
    assert (started.type, error.type, error.job) == ("started", "error", "j1")
    assert error.fields["kind"] == "PermissionError"

    gone = Worker(io.BytesIO(), _ClosedPipe())
    with pytest.raises(_PipeGone):
        gone.run_job(Message("run", "j2", {"name": "sleep", "params": {"steps": 1}}))
    assert gone.serve() == 0  # the ready message cannot be sent: stop quietly


def test_killed_worker_fails_the_job_and_next_job_restarts(fresh):
    fresh.start()
    pid, starts = fresh.pid, fresh.starts
    job = fresh.submit("sleep", {"steps": 500, "step_s": 0.02})
    wait_until(lambda: job.progress[0] > 0)
    if POSIX:
        os.kill(pid, signal.SIGKILL)
    else:
        fresh._worker.proc.kill()
    with pytest.raises(WorkerDied) as info:
        job.result(timeout=10)
    assert "ended" in info.value.message and info.value.hint
    if POSIX:
        assert info.value.exit_code == -signal.SIGKILL
        assert "SIGKILL" in info.value.message
    assert not fresh.alive
    assert fresh.run("sleep", {"steps": 1}, wait=10)[0]["pid"] != pid
    assert fresh.starts == starts + 1


def test_crash_reports_exit_code_and_last_output(fresh):
    job = fresh.submit("sleep", {"steps": 5, "step_s": 0.01, "crash_at": 1})
    with pytest.raises(WorkerDied) as info:
        job.result(timeout=10)
    assert info.value.exit_code == 3
    assert "exit code 3" in info.value.message
    assert "simulated crash" in info.value.message
    assert any("simulated crash" in line for line in info.value.stderr_tail)
    assert fresh.run("echo", {}, {"a": np.arange(3)}, wait=10)[1]["a"].tolist() == [0, 1, 2]


def test_client_kill_fails_running_and_queued_jobs(fresh):
    running = fresh.submit("sleep", {"steps": 500, "step_s": 0.02})
    queued = fresh.submit("sleep", {"steps": 1})
    wait_until(lambda: running.running())
    fresh.kill()
    assert running.done() and queued.done()  # kill() returns after the jobs failed
    assert isinstance(running.error, WorkerDied) and isinstance(queued.error, WorkerDied)
    assert not fresh.alive
    fresh.run("sleep", {"steps": 1}, wait=10)
    assert fresh.alive


def test_timeout_kills_a_silent_job(fresh):
    job = fresh.submit("sleep", {"steps": 1, "step_s": 30}, timeout=0.5)
    with pytest.raises(WorkerTimeout, match="sent nothing"):
        job.result(timeout=15)
    assert not fresh.alive
    # progress keeps a long job alive: 1.2 s of work in 0.1 s steps under a 0.8 s timeout
    assert fresh.run("sleep", {"steps": 12, "step_s": 0.1}, timeout=0.8, wait=15)[0]["steps"] == 12


def test_cancel_of_a_job_that_does_not_stop_kills_its_worker():
    c = WorkerClient(sys.executable, REPO, echo_stderr=False, cancel_grace=0.3)
    try:
        stuck = c.submit("sleep", {"steps": 1, "step_s": 30})
        queued = c.submit("sleep", {"steps": 1})
        wait_until(lambda: stuck.running())
        pid = c.pid
        stuck.cancel()
        with pytest.raises(Cancelled):
            stuck.result(timeout=10)
        with pytest.raises(WorkerDied, match="did not stop within"):
            queued.result(timeout=10)
        assert c.run("sleep", {"steps": 1}, wait=10)[0]["pid"] != pid
    finally:
        c.kill()


def test_install_command_needs_online_access(tmp_path):
    from close_blender.worker_client import install_command

    with pytest.raises(CloseError, match="online access"):
        install_command("python", tmp_path, ["torch"], online_access=False)
    cmd = install_command("python", tmp_path, ["torch==2.13.0"], online_access=True)
    assert cmd[:3] == ["python", "-m", "pip"] and str(tmp_path) in cmd and cmd[-1] == "torch==2.13.0"


def test_result_wait_timeout_leaves_job_running(fresh):
    job = fresh.submit("sleep", {"steps": 10, "step_s": 0.05})
    with pytest.raises(TimeoutError):
        job.result(timeout=0.05)
    assert job.result(timeout=10)[0]["steps"] == 10


def test_stop_cancels_and_ends_the_worker(fresh):
    fresh.start()
    proc = fresh._worker.proc
    job = fresh.submit("sleep", {"steps": 500, "step_s": 0.02})
    wait_until(lambda: job.running())
    fresh.stop(timeout=10)
    assert proc.returncode == 0
    assert job.cancelled()
    assert not fresh.alive


def test_stdin_close_ends_the_worker():
    env = WorkerClient(sys.executable, REPO).environment()
    proc = subprocess.Popen([sys.executable, "-X", "utf8", "-u", "-m", "inference.worker"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=REPO, env=env)
    try:
        ready = read_message(proc.stdout)
        assert ready.type == "ready" and ready.fields["pid"] == proc.pid
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
        assert read_message(proc.stdout) is None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def test_stdin_close_mid_job_ends_the_worker():
    """Blender quitting (or being killed) while a job runs: the job stops, the worker exits."""
    env = WorkerClient(sys.executable, REPO).environment()
    proc = subprocess.Popen([sys.executable, "-X", "utf8", "-u", "-m", "inference.worker"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=REPO, env=env)
    try:
        assert read_message(proc.stdout).type == "ready"
        write_message(proc.stdin, Message("run", "j1", {"name": "sleep",
                                                        "params": {"steps": 1000, "step_s": 0.02}}))
        assert read_message(proc.stdout).type == "started"
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def test_bad_python_path_is_a_clear_error(tmp_path):
    bad = WorkerClient(str(tmp_path / "no-such-python"), REPO)
    with pytest.raises(WorkerStartError, match="does not exist") as info:
        bad.submit("check")
    assert "preferences" in info.value.hint
    assert not bad.alive


@pytest.mark.skipif(not POSIX, reason="uses shell scripts as fake interpreters")
def test_not_a_working_python_fails_while_starting(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'No module named numpy' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(WorkerDied, match="while starting.*No module named numpy") as info:
        WorkerClient(str(fake), REPO, echo_stderr=False).check(timeout=10)
    assert info.value.exit_code == 1 and "preferences" in info.value.hint

    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    slow = WorkerClient(str(hang), REPO, echo_stderr=False, startup_timeout=0.5)
    with pytest.raises(WorkerTimeout, match="did not start"):
        slow.check(timeout=10)
    assert not slow.alive


def test_environment_drops_blenders_python_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONHOME", "/blender/python")
    monkeypatch.setenv("PYTHONPATH", "/blender/scripts")
    env = WorkerClient(sys.executable, REPO, {"PYTHONPATH": str(tmp_path), "X_Y": 1}).environment()
    assert "PYTHONHOME" not in env
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), str(tmp_path)]
    assert env["X_Y"] == "1"


# -- job handlers in-process -----------------------------------------------------

def test_model_cache_reloads_changed_files(tmp_path):
    from inference.jobs import ModelCache

    cache = ModelCache(max_entries=2)
    f = tmp_path / "model.bin"
    f.write_bytes(b"one")
    assert cache.get(cache.file_key(f), lambda: "v1") == "v1"
    assert cache.get(cache.file_key(f), lambda: "other") == "v1" and cache.loads == 1
    f.write_bytes(b"second")
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cache.get(cache.file_key(f), lambda: "v2") == "v2"
    cache.get("x", lambda: 1)
    assert len(cache.keys()) == 2
    cache.clear()
    assert cache.keys() == []


def test_progress_is_throttled_but_stages_and_end_pass():
    from inference.jobs import JobContext

    sent = []
    ctx = JobContext(send_progress=lambda f, s: sent.append((f, s)), min_interval=10.0)
    for i in range(100):
        ctx.progress(i / 100, "A")
    ctx.progress(0.5, "B")
    ctx.sub(0.5, 1.0, "Fit")(1.0, "x")
    assert sent == [(0.0, "A"), (0.5, "B"), (1.0, "Fit: x")]


class _FakePredictor:
    """Stands in for inference.predictor.Predictor: labels follow x, limited to the garments."""

    calls: list[np.ndarray] = []
    passes: list[int] = []

    def __init__(self, model, device="auto", chunk_size=2048):
        self.device = device

    def predict(self, points, colors, normals, canon, garments, *, passes=1, order="shuffled",
                seed=0, progress=None, cancelled=None):
        _FakePredictor.calls.append(np.asarray(garments).copy())
        _FakePredictor.passes.append(passes)
        allowed = np.flatnonzero(garments)
        n = len(points)
        # 90 % Body (1), 9.5 % TShirt (3), 0.5 % Hat (0): Hat is below the 1 % auto share
        wanted = np.full(n, 1)
        wanted[: n * 95 // 1000] = 3
        wanted[: n * 5 // 1000] = 0
        labels = np.where(np.isin(wanted, allowed), wanted, allowed[0]).astype(np.int64)
        if progress:
            progress(1.0, "chunks")
        conf = np.full(n, 0.75, np.float32)
        return _FakePrediction(labels, conf)


class _FakePrediction(types.SimpleNamespace):
    def __init__(self, labels, confidence):
        super().__init__(labels=labels, confidence=confidence, source="")

    def restricted(self, garments):  # the labels above already keep to the garments
        assert np.asarray(garments)[self.labels].all()
        return self, 0


def _fake_model_modules(monkeypatch, tmp_path, network: bool = True):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights")

    def prepare_arrays(vertices, faces=None, colors=None, normals=None, *, body, up, garments,
                       smpl_model_dir, registration, progress, cancelled):
        assert up == "y" and body == "anny"
        progress(0.5, "fitting")
        n = len(vertices)
        closed = {"points": vertices, "colors": (colors * 255).astype(np.uint8),
                  "normals": np.zeros((n, 3), np.float32), "canon_pose": vertices,
                  "garments": garments}
        fit = types.SimpleNamespace(vertices=np.zeros((4, 3)), faces=np.zeros((2, 3), int),
                                    quality={"residual_mean_m": np.float32(0.01)}, ok=True,
                                    message="good fit", body="anny", params={})
        return closed, fit

    from inference.checkpoints import resolve_checkpoint  # the real checks, before the stand-in

    checkpoints = types.ModuleType("inference.checkpoints")
    checkpoints.resolve_checkpoint = resolve_checkpoint
    checkpoints.load_checkpoint = lambda spec: types.SimpleNamespace(
        model=None, fallback=None, path=Path(spec), sha256="abc")
    predictor = types.ModuleType("inference.predictor")
    predictor.Predictor = _FakePredictor
    predictor.predictor_for = lambda model, fallback=None, **kw: _FakePredictor(model, **kw)
    prepare = types.ModuleType("inference.body.prepare")
    prepare.prepare_arrays = prepare_arrays
    if network:
        monkeypatch.setitem(sys.modules, "inference.checkpoints", checkpoints)
        monkeypatch.setitem(sys.modules, "inference.predictor", predictor)
    monkeypatch.setitem(sys.modules, "inference.body.prepare", prepare)
    return ckpt


def test_segment_auto_garments_with_stand_in_models(monkeypatch, tmp_path):
    from inference.jobs import JobContext, segment

    ckpt = _fake_model_modules(monkeypatch, tmp_path)
    _FakePredictor.calls, _FakePredictor.passes = [], []
    n = 2000
    arrays = {"vertices": np.random.default_rng(0).random((n, 3), dtype=np.float32),
              "colors": np.full((n, 3), 0.2, np.float32)}
    progress = []
    ctx = JobContext(send_progress=lambda f, s: progress.append((f, s)), min_interval=0)
    fields, out = segment({"checkpoint": str(ckpt), "device": "cpu"}, arrays, ctx)
    assert len(_FakePredictor.calls) == 2 and _FakePredictor.calls[0].all()
    assert _FakePredictor.passes == [1, 2] and fields["passes"] == 2  # detect in one pass
    assert fields["gate"] is None  # not a gated version
    assert fields["garments"] == ["Body", "TShirt"]  # Hat (0.5 %) dropped by the 1 % rule
    assert fields["auto"]["first_garments"] == list(CLASS_NAMES)
    assert out["labels"].dtype == np.int64 and out["labels"].shape == (n,)
    assert out["confidence"].dtype == np.float32
    assert out["class_counts"].shape == (N_CLASSES,) and out["class_counts"].sum() == n
    assert fields["counts"] == {"Body": 1820, "TShirt": 180}  # Hat points fall back to Body
    assert fields["mean_confidence"]["Body"] == pytest.approx(0.75)
    assert fields["fit"]["ok"] and out["body_faces"].dtype == np.int64
    assert progress[-1] == (1.0, "Done") and any("Body" in s for _, s in progress)
    # the checkpoint is loaded once and reused by the next job
    segment({"checkpoint": str(ckpt), "device": "cpu", "garments": ["Body", "Hat"]}, arrays, ctx)
    assert ctx.cache.loads == 1
    assert CLASS_NAMES[int(np.flatnonzero(_FakePredictor.calls[-1])[0])] == "Hat"


def test_fit_body_sends_text_params_as_plain_fields(monkeypatch):
    """SMPL's gender is a 0-d string array in the fit; it reaches Blender as fields["params"]."""
    from inference.jobs import JobContext, fit_body

    betas = np.arange(10, dtype=np.float32)

    def prepare_arrays(vertices, faces=None, colors=None, normals=None, **_):
        n = len(vertices)
        closed = {"points": vertices, "colors": np.zeros((n, 3), np.uint8),
                  "normals": np.zeros((n, 3), np.float32), "canon_pose": vertices}
        fit = types.SimpleNamespace(
            vertices=np.zeros((4, 3)), faces=np.zeros((2, 3), int), quality={}, ok=True,
            message="fit", body="smpl",
            params={"gender": np.array("female"), "betas": betas, "scale": np.float32(1.5),
                    "source": "registration", "label": np.array(b"bytes"), "steps": 3})
        return closed, fit

    prepare = types.ModuleType("inference.body.prepare")
    prepare.prepare_arrays = prepare_arrays
    monkeypatch.setitem(sys.modules, "inference.body.prepare", prepare)
    vertices = np.random.default_rng(5).random((20, 3), dtype=np.float32)
    fields, arrays = fit_body({"body": "smpl"}, {"vertices": vertices}, JobContext())
    assert fields["params"] == {"gender": "female", "source": "registration", "label": "bytes",
                                "steps": 3}
    assert all(type(v) in (str, int) for v in fields["params"].values())
    np.testing.assert_array_equal(arrays["param_betas"], betas)
    assert arrays["param_scale"] == np.float32(1.5) and arrays["param_steps"] == 3
    assert not {"param_gender", "param_source", "param_label"} & set(arrays)
    for a in arrays.values():
        wire_array(a)  # everything returned as an array can travel


def test_restricted_prediction_moves_excluded_labels():
    from inference.predictor import Prediction

    probs = np.array([[0.1, 0.6, 0.3] + [0] * 15, [0.7, 0.1, 0.2] + [0] * 15], np.float32)
    pred = Prediction(logits=np.log(probs + 1e-9), probabilities=probs, labels=probs.argmax(1),
                      confidence=probs.max(1), entropy=np.zeros(2, np.float32))
    garments = np.zeros(N_CLASSES, np.int32)
    garments[[1, 2]] = 1
    out, changed = pred.restricted(garments)
    assert out.labels.tolist() == [1, 2] and changed == 1
    np.testing.assert_allclose(out.confidence, [0.6, 0.2])
    np.testing.assert_array_equal(out.probabilities, probs)  # the network's, unchanged
    assert pred.labels.tolist() == [1, 0]  # the original is not modified
    garments[0] = 1
    assert pred.restricted(garments) == (pred, 0)


def test_segment_bad_input_is_a_user_error(monkeypatch, tmp_path):
    from inference.jobs import JobContext, segment

    ckpt = _fake_model_modules(monkeypatch, tmp_path)
    ctx = JobContext()
    with pytest.raises(CheckpointError):
        segment({}, {"vertices": np.zeros((3, 3))}, ctx)
    with pytest.raises(ScanError, match="shape"):
        segment({"checkpoint": str(ckpt)}, {"vertices": np.zeros((3, 2))}, ctx)
    with pytest.raises(ScanError, match="NaN"):
        segment({"checkpoint": str(ckpt)}, {"vertices": np.full((3, 3), np.nan)}, ctx)
    with pytest.raises(CloseError, match="unknown class"):
        segment({"checkpoint": str(ckpt), "garments": ["Cape"]}, {"vertices": np.zeros((3, 3))}, ctx)
    with pytest.raises(CheckpointError, match="not found"):
        segment({"checkpoint": str(tmp_path / "missing.pth"), "device": "cpu"},
                {"vertices": np.zeros((3, 3))}, ctx)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        segment({"checkpoint": str(other), "device": "cpu"},
                {"vertices": np.zeros((3, 3))}, ctx)
    with pytest.raises(CloseError, match="unknown device"):
        segment({"checkpoint": str(ckpt), "device": "tpu"}, {"vertices": np.zeros((3, 3))}, ctx)
    with pytest.raises(CheckpointError) as info:
        segment({}, {"vertices": np.zeros((3, 3))}, ctx)
    assert "CloSe panel" in info.value.hint and "add-on preferences" in info.value.hint


@pytest.mark.slow
def test_segment_with_the_real_network_and_a_stand_in_body(monkeypatch, tmp_path,
                                                           closenet_reference):
    """load_checkpoint + Predictor as the worker uses them; the body fit is stood in for."""
    pytest.importorskip("inference.checkpoints")
    pytest.importorskip("inference.predictor")
    from inference.jobs import JobContext, segment

    _fake_model_modules(monkeypatch, tmp_path, network=False)
    rng = np.random.default_rng(0)
    n = 300
    arrays = {"vertices": rng.normal(size=(n, 3)).astype(np.float32) * 0.2,
              "colors": rng.random((n, 3), dtype=np.float32)}
    ctx = JobContext()
    params = {"checkpoint": str(closenet_reference / "closenet.pth"), "device": "cpu",
              "garments": "auto", "chunk_size": 128}
    fields, out = segment(params, arrays, ctx)
    assert out["labels"].shape == (n,) and out["labels"].dtype == np.int64
    assert np.isin(out["labels"], [CLASS_NAMES.index(g) for g in fields["garments"]]).all()
    assert ((out["confidence"] > 0) & (out["confidence"] <= 1)).all()
    assert len(fields["checkpoint"]["sha256"]) == 64 and fields["device"] == "cpu"
    assert 0 <= fields["relabelled"] < n
    segment({**params, "garments": ["Body", "Pants"]}, arrays, ctx)
    assert ctx.cache.loads == 1


def _obj_vertices_and_colors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [line.split()[1:7] for line in path.read_text().splitlines() if line.startswith("v ")]
    data = np.asarray(rows, dtype=np.float32)
    return data[:, :3], data[:, 3:6]


@pytest.mark.slow
def test_segment_end_to_end_in_the_worker(client, closenet_reference, shared):
    """Real checkpoint, predictor and body fit in the worker, on a real (subsampled) scan."""
    pytest.importorskip("inference.checkpoints")
    pytest.importorskip("inference.predictor")
    pytest.importorskip("inference.body.prepare")
    vertices, colors = _obj_vertices_and_colors(
        shared / "real_inputs" / "pifu_ryota" / "result_ryota.obj")  # y-up, about 1.7 units tall
    vertices, colors = vertices[::10].copy(), colors[::10].copy()
    n = len(vertices)
    job = client.submit("segment", {"checkpoint": str(closenet_reference / "closenet.pth"),
                                     "garments": "auto", "device": "cpu"},
                        {"vertices": vertices, "colors": colors})
    fields, arrays = job.result(timeout=600)
    assert arrays["labels"].shape == (n,) and arrays["confidence"].shape == (n,)
    assert fields["garments"] and sum(fields["counts"].values()) == n
    assert arrays["body_vertices"].ndim == 2 and set(fields["fit"]) >= {"ok", "message", "quality"}
    few = vertices[::4].copy()
    fit_fields, fit_arrays = client.run("fit_body", {}, {"vertices": few}, wait=600)
    assert fit_arrays["canon_pose"].shape == (len(few), 3) and "ok" in fit_fields["fit"]
