"""SMPL through ``smplx``, for users who hold the SMPL model files and a registration.

The project cannot ship or download SMPL; the user points at a folder (or a
file) with ``SMPL_NEUTRAL.pkl`` / ``SMPL_MALE.pkl`` / ``SMPL_FEMALE.pkl`` (or
``.npz``) and gives a registration in the format of CloSe's preparation script:
``betas`` (10), ``body_pose`` (69), ``global_orient`` (3), ``transl`` (3),
optional ``scale`` and ``gender``, as ``.pkl`` or ``.npz``.

Pickles are read with a restricted unpickler that only builds numpy arrays and
scipy sparse matrices, so a model or registration file cannot run code.

Posed vertices = smplx output x scale + transl (the body frame is SMPL's own:
y up, metres); canonical = the template vertices centred at their centroid,
which is the frame the published CloSe-Net weights learned.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from close_blender.errors import CloseError

from .model import BodyModel

GENDERS = ("neutral", "male", "female")
_MODEL_NAMES = {
    "neutral": ("SMPL_NEUTRAL", "basicModel_neutral_lbs_10_207_0_v1.0.0"),
    "male": ("SMPL_MALE", "basicmodel_m_lbs_10_207_0_v1.0.0"),
    "female": ("SMPL_FEMALE", "basicModel_f_lbs_10_207_0_v1.0.0"),
}
MODEL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("scipy.sparse.csc", "csc_matrix"), ("scipy.sparse._csc", "csc_matrix"),
    ("scipy.sparse.csr", "csr_matrix"), ("scipy.sparse._csr", "csr_matrix"),
    ("builtins", "object"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("__builtin__", "object"), ("_codecs", "encode"),  # protocol-2 bytes
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module.startswith("chumpy"):
            raise CloseError(
                "this SMPL file stores chumpy objects (the original SMPL 1.0 release)",
                "use the SMPL files without chumpy (the SMPL 1.1 python release, or convert "
                "them once with a script that saves plain numpy arrays)")
        raise CloseError(f"the file asks to build {module}.{name}, which is not plain data",
                         "only pickles of numpy arrays and dicts are read")


def read_pickle(path: Path) -> dict[str, Any]:
    """A dict from a pickle, building only numpy/scipy data (no code runs)."""
    data = path.read_bytes()
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except CloseError:
        raise
    except Exception as exc:
        raise CloseError(f"{path.name} is not a readable pickle ({type(exc).__name__}: {exc})",
                         "give the SMPL model / registration file itself") from None
    if not isinstance(obj, dict):
        raise CloseError(f"{path.name} does not hold a dict of arrays")
    return obj


def _read_dict(path: Path) -> dict[str, Any]:
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise CloseError(f"{path.name} is not a readable .npz ({exc})") from None
    return read_pickle(path)


def find_model_file(model_dir: str | os.PathLike, gender: str = "neutral") -> Path:
    """The SMPL model file for a gender in a folder (or the file itself)."""
    gender = (gender or "neutral").lower()
    if gender not in GENDERS:
        raise CloseError(f"unknown SMPL gender {gender!r}", f"use one of {', '.join(GENDERS)}")
    p = Path(model_dir).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise CloseError(f"no SMPL model folder at {p}",
                         "give --smpl-model-dir, the folder holding SMPL_NEUTRAL.pkl etc.")
    for folder in (p, p / "smpl", p / "models", p / "smpl" / "models"):
        for stem in _MODEL_NAMES[gender]:
            for ext in (".pkl", ".npz"):
                cand = folder / (stem + ext)
                if cand.is_file():
                    return cand
    raise CloseError(f"no SMPL {gender} model in {p}",
                     f"the folder must hold {_MODEL_NAMES[gender][0]}.pkl (or .npz); SMPL "
                     "files cannot be shipped, get them from smpl.is.tue.mpg.de")


def load_model_data(path: Path) -> dict[str, Any]:
    """Check and return the arrays of an SMPL model file."""
    data = _read_dict(path)
    missing = [k for k in MODEL_KEYS if k not in data]
    if missing:
        raise CloseError(f"{path.name} is not an SMPL model file (lacks {', '.join(missing)})",
                         "give the SMPL_NEUTRAL/MALE/FEMALE model file")
    v = np.asarray(data["v_template"])
    if v.ndim != 2 or v.shape[1] != 3 or not np.isfinite(v).all():
        raise CloseError(f"{path.name}: v_template has shape {v.shape}, expected (V, 3)")
    return data


class SMPLBody(BodyModel):
    """SMPL via smplx (see the module docstring); ``shape`` is betas (B, 10)."""

    name = "smpl"

    def __init__(self, model_dir: str | os.PathLike, gender: str = "neutral") -> None:
        try:
            import smplx
            import torch
        except ImportError as exc:
            raise CloseError(f"smplx is not installed ({exc})",
                             "install the worker requirements: pip install 'close-blender[worker]'"
                             ) from None
        self.path = find_model_file(model_dir, gender)
        data = load_model_data(self.path)
        struct = smplx.utils.Struct(**data)
        try:
            self.model = smplx.SMPL(model_path=str(self.path), data_struct=struct,
                                    gender=gender, dtype=torch.float32)
        except Exception as exc:
            raise CloseError(f"{self.path.name} has SMPL keys but smplx cannot build it "
                             f"({type(exc).__name__}: {exc})",
                             "check that the file is an unmodified SMPL model") from None
        self.model.eval()
        self.faces = np.asarray(data["f"], dtype=np.int64)
        kt = np.asarray(data["kintree_table"])
        self.bone_parents = [-1] + [int(x) for x in kt[0, 1:]]
        self.bone_labels = [f"joint{i:02d}" for i in range(len(self.bone_parents))]
        w = np.asarray(data["weights"], dtype=np.float32)
        k = min(4, w.shape[1])
        idx = np.argsort(-w, axis=1)[:, :k]
        self.skin_indices = idx.astype(np.int64)
        sw = np.take_along_axis(w, idx, 1)
        self.skin_weights = (sw / np.maximum(sw.sum(1, keepdims=True), 1e-12)).astype(np.float32)
        tmpl = np.asarray(data["v_template"], dtype=np.float64)
        canon = (tmpl - tmpl.mean(0)).astype(np.float32)
        canon.setflags(write=False)
        self.canonical_vertices = canon

    def forward(self, shape: Any = None, pose: Any = None, transl: Any = None,
                scale: Any = None) -> Any:
        """``shape`` betas (B, <=10); ``pose`` (B, 72) or (B, 24, 3) axis-angles (joint 0 =
        global orientation); returns ``scale * smpl + transl`` (B, V, 3)."""
        import torch

        nb = self.model.num_betas
        betas = torch.zeros(1, nb) if shape is None else torch.as_tensor(shape, dtype=torch.float32)
        betas = betas.reshape(betas.shape[0] if betas.ndim > 1 else 1, -1)
        if betas.shape[1] < nb:
            betas = torch.cat([betas, torch.zeros(betas.shape[0], nb - betas.shape[1])], 1)
        betas = betas[:, :nb]
        p = torch.zeros(1, 72) if pose is None else torch.as_tensor(pose, dtype=torch.float32)
        p = p.reshape(-1, 72)
        out = self.model(betas=betas, global_orient=p[:, :3], body_pose=p[:, 3:])
        v = out.vertices
        if scale is not None:
            v = v * torch.as_tensor(scale, dtype=torch.float32).reshape(-1, 1, 1)
        if transl is not None:
            v = v + torch.as_tensor(transl, dtype=torch.float32).reshape(-1, 1, 3)
        return v


def load_registration(path: str | os.PathLike) -> dict[str, Any]:
    """A CloSe-style SMPL registration: betas, body_pose, global_orient, transl[, scale, gender]."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CloseError(f"no registration file at {p}", "check --registration")
    data = _read_dict(p)
    need = {"betas": None, "body_pose": 69, "global_orient": 3, "transl": 3}
    out: dict[str, Any] = {}
    for key, size in need.items():
        if key not in data:
            raise CloseError(f"{p.name} lacks '{key}'",
                             "a registration holds betas, body_pose (69), global_orient (3), "
                             "transl (3) and optionally scale and gender")
        a = np.asarray(data[key], dtype=np.float64).reshape(-1)
        if size is not None and a.size != size:
            raise CloseError(f"{p.name}: '{key}' has {a.size} values, expected {size}")
        if not np.isfinite(a).all():
            raise CloseError(f"{p.name}: '{key}' holds NaN or inf")
        out[key] = a
    if out["betas"].size == 0 or out["betas"].size > 300:
        raise CloseError(f"{p.name}: 'betas' has {out['betas'].size} values, expected 10")
    scale = np.asarray(data.get("scale", 1.0), dtype=np.float64).reshape(-1)
    out["scale"] = float(scale[0]) if scale.size else 1.0
    if not np.isfinite(out["scale"]) or out["scale"] <= 0:
        raise CloseError(f"{p.name}: 'scale' must be a positive number")
    gender = data.get("gender", "neutral")
    gender = str(np.asarray(gender).reshape(-1)[0]) if np.asarray(gender).size else "neutral"
    out["gender"] = gender.lower() if gender.lower() in GENDERS else "neutral"
    return out


