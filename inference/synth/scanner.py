"""A virtual scanner: what a multi-camera body scanner would hand back.

Given every surface of a dressed body merged into one triangle soup, it
1. splits long edges so the surface is densely and evenly sampled,
2. keeps only vertices seen by at least one camera of a ring (plus above and
   below) -- a small numpy z-buffer per orthographic view -- so hidden layers
   (the body under a jacket, a t-shirt under a closed coat) vanish,
3. remeshes the visible part to a roughly uniform density by vertex clustering
   on a grid, with exactly the requested number of vertices,
4. shuffles the vertex order and adds small position noise.

Every step carries per-vertex attributes (label, colour, canonical coordinate,
normal) along, so the output vertex ``i`` still knows what it is.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

Attrs = dict[str, np.ndarray]


@dataclass(frozen=True)
class ScannerConfig:
    """Settings of the virtual scanner (metres)."""

    ring_cameras: int = 10           # around the body at chest height
    upper_cameras: int = 6           # looking down at 35 degrees
    lower_cameras: int = 4           # looking up at 20 degrees
    top_camera: bool = True
    pixel: float = 0.005             # z-buffer pixel size
    coarse_edge: float = 0.006       # vertex spacing of the surface the z-buffer sees
    depth_tolerance: float = 0.002   # a vertex this close behind the front surface is seen
    max_tolerance: float = 0.010     # cap of the slope-dependent tolerance
    min_facing: float = 0.05         # cos of the largest view angle still seen (back-face cull)
    noise: float = 0.0015            # std of the position noise


def _edges(faces: np.ndarray) -> np.ndarray:
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


@functools.lru_cache(maxsize=64)
def _bary_grid(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric points (P, 3) and triangles (k*k, 3) of a k-times split triangle."""
    idx = {}
    pts = []
    for i in range(k + 1):
        for j in range(k + 1 - i):
            idx[i, j] = len(pts)
            pts.append((k - i - j, i, j))
    tris = []
    for i in range(k):
        for j in range(k - i):
            tris.append((idx[i, j], idx[i + 1, j], idx[i, j + 1]))
            if i + j < k - 1:
                tris.append((idx[i + 1, j], idx[i + 1, j + 1], idx[i, j + 1]))
    return np.asarray(pts, dtype=np.float64) / k, np.asarray(tris, dtype=np.int64)


