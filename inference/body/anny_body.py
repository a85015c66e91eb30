"""Anny (free, CC0 MakeHuman data) as this project's default body model.

Stable API (used by the fitter and by the synthetic scan generator)::

    body = AnnyBody("default")          # 13,718 vertices; "reduced": 1,229 (fast fitting)
    body.faces                          # (F, 3) int64 triangles
    body.bone_labels, body.bone_parents # 104 bones, parents (-1 for the root)
    body.skin_indices, body.skin_weights  # (V, 9) int64 / float32
    body.canonical_vertices             # (V, 3) float32 canonical coordinate of each vertex
    phen = body.phenotypes(gender=0.2)  # (1, 6) torch; PHENOTYPES order, each in [0, 1]
    pose = body.pose_from_rotations({"upperarm01.L": [0, 0, -0.8], "root": [0, 1.57, 0]})
    verts = body.forward(phen, pose, transl=[0, 1, 0])   # (B, V, 3) torch, y-up body frame
    out = body.forward_full(phen, pose)  # dict: vertices, rest_vertices, bone_poses (B, J, 4, 4)

Conventions:

- Frame: the y-up body frame of :mod:`inference.body.model` (metres, y up, facing
  +z, the character's left at +x). ``anny_to_yup`` / ``yup_to_anny`` convert from
  and to Anny's native frame (z up, facing -y) - Blender's world is Anny's frame.
- Shape: phenotypes (B, 6) in the order of :data:`PHENOTYPES`, each in [0, 1];
  :data:`MEAN_PHENOTYPES` is the mean young adult (age 2/3, everything else 0.5).
- Pose: (B, J, 3) rotation vectors, one per bone of ``bone_labels``, zero = Anny's
  rest A-pose. Row 0 (``root``) is the global orientation, about the body-frame
  origin (near the hips). Every other row rotates its bone about its head, in
  axes that are the body frame's axes in the rest pose (carried along by the
  parent's rotation): e.g. ``{"lowerleg01.L": [1.0, 0, 0]}`` bends the left knee.
- ``forward`` returns ``scale * posed + transl``.
- Canonical table: the mean-shape T-pose (:meth:`tpose`: upper and lower arms
  straight along +-x) mapped into the project canonical frame by the fixed
  mapping of the body-prior fact sheet: scaled by :data:`CANONICAL_SCALE` and
  moved so that the default topology's bounding-box centre lands on the SMPL
  template's box centre. The reduced topology gets its own table through the
  same mapping (it is a re-meshing of the same surface, not a vertex subset).
  The table is shape- and pose-independent: it is the canonical coordinate of
  the vertex for any fitted body.

Anny is always built with ``skinning_method="lbs"`` (pure torch, no warp) in
float32, never with an SMPL topology.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from close_blender.canonical import SMPL_TEMPLATE_BBOX_MAX, SMPL_TEMPLATE_BBOX_MIN
from close_blender.errors import CloseError

from .model import ANNY_TO_YUP, BodyModel, anny_to_yup, rotvec_to_matrix, yup_to_anny

__all__ = [
    "AnnyBody", "PHENOTYPES", "MEAN_PHENOTYPES", "TOPOLOGIES", "CANONICAL_SCALE",
    "anny_to_yup", "yup_to_anny", "load_anny", "canonical_mapping",
]

PHENOTYPES: tuple[str, ...] = ("gender", "age", "muscle", "weight", "height", "proportions")
MEAN_PHENOTYPES = np.array([0.5, 2.0 / 3.0, 0.5, 0.5, 0.5, 0.5], dtype=np.float32)
TOPOLOGIES = {"default": "anny", "reduced": "notoes_collapse10pc"}
CANONICAL_SCALE = 0.934
SMPL_BOX_CENTRE = (np.array(SMPL_TEMPLATE_BBOX_MIN) + np.array(SMPL_TEMPLATE_BBOX_MAX)) / 2.0

_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def load_anny(topology: str = "default", device: str = "cpu") -> Any:
    """The raw ``anny.Anny`` model (float32, LBS skinning), built once per process."""
    if topology not in TOPOLOGIES:
        raise CloseError(f"unknown Anny topology {topology!r}",
                         f"use one of: {', '.join(TOPOLOGIES)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import anny
            import torch
    except ImportError as exc:
        raise CloseError(f"the Anny body model is not installed ({exc})",
                         "install the worker requirements: pip install 'close-blender[worker]'"
                         ) from None
    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = anny.Anny(topology=TOPOLOGIES[topology], skinning_method="lbs",
                          pose_parameterization="local-bone-world")
    model = model.to(torch.float32).to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class AnnyBody(BodyModel):
    """Anny in the y-up body frame, with its canonical table (see the module docstring)."""

    name = "anny"

    def __init__(self, topology: str = "default", device: str = "cpu") -> None:
        import torch

        self.topology = topology
        self.device = torch.device(device)
        self.model = load_anny(topology, device)
        m = self.model
        self.bone_labels: list[str] = list(m.bone_labels)
        self.bone_parents: list[int] = [int(p) for p in m.bone_parents]
        self.faces = m.get_triangular_faces().cpu().numpy().astype(np.int64)
        self.skin_indices = m.vertex_bone_indices.cpu().numpy().astype(np.int64)
        self.skin_weights = m.vertex_bone_weights.cpu().numpy().astype(np.float32)
        self._bone_index = {b: i for i, b in enumerate(self.bone_labels)}
        self._m = torch.as_tensor(ANNY_TO_YUP, device=self.device)
        # conjugation by each bone's reference orientation turns world-aligned
        # deltas into Anny's bone-axis ("local-bone") deltas
        self._ref = m.reference_bone_orientations.to(torch.float32)

    @property
    def canonical_vertices(self) -> np.ndarray:  # type: ignore[override]
        """(V, 3) float32 read-only canonical coordinate of each vertex (any shape, any pose)."""
        return _canonical_table(self.topology)

    @property
    def n_vertices(self) -> int:
        return int(self.model.template_vertices.shape[0])

    # -- shape and pose helpers -------------------------------------------------
    @property
    def n_bones(self) -> int:
        return len(self.bone_labels)

    def bone_index(self, name: str) -> int:
        try:
            return self._bone_index[name]
        except KeyError:
            raise CloseError(f"Anny has no bone {name!r}",
                             "bones are named like upperarm01.L, lowerleg01.R, spine03") from None

    def phenotypes(self, batch: int = 1, **values: float) -> Any:
        """(batch, 6) phenotype tensor: the mean adult, with any of PHENOTYPES overridden."""
        import torch

        unknown = set(values) - set(PHENOTYPES)
        if unknown:
            raise CloseError(f"unknown phenotypes {sorted(unknown)}",
                             f"use: {', '.join(PHENOTYPES)}")
        row = np.array([values.get(k, MEAN_PHENOTYPES[i]) for i, k in enumerate(PHENOTYPES)],
                       dtype=np.float32)
        return torch.as_tensor(row, device=self.device).expand(batch, -1).clone()

    def zero_pose(self, batch: int = 1) -> Any:
        import torch

        return torch.zeros(batch, self.n_bones, 3, device=self.device)

    def pose_from_rotations(self, rotations: Mapping[str, Sequence[float]],
                            batch: int = 1) -> Any:
        """(batch, J, 3) pose from ``{bone name: rotation vector (3,) in radians}``."""
        import torch

        pose = self.zero_pose(batch)
        for name, rv in rotations.items():
            pose[:, self.bone_index(name)] = torch.as_tensor(
                np.asarray(rv, dtype=np.float32).reshape(3), device=self.device)
        return pose

    def tpose(self, batch: int = 1) -> Any:
        """(batch, J, 3) pose with both arms straight along +-x (the canonical T-pose)."""
        return self.pose_from_rotations(self._tpose_rotations(), batch)

    @functools.cached_property
    def _rest_bone_heads_yup(self) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(None, self.phenotypes())
        return anny_to_yup(out["rest_bone_poses"][0, :, :3, 3].cpu().numpy())

    def _tpose_rotations(self) -> dict[str, np.ndarray]:
        heads = self._rest_bone_heads_yup
        rots: dict[str, np.ndarray] = {}
        for side, sign in (("L", 1.0), ("R", -1.0)):
            shoulder = heads[self.bone_index(f"upperarm01.{side}")]
            elbow = heads[self.bone_index(f"lowerarm01.{side}")]
            wrist = heads[self.bone_index(f"wrist.{side}")]
            upper, lower = elbow - shoulder, wrist - elbow
            # deltas are in rest-frame axes carried by the parent: straighten the
            # elbow in the rest frame, then turn the straight arm onto +-x
            rots[f"lowerarm01.{side}"] = _rotvec_between(lower, upper)
            rots[f"upperarm01.{side}"] = _rotvec_between(upper, np.array([sign, 0.0, 0.0]))
        return rots

    # -- forward ------------------------------------------------------------------
    def _as_phen(self, shape: Any) -> Any:
        import torch

        if shape is None:
            return self.phenotypes()
        if isinstance(shape, Mapping):
            return self.phenotypes(**shape)
        t = torch.as_tensor(shape, dtype=torch.float32, device=self.device)
        return t.reshape(1, -1) if t.ndim == 1 else t

    def forward_full(self, shape: Any = None, pose: Any = None, transl: Any = None,
                     scale: Any = None) -> dict[str, Any]:
        """Posed ``vertices`` (B, V, 3), ``rest_vertices`` (B, V, 3, A-pose, no global
        transform) and ``bone_poses`` (B, J, 4, 4) world bone frames, all in the body frame."""
        import torch

        phen = self._as_phen(shape)
        if pose is None:
            pose = self.zero_pose(phen.shape[0])
        pose = torch.as_tensor(pose, dtype=torch.float32, device=self.device)
        if pose.ndim == 2:
            pose = pose[None]
        b = max(phen.shape[0], pose.shape[0])
        m = self._m
        rv_anny = pose @ m  # rotvec_anny = M^T rotvec_yup, on row vectors
        rot = rotvec_to_matrix(rv_anny[:, 1:])
        ref = self._ref[1:]
        local = ref.transpose(-1, -2) @ rot @ ref
        delta = torch.zeros(pose.shape[0], self.n_bones, 4, 4, device=self.device)
        delta[:, :, 3, 3] = 1.0
        delta[:, 0, :3, :3] = torch.eye(3, device=self.device)
        delta[:, 1:, :3, :3] = local
        out = self.model(delta, phen)  # pose_parameterization "local-bone-world"
        glob = rotvec_to_matrix(pose[:, 0])  # (B, 3, 3) in the body frame
        g = glob @ m  # anny frame -> rotated body frame
        verts = self.place(out["vertices"] @ m.T, pose[:, 0], transl, scale)
        poses = out["bone_poses"]
        g4 = torch.zeros(poses.shape[0], 4, 4, device=self.device)
        g4[:, :3, :3] = g
        g4[:, 3, 3] = 1.0
        poses = g4[:, None] @ poses
        if scale is not None:
            s = torch.as_tensor(scale, dtype=torch.float32, device=self.device).reshape(-1, 1, 1)
            poses = poses.clone()
            poses[..., :3, 3] = poses[..., :3, 3] * s
        if transl is not None:
            t = torch.as_tensor(transl, dtype=torch.float32, device=self.device).reshape(-1, 1, 3)
            poses = poses.clone()
            poses[..., :3, 3] = poses[..., :3, 3] + t
        rest = out["rest_vertices"] @ m.T
        return {"vertices": verts.expand(b, -1, -1), "rest_vertices": rest,
                "bone_poses": poses}

    def place(self, vertices: Any, global_orient: Any, transl: Any = None,
              scale: Any = None) -> Any:
        """Vertices (B, V, 3) posed with a zero global rotation, turned by ``global_orient``
        (B, 3 rotation vectors), scaled and moved as :meth:`forward_full` does: a rigid
        fit moves a fixed body with this alone, without re-running the model."""
        import torch

        glob = rotvec_to_matrix(torch.as_tensor(global_orient, dtype=torch.float32,
                                                device=self.device).reshape(-1, 3))
        verts = vertices @ glob.transpose(-1, -2)
        if scale is not None:
            verts = verts * torch.as_tensor(scale, dtype=torch.float32,
                                            device=self.device).reshape(-1, 1, 1)
        if transl is not None:
            verts = verts + torch.as_tensor(transl, dtype=torch.float32,
                                            device=self.device).reshape(-1, 1, 3)
        return verts

    def forward(self, shape: Any = None, pose: Any = None, transl: Any = None,
                scale: Any = None) -> Any:
        return self.forward_full(shape, pose, transl, scale)["vertices"]


def _rotvec_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation vector turning direction ``a`` onto direction ``b``."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    axis = np.cross(a, b)
    s = np.linalg.norm(axis)
    angle = np.arctan2(s, float(np.dot(a, b)))
    if s < 1e-9:
        return np.zeros(3, dtype=np.float32)
    return (axis / s * angle).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _mean_tpose_vertices(topology: str) -> np.ndarray:
    """Mean-shape T-pose vertices (V, 3) in the body frame (float64)."""
    body = AnnyBody(topology)
    return body.posed_numpy(None, body.tpose()).astype(np.float64)


@functools.lru_cache(maxsize=1)
def canonical_mapping() -> tuple[float, np.ndarray]:
    """``(scale, offset)``: canonical = scale * mean-T-pose body-frame position + offset.

    The offset puts the scaled default-topology T-pose box centre on the SMPL box centre.
    """
    v = _mean_tpose_vertices("default")
    centre = (v.min(0) + v.max(0)) / 2.0
    return CANONICAL_SCALE, (SMPL_BOX_CENTRE - CANONICAL_SCALE * centre).astype(np.float64)


@functools.lru_cache(maxsize=4)
def _canonical_table(topology: str) -> np.ndarray:
    scale, offset = canonical_mapping()
    table = (scale * _mean_tpose_vertices(topology) + offset).astype(np.float32)
    table.setflags(write=False)
    return table
