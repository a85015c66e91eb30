"""Mesh arrays -> a CloSe-D scan ready for ``predict``: normalized points, colours,
normals, the fitted body and each point's canonical coordinate.

The scan keeps the mesh's vertex order. Points are what the network wants:
y up, bounding-box centre at the origin, divided by the largest side. A scan
that arrives z-up (or in cm/mm) is first turned y-up (and into metres), which
only changes axes and units, never the heading. Extra keys beyond those of
``close_blender.scan_io``:

==============  ===========  ====================================================
key             shape        meaning
==============  ===========  ====================================================
up_rotation     (3, 3) f64   rotation taking the mesh's axes to y-up
unit_m          () f64       metres per mesh unit
body_*          various      the fitted body (``BodyFit.to_arrays``): model,
                             ok, message, parameters, quality figures
==============  ===========  ====================================================

``mesh = ((points * scale + centers) / unit_m) @ up_rotation`` recovers the
input vertices; ``scale`` and ``centers`` are in metres.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from close_blender.errors import ScanError
from close_blender.labels import CLASS_NAMES, N_CLASSES, garments_from_names
from close_blender.scan_io import check_scan, normalize_points

from .coords import canonical_coordinates, smooth_normals
from .fit import BodyFit, _check_points, _up_candidates, fit_anny, mesh_normals, pca_normals


def _up_rotation(up_row: np.ndarray) -> np.ndarray:
    """The axis permutation (a proper rotation) that takes the mesh's up axis to +y."""
    axis = int(np.argmax(np.abs(up_row)))
    sign = float(np.sign(up_row[axis])) or 1.0
    if axis == 1:
        r = np.eye(3)
    elif axis == 2:  # z-up -> y-up: (x, y, z) -> (x, z, -y)
        r = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
    else:  # x-up -> y-up: (x, y, z) -> (-y, x, z)
        r = np.array([[0, -1.0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    if sign < 0:  # upside down: turn half a circle about x (y, z negated)
        r = np.diag([1.0, -1.0, -1.0]) @ r
    return r


def prepare_arrays(vertices: Any, faces: Any = None, colors: Any = None, normals: Any = None,
                   *, body: str = "anny", up: str = "auto",
                   garments: Iterable[str] | str | np.ndarray | None = None,
                   smpl_model_dir: str | os.PathLike | None = None,
                   registration: str | os.PathLike | None = None,
                   progress: Callable[[float, str], None] | None = None,
                   cancelled: Callable[[], bool] | None = None,
                   seed: int = 0, effort: float = 1.0) -> tuple[dict[str, np.ndarray], BodyFit]:
    """The CloSe-D arrays of a scan (see the module docstring) and its body fit."""
    v = _check_points(vertices)
    n = len(v)
    f = None
    if faces is not None and np.asarray(faces).size:
        f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
        if f.min() < 0 or f.max() >= n:
            raise ScanError("the mesh's faces index vertices that do not exist")
    if colors is None:
        c = np.full((n, 3), 160, dtype=np.uint8)
    else:
        c = np.asarray(colors)
        if c.shape[0] != n or c.ndim != 2 or c.shape[1] < 3:
            raise ScanError(f"colours have shape {c.shape}, expected ({n}, 3)")
        c = c[:, :3]
        if c.dtype != np.uint8:
            cf = c.astype(np.float64)
            cf = cf * 255.0 if np.nanmax(cf) <= 1.0 + 1e-6 else cf
            c = np.nan_to_num(cf).clip(0, 255).round().astype(np.uint8)
    g = _garments(garments)

    if body == "anny":
        # the colours say which points are skin (the face's tone), which places bare hands
        fit = fit_anny(v, f, up=up, progress=progress, cancelled=cancelled, seed=seed,
                       normals=normals, effort=effort, colors=None if colors is None else c)
        rot_fit = fit.params["frame_rotation"]
        unit = float(fit.params["frame_unit"])
        up_row = rot_fit[1]
    elif body == "smpl":
        from .smpl_body import fit_from_registration

        if registration is None:
            raise ScanError("the SMPL body needs a registration of this scan",
                            "give --registration FILE (betas, body_pose, global_orient, "
                            "transl), or use --body anny for an automatic fit")
        if progress is not None:
            progress(0.1, "SMPL: posing the registration")
        fit = fit_from_registration(v, registration, smpl_model_dir)
        # a registration lives in the scan's frame; SMPL is y-up in metres
        up_row = _up_candidates(v, up if up != "auto" else "y")[0]
        unit = 1.0
    else:
        raise ScanError(f"unknown body model {body!r}", "use --body anny or --body smpl")

    if progress is not None:
        progress(0.97, "canonical coordinates and normals")
    if normals is not None:
        nrm = np.asarray(normals, dtype=np.float64).reshape(n, 3)
    elif f is not None:
        nrm = mesh_normals(v, f)
    else:  # point cloud: PCA normals take the side of the fitted body's normals
        from scipy.spatial import cKDTree

        nrm = pca_normals(v)
        bn = mesh_normals(fit.vertices.astype(np.float64), fit.faces)
        _, j = cKDTree(fit.vertices).query(v, k=1)
        nrm = nrm * np.sign(np.einsum("ij,ij->i", nrm, bn[j]) + 1e-12)[:, None]
    length = np.linalg.norm(nrm, axis=1, keepdims=True)
    nrm = np.where(length > 1e-12, nrm / np.maximum(length, 1e-12), [0.0, 1.0, 0.0])
    # Anny: interpolated on the nearest triangle, normal-aware (closer to the truth); an
    # SMPL registration keeps CloSe's nearest-vertex lookup, what the published weights saw
    if body == "smpl":
        canon = canonical_coordinates(v, fit, method="vertex")
    else:
        look = np.where(length > 1e-12, nrm, 0.0)
        if f is not None:  # a mesh's own normals are noisy: smoothed for the lookup only
            look = smooth_normals(look, f)
        canon = canonical_coordinates(v, fit, method="barycentric", normals=look)

    r_up = _up_rotation(up_row)
    v_yup = unit * (v @ r_up.T)
    points, centers, scale = normalize_points(v_yup)
    arrays: dict[str, np.ndarray] = {
        "points": points,
        "normals": (nrm @ r_up.T).astype(np.float32),
        "colors": c.astype(np.uint8),
        "canon_pose": canon.astype(np.float32),
        "garments": g,
        "scale": np.float64(scale),
        "centers": centers.astype(np.float64),
        "up_rotation": r_up.astype(np.float64),
        "unit_m": np.float64(unit),
    }
    if f is not None:
        arrays["faces"] = f
    arrays.update(fit.to_arrays())
    check_scan(arrays, source="prepared scan")
    return arrays, fit


def _garments(garments: Iterable[str] | str | np.ndarray | None) -> np.ndarray:
    if garments is None:
        return np.ones(N_CLASSES, dtype=np.int32)  # unknown: every class may be present
    if isinstance(garments, np.ndarray) and garments.dtype != object and garments.size == N_CLASSES \
            and np.isin(garments, (0, 1)).all():
        return garments.astype(np.int32).reshape(-1)
    try:
        g = garments_from_names(garments)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ScanError(str(exc), "classes: " + ", ".join(CLASS_NAMES)) from None
    if not g.any():
        raise ScanError("no garment class given", "e.g. --garments Body,TShirt,Pants")
    return g