def subdivide(vertices: np.ndarray, faces: np.ndarray, attrs: Attrs,
              max_edge: float) -> tuple[np.ndarray, np.ndarray, Attrs]:
    """Split each face into k*k triangles so that no edge is longer than ``max_edge``.

    Faces are split independently (k per face), so vertices on shared edges
    are duplicated and neighbours with different k meet at T-junctions; both
    are harmless here because :func:`uniform_remesh` merges everything within a
    grid cell. Float attributes are interpolated, integer ones copied from the
    nearest corner.
    """
    tri = vertices[faces]
    longest = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max(1)
    k_face = np.clip(np.ceil(longest / max_edge), 1, 64).astype(np.int64)
    out_v, out_f = [], []
    out_a: dict[str, list[np.ndarray]] = {k: [] for k in attrs}
    base = 0
    for k in np.unique(k_face):
        sel = faces[k_face == k]
        bary, tris = _bary_grid(int(k))
        p = len(bary)
        out_v.append(np.einsum("pc,fcd->fpd", bary, vertices[sel]).reshape(-1, 3))
        out_f.append((tris[None] + (base + p * np.arange(len(sel)))[:, None, None]).reshape(-1, 3))
        corner = bary.argmax(1)
        for name, a in attrs.items():
            if np.issubdtype(a.dtype, np.floating):
                val = np.einsum("pc,fc...->fp...", bary, a[sel].astype(np.float64))
                out_a[name].append(val.reshape((-1,) + a.shape[1:]).astype(a.dtype))
            else:
                out_a[name].append(a[sel][:, corner].reshape((-1,) + a.shape[1:]))
        base += p * len(sel)
    return (np.concatenate(out_v), np.concatenate(out_f),
            {k: np.concatenate(v) for k, v in out_a.items()})


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals."""
    fn = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]],
                  vertices[faces[:, 2]] - vertices[faces[:, 0]])
    n = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return (n / np.maximum(norm, 1e-12)).astype(np.float32)


def camera_directions(cfg: ScannerConfig) -> np.ndarray:
    """Unit viewing directions (camera looks along them), y up."""
    dirs = []

    def ring(count: int, elevation_deg: float, offset: float) -> None:
        el = math.radians(elevation_deg)
        for i in range(count):
            az = 2 * math.pi * (i + offset) / count
            # camera sits at azimuth az, elevation el and looks at the centre
            pos = np.array([math.cos(az) * math.cos(el), math.sin(el),
                            math.sin(az) * math.cos(el)])
            dirs.append(-pos)

    ring(cfg.ring_cameras, 0.0, 0.0)
    ring(cfg.upper_cameras, 35.0, 0.5)
    ring(cfg.lower_cameras, -20.0, 0.25)
    if cfg.top_camera:
        dirs.append(np.array([0.0, -1.0, 0.0]))
    return np.asarray(dirs)


def _basis(forward: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([0.0, 1.0, 0.0]) if abs(forward[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
    right = np.cross(forward, helper)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return right, up


def visible_vertices(vertices: np.ndarray, normals: np.ndarray,
                     cfg: ScannerConfig = ScannerConfig()) -> np.ndarray:
    """Boolean mask of vertices seen by at least one virtual camera.

    Each vertex splats its depth into the 2x2 nearest pixels of an orthographic
    z-buffer; it is seen when it faces the camera and lies within
    ``depth_tolerance`` (plus what the slope of its surface explains over half
    a vertex spacing, capped) of the nearest depth in its own pixel.
    """
    v = np.asarray(vertices, dtype=np.float64)
    n = np.asarray(normals, dtype=np.float64)
    seen = np.zeros(len(v), dtype=bool)
    centre = 0.5 * (v.min(0) + v.max(0))
    p = v - centre
    for fwd in camera_directions(cfg):
        right, up = _basis(fwd)
        cos = -(n @ fwd)
        facing = cos > cfg.min_facing
        cand = facing & ~seen
        if not cand.any():
            continue
        u = p @ right / cfg.pixel
        w = p @ up / cfg.pixel
        d = p @ fwd
        u0, w0 = u.min() - 2, w.min() - 2
        u -= u0
        w -= w0
        width = int(u.max()) + 3
        height = int(w.max()) + 3
        zbuf = np.full(width * height, np.inf)
        ub = np.floor(u - 0.5).astype(np.int64)
        wb = np.floor(w - 0.5).astype(np.int64)
        for du in (0, 1):
            for dw in (0, 1):
                np.minimum.at(zbuf, (wb + dw) * width + ub + du, d)
        own = np.floor(w).astype(np.int64) * width + np.floor(u).astype(np.int64)
        slope = np.sqrt(np.clip(1.0 - cos * cos, 0.0, 1.0)) / np.maximum(cos, 1e-3)
        tol = np.minimum(cfg.depth_tolerance + 0.5 * cfg.coarse_edge * slope, cfg.max_tolerance)
        seen |= cand & (d <= zbuf[own] + tol)
    return seen


def keep_vertices(vertices: np.ndarray, faces: np.ndarray, attrs: Attrs,
                  keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, Attrs]:
    """Restrict a mesh to kept vertices and the faces whose three vertices are kept."""
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[keep] = np.arange(int(keep.sum()))
    f = remap[faces]
    f = f[(f >= 0).all(1)]
    return vertices[keep], f, {k: x[keep] for k, x in attrs.items()}


def surface_area(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Total triangle area."""
    e1 = vertices[faces[:, 1]] - vertices[faces[:, 0]]
    e2 = vertices[faces[:, 2]] - vertices[faces[:, 0]]
    return float(0.5 * np.linalg.norm(np.cross(e1, e2), axis=1).sum())


