"""Jobs the worker process runs: a registry name -> handler(params, arrays, ctx).

A handler returns ``(fields, arrays)`` (or just ``fields``): JSON-able fields
and numpy arrays sent back to Blender. It reports progress with
``ctx.progress(fraction, stage)``, checks ``ctx.cancelled()`` between steps
(or calls ``ctx.check_cancelled()``, which raises ``Cancelled``), and keeps
expensive objects such as loaded checkpoints in ``ctx.cache`` so the next job
reuses them. Handlers raise ``CloseError`` for bad input; any other exception
reaches Blender as an internal error with its traceback.

Jobs: ``check``, ``echo``, ``sleep`` (the last two exist for tests and for
checking a worker), ``release`` (drops cached models), ``segment`` and
``fit_body``. torch and the model code are imported inside the handlers, so
the worker starts fast and ``check`` works on a Python without torch.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import platform
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np

from close_blender.defaults import PASSES
from close_blender.errors import Cancelled, CheckpointError, CloseError, ScanError
from close_blender.labels import CLASS_NAMES, N_CLASSES, garments_from_names, names_of

Fields = dict[str, Any]
Arrays = dict[str, np.ndarray]
Handler = Callable[[dict, Arrays, "JobContext"], "tuple[Fields, Arrays] | Fields"]

JOBS: dict[str, Handler] = {}

# Jobs come from Blender and from command-line tools: name both places a checkpoint is set.
CHOOSE_CHECKPOINT = "choose a checkpoint in the CloSe panel or the add-on preferences"

PACKAGES = ("numpy", "torch", "anny", "trimesh", "scipy", "safetensors", "smplx", "yaml", "PIL")


def job(name: str) -> Callable[[Handler], Handler]:
    """Register a handler under ``name``."""
    def register(fn: Handler) -> Handler:
        JOBS[name] = fn
        return fn
    return register


class ModelCache:
    """Loaded models kept between jobs, least recently used dropped beyond ``max_entries``.

    Keys built with :meth:`file_key` include the resolved path and the file's
    modification time, so a checkpoint rewritten on disk is loaded again.
    """

    def __init__(self, max_entries: int = 2) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self.loads = 0  # how many times a loader ran (tests and "check" show it)

    @staticmethod
    def file_key(path: str | os.PathLike, *extra: Hashable) -> tuple:
        """(resolved path, mtime_ns, size, *extra) of an existing file."""
        p = Path(path).expanduser().resolve()
        st = p.stat()
        return (str(p), st.st_mtime_ns, st.st_size, *extra)

    def get(self, key: Hashable, loader: Callable[[], Any]) -> Any:
        """The cached value for ``key``, loading (and caching) it on a miss."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = loader()
        self.loads += 1
        self._items[key] = value
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        return value

    def keys(self) -> list[Hashable]:
        return list(self._items)

    def clear(self) -> None:
        self._items.clear()
        free_accelerator_memory()


