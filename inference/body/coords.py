"""Canonical coordinates: the body input of CloSe-Net for each scan point.

For a scan point, CloSe uses the canonical (rest) position of the nearest vertex
of the body fitted to the scan. ``method="vertex"`` does exactly that;
``method="barycentric"`` (the default) finds the nearest point on the nearest body
triangle (among the triangles around the nearest vertices) and interpolates the
canonical table there. Barycentric is smoother and measurably closer to the truth
(benchmarks/body_fit.py, seed 1000, 4 scans: mean 3.22 vs 3.47 cm, p95 4.39 vs
4.90 cm); ``vertex`` reproduces CloSe's own preprocessing of SMPL registrations.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from close_blender.errors import ScanError


def canonical_coordinates(points: Any, fit: Any, method: str = "barycentric") -> np.ndarray:
    """(N, 3) float32 canonical coordinates of scan points given a ``BodyFit``.

    ``points`` are in the scan's own frame and units, like ``fit.vertices``.
    """
    return canonical_from_body(points, fit.vertices, fit.faces, fit.canonical_vertices, method)


def canonical_from_body(points: Any, body_vertices: np.ndarray, faces: np.ndarray,
                        canonical: np.ndarray, method: str = "barycentric") -> np.ndarray:
    """Canonical coordinates of points against any posed body and its canonical table."""
    from scipy.spatial import cKDTree

    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or not np.isfinite(p).all():
        raise ScanError("canonical coordinates need finite (N, 3) points")
    bv = np.asarray(body_vertices, dtype=np.float64)
    canon = np.asarray(canonical, dtype=np.float64)
    tree = cKDTree(bv)
    if method == "vertex":
        _, j = tree.query(p, k=1)
        return canon[j].astype(np.float32)
    if method != "barycentric":
        raise ValueError(f"unknown method {method!r}")
    f = np.asarray(faces, dtype=np.int64)
    # candidate triangles: those around the 3 nearest vertices
    _, jj = tree.query(p, k=min(3, len(bv)))
    jj = jj.reshape(len(p), -1)
    vf = _vertex_faces(len(bv), f)  # (V, M) padded with -1
    cand = vf[jj].reshape(len(p), -1)  # (N, K)
    valid = cand >= 0
    tri = f[np.where(valid, cand, 0)]  # (N, K, 3)
    a, b, c = bv[tri[..., 0]], bv[tri[..., 1]], bv[tri[..., 2]]
    q, w = _closest_on_triangles(p[:, None, :], a, b, c)
    d = np.where(valid, ((q - p[:, None, :]) ** 2).sum(-1), np.inf)
    best = d.argmin(1)
    rows = np.arange(len(p))
    t = tri[rows, best]
    wb = w[rows, best]
    return np.einsum("nk,nkj->nj", wb, canon[t]).astype(np.float32)


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
