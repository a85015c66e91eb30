"""Which garments a synthetic person wears, and how each is built on the body.

An outfit is a list of :class:`Spec` (garment kind, CloSe class, parameters).
Layering needs no explicit rule: every garment is a surface at its own
distance from the skin (underwear 3 mm, shirts ~6 mm, hoodies and vests
~12 mm, jackets and coats ~2 cm, scarves outside everything), and the
scanner keeps only what a camera sees, so an inner garment shows exactly
where the outer one leaves it visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from close_blender.labels import CLASS_NAMES

from . import garments as g
from .garments import Body, Surface

KIND_CLASS = {
    "tshirt": "TShirt", "shirt": "Shirt", "hoodie": "Hoodies", "jacket": "Jacket",
    "coat": "Coat", "vest": "Vest", "pants": "Pants", "shorts": "ShortPants",
    "skirt": "Skirt", "dress": "Dress", "jumpsuit": "Jumpsuits", "shoes": "Shoes",
    "hair": "Hair", "hat": "Hat", "scarf": "Scarf", "swimwear": "Swimwear",
    "underwear": "Underwear",
}
# classes the generator can produce (every class but Body comes from one kind)
GENERATED_CLASSES = tuple(sorted({CLASS_NAMES.index(c) for c in KIND_CLASS.values()}
                                 | {CLASS_NAMES.index("Body")}))


@dataclass
class Spec:
    kind: str
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> int:
        return CLASS_NAMES.index(KIND_CLASS[self.kind])


def sample_outfit(rng: np.random.Generator, allowed: set[int] | None = None) -> list[Spec]:
    """A random, plausible outfit; classes outside ``allowed`` are left out."""
    u = rng.uniform
    out: list[Spec] = []
    r = rng.random()
    base_top = None
    if r < 0.13:
        out.append(Spec("dress", {"sleeve": float(rng.choice([0.0, 0.0, 0.3])),
                                  "drop": u(0.45, 0.9), "flare": u(0.03, 0.16),
                                  "neck": u(0.02, 0.12)}))
    elif r < 0.24:
        out.append(Spec("jumpsuit", {"sleeve": float(rng.choice([0.3, 1.0])),
                                     "reach": u(0.85, 1.0), "wide": u(0, 0.03)}))
    elif r < 0.30:
        out.append(Spec("swimwear", {"top": bool(rng.random() < 0.5)}))
    elif r < 0.34:
        out.append(Spec("underwear", {"top": bool(rng.random() < 0.5)}))
    else:
        base_top = str(rng.choice(["tshirt", "shirt", "hoodie"], p=[0.45, 0.33, 0.22]))
        if base_top == "tshirt":
            out.append(Spec("tshirt", {"sleeve": u(0.15, 0.45), "hem": u(g.HIP_Y - 0.05, g.WAIST_Y - 0.06),
                                       "neck": float(rng.choice([0.015, 0.03, 0.08]))}))
        elif base_top == "shirt":
            out.append(Spec("shirt", {"hem": u(g.HIP_Y - 0.1, g.HIP_Y), "sleeve": u(0.95, 1.02)}))
        else:
            out.append(Spec("hoodie", {"hem": u(g.HIP_Y - 0.08, g.HIP_Y), "hood_up": bool(rng.random() < 0.3)}))
        bottom = str(rng.choice(["pants", "shorts", "skirt"], p=[0.5, 0.25, 0.25]))
        if bottom == "pants":
            out.append(Spec("pants", {"reach": u(0.9, 1.0), "wide": float(rng.choice([0.0, 0.0, u(0.01, 0.04)]))}))
        elif bottom == "shorts":
            out.append(Spec("shorts", {"reach": u(0.2, 0.55)}))
        else:
            out.append(Spec("skirt", {"drop": u(0.3, 0.75), "flare": u(0.02, 0.15)}))
    if not any(s.kind in ("swimwear", "underwear") for s in out):
        o = rng.random()
        if o < 0.22:
            out.append(Spec("jacket", {"open": bool(rng.random() < 0.5), "hem": u(g.HIP_Y - 0.1, g.HIP_Y + 0.03)}))
        elif o < 0.38:
            out.append(Spec("coat", {"open": bool(rng.random() < 0.5), "drop": u(0.25, 0.6)}))
        elif o < 0.52 and base_top in ("tshirt", "shirt"):
            out.append(Spec("vest", {"hem": u(g.HIP_Y - 0.05, g.WAIST_Y), "neck": u(0.08, 0.16)}))
    if rng.random() < 0.85:
        out.append(Spec("shoes", {"top": float(rng.choice([0.02, 0.04, 0.06, 0.12]))}))
    hood_up = any(s.kind == "hoodie" and s.params["hood_up"] for s in out)
    if rng.random() < 0.88:
        out.append(Spec("hair", {"length": int(rng.choice([0, 1, 2], p=[0.4, 0.3, 0.3])),
                                 "volume": u(0.006, 0.022)}))
    if not hood_up and rng.random() < 0.25:
        out.append(Spec("hat", {"style": str(rng.choice(["beanie", "cap", "brim"]))}))
    if rng.random() < 0.15:
        out.append(Spec("scarf", {}))
    if allowed is not None:
        out = [s for s in out if s.label in allowed]
    return out


def _neck_up(body: Body) -> np.ndarray:
    c = body.canon
    head = body.vertices[c[:, 1] > 0.45].mean(0)
    base = body.vertices[np.abs(c[:, 1] - g.NECK_BASE_Y) < 0.015].mean(0)
    d = head - base
    return d / np.linalg.norm(d)


def _head_forward(body: Body) -> np.ndarray:
    c = body.canon
    head = c[:, 1] > 0.40
    face = head & (c[:, 2] > 0.09)
    d = body.vertices[face].mean(0) - body.vertices[head].mean(0)
    return d / np.linalg.norm(d)


def build(body: Body, spec: Spec, rng: np.random.Generator, ctx: dict) -> list[Surface]:
    """Surfaces of one garment. ``ctx`` shares facts between garments (hair thickness...)."""
    c = body.canon
    p = spec.params
    lab, kind = spec.label, spec.kind
    u = rng.uniform
    arm = g.arm_mask(c)
    y = c[:, 1]
    out: list[Surface] = []
    if kind == "tshirt":
        t = u(0.004, 0.007)
        m = g.torso_mask(c, p["hem"], p["neck"], 0.06 if p["neck"] > 0.05 else 0.09) \
            | g.sleeve_mask(c, p["sleeve"])
        ease = np.clip((g.CHEST_Y - y) / 0.3, 0, 1) * u(0, 0.012)
        out.append(g.shell(body, m, t + ease, lab, kind))
    elif kind == "shirt":
        t = u(0.005, 0.008)
        m = g.torso_mask(c, p["hem"], 0.035, 0.07) | g.sleeve_mask(c, p["sleeve"])
        s = g.shell(body, m, t + np.clip((g.CHEST_Y - y) / 0.3, 0, 1) * 0.006, lab, kind)
        out.append(s)
        up = _neck_up(body)
        sel = (s.canon[:, 1] > g.NECK_BASE_Y - 0.08) & ~g.arm_mask(s.canon)
        direction = s.normals * 0.014 - up[None, :] * 0.035
        collar = g.extrude_edges(s, sel, direction, lab, kind)
        if collar is not None:
            out.append(collar)
    elif kind == "hoodie":
        t = u(0.009, 0.013)
        m = g.torso_mask(c, p["hem"], 0.02, 0.09) | g.sleeve_mask(c, 1.0)
        out.append(g.shell(body, m, t + np.clip((g.CHEST_Y - y) / 0.3, 0, 1) * 0.008, lab, kind))
        if p["hood_up"]:
            face = (c[:, 2] > g.HEAD_Z + 0.02) & (np.abs(c[:, 0]) < 0.062) & (y < 0.515)
            hm = (g.head_mask(c) | ((y > g.NECK_BASE_Y - 0.02) & ~arm)) & ~face
            out.append(g.shell(body, hm, 0.032 + 0.012 * np.clip((y - 0.45) / 0.1, 0, 1), lab, kind))
        else:
            hm = (c[:, 2] < -0.02) & (y > 0.14) & (y < 0.37) & (np.abs(c[:, 0]) < 0.14) & ~arm
            bump = np.exp(-((y - 0.25) / 0.07) ** 2 - (c[:, 0] / 0.09) ** 2)
            out.append(g.shell(body, hm, t + 0.005 + 0.04 * bump, lab, kind))
        ctx["torso_max"] = max(ctx.get("torso_max", 0.0), t + 0.008)
    elif kind in ("jacket", "coat"):
        t = u(0.017, 0.022) if kind == "jacket" else u(0.022, 0.028)
        hem = p.get("hem", g.CROTCH_Y + 0.03)
        m = g.torso_mask(c, hem, u(0.04, 0.1), 0.09) | g.sleeve_mask(c, u(0.97, 1.02))
        if p["open"]:
            w = u(0.02, 0.06)
            m &= ~((c[:, 2] > 0.0) & (np.abs(c[:, 0]) < w + 0.3 * np.clip(y - 0.15, 0, 1)))
        s = g.shell(body, m, t, lab, kind)
        out.append(s)
        up = _neck_up(body)
        sel = (s.canon[:, 1] > g.SHOULDER_Y - 0.1) & ~g.arm_mask(s.canon) & (s.canon[:, 2] < 0.08)
        collar = g.extrude_edges(s, sel, s.normals * 0.012 - up[None, :] * 0.04, lab, kind)
        if collar is not None:
            out.append(collar)
        if kind == "coat":
            band = (np.abs(y - (hem + 0.015)) < 0.015) & ~arm
            enclose = (y < hem) & ~arm
            gap = (0.0, 0.2) if p["open"] else None
            out.append(g.hanging_tube(body, band, enclose, p["drop"], rng, lab, kind,
                                      clearance=t, flare=u(0.02, 0.08), folds=0.008, gap=gap))
        ctx["torso_max"] = max(ctx.get("torso_max", 0.0), t + 0.01)
    elif kind == "vest":
        t = u(0.011, 0.014)
        armhole = (np.abs(c[:, 0]) > 0.125) & (y > 0.06)
        m = g.torso_mask(c, p["hem"], p["neck"], 0.07) & ~armhole
        out.append(g.shell(body, m, t, lab, kind))
    elif kind in ("pants", "shorts"):
        top = g.WAIST_Y - 0.02 + u(-0.05, 0.02)
        reach = p["reach"]
        m = g.legs_mask(c, top, reach) & ~g.feet_mask(c, 0.0)
        lr = np.clip(g.leg_reach(c), 0, 1)
        if kind == "pants":
            off = u(0.005, 0.008) + p["wide"] * lr ** 1.5
        else:
            off = u(0.006, 0.009) + 0.02 * lr / max(reach, 0.2)
        out.append(g.shell(body, m, off, lab, kind))
    elif kind == "skirt":
        top = g.WAIST_Y - u(0.0, 0.06)
        band = (np.abs(y - top) < 0.02) & ~arm
        out.append(g.shell(body, (y < top) & (y > g.HIP_Y) & ~arm, 0.006, lab, kind))
        enclose = (y < top) & ~arm
        out.append(g.hanging_tube(body, band, enclose, p["drop"], rng, lab, kind,
                                  clearance=0.008, flare=p["flare"]))
    elif kind == "dress":
        t = u(0.005, 0.007)
        m = g.torso_mask(c, g.WAIST_Y - 0.04, p["neck"], 0.08) | g.sleeve_mask(c, p["sleeve"])
        if p["sleeve"] == 0.0:
            m &= ~((np.abs(c[:, 0]) > 0.11) & (y > 0.08) & (c[:, 1] > 0.0))
        out.append(g.shell(body, m, t, lab, kind))
        band = (np.abs(y - (g.WAIST_Y - 0.03)) < 0.02) & ~arm
        enclose = (y < g.WAIST_Y) & ~arm
        out.append(g.hanging_tube(body, band, enclose, p["drop"], rng, lab, kind,
                                  clearance=t, flare=p["flare"]))
    elif kind == "jumpsuit":
        t = u(0.006, 0.009)
        lr = np.clip(g.leg_reach(c), 0, 1)
        m = (g.torso_mask(c, g.CROTCH_Y, 0.04, 0.08) | g.sleeve_mask(c, p["sleeve"])
             | g.legs_mask(c, g.WAIST_Y, p["reach"])) & ~g.feet_mask(c, 0.0)
        out.append(g.shell(body, m, t + p["wide"] * lr ** 1.5, lab, kind))
    elif kind in ("swimwear", "underwear"):
        t = 0.004
        m = g.legs_mask(c, g.HIP_Y + u(0.0, 0.08), u(0.0, 0.08 if kind == "swimwear" else 0.2))
        if p["top"]:
            if kind == "swimwear":
                m |= (y > 0.05) & (y < 0.16) & ~arm & ((c[:, 2] > 0.02) | (np.abs(y - 0.12) < 0.02))
            else:
                m |= g.torso_mask(c, g.HIP_Y, 0.06, 0.07) & ~((np.abs(c[:, 0]) > 0.11) & (y > 0.06))
        out.append(g.shell(body, m, t, lab, kind))
    elif kind == "shoes":
        m = g.feet_mask(c, p["top"])
        sole = np.clip(-body.normals[:, 1] - 0.5, 0, 1) * 0.015
        out.append(g.shell(body, m, u(0.007, 0.011) + sole, lab, kind))
    elif kind == "hair":
        vol = p["volume"]
        m = g.scalp_mask(c, p["length"])
        top = np.clip((y - 0.45) / 0.1, 0, 1)
        lumps = 0.004 * np.sin(c[:, 0] * 90 + u(0, 6)) * np.sin(y * 70)
        off = 0.004 + vol * top + 0.006 * (1 - top) + lumps
        ctx["hair"] = float(vol + 0.012)
        out.append(g.shell(body, m, off, lab, kind))
    elif kind == "hat":
        back = np.clip((g.HEAD_Z + 0.04 - c[:, 2]) / 0.08, 0.0, 1.0)
        m = (y > 0.492 - 0.035 * back) & (np.abs(c[:, 0]) < 0.12)
        t = ctx.get("hair", 0.006) + 0.008
        off = t + (0.01 if p["style"] == "beanie" else 0.0) * np.clip((y - 0.5) / 0.05, 0, 1)
        s = g.shell(body, m, off, lab, kind)
        out.append(s)
        up = _neck_up(body)
        if p["style"] == "cap":
            fwd = _head_forward(body)
            sel = s.canon[:, 2] > g.HEAD_Z + 0.02
            direction = np.broadcast_to(fwd * 0.065 - up * 0.01, s.vertices.shape)
            brim = g.extrude_edges(s, sel, np.ascontiguousarray(direction), lab, kind)
        elif p["style"] == "brim":
            radial = s.normals.astype(np.float64) - np.outer(s.normals @ up, up)
            radial /= np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-9)
            brim = g.extrude_edges(s, np.ones(len(s.vertices), bool), radial * 0.07, lab, kind)
        else:
            brim = None
        if brim is not None:
            out.append(brim)
    elif kind == "scarf":
        t = ctx.get("torso_max", 0.008) + u(0.012, 0.02)
        m = (y > 0.24) & (y < 0.355) & (np.abs(c[:, 0]) < 0.11) & ~arm
        side = 1.0 if rng.random() < 0.5 else -1.0
        tail = (c[:, 2] > 0.0) & (np.abs(c[:, 0] - side * 0.05) < 0.035) & (y > u(-0.15, 0.1)) & (y < 0.26)
        out.append(g.shell(body, m | tail, t, lab, kind))
    else:
        raise ValueError(f"unknown garment kind {kind!r}")
    return out


def covered_mask(body: Body, outfit: list[Spec]) -> np.ndarray:
    """Body vertices under a closed shell region (never seen by any camera)."""
    c = body.canon
    cover = np.zeros(len(c), dtype=bool)
    for s in outfit:
        if s.kind in ("tshirt", "shirt", "hoodie", "vest", "dress", "jumpsuit"):
            cover |= g.torso_mask(c, g.WAIST_Y, 0.15, 0.1) & (c[:, 1] < g.SHOULDER_Y - 0.02) \
                & (np.abs(c[:, 0]) < 0.11)
        if s.kind in ("pants", "jumpsuit"):
            cover |= g.legs_mask(c, g.HIP_Y - 0.05, 0.8)
    return cover