def _cluster(vertices: np.ndarray, cell: float, priority: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid clustering: (representative vertex per cluster, cluster of each vertex)."""
    key = np.floor((vertices - vertices.min(0)) / cell).astype(np.int64)
    dims = key.max(0) + 1
    flat = (key[:, 0] * dims[1] + key[:, 1]) * dims[2] + key[:, 2]
    order = np.lexsort((priority, flat))
    sf = flat[order]
    start = np.ones(len(sf), dtype=bool)
    start[1:] = sf[1:] != sf[:-1]
    reps = order[start]
    cluster_sorted = np.cumsum(start) - 1
    cluster = np.empty(len(vertices), dtype=np.int64)
    cluster[order] = cluster_sorted
    return reps, cluster


def _faces_after(faces: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    f = cluster[faces]
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])
    f = f[ok]
    # drop duplicates (same three clusters, any order), keep the first winding
    key = np.sort(f, axis=1)
    n = np.int64(key.max() + 1) if len(key) else np.int64(1)
    _, first = np.unique((key[:, 0] * n + key[:, 1]) * n + key[:, 2], return_index=True)
    return f[np.sort(first)]


def uniform_remesh(vertices: np.ndarray, faces: np.ndarray, attrs: Attrs, n_points: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Attrs]:
    """Remesh to exactly ``n_points`` roughly evenly spaced vertices.

    Grid clustering with a cell size found by bisection gives a few more
    clusters than asked; the surplus vertices are then merged into a
    neighbour, so density stays even and the surface stays closed.
    Representatives are original vertices (chosen at random), so positions and
    attributes stay exact.
    """
    if len(vertices) < n_points:
        raise ValueError(f"only {len(vertices)} visible vertices for {n_points} points")
    priority = rng.random(len(vertices))
    area = surface_area(vertices, faces)
    cell = math.sqrt(1.4 * area / n_points)
    lo = hi = None  # cell sizes known to give too many / too few clusters
    reps, cluster = _cluster(vertices, cell, priority)
    for _ in range(40):
        m = len(reps)
        if n_points <= m <= int(n_points * 1.03) + 2:
            break
        if m < n_points:
            hi = cell
        else:
            lo = cell
        cell = 0.5 * (lo + hi) if lo is not None and hi is not None else cell * math.sqrt(m / n_points)
        reps, cluster = _cluster(vertices, cell, priority)
    if len(reps) < n_points and lo is not None:  # settle for the last surplus
        reps, cluster = _cluster(vertices, lo, priority)
    if len(reps) < n_points:
        raise ValueError(f"the visible surface gives only {len(reps)} of {n_points} points")
    f = _faces_after(faces, cluster)
    surplus = len(reps) - n_points
    if surplus:
        f, reps = _merge_surplus(f, reps, surplus, rng)
    v = vertices[reps]
    return v, f, {k: x[reps] for k, x in attrs.items()}


def _merge_surplus(faces: np.ndarray, reps: np.ndarray, surplus: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Merge ``surplus`` vertices into a neighbour each; returns new faces and reps."""
    m = len(reps)
    e = _edges(faces)
    # one neighbour per vertex: the first edge partner in a random edge order
    order = rng.permutation(len(e))
    e = e[order]
    nb = np.full(m, -1, dtype=np.int64)
    nb[e[::-1, 0]] = e[::-1, 1]  # last write wins -> first in order
    removed = np.zeros(m, dtype=bool)
    protected = np.zeros(m, dtype=bool)
    candidates = rng.permutation(m)
    # an independent set: a removed vertex's target is never removed itself
    need = surplus
    for start in range(0, m, max(4 * surplus, 1024)):
        chunk = candidates[start:start + max(4 * surplus, 1024)]
        chunk = chunk[(nb[chunk] >= 0)]
        for c in chunk:  # python loop over a few hundred vertices at most
            if need == 0:
                break
            t = nb[c]
            if removed[c] or protected[c] or removed[t]:
                continue
            removed[c] = True
            protected[t] = True
            need -= 1
        if need == 0:
            break
    if need:  # isolated vertices (no faces): drop them outright
        iso = np.flatnonzero(~removed & ~protected & (nb < 0))[:need]
        removed[iso] = True
        nb[iso] = -1
        need -= len(iso)
    if need:
        raise ValueError("could not reduce the scan to the requested point count")
    target = np.arange(m)
    target[removed] = nb[removed]
    keep = ~removed
    new_index = np.cumsum(keep) - 1
    mapped = new_index[target]
    mapped[removed & (nb < 0)] = -1
    f = mapped[faces]
    f = f[(f >= 0).all(1)]
    f = _faces_after(f, np.arange(int(keep.sum())))
    return f, reps[keep]


def shuffle(vertices: np.ndarray, faces: np.ndarray, attrs: Attrs,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Attrs]:
    """Random vertex order (and face order), as a scanner's export has no body order."""
    perm = rng.permutation(len(vertices))
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    f = inv[faces]
    f = f[rng.permutation(len(f))]
    return vertices[perm], f, {k: x[perm] for k, x in attrs.items()}