def free_accelerator_memory() -> None:
    """Give cached CUDA/MPS memory back, if torch is loaded at all."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mps = getattr(torch, "mps", None)
        if mps is not None and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            mps.empty_cache()
    except Exception:  # noqa: BLE001 - freeing memory is best effort
        pass


class JobContext:
    """What a handler sees of the worker: progress, cancellation and the model cache."""

    def __init__(self, send_progress: Callable[[float, str], None] | None = None,
                 cancelled: Callable[[], bool] | None = None,
                 cache: ModelCache | None = None, min_interval: float = 0.05) -> None:
        self._send = send_progress
        self._cancelled = cancelled or (lambda: False)
        self.cache = cache if cache is not None else ModelCache()
        self.min_interval = min_interval
        self._last = (-1.0, None, 0.0)  # fraction, stage, time

    def progress(self, fraction: float, stage: str = "") -> None:
        """Report progress; throttled, but a new stage or the end is always sent."""
        if self._send is None:
            return
        fraction = float(min(max(fraction, 0.0), 1.0))
        now = time.monotonic()
        _, last_stage, last_time = self._last
        if stage == last_stage and fraction < 1.0 and now - last_time < self.min_interval:
            return
        self._last = (fraction, stage, now)
        self._send(fraction, stage)

    def sub(self, start: float, end: float, prefix: str = "") -> Callable[[float, str], None]:
        """A progress callback mapping 0-1 into ``[start, end]`` of this job."""
        def report(fraction: float, stage: str = "") -> None:
            text = f"{prefix}: {stage}" if prefix and stage else (stage or prefix)
            self.progress(start + (end - start) * float(fraction), text)
        return report

    def cancelled(self) -> bool:
        return bool(self._cancelled())

    def check_cancelled(self) -> None:
        """Raise Cancelled when the user asked to stop."""
        if self.cancelled():
            raise Cancelled("cancelled by the user")


# -- small jobs ---------------------------------------------------------------

def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - not installed or broken metadata
        return None


_DIST_NAMES = {"yaml": "pyyaml", "PIL": "pillow"}


@job("check")
def check(params: dict, arrays: Arrays, ctx: JobContext) -> Fields:
    """Python, numpy and torch versions, devices found and packages present."""
    import close_blender

    packages = {}
    for name in PACKAGES:
        present = importlib.util.find_spec(name) is not None
        packages[name] = {"present": present,
                          "version": _version(_DIST_NAMES.get(name, name)) if present else None}
    info: Fields = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "pid": os.getpid(),
        "close_blender": close_blender.__version__,
        "numpy": np.__version__,
        "packages": packages,
        "torch": None,
        "torch_error": None,
        "devices": ["cpu"],
        "device_names": {"cpu": platform.processor() or platform.machine()},
        "cuda": None,
        "cached_models": len(ctx.cache.keys()),
    }
    if params.get("torch", True) and packages["torch"]["present"]:
        ctx.progress(0.1, "Importing torch")
        try:
            import torch
        except Exception as exc:  # noqa: BLE001 - report a broken torch instead of failing
            info["torch_error"] = f"{type(exc).__name__}: {exc}"
        else:
            info["torch"] = torch.__version__
            info["cuda"] = torch.version.cuda
            devices = []
            if torch.cuda.is_available():
                for i in range(torch.cuda.device_count()):
                    props = torch.cuda.get_device_properties(i)
                    dev = f"cuda:{i}"
                    devices.append(dev)
                    info["device_names"][dev] = f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"
            mps = getattr(torch.backends, "mps", None)
            if mps is not None and mps.is_available():
                devices.append("mps")
                info["device_names"]["mps"] = "Apple Metal (MPS)"
            info["devices"] = devices + ["cpu"]
            info["threads"] = torch.get_num_threads()
    ctx.progress(1.0, "Done")
    return info


@job("echo")
def echo(params: dict, arrays: Arrays, ctx: JobContext) -> tuple[Fields, Arrays]:
    """Send the arrays back unchanged (tests the array round trip).

    ``print``: text written to stdout both by Python and at the file-descriptor
    level, which must land on stderr and leave the protocol intact.
    """
    if params.get("print"):
        text = str(params["print"])
        print(text)
        sys.stdout.flush()
        os.write(1, (text + " (fd 1)\n").encode())
    fields = {"params": params,
              "arrays": {k: {"dtype": a.dtype.str, "shape": list(a.shape)} for k, a in arrays.items()}}
    return fields, dict(arrays)


@job("sleep")
def sleep(params: dict, arrays: Arrays, ctx: JobContext) -> Fields:
    """Sleep ``steps`` x ``step_s`` seconds with progress, honouring cancel between steps.

    For tests of failure paths: ``fail_at`` raises at that step (``error`` is
    "runtime", "close" or "memory"), ``crash_at`` ends the process with exit
    code 3 at that step, as a crash in native code would. ``error`` "permission"
    raises the PermissionError a read-only or full data folder gives, which must
    stay this job's error and never stop the worker.
    """
    steps = int(params.get("steps", 10))
    step_s = float(params.get("step_s", 0.05))
    for i in range(steps):
        ctx.check_cancelled()
        if params.get("crash_at") == i:
            sys.stderr.write("sleep job: simulated crash\n")
            sys.stderr.flush()
            os._exit(3)
        if params.get("fail_at") == i:
            kind = params.get("error", "runtime")
            if kind == "close":
                raise CloseError(f"simulated bad input at step {i}", "this is what a hint looks like")
            if kind == "memory":
                raise MemoryError("simulated out of memory")
            if kind == "permission":
                raise PermissionError(errno.EACCES, "Permission denied", "simulated/read-only.npz")
            raise RuntimeError(f"simulated failure at step {i}")
        ctx.progress(i / steps, f"Step {i + 1} of {steps}")
        time.sleep(step_s)
    ctx.progress(1.0, "Done")
    return {"steps": steps, "pid": os.getpid()}


@job("release")
def release(params: dict, arrays: Arrays, ctx: JobContext) -> Fields:
    """Drop cached models and give accelerator memory back."""
    n = len(ctx.cache.keys()) + len(PREPARED.keys())
    ctx.cache.clear()
    PREPARED.clear()
    return {"released": n}


# -- segmentation -------------------------------------------------------------

def _resolve_device(device: str | None) -> str:
    """A concrete, checked torch device name for "auto"/None (CUDA, then MPS, then CPU)."""
    from inference.devices import pick_device

    return str(pick_device(device or "auto"))


def _scan_inputs(arrays: Arrays) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None, list[str]]:
    """Check and unpack vertices, faces, colors, normals sent by Blender."""
    warnings: list[str] = []
    if "vertices" not in arrays:
        raise ScanError("no vertices were sent", "select a mesh with vertices")
    v = np.asarray(arrays["vertices"], dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ScanError(f"vertices have shape {v.shape}, expected (N, 3)")
    if len(v) == 0:
        raise ScanError("the mesh has no vertices", "select a mesh with vertices")
    if not np.isfinite(v).all():
        raise ScanError("the mesh has NaN or infinite vertex coordinates",
                        "fix or delete those vertices first")
    faces = arrays.get("faces")
    if faces is not None:
        faces = np.asarray(faces, dtype=np.int64)
        if faces.size == 0:
            faces = None
        elif faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= len(v):
            raise ScanError(f"faces have shape {faces.shape} or indices outside the vertices",
                            "send triangles (F, 3) indexing the vertices")
    colors = arrays.get("colors")
    if colors is None or len(colors) == 0:
        colors = np.full((len(v), 3), 0.5, np.float32)
        warnings.append("the mesh has no colours; grey was used, which lowers accuracy")
    else:
        colors = np.asarray(colors, dtype=np.float32)
        if colors.ndim != 2 or colors.shape[0] != len(v) or colors.shape[1] < 3:
            raise ScanError(f"colors have shape {colors.shape}, expected ({len(v)}, 3)")
        colors = np.nan_to_num(colors[:, :3], nan=0.5).clip(0.0, 1.0)
    normals = arrays.get("normals")
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float32)
        if normals.shape != v.shape:
            raise ScanError(f"normals have shape {normals.shape}, expected {v.shape}")
    return v, faces, colors, normals, warnings


def _garments_param(value: Any) -> tuple[np.ndarray, bool]:
    """(18,) int32 vector and whether it is "auto" (every class, then pruned)."""
    if value is None or value == "auto":
        return np.ones(N_CLASSES, np.int32), True
    try:
        garments = garments_from_names(value)
    except ValueError as exc:
        raise CloseError(str(exc), "pick garments from the class list") from None
    if not garments.any():
        raise CloseError("no garments were chosen",
                         f"choose at least one of {', '.join(CLASS_NAMES)}, or 'auto'")
    return garments, False


def _load_predictor(ctx: JobContext, checkpoint: str, device: str, chunk_size: int):
    """(LoadedCheckpoint, Predictor), cached by checkpoint file, mtime and device."""
    from inference.checkpoints import load_checkpoint, resolve_checkpoint
    from inference.predictor import predictor_for

    path = resolve_checkpoint(checkpoint)  # CheckpointError naming what is missing or wrong
    key = ModelCache.file_key(path, device, chunk_size)

    def load():
        ctx.progress(0.02, "Loading checkpoint")
        loaded = load_checkpoint(path)
        return loaded, predictor_for(loaded.model, loaded.fallback, device=device,
                                     chunk_size=chunk_size)

    return ctx.cache.get(key, load)


# Body fits of recent scans, keyed by the scan's content and the body options: segmenting
# the same mesh again (other garments, more passes) skips the fit.
PREPARED = ModelCache(max_entries=4)


def _content_key(arrays: Arrays, params: dict) -> tuple:
    digest = hashlib.sha1()
    for name in ("vertices", "faces", "colors", "normals"):
        a = arrays.get(name)
        if a is not None:
            a = np.ascontiguousarray(a)
            digest.update(f"{name}{a.dtype}{a.shape}".encode())
            digest.update(a.tobytes())
    options = tuple(str(params.get(k) or "") for k in
                    ("body", "up", "smpl_model_dir", "registration"))
    return ("prepared", digest.hexdigest(), options)


def _prepare(params: dict, arrays: Arrays, ctx: JobContext, garments: np.ndarray,
             start: float, end: float):
    """Normalize the scan and fit the body: (closed dict, BodyFit, warnings)."""
    from inference.body.prepare import prepare_arrays

    v, faces, colors, normals, warnings = _scan_inputs(arrays)
    body = params.get("body", "anny")
    if body not in ("anny", "smpl"):
        raise CloseError(f"unknown body model {body!r}", "use 'anny' or 'smpl'")

    def fit():
        return prepare_arrays(
            v, faces, colors, normals, body=body, up=params.get("up", "y"), garments=garments,
            smpl_model_dir=params.get("smpl_model_dir") or None,
            registration=params.get("registration") or None,
            progress=ctx.sub(start, end, "Body"), cancelled=ctx.cancelled)

    closed, fit_result = PREPARED.get(_content_key(arrays, params), fit)
    closed = {**closed, "garments": garments}
    return closed, fit_result, warnings


def _fit_fields(fit: Any) -> Fields:
    return {"ok": bool(getattr(fit, "ok", False)), "message": str(getattr(fit, "message", "")),
            "quality": getattr(fit, "quality", {}) or {}, "body": getattr(fit, "body", None)}


def _fit_arrays(fit: Any) -> Arrays:
    out: Arrays = {}
    if getattr(fit, "vertices", None) is not None:
        out["body_vertices"] = np.asarray(fit.vertices, dtype=np.float32)
    if getattr(fit, "faces", None) is not None:
        out["body_faces"] = np.asarray(fit.faces, dtype=np.int64)
    return out


def class_summary(labels: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class point counts (18,) int64 and mean confidence (18,) float32 (0 where absent)."""
    counts = np.bincount(labels, minlength=N_CLASSES).astype(np.int64)
    sums = np.bincount(labels, weights=confidence.astype(np.float64), minlength=N_CLASSES)
    mean = np.divide(sums, counts, out=np.zeros(N_CLASSES), where=counts > 0).astype(np.float32)
    return counts, mean


