"""What scan jobs send the worker, built in one place.

The worker keeps the last body fits keyed by the scan and the body options
(``inference.jobs._content_key``); Segment, Show Fitted Body, Export CloSe-D,
Save Correction and Bind to Body reuse each other's fit only when they send
the same body parameters, so all of them take them from :func:`body_params`.
"""

from __future__ import annotations

import bpy
import numpy as np

from ..close_blender.errors import CloseError
from ..close_blender.labels import garments_from_labels, garments_from_names
from ..close_blender.scan_io import normalize_points
from ..panels.preferences import get_prefs
from . import mesh_labels
from .job_runner import Task
from .scan_data import ScanInput, check_target, read_scan


def body_params(context: bpy.types.Context, override: str = "PANEL") -> dict:
    """Body model options for the worker: the panel's body source (or ``override``:
    ``ANNY``/``SMPL``), the SMPL files as absolute paths, and the device."""
    settings = context.scene.close_blender
    body = settings.body_source if override == "PANEL" else override
    smpl = body == "SMPL"
    return {
        "body": body.lower(),
        "device": get_prefs(context).device.lower(),
        "smpl_model_dir": bpy.path.abspath(settings.smpl_model_dir) if smpl else "",
        "registration": bpy.path.abspath(settings.smpl_registration) if smpl else "",
    }


def closed_arrays(obj: bpy.types.Object, scan: ScanInput, context: bpy.types.Context
                  ) -> dict[str, np.ndarray]:
    """CloSe-D arrays of a scan read from Blender (no body fit): normalized points,
    colours 0-255, normals, faces, labels (all vertices must have one) and garments."""
    points, centers, scale = normalize_points(scan.vertices)
    out: dict[str, np.ndarray] = {
        "points": points,
        "normals": scan.normals.astype(np.float32),
        "colors": np.rint(np.clip(scan.colors, 0.0, 1.0) * 255.0).astype(np.uint8),
        "faces": scan.faces.astype(np.int64),
    }
    labels = mesh_labels.read_labels(obj.data)
    if labels is not None:
        missing = int((labels < 0).sum())
        if missing:
            raise CloseError(f"{missing:,} of {len(labels):,} vertices of '{obj.name}' have no "
                             "label", "label them (or segment again) before exporting")
        out["labels"] = labels.astype(np.int64)
        out["garments"] = garments_from_labels(labels)
    else:
        out["garments"] = garments_from_names(context.scene.close_blender.garment_names())
    out["scale"] = np.float64(scale)
    out["centers"] = np.asarray(centers, np.float64)
    return out


def fit_body_task(context: bpy.types.Context, obj_name: str, scan: ScanInput) -> Task:
    """A ``fit_body`` job for a scan with the panel's body options (reusing a cached fit)."""
    return Task(obj_name, "fit_body", {**body_params(context), "garments": "auto"},
                scan.worker_arrays())


def read_closed_scan(op: bpy.types.Operator, context: bpy.types.Context, obj: bpy.types.Object,
                     ) -> tuple[ScanInput, dict[str, np.ndarray]] | None:
    """The scan of ``obj`` and its CloSe-D arrays, or None after reporting why not
    (warnings about the scan are reported too)."""
    problem = check_target(obj)
    if problem:
        op.report({"ERROR"}, problem)
        return None
    try:
        scan = read_scan(obj, context)
        arrays = closed_arrays(obj, scan, context)
    except CloseError as exc:
        op.report({"ERROR"}, str(exc))
        return None
    for warning in scan.warnings:
        op.report({"WARNING"}, warning)
    return scan, arrays
