"""Canonical coordinates: the body input of CloSe-Net for each scan point.

For a scan point, CloSe uses the canonical (rest) position of the nearest vertex
of the body fitted to the scan. ``method="vertex"`` does exactly that;
``method="barycentric"`` (the default) finds the nearest point on the nearest body
triangle (among the triangles around the nearest vertices) and interpolates the
canonical table there. Barycentric is smoother and measurably closer to the truth
(benchmarks/body_fit.py, seed 1000, 4 scans: mean 3.22 vs 3.47 cm, p95 4.39 vs
4.90 cm); ``vertex`` reproduces CloSe's own preprocessing of SMPL registrations.

With the scan's outward ``normals``, the barycentric lookup is *normal-aware*: a
point goes to the body triangle nearest in (position, ``NORMAL_WEIGHT`` x normal),
so a point whose surface faces away from a body part is not given to it. Where two
parts touch or nearly touch (a hand hanging beside the thigh, forearms on a coat's
front, a fitted hand a few centimetres off), the raw nearest point often lies on the
wrong part, and its canonical coordinate is then half a metre off; the surface the
point lies on faces the same way as the body surface beneath it, which tells the
parts apart. Measured with ``benchmarks/body_fit.py --oracle`` (the scans' own mesh
normals, 8 scans, the same fits): seed 1000 mean 2.31 -> 2.01 cm, seed 2000
2.93 -> 2.45 cm (p95 5.18 -> 4.57 cm). Against the true body it costs a little
(seed 1000: 0.31 -> 0.45 cm; a scan's mesh normals are noisy), far less than it
saves on a fitted body whose hand or forearm is a few centimetres off.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from close_blender.errors import ScanError
from close_blender.mesh_graph import Adjacency

NORMAL_WEIGHT = 0.04  # metres of distance that a unit difference of normals is worth
LOOKUP_SMOOTHING = 2  # rounds of neighbour averaging of a mesh's normals for the lookup


def canonical_coordinates(points: Any, fit: Any, method: str = "barycentric",
                          normals: Any = None) -> np.ndarray:
    """(N, 3) float32 canonical coordinates of scan points given a ``BodyFit``.

    ``points`` are in the scan's own frame and units, like ``fit.vertices``;
    ``normals`` (N, 3), outward, make the barycentric lookup normal-aware.
    """
    unit = float(fit.params.get("frame_unit", 1.0)) if hasattr(fit, "params") else 1.0
    return canonical_from_body(points, fit.vertices, fit.faces, fit.canonical_vertices, method,
                               normals=normals, normal_weight=NORMAL_WEIGHT / unit)


def canonical_from_body(points: Any, body_vertices: np.ndarray, faces: np.ndarray,
                        canonical: np.ndarray, method: str = "barycentric",
                        normals: Any = None, normal_weight: float = NORMAL_WEIGHT) -> np.ndarray:
    """Canonical coordinates of points against any posed body and its canonical table.

    With ``normals`` (the points' outward unit normals) the barycentric lookup picks the
    triangle nearest in (position, ``normal_weight`` x normal); ``normal_weight`` is in
    the points' units. Normals of zero length (unknown) fall back to position only.
    """
    from scipy.spatial import cKDTree

    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or not np.isfinite(p).all():
        raise ScanError("canonical coordinates need finite (N, 3) points")
    bv = np.asarray(body_vertices, dtype=np.float64)
    canon = np.asarray(canonical, dtype=np.float64)
    if method == "vertex":
        _, j = cKDTree(bv).query(p, k=1)
        return canon[j].astype(np.float32)
    if method != "barycentric":
        raise ValueError(f"unknown method {method!r}")
    f = np.asarray(faces, dtype=np.int64)
    lam = 0.0
    if normals is not None:
        pn = np.asarray(normals, dtype=np.float64).reshape(p.shape)
        pn = np.nan_to_num(pn, nan=0.0, posinf=0.0, neginf=0.0)
        length = np.linalg.norm(pn, axis=1, keepdims=True)
        pn = np.where(length > 1e-6, pn / np.maximum(length, 1e-12), 0.0)
        lam = float(normal_weight)
    if lam > 0:
        bn, winding = vertex_normals_and_winding(bv, f)
        tree = cKDTree(np.hstack([bv, lam * bn]))
        _, jj = tree.query(np.hstack([p, lam * pn]), k=min(4, len(bv)))
    else:  # candidate triangles: those around the 3 nearest vertices
        _, jj = cKDTree(bv).query(p, k=min(3, len(bv)))
    jj = jj.reshape(len(p), -1)
    vf = _vertex_faces(len(bv), f)  # (V, M) padded with -1
    cand = vf[jj].reshape(len(p), -1)  # (N, K)
    valid = cand >= 0
    tri = f[np.where(valid, cand, 0)]  # (N, K, 3)
    a, b, c = bv[tri[..., 0]], bv[tri[..., 1]], bv[tri[..., 2]]
    q, w = _closest_on_triangles(p[:, None, :], a, b, c)
    d = ((q - p[:, None, :]) ** 2).sum(-1)
    if lam > 0:
        fn = np.cross(b - a, c - a)
        fn *= winding / np.maximum(np.linalg.norm(fn, axis=-1, keepdims=True), 1e-20)
        # an unknown normal (zero) costs the same for every triangle
        known = (np.abs(pn).sum(1) > 0)[:, None]
        d = d + np.where(known, lam * lam * ((fn - pn[:, None, :]) ** 2).sum(-1), 0.0)
    d = np.where(valid, d, np.inf)
    best = d.argmin(1)
    rows = np.arange(len(p))
    t = tri[rows, best]
    wb = w[rows, best]
    return np.einsum("nk,nkj->nj", wb, canon[t]).astype(np.float32)


def smooth_normals(normals: Any, faces: Any, iterations: int = LOOKUP_SMOOTHING) -> np.ndarray:
    """Unit normals averaged with their mesh neighbours' ``iterations`` times.

    For the normal-aware lookup only (not the network's normal input): a scan mesh's
    own normals are noisy (wrinkles, small triangles), and on the benchmark two rounds
    bring the normal-aware lookup closer to the truth (8 scans per seed, the same fits:
    mean 1.77 -> 1.69 cm on seed 1000, 2.65 -> 2.57 on 2000, 1.92 -> 1.85 on 3000).
    Zero (unknown) normals stay zero where all neighbours are unknown.
    """
    from scipy.sparse import csr_matrix

    n = np.asarray(normals, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if iterations <= 0 or not len(f):
        return n
    graph = Adjacency.from_faces(f, len(n))  # each edge once, no self loops
    adj = csr_matrix((np.ones(len(graph.indices)), graph.indices, graph.indptr),
                     shape=(len(n), len(n)))
    for _ in range(iterations):
        n = n + adj @ n
        length = np.linalg.norm(n, axis=1, keepdims=True)
        n = np.where(length > 1e-12, n / np.maximum(length, 1e-12), 0.0)
    return n


def vertex_normals_and_winding(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, float]:
    """Area-weighted unit vertex normals flipped as a whole to point outwards (zero where
    undefined), and the flip (+1 or -1) that the faces' winding needs to point outwards."""
    v = np.asarray(v, dtype=np.float64)
    f = np.asarray(f, dtype=np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for i in range(3):
        np.add.at(n, f[:, i], fn)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)
    sign = -1.0 if np.sum((v - v.mean(0)) * n) < 0 else 1.0  # inward winding
    return sign * n, sign


def _vertex_faces(n_vertices: int, faces: np.ndarray) -> np.ndarray:
    """(V, M) faces around each vertex, padded with -1."""
    flat_v = faces.reshape(-1)
    flat_f = np.repeat(np.arange(len(faces)), 3)
    order = np.argsort(flat_v, kind="stable")
    flat_v, flat_f = flat_v[order], flat_f[order]
    counts = np.bincount(flat_v, minlength=n_vertices)
    width = max(1, int(counts.max()))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(flat_v)) - starts[flat_v]
    out = np.full((n_vertices, width), -1, dtype=np.int64)
    out[flat_v, slot] = flat_f
    return out


def _closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray,
                          c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest points on triangles and their barycentric weights (vectorized, Ericson's regions)."""
    ab, ac, ap = b - a, c - a, p - a
    d1 = (ab * ap).sum(-1)
    d2 = (ac * ap).sum(-1)
    bp = p - b
    d3 = (ab * bp).sum(-1)
    d4 = (ac * bp).sum(-1)
    cp = p - c
    d5 = (ab * cp).sum(-1)
    d6 = (ac * cp).sum(-1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    denom = va + vb + vc
    denom = np.where(np.abs(denom) < 1e-30, 1e-30, denom)
    v = vb / denom
    w = vc / denom
    u = 1.0 - v - w
    bary = np.stack([u, v, w], -1)

    def put(mask: np.ndarray, weights: tuple) -> None:
        for i in range(3):
            bary[..., i] = np.where(mask, weights[i], bary[..., i])

    def safe(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x / np.where(np.abs(y) < 1e-30, 1e-30, y)

    # edge regions then vertex regions (vertex regions override)
    t = safe(d1, d1 - d3)
    put((vc <= 0) & (d1 >= 0) & (d3 <= 0), (1 - t, t, 0 * t))
    t = safe(d2, d2 - d6)
    put((vb <= 0) & (d2 >= 0) & (d6 <= 0), (1 - t, 0 * t, t))
    t = safe(d4 - d3, (d4 - d3) + (d5 - d6))
    put((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), (0 * t, 1 - t, t))
    one, zero = np.ones_like(d1), np.zeros_like(d1)
    put((d1 <= 0) & (d2 <= 0), (one, zero, zero))
    put((d3 >= 0) & (d4 <= d3), (zero, one, zero))
    put((d6 >= 0) & (d5 <= d6), (zero, zero, one))
    bary = np.clip(bary, 0.0, 1.0)
    bary = bary / bary.sum(-1, keepdims=True)
    q = bary[..., :1] * a + bary[..., 1:2] * b + bary[..., 2:] * c
    return q, bary