def auto_garments(labels: np.ndarray, min_share: float) -> np.ndarray:
    """Classes predicted on at least ``min_share`` of the points (never none: the largest stays)."""
    counts = np.bincount(labels, minlength=N_CLASSES)
    share = counts / max(len(labels), 1)
    keep = (share >= min_share).astype(np.int32)
    if not keep.any():
        keep[int(counts.argmax())] = 1
    return keep


@job("segment")
def segment(params: dict, arrays: Arrays, ctx: JobContext) -> tuple[Fields, Arrays]:
    """Segment a scan: fit the body, run CloSe-Net (``passes`` random chunkings averaged,
    default 2), and with garments "auto" first run one pass over all classes, then the
    final run with only the classes that cover at least ``auto_min_share`` of the scan.

    arrays: vertices (N, 3) metres y-up, optional faces (F, 3), colors (N, 3) 0-1,
    optional normals (N, 3). Labels are limited to the garments used unless
    ``restrict`` is false. Returns labels (N,) int64, confidence (N,) float32,
    class_counts and class_confidence (18,), body_vertices/body_faces of the fit.
    """
    checkpoint = params.get("checkpoint")
    if not checkpoint:
        raise CheckpointError("no checkpoint was given", CHOOSE_CHECKPOINT)
    garments, auto = _garments_param(params.get("garments", "auto"))
    passes = max(1, int(params.get("passes", PASSES)))
    min_share = float(params.get("auto_min_share", 0.01))
    seed = int(params.get("seed", 0))

    _scan_inputs(arrays)  # fail on bad input before anything slow
    device = _resolve_device(params.get("device"))
    loaded, predictor = _load_predictor(ctx, str(checkpoint), device,
                                        int(params.get("chunk_size", 2048)))
    ctx.check_cancelled()
    closed, fit, warnings = _prepare(params, arrays, ctx, garments, 0.05, 0.55)
    ctx.check_cancelled()

    def run(garm: np.ndarray, start: float, end: float, stage: str, n_passes: int = passes):
        return predictor.predict(
            closed["points"], closed["colors"], closed["normals"], closed["canon_pose"], garm,
            passes=n_passes, order=params.get("order", "shuffled"), seed=seed,
            progress=ctx.sub(start, end, stage), cancelled=ctx.cancelled)

    first_garments = None
    if auto:
        # one pass is enough to tell which classes cover 1 % of the scan
        first = run(garments, 0.55, 0.7, "Segmenting (all classes)", 1)
        first_garments = names_of(garments)
        garments = auto_garments(np.asarray(first.labels), min_share)
        ctx.check_cancelled()
        prediction = run(garments, 0.7, 0.98, "Segmenting")
    else:
        prediction = run(garments, 0.55, 0.98, "Segmenting")

    relabelled = 0
    if params.get("restrict", True):
        prediction, relabelled = prediction.restricted(garments)
    labels = np.asarray(prediction.labels, dtype=np.int64)
    confidence = np.asarray(prediction.confidence, dtype=np.float32)
    counts, mean_conf = class_summary(labels, confidence)
    fields: Fields = {
        "garments": names_of(garments),
        "auto": {"first_garments": first_garments, "min_share": min_share} if auto else None,
        "counts": {CLASS_NAMES[i]: int(c) for i, c in enumerate(counts) if c},
        "mean_confidence": {CLASS_NAMES[i]: float(mean_conf[i]) for i in range(N_CLASSES) if counts[i]},
        "fit": _fit_fields(fit),
        "checkpoint": {"path": str(getattr(loaded, "path", checkpoint)),
                       "sha256": getattr(loaded, "sha256", None)},
        "device": device,
        "passes": passes,
        "gate": prediction.source or None,  # a gated version: which weights labelled it
        "n_points": int(len(labels)),
        "relabelled": relabelled,
        "warnings": warnings,
    }
    out = {"labels": labels, "confidence": confidence,
           "class_counts": counts, "class_confidence": mean_conf, **_fit_arrays(fit)}
    ctx.progress(1.0, "Done")
    return fields, out


