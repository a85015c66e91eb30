"""Pose presets for synthetic scans, as bone rotations for :class:`AnnyBody`.

A preset gives arm directions (upper and lower arm, in the body frame: y up,
facing +z, left at +x) and rotation vectors for legs, spine and head; random
jitter, a slight bend and a turn of the torso are added on top. Arm directions
are turned into bone rotations against the rest A-pose, the way
``AnnyBody.tpose`` does, so presets read like a description of the pose.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

PRESETS = ("a_pose", "t_pose", "relaxed", "walking", "arms_raised", "arms_crossed",
           "hands_on_hips", "reaching")


def _dir(side: float, elevation: float, forward: float, inward: float = 0.0) -> np.ndarray:
    """Unit direction of an arm segment: ``elevation`` above horizontal, ``forward`` towards
    +z (degrees); ``inward`` turns it across the body."""
    el, fw = math.radians(elevation), math.radians(forward)
    d = np.array([side * math.cos(el) * math.cos(fw), math.sin(el), math.cos(el) * math.sin(fw)])
    if inward:
        d[0] -= side * inward
    return d / np.linalg.norm(d)


def _rotvec_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    axis = np.cross(a, b)
    s = float(np.linalg.norm(axis))
    if s < 1e-9:
        return np.zeros(3)
    return axis / s * math.atan2(s, float(a @ b))


def _matrix(rv: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(rv).as_matrix()


@functools.lru_cache(maxsize=1)
def _rest_arms() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Rest (A-pose) upper and lower arm directions of the mean body, per side."""
    from inference.body.anny_body import AnnyBody

    body = AnnyBody("default")
    heads = body.forward_full(None, body.zero_pose())["bone_poses"][0, :, :3, 3].numpy()
    out = {}
    for side in ("L", "R"):
        s = heads[body.bone_index(f"upperarm01.{side}")]
        e = heads[body.bone_index(f"lowerarm01.{side}")]
        w = heads[body.bone_index(f"wrist.{side}")]
        out[side] = (e - s, w - e)
    return out


def arm_rotations(side: str, upper: np.ndarray, lower: np.ndarray) -> dict[str, np.ndarray]:
    """Rotations putting one arm's upper and lower segments along the given directions."""
    rest_upper, rest_lower = _rest_arms()[side]
    r_up = _rotvec_between(rest_upper, upper)
    local_lower = _matrix(r_up).T @ lower
    r_low = _rotvec_between(rest_lower, local_lower)
    return {f"upperarm01.{side}": r_up, f"lowerarm01.{side}": r_low}


def sample_pose(rng: np.random.Generator, preset: str | None = None) -> tuple[str, dict[str, Any]]:
    """A random pose: ``(preset name, {bone: rotation vector})``."""
    name = preset or PRESETS[int(rng.integers(len(PRESETS)))]
    j = lambda s: float(rng.normal(0.0, s))  # noqa: E731 - jitter in degrees
    rot: dict[str, np.ndarray] = {}
    arms: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for side, sg in (("L", 1.0), ("R", -1.0)):
        if name == "a_pose":
            el = -45 + j(6)
            arms[side] = (_dir(sg, el, j(6)), _dir(sg, el + j(5), 10 + j(6)))
        elif name == "t_pose":
            arms[side] = (_dir(sg, j(4), j(4)), _dir(sg, j(4), j(4)))
        elif name == "relaxed":
            el = -78 + j(4)
            arms[side] = (_dir(sg, el, 5 + j(4)), _dir(sg, el + 8 + j(6), 20 + j(8)))
        elif name == "walking":
            swing = 22 * (1 if sg > 0 else -1) + j(5)
            arms[side] = (_dir(sg, -80, swing), _dir(sg, -70, swing + 25))
        elif name == "arms_raised":
            el = 55 + j(15)
            arms[side] = (_dir(sg, el, 10 + j(8)), _dir(sg, el + 15 + j(10), 10 + j(10)))
        elif name == "arms_crossed":
            arms[side] = (_dir(sg, -70 + j(3), 30 + j(4)),
                          _dir(sg, -5 + j(4), 55 + j(5), inward=2.2))
        elif name == "hands_on_hips":
            arms[side] = (_dir(sg, -40 + j(4), -25 + j(5)), _dir(sg, -60 + j(5), 40 + j(5),
                                                                   inward=1.6))
        else:  # reaching: one arm forward, the other relaxed
            if (sg > 0) == bool(rng.integers(2)):
                arms[side] = (_dir(sg, 10 + j(10), 70 + j(8)), _dir(sg, 15 + j(10), 80 + j(6)))
            else:
                arms[side] = (_dir(sg, -75, 5), _dir(sg, -65, 25))
    for side, (up, low) in arms.items():
        rot.update(arm_rotations(side, up, low))
    # legs
    if name == "walking":
        stride = math.radians(18 + j(5))
        lead = 1.0 if rng.integers(2) else -1.0
        rot["upperleg01.L"] = np.array([-lead * stride, 0.0, 0.0])
        rot["upperleg01.R"] = np.array([lead * stride * 0.7, 0.0, 0.0])
        back = "R" if lead > 0 else "L"
        rot[f"lowerleg01.{back}"] = np.array([math.radians(25 + j(6)), 0.0, 0.0])
        front = "L" if lead > 0 else "R"
        rot[f"lowerleg01.{front}"] = np.array([math.radians(5 + abs(j(4))), 0.0, 0.0])
    else:
        spread = 4 + abs(j(4)) if name in ("t_pose", "a_pose", "arms_raised") else abs(j(3))
        for side, sg in (("L", 1.0), ("R", -1.0)):
            rot[f"upperleg01.{side}"] = np.radians([j(3), j(3), sg * spread])
            rot[f"lowerleg01.{side}"] = np.radians([abs(j(3)), 0.0, 0.0])
    # slight bends and turns of the torso and head, spread over the spine
    bend = np.radians([j(5) + 2.0, j(8), j(4)]) / 3.0
    for b in ("spine03", "spine02", "spine01"):
        rot[b] = bend
    rot["neck01"] = np.radians([j(6), j(12), j(4)])
    return name, {k: np.asarray(v, dtype=np.float32) for k, v in rot.items()}
