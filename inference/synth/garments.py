"""Garment geometry built on a posed body.

Two kinds of surface, both remembering where on the body they come from so
every vertex has a canonical coordinate:

- *shells*: a region of the body surface, chosen by canonical coordinates
  (pose-independent: height bands, distance along the T-pose arm), pushed out
  along the posed normals by a thickness, with a rim that closes the gap to the
  body at every opening (hems, cuffs, necklines) so the cloth looks thick;
- *hanging tubes*: loose cloth (skirts, dresses, coat tails) that falls
  straight down from a band of the body and encloses both legs, with flare and
  folds; their canonical coordinate is the one of the nearest body vertex.

Positions are in the body frame of :mod:`inference.body.model` (metres, y up,
facing +z, left at +x); canonical coordinates in the project canonical frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .scanner import vertex_normals

# Landmarks of the canonical frame (mean-shape Anny T-pose, metres), measured
# from the canonical table and its bone heads; tests check them against it.
GROUND_Y = -1.161
ANKLE_Y = -1.086
KNEE_Y = -0.665
CROTCH_Y = -0.361
HIP_Y = -0.249
WAIST_Y = -0.09
CHEST_Y = 0.10
ARMPIT_Y = 0.11
SHOULDER_Y = 0.23
NECK_BASE_Y = 0.30
CHIN_Y = 0.37
EYE_Y = 0.447
HEAD_TOP_Y = 0.555
HEAD_Z = 0.02
SHOULDER_X = 0.175
ARM_X = 0.185           # beyond this |x| (and above the armpit) a vertex is on an arm
ELBOW_X = 0.444
WRIST_X = 0.685
HAND_END_X = 0.873


@dataclass
class Body:
    """A posed body: what garments are built on."""

    vertices: np.ndarray   # (V, 3) float64 posed, body frame
    faces: np.ndarray      # (F, 3) int64
    normals: np.ndarray    # (V, 3) float32
    canon: np.ndarray      # (V, 3) float32 canonical coordinate of each vertex


@dataclass
class Surface:
    """One piece of a scan: body skin, a garment shell, a hanging tube, a brim."""

    vertices: np.ndarray   # (n, 3) float64
    faces: np.ndarray      # (m, 3) int64
    normals: np.ndarray    # (n, 3) float32
    canon: np.ndarray      # (n, 3) float32
    pattern: np.ndarray    # (n, 3) float32 texture coordinates (metres, cloth-attached)
    label: int
    kind: str              # garment kind, e.g. "tshirt", "skirt", "body"


# ---------------------------------------------------------------- regions
def arm_mask(c: np.ndarray) -> np.ndarray:
    return (np.abs(c[:, 0]) > ARM_X) & (c[:, 1] > ARMPIT_Y - 0.03)


def arm_reach(c: np.ndarray) -> np.ndarray:
    """0 at the shoulder, 1 at the wrist, >1 on the hand (arm vertices only)."""
    return (np.abs(c[:, 0]) - SHOULDER_X) / (WRIST_X - SHOULDER_X)


def leg_reach(c: np.ndarray) -> np.ndarray:
    """0 at the crotch, 1 at the ankle."""
    return (CROTCH_Y - c[:, 1]) / (CROTCH_Y - ANKLE_Y)


def neckline(c: np.ndarray, depth: float, width: float) -> np.ndarray:
    """True below a neckline: ``depth`` is how far the front drops below the neck base."""
    front = np.clip(c[:, 2] / 0.06, 0.0, 1.0) * np.clip(1.0 - np.abs(c[:, 0]) / width, 0.0, 1.0)
    return c[:, 1] < NECK_BASE_Y - 0.005 - depth * front


def torso_mask(c: np.ndarray, hem_y: float, neck_depth: float = 0.02,
               neck_width: float = 0.09) -> np.ndarray:
    return ~arm_mask(c) & (c[:, 1] > hem_y) & neckline(c, neck_depth, neck_width)


def sleeve_mask(c: np.ndarray, reach: float) -> np.ndarray:
    return arm_mask(c) & (arm_reach(c) < reach)


def legs_mask(c: np.ndarray, top_y: float, reach: float) -> np.ndarray:
    below = (c[:, 1] < top_y) & ~arm_mask(c)
    return below & ((c[:, 1] > CROTCH_Y) | (leg_reach(c) < reach))


def head_mask(c: np.ndarray) -> np.ndarray:
    return (c[:, 1] > CHIN_Y - 0.01) & (np.abs(c[:, 0]) < 0.12)


def scalp_mask(c: np.ndarray, length: float) -> np.ndarray:
    """Hair region: the scalp, and for ``length`` > 0 the back of the neck and upper back.

    ``length`` 0: short; 1: to the neck; 2: to the shoulder blades.
    """
    x, y, z = c[:, 0], c[:, 1], c[:, 2]
    back = np.clip((HEAD_Z + 0.04 - z) / 0.08, 0.0, 1.0)      # 1 at the back of the head
    side = np.clip(np.abs(x) / 0.075, 0.0, 1.0)
    hairline = 0.515 - 0.06 * side - 0.075 * back             # forehead high, nape low
    scalp = (y > hairline) & (np.abs(x) < 0.12)
    if length <= 0:
        return scalp
    nape = (y > NECK_BASE_Y + 0.01 - 0.02 * (length - 1)) & (z < HEAD_Z - 0.03) \
        & (np.abs(x) < 0.07 + 0.03 * length)
    sides = (y > 0.38 - 0.04 * length) & (np.abs(x) > 0.055) & (z < HEAD_Z + 0.05) \
        & (np.abs(x) < 0.12)
    out = scalp | nape | sides
    if length >= 2:
        back_long = (y > NECK_BASE_Y - 0.12 * (length - 1)) & (z < -0.04) \
            & (np.abs(x) < 0.13) & ~arm_mask(c)
        out |= back_long
    return out


def feet_mask(c: np.ndarray, top: float = 0.03) -> np.ndarray:
    return c[:, 1] < ANKLE_Y + top


# ---------------------------------------------------------------- shells
def _boundary_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary edges (a, b) of a mesh and the third vertex of their face."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    third = np.concatenate([faces[:, 2], faces[:, 0], faces[:, 1]])
    key = np.sort(e, axis=1)
    n = np.int64(key.max() + 1) if len(key) else np.int64(1)
    _, inv, counts = np.unique(key[:, 0] * n + key[:, 1], return_inverse=True, return_counts=True)
    single = counts[inv] == 1
    return e[single], third[single]


def shell(body: Body, mask: np.ndarray, offset: np.ndarray | float, label: int, kind: str,
          rim: bool = True, inner: float = 0.001) -> Surface:
    """The body region ``mask`` pushed out by ``offset`` (per vertex or scalar), with a rim."""
    sel = np.flatnonzero(mask)
    remap = np.full(len(body.vertices), -1, dtype=np.int64)
    remap[sel] = np.arange(len(sel))
    f = remap[body.faces]
    f = f[(f >= 0).all(1)]
    used = np.unique(f)
    sel = sel[used]
    remap2 = np.full(len(used) and int(used.max()) + 1, -1, dtype=np.int64)
    remap2[used] = np.arange(len(used))
    f = remap2[f]
    off = np.broadcast_to(np.asarray(offset, dtype=np.float64), mask.shape)[sel]
    n = body.normals[sel].astype(np.float64)
    v = body.vertices[sel] + n * off[:, None]
    canon = body.canon[sel]
    surf = Surface(v, f, body.normals[sel], canon, canon.copy(), label, kind)
    if rim and len(f):
        base = body.vertices[sel] + n * inner
        surf = merge([surf, _rim(surf, base)], label, kind)
    return surf


def _rim(surf: Surface, base: np.ndarray) -> Surface:
    """A band from each open edge of a shell down to ``base`` (its inner copy)."""
    edges, third = _boundary_edges(surf.faces)
    a, b = edges[:, 0], edges[:, 1]
    verts = np.unique(edges)
    k = len(verts)
    idx = np.full(len(surf.vertices), -1, dtype=np.int64)
    idx[verts] = np.arange(k)
    v = surf.vertices
    # outward (away from the cloth) direction of each boundary edge, in the cloth's plane
    e = v[b] - v[a]
    out = np.cross(e, surf.normals[a].astype(np.float64))
    sign = np.sign(((v[a] - v[third]) * out).sum(1, keepdims=True))
    out *= np.where(sign == 0, 1.0, sign)
    nrm = np.zeros((k, 3))
    np.add.at(nrm, idx[a], out)
    np.add.at(nrm, idx[b], out)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    top = v[verts]
    bottom = base[verts]
    rv = np.concatenate([top, bottom])
    ia, ib = idx[a], idx[b]
    faces = np.concatenate([np.stack([ia, ib, ib + k], 1), np.stack([ia, ib + k, ia + k], 1)])
    normals = np.concatenate([nrm, nrm]).astype(np.float32)
    canon = np.concatenate([surf.canon[verts], surf.canon[verts]])
    pattern = np.concatenate([surf.pattern[verts], surf.pattern[verts]])
    return Surface(rv, faces, normals, canon, pattern, surf.label, surf.kind)


def merge(surfaces: list[Surface], label: int, kind: str) -> Surface:
    """Concatenate surfaces into one (faces re-indexed)."""
    offs = np.cumsum([0] + [len(s.vertices) for s in surfaces])[:-1]
    return Surface(
        np.concatenate([s.vertices for s in surfaces]),
        np.concatenate([s.faces + o for s, o in zip(surfaces, offs, strict=False)]).astype(np.int64),
        np.concatenate([s.normals for s in surfaces]).astype(np.float32),
        np.concatenate([s.canon for s in surfaces]).astype(np.float32),
        np.concatenate([s.pattern for s in surfaces]).astype(np.float32),
        label, kind)


def extrude_edges(surf: Surface, select: np.ndarray, direction: np.ndarray,
                  label: int, kind: str) -> Surface | None:
    """A band swept from the boundary edges of ``surf`` whose two ends are in ``select``.

    ``direction`` (n, 3) is each surface vertex's sweep vector (length = band
    width). Used for brims, visors and collars.
    """
    edges, _ = _boundary_edges(surf.faces)
    edges = edges[select[edges[:, 0]] & select[edges[:, 1]]]
    if not len(edges):
        return None
    verts = np.unique(edges)
    k = len(verts)
    idx = np.full(len(surf.vertices), -1, dtype=np.int64)
    idx[verts] = np.arange(k)
    top = surf.vertices[verts]
    far = top + direction[verts]
    ia, ib = idx[edges[:, 0]], idx[edges[:, 1]]
    faces = np.concatenate([np.stack([ia, ib, ib + k], 1), np.stack([ia, ib + k, ia + k], 1)])
    v = np.concatenate([top, far])
    nrm = vertex_normals(v, faces)
    # orient normals away from the surface the band grows from (up/outward)
    ref = np.concatenate([surf.normals[verts], surf.normals[verts]]).astype(np.float64)
    flip = (nrm * ref).sum(1).mean() < 0
    if flip:
        faces = faces[:, ::-1].copy()
        nrm = -nrm
    # both sides of a thin band can be seen: duplicate it, facing the other way
    v2 = np.concatenate([v, v - 0.003 * nrm])
    faces2 = np.concatenate([faces, faces[:, ::-1] + len(v)])
    nrm2 = np.concatenate([nrm, -nrm]).astype(np.float32)
    canon = np.concatenate([surf.canon[verts]] * 4)
    pattern = np.concatenate([surf.pattern[verts], surf.pattern[verts] + direction[verts]] * 2)
    return Surface(v2, faces2, nrm2, canon, pattern.astype(np.float32), label, kind)


# ---------------------------------------------------------------- hanging tubes
def hanging_tube(body: Body, band: np.ndarray, enclose: np.ndarray, drop: float,
                 rng: np.random.Generator, label: int, kind: str, clearance: float = 0.01,
                 flare: float = 0.08, folds: float = 0.012, gap: tuple[float, float] | None = None,
                 n_around: int = 96, n_down: int = 28) -> Surface:
    """Loose cloth falling from the body band ``band`` by ``drop`` metres.

    The top ring hugs the band (a support-function ring around it, in the
    horizontal plane); each lower ring encloses every ``enclose`` body vertex at
    its height plus ``clearance``, never narrower than the ring above, and
    widens by up to ``flare`` with random folds. ``gap`` = (centre angle, half
    width) in radians leaves the tube open there (an open coat front).
    """
    v = body.vertices
    bv = v[band]
    centre = bv[:, [0, 2]].mean(0)
    top_y = float(np.percentile(bv[:, 1], 30))
    theta = np.linspace(0.0, 2 * math.pi, n_around, endpoint=False)
    if gap is not None:
        c, w = gap
        theta = c + w + (2 * math.pi - 2 * w) * np.linspace(0.0, 1.0, n_around)
    dirs = np.stack([np.sin(theta), np.cos(theta)], 1)  # angle 0 = +z, the front
    ev = v[enclose]
    ys = top_y - drop * np.linspace(0.0, 1.0, n_down) ** 1.0
    phase = rng.uniform(0, 2 * math.pi, 3)
    freq = rng.integers(5, 11, 3)
    fold = sum(np.sin(f * theta + p) / (i + 1) for i, (f, p) in enumerate(zip(freq, phase, strict=False)))
    rings = []
    r_prev = ((bv[:, [0, 2]] - centre) @ dirs.T).max(0) + clearance
    for k, y in enumerate(ys):
        t = k / (n_down - 1)
        slab = ev[np.abs(ev[:, 1] - y) < 0.03]
        if len(slab):
            r = ((slab[:, [0, 2]] - centre) @ dirs.T).max(0) + clearance
            r = np.maximum(r, r_prev)
        else:
            r = r_prev
        r_prev = r
        rr = r + flare * t ** 1.3 + folds * t * fold
        ring = np.stack([centre[0] + rr * dirs[:, 0], np.full_like(rr, y),
                         centre[1] + rr * dirs[:, 1]], 1)
        rings.append(ring)
    grid = np.stack(rings)  # (n_down, n_around, 3)
    # the top ring follows the band's real height around the body
    top_pts = bv[np.argmax((bv[:, [0, 2]] - centre) @ dirs.T, axis=0)]
    lift = top_pts[:, 1] - top_y
    fade = np.clip(1.0 - np.linspace(0.0, 1.0, n_down) * 4, 0.0, 1.0)
    grid[:, :, 1] += fade[:, None] * lift[None, :]
    verts = grid.reshape(-1, 3)
    faces = _grid_faces(n_down, n_around, closed=gap is None)
    nrm = vertex_normals(verts, faces)
    radial = np.concatenate([dirs[:, 0:1], np.zeros((n_around, 1)), dirs[:, 1:2]], 1)
    if (nrm.reshape(n_down, n_around, 3) * radial).sum(-1).mean() < 0:
        faces = faces[:, ::-1].copy()
        nrm = -nrm
    canon = body.canon[_nearest(v, verts)]
    # cloth-attached texture coordinates: unrolled tube (arc length, height)
    arc = theta * 0.15
    pattern = np.stack([np.tile(arc, n_down), np.repeat(ys - top_y, n_around),
                        np.zeros(n_down * n_around)], 1)
    surf = Surface(verts, faces, nrm, canon, pattern.astype(np.float32), label, kind)
    # a thick hem: a short band turned inwards at the bottom (and at open edges)
    inner = verts - nrm.astype(np.float64) * 0.006
    return merge([surf, _rim(surf, inner)], label, kind)


def _grid_faces(rows: int, cols: int, closed: bool) -> np.ndarray:
    r, c = np.meshgrid(np.arange(rows - 1), np.arange(cols if closed else cols - 1), indexing="ij")
    a = r * cols + c
    b = r * cols + (c + 1) % cols
    d = (r + 1) * cols + c
    e = (r + 1) * cols + (c + 1) % cols
    return np.concatenate([np.stack([a, d, b], -1).reshape(-1, 3),
                           np.stack([b, d, e], -1).reshape(-1, 3)]).astype(np.int64)


def _nearest(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    return cKDTree(points).query(queries, k=1)[1]