def fit_from_registration(vertices: Any, registration: str | os.PathLike,
                          model_dir: str | os.PathLike | None) -> Any:
    """A ``BodyFit`` for SMPL from a registration (no optimisation), with its quality."""
    import time

    from .fit import BodyFit, _check_points, fit_quality, verdict

    t0 = time.perf_counter()
    if model_dir is None:
        raise CloseError("the SMPL body needs the SMPL model files",
                         "give --smpl-model-dir (the folder holding SMPL_NEUTRAL.pkl)")
    v = _check_points(vertices)
    reg = load_registration(registration)
    body = SMPLBody(model_dir, reg["gender"])
    pose = np.concatenate([reg["global_orient"], reg["body_pose"]])
    verts = body.posed_numpy(reg["betas"][None], pose[None], reg["transl"][None], reg["scale"])
    params = {k: np.asarray(reg[k], dtype=np.float32) for k in
              ("betas", "body_pose", "global_orient", "transl")}
    params["scale"] = np.float32(reg["scale"])
    params["gender"] = np.array(reg["gender"])
    fit = BodyFit(body="smpl", params=params, vertices=verts.astype(np.float32),
                  faces=body.faces, canonical_vertices=body.canonical_vertices)
    fit.quality = fit_quality(v, verts.astype(np.float64), body.faces)
    fit.quality["iterations"] = 0
    fit.quality["seconds"] = float(time.perf_counter() - t0)
    ok, msg = verdict(fit.quality)
    fit.ok = ok
    fit.message = msg.replace("body fit", "SMPL registration")
    return fit
