"""The body-model interface that fitting, canonical coordinates and Blender export share.

Every body model in this project works in one frame, the *body frame*: metres,
y up, the body facing +z, the character's left at +x (SMPL's frame; Anny's
native z-up frame is converted on the way in and out). A model gives:

- ``faces`` (F, 3) int64 triangles, ``n_vertices``;
- ``bone_labels``, ``bone_parents`` (-1 for the root) and per-vertex skinning
  ``skin_indices`` / ``skin_weights`` (V, K), so that a Blender armature can be
  rebuilt from it;
- ``canonical_vertices`` (V, 3) float32: the rest position of every vertex in
  the project's canonical frame (``close_blender.canonical``), independent of
  shape and pose, so ``canonical_vertices[v]`` is the body input CloSe-Net gets
  for a scan point whose nearest body vertex is ``v``;
- ``forward(shape, pose, transl, scale)`` -> (B, V, 3) posed vertices (torch,
  differentiable), in the body frame: ``scale * posed + transl``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

# (x, y, z) of Anny's z-up frame -> (x, z, -y) of the y-up body frame. A proper
# rotation (det +1), so rotation vectors transform with it like positions.
ANNY_TO_YUP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=np.float32)


def anny_to_yup(points: np.ndarray) -> np.ndarray:
    """Map points (..., 3) from Anny's z-up frame to the y-up body frame: (x, z, -y)."""
    p = np.asarray(points)
    return np.stack([p[..., 0], p[..., 2], -p[..., 1]], axis=-1)


def yup_to_anny(points: np.ndarray) -> np.ndarray:
    """Inverse of :func:`anny_to_yup`: (x, y, z) -> (x, -z, y)."""
    p = np.asarray(points)
    return np.stack([p[..., 0], -p[..., 2], p[..., 1]], axis=-1)


def rotvec_to_matrix(rotvec: Any) -> Any:
    """Rotation vectors (..., 3) -> rotation matrices (..., 3, 3), torch, differentiable at 0."""
    import torch

    rv = torch.as_tensor(rotvec)
    theta2 = (rv * rv).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-12)
    # sin(t)/t and (1-cos(t))/t^2 with series near zero for stable gradients
    small = theta2 < 1e-6
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / (theta2 + 1e-12))
    x, y, z = rv.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(rv.shape + (3,))
    eye = torch.eye(3, dtype=rv.dtype, device=rv.device).expand(k.shape)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


def matrix_to_rotvec(matrix: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> rotation vectors (..., 3), numpy (scipy)."""
    from scipy.spatial.transform import Rotation

    m = np.asarray(matrix, dtype=np.float64)
    return Rotation.from_matrix(m.reshape(-1, 3, 3)).as_rotvec().reshape(m.shape[:-2] + (3,))


class BodyModel(ABC):
    """A posable, shapeable body in the y-up body frame (see the module docstring)."""

    name: str
    faces: np.ndarray
    bone_labels: list[str]
    bone_parents: list[int]
    skin_indices: np.ndarray
    skin_weights: np.ndarray
    canonical_vertices: np.ndarray

    @property
    def n_vertices(self) -> int:
        return int(self.canonical_vertices.shape[0])

    @abstractmethod
    def forward(self, shape: Any = None, pose: Any = None, transl: Any = None,
                scale: Any = None) -> Any:
        """Posed vertices (B, V, 3) torch float32 in the body frame."""

    def posed_numpy(self, shape: Any = None, pose: Any = None, transl: Any = None,
                    scale: Any = None) -> np.ndarray:
        """:meth:`forward` for one body as a (V, 3) float32 numpy array, without gradients."""
        import torch

        with torch.no_grad():
            return self.forward(shape, pose, transl, scale)[0].cpu().numpy().astype(np.float32)