@job("fit_body")
def fit_body(params: dict, arrays: Arrays, ctx: JobContext) -> tuple[Fields, Arrays]:
    """Fit the body model to a scan: body mesh, fit quality and per-point canonical coordinates."""
    garments, _ = _garments_param(params.get("garments", "auto"))
    closed, fit, warnings = _prepare(params, arrays, ctx, garments, 0.0, 0.98)
    plain, param_arrays = fit_params(getattr(fit, "params", None) or {})
    out = {"canon_pose": np.asarray(closed["canon_pose"], dtype=np.float32), **_fit_arrays(fit),
           **param_arrays}
    ctx.progress(1.0, "Done")
    return {"fit": _fit_fields(fit), "params": plain, "warnings": warnings}, out


def fit_params(params: dict[str, Any]) -> tuple[Fields, Arrays]:
    """A body fit's parameters split for the wire: (plain fields, ``param_<k>`` arrays).

    Numbers travel as arrays (python numbers also as plain fields); text such
    as SMPL's ``gender``, which body fits keep as a 0-d string array, travels
    as a plain ``str`` field since string arrays cannot be sent.
    """
    plain: Fields = {}
    arrays: Arrays = {}
    for key, value in params.items():
        if isinstance(value, (bool, int, float)):
            plain[key] = value
        if isinstance(value, str):
            plain[key] = value
        elif isinstance(value, (np.ndarray, np.generic, bool, int, float)):
            a = np.asarray(value)
            if a.dtype.kind in "biufc":
                arrays[f"param_{key}"] = a
            elif a.dtype.kind in "US" and a.size == 1:
                text = a.reshape(()).item()
                plain[key] = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return plain, arrays


# Jobs defined in other modules register themselves into JOBS on import.
import inference.finetune_jobs  # noqa: E402, F401
from inference import rig_jobs  # noqa: E402, F401
