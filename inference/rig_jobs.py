"""Worker job ``body_rig``: the fitted body as a skeleton plus skin weights for a scan.

Anny's 104 bones for the automatic fit; SMPL's 24 joints (named pelvis,
left_hip, ...) when the body is an SMPL registration.

Blender builds an armature and vertex groups from what this returns, so the
scan (or garments cut from it) can be posed. Everything is in the scan's
world frame, metres, y up (Blender turns it to z up):

* ``bone_matrices`` (J, 4, 4): each posed bone's frame; column 1 (y) points
  from head to tail (Blender's bone convention, which Anny's rig follows),
  the translation is the head; ``bone_lengths`` (J,); ``bone_parents`` (J,)
  int32 (-1 for the root); ``fields["bones"]`` the bone names;
* ``body_vertices`` / ``body_faces``: the posed body;
* ``weight_bones`` / ``weight_values`` (M, K): for each query point (the
  vertices to bind), the K most influential bones and their weights (summing
  to 1), blended barycentrically from the skin weights of the three body
  vertices of the nearest body surface point.

The body comes from the same preparation (and its cache) as ``segment`` and
``fit_body``, or from a saved fit (``fit_file``: a CloSe-D npz holding the
``body_*`` keys written by the Blender export) so binding again costs no fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from close_blender.errors import CloseError, ScanError

from .jobs import Arrays, Fields, JobContext, _fit_fields, _garments_param, _prepare, job

TOP_K = 4
MIN_BONE_LENGTH = 0.02  # metres; leaf bones get a visible length


class SavedFit:
    """A body fit read back from ``body_*`` keys (the subset the rig needs)."""

    def __init__(self, body: str, params: dict[str, np.ndarray], message: str = "") -> None:
        self.body = body
        self.params = params
        self.ok = True
        self.message = message or "body fit loaded from file"
        self.quality: dict = {}


FIT_KEYS = ("phenotypes", "pose", "global_orient", "transl", "scale", "frame_rotation",
            "frame_centre", "frame_unit")
SMPL_FIT_KEYS = ("betas", "body_pose", "global_orient", "transl", "scale")
SMPL_JOINTS = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hand", "right_hand",
)


def load_fit_file(path: str) -> SavedFit:
    """A saved fit from a CloSe-D npz (``body_model`` and ``body_<param>`` keys)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CloseError(f"no body fit file at {p}", "choose a .npz written by Export CloSe-D")
    with np.load(p, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    body = str(arrays.get("body_model", "anny"))
    keys = SMPL_FIT_KEYS if body == "smpl" else FIT_KEYS
    missing = [k for k in keys if f"body_{k}" not in arrays]
    if missing:
        raise CloseError(f"{p.name} holds no complete body fit (missing "
                         f"{', '.join('body_' + k for k in missing)})",
                         "export the scan with its body fit, or leave the fit file empty")
    params = {k: np.asarray(arrays[f"body_{k}"]) for k in keys}
    if "body_gender" in arrays:
        params["gender"] = np.asarray(arrays["body_gender"])
    return SavedFit(body, params, str(arrays.get("body_message", "")))


def anny_skeleton(fit: Any) -> dict[str, Any]:
    """Posed Anny (default topology) of a fit, in the scan frame: vertices, faces,
    bone matrices, lengths, parents, names, skin indices/weights."""
    import torch

    from inference.body.anny_body import AnnyBody

    body = AnnyBody("default")
    prm = fit.params
    pose = np.array(prm["pose"], dtype=np.float32, copy=True)
    pose[0] = prm["global_orient"]
    with torch.no_grad():
        out = body.forward_full(np.asarray(prm["phenotypes"], np.float32)[None], pose[None],
                                np.asarray(prm["transl"], np.float32)[None],
                                float(prm["scale"]))
    verts = out["vertices"][0].cpu().numpy().astype(np.float64)
    mats = out["bone_poses"][0].cpu().numpy().astype(np.float64)
    # fit frame -> scan frame: p_scan = (p_fit / unit) @ R + centre
    rot = np.asarray(prm["frame_rotation"], np.float64)
    centre = np.asarray(prm["frame_centre"], np.float64)
    unit = float(prm["frame_unit"])
    verts = (verts / unit) @ rot + centre
    scan_mats = np.zeros_like(mats)
    scan_mats[:, :3, :3] = rot.T @ mats[:, :3, :3]
    scan_mats[:, :3, 3] = (mats[:, :3, 3] / unit) @ rot + centre
    scan_mats[:, 3, 3] = 1.0
    parents = np.asarray(body.bone_parents, np.int64)
    return {"vertices": verts, "faces": body.faces, "matrices": scan_mats,
            "lengths": bone_lengths(scan_mats, parents), "parents": parents,
            "names": list(body.bone_labels), "skin_indices": body.skin_indices,
            "skin_weights": body.skin_weights}


def smpl_skeleton(fit: Any, model_dir: str) -> dict[str, Any]:
    """Posed SMPL of a registration fit (already in the scan frame): its 24 joints as
    bones. Each bone's y axis points to its child joint (for branching joints the
    child most along the joint's own up axis; leaves keep their parent's axis), its
    x axis follows the joint's posed rotation."""
    import torch
    from scipy.spatial.transform import Rotation

    from inference.body.smpl_body import SMPLBody

    if not model_dir:
        raise CloseError("binding to an SMPL body needs the SMPL model files",
                         "set the SMPL model folder in the CloSe panel")
    prm = fit.params
    gender = str(np.asarray(prm.get("gender", "neutral")).reshape(-1)[0])
    body = SMPLBody(model_dir, gender)
    nb = body.model.num_betas
    betas = np.zeros(nb, np.float32)
    given = np.asarray(prm["betas"], np.float32).reshape(-1)[:nb]
    betas[:len(given)] = given
    pose = np.concatenate([np.asarray(prm["global_orient"], np.float64).reshape(3),
                           np.asarray(prm["body_pose"], np.float64).reshape(-1)])
    scale = float(np.asarray(prm.get("scale", 1.0)).reshape(-1)[0])
    transl = np.asarray(prm["transl"], np.float64).reshape(3)
    with torch.no_grad():
        out = body.model(betas=torch.as_tensor(betas)[None],
                         global_orient=torch.as_tensor(pose[:3], dtype=torch.float32)[None],
                         body_pose=torch.as_tensor(pose[3:], dtype=torch.float32)[None])
    parents = np.asarray(body.bone_parents, np.int64)
    nj = len(parents)
    verts = out.vertices[0].numpy().astype(np.float64) * scale + transl
    heads = out.joints[0, :nj].numpy().astype(np.float64) * scale + transl
    local = Rotation.from_rotvec(pose.reshape(-1, 3)[:nj]).as_matrix()
    glob = np.zeros((nj, 3, 3))
    for j in range(nj):  # parents come first in SMPL's kinematic tree
        glob[j] = local[j] if parents[j] < 0 else glob[parents[j]] @ local[j]
    mats = np.zeros((nj, 4, 4))
    for j in range(nj):
        children = np.flatnonzero(parents == j)
        dirs = [heads[c] - heads[j] for c in children
                if np.linalg.norm(heads[c] - heads[j]) > 1e-6]
        if dirs:
            y = max(dirs, key=lambda d: float(d @ glob[j][:, 1]) / np.linalg.norm(d))
            y = y / np.linalg.norm(y)
        else:
            y = mats[parents[j], :3, 1] if parents[j] >= 0 else glob[j][:, 1]
        x = glob[j][:, 0] - (glob[j][:, 0] @ y) * y
        if np.linalg.norm(x) < 1e-6:
            x = glob[j][:, 2] - (glob[j][:, 2] @ y) * y
        x /= np.linalg.norm(x)
        mats[j, :3, 0], mats[j, :3, 1], mats[j, :3, 2] = x, y, np.cross(x, y)
        mats[j, :3, 3] = heads[j]
        mats[j, 3, 3] = 1.0
    names = list(SMPL_JOINTS) if nj == len(SMPL_JOINTS) else list(body.bone_labels)
    return {"vertices": verts, "faces": body.faces, "matrices": mats,
            "lengths": bone_lengths(mats, parents), "parents": parents, "names": names,
            "skin_indices": body.skin_indices, "skin_weights": body.skin_weights}


def bone_lengths(mats: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Length of each bone: to the nearest child head lying along its y axis, else
    half its parent's length (leaves, branching bones), never below MIN_BONE_LENGTH."""
    heads = mats[:, :3, 3]
    axes = mats[:, :3, 1]
    n = len(parents)
    lengths = np.zeros(n)
    for j in range(n):
        children = np.flatnonzero(parents == j)
        best = np.inf
        for c in children:
            d = heads[c] - heads[j]
            dist = float(np.linalg.norm(d))
            if dist > 1e-6 and float(d @ axes[j]) > 0.98 * dist:
                best = min(best, dist)
        lengths[j] = best if np.isfinite(best) else 0.0
    for j in range(n):  # parents come before children in Anny's order
        if lengths[j] <= 0.0:
            lengths[j] = 0.5 * lengths[parents[j]] if parents[j] >= 0 else 0.1
    return np.maximum(lengths, MIN_BONE_LENGTH)


def transfer_weights(points: np.ndarray, body_vertices: np.ndarray, faces: np.ndarray,
                     skin_indices: np.ndarray, skin_weights: np.ndarray, n_bones: int,
                     k: int = TOP_K, chunk: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (bone, weight) per point from the nearest body surface point.

    The nearest point is searched on the triangles around the 3 nearest body
    vertices (KD-tree); its barycentric weights blend the three vertices' skin
    weights. Returns (M, k) int32 bones and (M, k) float32 weights summing to 1
    (unused slots: bone 0, weight 0).
    """
    from scipy.spatial import cKDTree

    from inference.body.coords import _closest_on_triangles, _vertex_faces

    p = np.asarray(points, np.float64)
    bv = np.asarray(body_vertices, np.float64)
    f = np.asarray(faces, np.int64)
    tree = cKDTree(bv)
    vf = _vertex_faces(len(bv), f)
    out_b = np.zeros((len(p), k), np.int32)
    out_w = np.zeros((len(p), k), np.float32)
    for s in range(0, len(p), chunk):
        q = p[s:s + chunk]
        _, jj = tree.query(q, k=3)
        cand = vf[jj].reshape(len(q), -1)
        valid = cand >= 0
        tri = f[np.where(valid, cand, 0)]
        a, b, c = bv[tri[..., 0]], bv[tri[..., 1]], bv[tri[..., 2]]
        closest, bary = _closest_on_triangles(q[:, None, :], a, b, c)
        d = np.where(valid, ((closest - q[:, None, :]) ** 2).sum(-1), np.inf)
        best = d.argmin(1)
        rows = np.arange(len(q))
        t = tri[rows, best]                       # (m, 3) body vertices
        wb = bary[rows, best]                     # (m, 3)
        bones = skin_indices[t].reshape(len(q), -1)                      # (m, 27)
        weights = (skin_weights[t] * wb[..., None]).reshape(len(q), -1)  # (m, 27)
        dense_key = rows[:, None] * n_bones + bones
        uniq, inv = np.unique(dense_key.reshape(-1), return_inverse=True)
        summed = np.bincount(inv, weights=weights.reshape(-1))
        row_of = uniq // n_bones
        bone_of = uniq % n_bones
        order = np.lexsort((-summed, row_of))     # by row, heaviest first
        row_sorted = row_of[order]
        first = np.searchsorted(row_sorted, rows)
        rank = np.arange(len(order)) - first[row_sorted]
        keep = rank < k
        out_b[s + row_sorted[keep], rank[keep]] = bone_of[order][keep]
        out_w[s + row_sorted[keep], rank[keep]] = summed[order][keep]
    total = out_w.sum(1, keepdims=True)
    out_w = np.where(total > 0, out_w / np.maximum(total, 1e-12), 0.0).astype(np.float32)
    return out_b, out_w


@job("body_rig")
def body_rig(params: dict, arrays: Arrays, ctx: JobContext) -> tuple[Fields, Arrays]:
    """Skeleton of the body fitted to the scan and skin weights for ``query_points``.

    arrays: the scan (vertices, faces, colors, normals as for ``fit_body``) and
    ``query_points`` (M, 3), the vertices to bind, same frame. params: as
    ``fit_body`` (body, smpl_model_dir, registration) plus ``fit_file`` (a saved
    fit, skips fitting) and ``top_k``.
    """
    query = arrays.get("query_points")
    if query is None or np.asarray(query).ndim != 2 or np.asarray(query).shape[1] != 3:
        raise ScanError("no points to bind were sent", "select the scan or its garments")
    warnings: list[str] = []
    fit_file = params.get("fit_file") or ""
    if fit_file:
        ctx.progress(0.05, "Loading the body fit")
        fit = load_fit_file(str(fit_file))
    else:
        garments, _ = _garments_param(params.get("garments", "auto"))
        _, fit, warnings = _prepare(params, arrays, ctx, garments, 0.0, 0.8)
    ctx.check_cancelled()
    kind = str(getattr(fit, "body", "anny"))
    if kind not in ("anny", "smpl"):
        raise CloseError(f"binding to a {kind!r} body fit is not available",
                         "use the Anny body or an SMPL registration")
    ctx.progress(0.82, "Skeleton")
    sk = smpl_skeleton(fit, str(params.get("smpl_model_dir") or "")) if kind == "smpl" \
        else anny_skeleton(fit)
    ctx.check_cancelled()
    ctx.progress(0.88, "Skin weights")
    bones, weights = transfer_weights(np.asarray(query), sk["vertices"], sk["faces"],
                                      sk["skin_indices"], sk["skin_weights"], len(sk["names"]),
                                      k=int(params.get("top_k", TOP_K)))
    ctx.progress(1.0, "Done")
    fields: Fields = {"fit": _fit_fields(fit), "bones": sk["names"], "body": kind,
                      "warnings": warnings}
    out: Arrays = {
        "bone_matrices": sk["matrices"].astype(np.float32),
        "bone_lengths": sk["lengths"].astype(np.float32),
        "bone_parents": sk["parents"].astype(np.int32),
        "body_vertices": sk["vertices"].astype(np.float32),
        "body_faces": np.asarray(sk["faces"], np.int64),
        "weight_bones": bones,
        "weight_values": weights,
    }
    return fields, out
