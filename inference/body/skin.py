"""Which scan points are bare skin, from the scan's colours: the face's colour elsewhere.

The body fit pulls skin points onto the body both ways (``W_SKIN``), which places
visible hands and forearms; without it a hand beside loose trousers may settle on the
trousers. Nobody labels skin on a fresh scan, but nearly every scan shows a face:
the body fit says where the face is (each orientation's rigid fit for the coarse
stage, the best coarse fit for the fine stage), the median colour there is the
person's skin tone, and points of that chromaticity (any brightness within a shading
range) count as skin. Chromaticity noise grows as colours get darker, so the
tolerance does too. The cue is dropped, with a note, when the
"face" is not skin-like (grey: an untextured scan; a mask or a visor), is not one
colour, or when nearly the whole scan would count as skin.

Against the true skin labels of the synthetic benchmark (``benchmarks/body_fit.py``,
seeds 1000-6000, 8 scans each: 47 of 48 scans got a cue): precision 0.90 (worst scan
0.23: a garment in the skin's tone; shoes and hair often), recall 0.86 (darkest skin
tones ~0.5).
"""

from __future__ import annotations

import numpy as np

# canonical (T-pose) box of the face, below the brows and above the chin, front only
FACE_Y = (0.37, 0.46)
FACE_MIN_Z = 0.06
FACE_HALF_WIDTH = 0.055
FACE_RADIUS = 0.03   # metres: scan points this near a face vertex sample the skin tone
MIN_FACE_POINTS = 20
CHROMA_TOL = 0.012   # chromaticity distance that counts as the same tone ...
CHROMA_NOISE = 5.0   # ... plus this over the colour's channel sum (dark colours are noisier)
BRIGHTNESS = (0.55, 1.35)  # channel sum relative to the face's: shading, not another colour
MAX_FRACTION = 0.9   # more of the scan than this "skin": a uniformly coloured scan


def face_vertex_mask(canonical: np.ndarray) -> np.ndarray:
    """Body vertices (by their canonical position) on the front of the face."""
    c = np.asarray(canonical)
    return ((c[:, 1] > FACE_Y[0]) & (c[:, 1] < FACE_Y[1]) & (c[:, 2] > FACE_MIN_Z)
            & (np.abs(c[:, 0]) < FACE_HALF_WIDTH))


def skin_from_colors(colors: np.ndarray, points: np.ndarray,
                     face: np.ndarray) -> tuple[np.ndarray | None, str]:
    """(mask or None, note): scan points of the face's colour.

    ``colors`` (N, 3) 0-255, ``points`` (N, 3) and ``face`` (M, 3) face vertices of a
    roughly fitted body, both in metres in the same frame. ``None`` with a note when
    the colours give no usable cue.
    """
    from scipy.spatial import cKDTree

    d, _ = cKDTree(face).query(points, k=1, distance_upper_bound=FACE_RADIUS)
    near = np.isfinite(d)
    if near.sum() < MIN_FACE_POINTS:
        return None, "no skin cue from colours: too few scan points on the face"
    total = colors.sum(1)
    ref = np.median(colors[near], axis=0)
    ref_total = float(ref.sum())
    chroma = colors[:, :2] / np.maximum(total, 1.0)[:, None]
    ref_chroma = ref[:2] / max(ref_total, 1.0)
    # skin is warm: red over green and blue, not grey (an untextured or grey scan)
    if ref_total < 30 or not (ref[0] > ref[1] and ref[0] > ref[2]) \
            or np.linalg.norm(ref_chroma - 1.0 / 3.0) < 0.02:
        return None, "no skin cue from colours: the face is not skin-coloured"
    dist = np.linalg.norm(chroma - ref_chroma, axis=1)
    tol = CHROMA_TOL + CHROMA_NOISE / np.maximum(total, 1.0)
    if np.median(dist[near] / tol[near]) > 1.0:
        return None, "no skin cue from colours: the face is not one colour"
    ratio = total / ref_total
    mask = (dist < tol) & (ratio > BRIGHTNESS[0]) & (ratio < BRIGHTNESS[1])
    if mask.mean() > MAX_FRACTION:
        return None, "no skin cue from colours: nearly the whole scan has the face's colour"
    return mask, ""
