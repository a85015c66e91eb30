"""PNG contact sheet of a scan: front and back, coloured by label and by texture.

A numpy point-splat z-buffer (orthographic, y up) is enough for a person to
check what the generator made; no OpenGL needed.
"""

from __future__ import annotations

import os

import numpy as np

from close_blender.fileio import atomic_path
from close_blender.labels import CLASS_NAMES, PALETTE


def render_points(points: np.ndarray, colors: np.ndarray, normals: np.ndarray,
                  back: bool = False, size: int = 360, splat: int = 3) -> np.ndarray:
    """(size, size*0.6, 3) uint8 image of points seen from +z (front) or -z (back)."""
    p = np.asarray(points, dtype=np.float64)
    n = np.asarray(normals, dtype=np.float64)
    if back:
        p = p * np.array([-1.0, 1.0, -1.0])
        n = n * np.array([-1.0, 1.0, -1.0])
    h, w = size, int(size * 0.6)
    lo, hi = p.min(0), p.max(0)
    extent = max(hi[1] - lo[1], (hi[0] - lo[0]) / 0.6) * 1.05
    cx = 0.5 * (lo[0] + hi[0])
    cy = 0.5 * (lo[1] + hi[1])
    u = ((p[:, 0] - cx) / extent * h + w / 2).astype(np.int64)
    v = ((cy - p[:, 1]) / extent * h + h / 2).astype(np.int64)
    depth = -p[:, 2]
    shade = 0.55 + 0.45 * np.clip(n[:, 2], 0, 1)
    col = np.clip(np.asarray(colors, np.float64)[:, :3] * shade[:, None], 0, 255)
    zbuf = np.full(h * w, np.inf)
    best = np.full(h * w, -1, dtype=np.int64)
    for du in range(splat):
        for dv in range(splat):
            uu, vv = u + du, v + dv
            ok = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
            pix = vv[ok] * w + uu[ok]
            np.minimum.at(zbuf, pix, depth[ok])
    for du in range(splat):
        for dv in range(splat):
            uu, vv = u + du, v + dv
            ok = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
            idx = np.flatnonzero(ok)
            pix = vv[ok] * w + uu[ok]
            win = depth[idx] <= zbuf[pix]
            best[pix[win]] = idx[win]
    img = np.full((h * w, 3), 245, dtype=np.uint8)
    hit = best >= 0
    img[hit] = col[best[hit]].astype(np.uint8)
    return img.reshape(h, w, 3)


def contact_sheet(scan: dict[str, np.ndarray], title: str = "") -> np.ndarray:
    """Front/back by texture and by label, side by side, with a class legend."""
    from PIL import Image, ImageDraw

    pts, nrm = scan["points"], scan["normals"]
    if "heading" in scan:  # turn the body back to face the viewer
        a = -float(scan["heading"])
        c, s = np.cos(a), np.sin(a)
        r = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        pts, nrm = pts @ r.T, nrm @ r.T
    lab = PALETTE[np.asarray(scan["labels"])].astype(np.float64)
    tex = np.asarray(scan["colors"], dtype=np.float64)
    tiles = [render_points(pts, tex, nrm), render_points(pts, tex, nrm, back=True),
             render_points(pts, lab, nrm), render_points(pts, lab, nrm, back=True)]
    row = np.concatenate(tiles, axis=1)
    legend_h = 46
    sheet = Image.new("RGB", (row.shape[1], row.shape[0] + legend_h), (255, 255, 255))
    sheet.paste(Image.fromarray(row), (0, legend_h))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), title, fill=(0, 0, 0))
    x = 4
    for c in np.unique(scan["labels"]):
        draw.rectangle([x, 18, x + 10, 28], fill=tuple(int(t) for t in PALETTE[c]))
        draw.text((x + 13, 17), CLASS_NAMES[c], fill=(0, 0, 0))
        x += 16 + 7 * len(CLASS_NAMES[c])
    return np.asarray(sheet)


def write_preview(path: str | os.PathLike, scan: dict[str, np.ndarray], title: str = "") -> None:
    """Write the contact sheet PNG atomically."""
    from PIL import Image

    img = Image.fromarray(contact_sheet(scan, title))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
