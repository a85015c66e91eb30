"""Colours and patterns of skin, hair and cloth, with baked-in soft lighting.

Patterns are functions of cloth-attached coordinates (the canonical
coordinate for shells, the unrolled tube for loose cloth), so stripes and
checks follow the garment through any pose. Colours are drawn so that colour
alone never gives the class away: garments reuse each other's colours, skin
and hair tones vary, and every garment kind can take any pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SKIN_TONES = np.array([
    (255, 224, 196), (241, 194, 167), (224, 172, 138), (198, 134, 96), (161, 102, 68),
    (120, 75, 48), (90, 56, 37), (234, 192, 160), (210, 160, 120),
], dtype=np.float64)
HAIR_TONES = np.array([
    (20, 17, 15), (45, 32, 25), (75, 52, 36), (110, 80, 55), (165, 120, 75),
    (215, 180, 120), (140, 60, 35), (160, 160, 160), (215, 210, 200),
], dtype=np.float64)
CLOTH_COLORS = np.array([
    (20, 20, 22), (235, 235, 230), (120, 120, 125), (35, 45, 80), (60, 90, 150),
    (90, 120, 170), (150, 30, 35), (200, 60, 50), (230, 140, 40), (235, 205, 70),
    (50, 110, 60), (100, 130, 80), (180, 160, 120), (120, 90, 60), (90, 50, 110),
    (230, 150, 170), (60, 150, 160), (200, 200, 190), (75, 60, 50), (160, 180, 200),
], dtype=np.float64)
PATTERNS = ("solid", "stripes", "checks", "noise", "logo")


@dataclass
class Look:
    """How one garment looks: two colours, a pattern and its scale."""

    base: np.ndarray
    accent: np.ndarray
    pattern: str
    period: float
    axis: int


class Wardrobe:
    """Draws looks; sometimes hands an already used colour to another garment."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.used: list[np.ndarray] = []

    def _color(self) -> np.ndarray:
        if self.used and self.rng.random() < 0.3:
            return self.used[int(self.rng.integers(len(self.used)))].copy()
        c = CLOTH_COLORS[int(self.rng.integers(len(CLOTH_COLORS)))]
        c = np.clip(c + self.rng.normal(0, 12, 3), 0, 255)
        self.used.append(c)
        return c

    def look(self, kind: str) -> Look:
        r = self.rng
        if kind in ("shoes", "hat") and r.random() < 0.5:
            p = "solid"
        else:
            p = str(r.choice(PATTERNS, p=[0.45, 0.17, 0.12, 0.14, 0.12]))
        base = self._color()
        accent = self._color() if r.random() < 0.7 else 255 - base
        return Look(base, accent, p, float(r.uniform(0.015, 0.06)), int(r.integers(2)))


def _value_noise(p: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth 3D value noise in [0, 1] (trilinear over a hashed lattice)."""
    q = p / scale
    i = np.floor(q).astype(np.int64)
    f = q - i
    f = f * f * (3 - 2 * f)

    def h(dx: int, dy: int, dz: int) -> np.ndarray:
        x = (i[:, 0] + dx) * 73856093 ^ (i[:, 1] + dy) * 19349663 ^ (i[:, 2] + dz) * 83492791
        x = (x ^ seed) & 0xFFFFFFFF
        x = (x * 2654435761) & 0xFFFFFFFF
        return (x >> 8) / float(1 << 24)

    out = np.zeros(len(p))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1]) \
                    * (f[:, 2] if dz else 1 - f[:, 2])
                out += w * h(dx, dy, dz)
    return out


def cloth_colors(look: Look, coords: np.ndarray, seed: int) -> np.ndarray:
    """(n, 3) float colours 0-255 of a garment at cloth coordinates ``coords``."""
    c = coords.astype(np.float64)
    n = len(c)
    base = np.broadcast_to(look.base, (n, 3)).copy()
    if look.pattern == "stripes":
        t = c[:, 1] if look.axis == 0 else c[:, 0] + c[:, 2]
        mask = np.mod(t / look.period, 1.0) < 0.4
        base[mask] = look.accent
    elif look.pattern == "checks":
        a = np.floor(c[:, 1] / look.period) + np.floor((c[:, 0] + 0.7 * c[:, 2]) / look.period)
        base[np.mod(a, 2) == 1] = 0.55 * look.base + 0.45 * look.accent
    elif look.pattern == "noise":
        v = _value_noise(c, look.period * 1.5, seed)
        w = np.clip((v - 0.35) * 3.0, 0, 1)[:, None]
        base = (1 - w) * base + w * look.accent
    elif look.pattern == "logo":
        # a small emblem on the chest front (canonical coordinates of shells)
        d = np.hypot(c[:, 0] - 0.06 * (1 if look.axis else -1), c[:, 1] - 0.16)
        front = c[:, 2] > 0.03
        base[front & (d < 0.035)] = look.accent
        base[front & (d < 0.018)] = look.base * 0.6
    return base


def skin_colors(coords: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tone = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))] + rng.normal(0, 8, 3)
    c = np.broadcast_to(tone, (len(coords), 3)).copy()
    # a little redness on lips and cheeks, darker brows: enough for a face to read as one
    y, z, x = coords[:, 1], coords[:, 2], coords[:, 0]
    lips = (np.abs(y - 0.393) < 0.006) & (np.abs(x) < 0.022) & (z > 0.09)
    c[lips] = c[lips] * np.array([0.85, 0.6, 0.6])
    brows = (np.abs(y - 0.462) < 0.005) & (np.abs(np.abs(x) - 0.033) < 0.018) & (z > 0.08)
    c[brows] *= 0.45
    eyes = (np.abs(y - 0.447) < 0.006) & (np.abs(np.abs(x) - 0.03) < 0.011) & (z > 0.08)
    c[eyes] = (60, 45, 40)
    return c


def hair_color(rng: np.random.Generator) -> np.ndarray:
    return np.clip(HAIR_TONES[int(rng.integers(len(HAIR_TONES)))] + rng.normal(0, 6, 3), 0, 255)


def shade(colors: np.ndarray, normals: np.ndarray, rng: np.random.Generator,
          light: np.ndarray) -> np.ndarray:
    """Soft baked lighting and sensor noise; returns uint8."""
    lam = np.clip(normals.astype(np.float64) @ light, 0.0, 1.0)
    k = 0.62 + 0.38 * lam
    out = colors * k[:, None] + rng.normal(0.0, 3.0, colors.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
