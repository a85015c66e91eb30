"""One synthetic clothed scan from a seed: body, pose, outfit, look, virtual scan.

Everything random comes from one numpy Generator seeded with ``(seed, index)``,
torch only runs the (deterministic, float32) Anny forward pass, so the same
seed gives the same scan, byte for byte.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from close_blender.canonical import CANONICAL_FRAME_ID
from close_blender.labels import CLASS_NAMES, class_index, garments_from_labels
from close_blender.scan_io import normalize_points

from . import appearance, outfits, poses, scanner
from .garments import Body, Surface

BODY = CLASS_NAMES.index("Body")
# keys of a synthetic scan's .npz, in the order they are written (see docs/synthetic-scans.md)
NPZ_KEYS = ("points", "normals", "colors", "faces", "labels", "garments", "canon_pose", "scale",
            "centers", "phenotypes", "age_years", "pose", "pose_preset", "heading",
            "body_offset", "outfit", "canonical_frame", "seed")
MIN_AGE, MAX_AGE = 18.0, 70.0


@functools.lru_cache(maxsize=1)
def _body_model() -> Any:
    from inference.body.anny_body import AnnyBody

    return AnnyBody("default")


@functools.lru_cache(maxsize=1)
def _shape_distribution() -> Any:
    import anny.shape_distribution as sd

    return sd.SimpleShapeDistribution(_body_model().model)


def sample_phenotypes(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Adult phenotypes (6,) in PHENOTYPES order and the age in years.

    Uses the calibrated conditional distributions of ``anny.shape_distribution``
    (morphological age -> Anny age, Beta distributions of height, weight,
    muscle and proportions per sex), but draws from them with our own numpy
    Generator so results are reproducible without touching torch's global RNG.
    """
    import torch

    from inference.body.anny_body import PHENOTYPES

    dist = _shape_distribution()
    years = float(rng.uniform(MIN_AGE, MAX_AGE))
    gender = float(rng.uniform(0.0, 1.0))
    with torch.no_grad():
        mapping = dist.morphological_age_mapping
        age = mapping.morphological_to_anny_age(
            torch.tensor([years], dtype=mapping.morphological_age_anchors.dtype))
        sex = "boys" if gender <= 0.5 else "girls"
        values = {"gender": gender, "age": float(age[0])}
        for key in ("height", "weight", "muscle", "proportions"):
            cond = getattr(dist, f"{sex}_conditional_{key}_distribution")
            a, b = cond.get_distribution_params(age.to(cond.age_anchors.dtype))
            values[key] = float(rng.beta(float(a[0]), float(b[0])))
    return np.array([values[k] for k in PHENOTYPES], dtype=np.float32), years


def _posed_body(phen: np.ndarray, rotations: dict[str, np.ndarray]) -> tuple[Body, np.ndarray]:
    import torch

    model = _body_model()
    pose = model.pose_from_rotations(rotations)
    with torch.no_grad():
        v = model.forward(torch.as_tensor(phen[None]), pose)[0].cpu().numpy().astype(np.float64)
    f = model.faces
    n = scanner.vertex_normals(v, f)
    return Body(v, f, n, np.asarray(model.canonical_vertices)), pose[0].cpu().numpy()


def _resolve_classes(classes: Iterable[str | int] | None) -> set[int] | None:
    if classes is None:
        return None
    out = {c if isinstance(c, int) else class_index(c) for c in classes}
    out.add(BODY)
    return out


def _rotate_y(p: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    r = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return p @ r.T


def generate_scan(seed: int, n_points: int = 30000, classes: Iterable[str | int] | None = None,
                  index: int = 0, cfg: scanner.ScannerConfig | None = None
                  ) -> dict[str, np.ndarray]:
    """One synthetic clothed scan as CloSe-D arrays plus its generating parameters.

    ``classes`` limits the garments to those classes (Body is always allowed).
    The mesh (metres, y up, feet on y = 0) is ``points * scale + centers``.
    """
    cfg = cfg or scanner.ScannerConfig()
    rng = np.random.default_rng([int(seed), int(index)])
    allowed = _resolve_classes(classes)
    phen, years = sample_phenotypes(rng)
    pose_name, rotations = poses.sample_pose(rng)
    body, pose = _posed_body(phen, rotations)
    outfit = outfits.sample_outfit(rng, allowed)

    # surfaces: the skin that can show, then every garment
    covered = outfits.covered_mask(body, outfit)
    keep_face = ~covered[body.faces].all(1)
    skin = Surface(body.vertices, body.faces[keep_face], body.normals, body.canon,
                   body.canon.copy(), BODY, "body")
    ctx: dict = {}
    surfaces = [skin]
    for spec in sorted(outfit, key=lambda s: s.kind != "hair"):  # hair first (hat needs it)
        surfaces += outfits.build(body, spec, rng, ctx)

    # colours on each surface
    wardrobe = appearance.Wardrobe(rng)
    looks: dict[str, appearance.Look] = {}
    hair_rgb = appearance.hair_color(rng)
    colors = []
    for s in surfaces:
        if s.kind == "body":
            colors.append(appearance.skin_colors(s.canon, rng))
        elif s.kind == "hair":
            look = appearance.Look(hair_rgb, hair_rgb * 0.75, "noise", 0.01, 0)
            colors.append(appearance.cloth_colors(look, s.pattern, int(rng.integers(1 << 30))))
        else:
            if s.kind not in looks:
                looks[s.kind] = wardrobe.look(s.kind)
            colors.append(appearance.cloth_colors(looks[s.kind], s.pattern, 17))

    verts = np.concatenate([s.vertices for s in surfaces])
    offs = np.cumsum([0] + [len(s.vertices) for s in surfaces])[:-1]
    faces = np.concatenate([s.faces + o for s, o in zip(surfaces, offs, strict=False)])
    attrs = {
        "normals": np.concatenate([s.normals for s in surfaces]).astype(np.float64),
        "canon": np.concatenate([s.canon for s in surfaces]).astype(np.float32),
        "labels": np.concatenate([np.full(len(s.vertices), s.label, np.int64) for s in surfaces]),
        "colors": np.concatenate(colors).astype(np.float32),
    }
    # drop unused vertices (e.g. skin under closed garments)
    used = np.zeros(len(verts), bool)
    used[faces.reshape(-1)] = True
    verts, faces, attrs = scanner.keep_vertices(verts, faces, attrs, used)

    heading = float(rng.uniform(0.0, 2 * math.pi))
    verts = _rotate_y(verts, heading)
    attrs["normals"] = _rotate_y(attrs["normals"], heading)

    # the virtual scan: what the cameras see of a fairly dense surface, then
    # only that part made dense enough for an even remeshing
    verts, faces, attrs = scanner.subdivide(verts, faces, attrs, cfg.coarse_edge)
    attrs["normals"] /= np.maximum(np.linalg.norm(attrs["normals"], axis=1, keepdims=True), 1e-12)
    seen = scanner.visible_vertices(verts, attrs["normals"], cfg)
    verts, faces, attrs = scanner.keep_vertices(verts, faces, attrs, seen)
    area = scanner.surface_area(verts, faces)
    fine = 0.7 * math.sqrt(1.4 * area / n_points)  # ~0.7 of the remeshing cell
    if fine < cfg.coarse_edge:
        verts, faces, attrs = scanner.subdivide(verts, faces, attrs, fine)
        attrs["normals"] /= np.maximum(np.linalg.norm(attrs["normals"], axis=1, keepdims=True),
                                       1e-12)
    light = np.array([0.3, 0.8, 0.5])
    light /= np.linalg.norm(light)
    attrs["colors"] = appearance.shade(attrs["colors"], attrs["normals"], rng, light)
    verts, faces, attrs = scanner.uniform_remesh(verts, faces, attrs, n_points, rng)
    verts, faces, attrs = scanner.shuffle(verts, faces, attrs, rng)
    verts = verts + rng.normal(0.0, cfg.noise, verts.shape)

    # feet on the floor, centred: the mesh as a scanner would export it
    floor = np.array([0.5 * (verts[:, 0].min() + verts[:, 0].max()), verts[:, 1].min(),
                      0.5 * (verts[:, 2].min() + verts[:, 2].max())])
    verts = verts - floor
    points, centers, scale = normalize_points(verts)
    labels = attrs["labels"].astype(np.int64)
    return {
        "points": points,
        "normals": attrs["normals"].astype(np.float32),
        "colors": attrs["colors"].astype(np.uint8),
        "faces": faces.astype(np.int64),
        "labels": labels,
        "garments": garments_from_labels(labels),
        "canon_pose": attrs["canon"].astype(np.float32),
        "scale": np.float64(scale),
        "centers": centers.astype(np.float64),
        "phenotypes": phen,
        "age_years": np.float32(years),
        "pose": pose.astype(np.float32),
        "pose_preset": np.array(pose_name),
        "heading": np.float64(heading),
        "body_offset": (-floor).astype(np.float64),
        "outfit": np.array(",".join(s.kind for s in outfit)),
        "canonical_frame": np.array(CANONICAL_FRAME_ID),
        "seed": np.array([int(seed), int(index)], dtype=np.int64),
    }


def mesh_vertices(scan: dict[str, np.ndarray]) -> np.ndarray:
    """The scan's mesh vertices in metres (y up): ``points * scale + centers``."""
    return scan["points"].astype(np.float64) * float(scan["scale"]) + scan["centers"]


def write_scan(out_dir: str | os.PathLike, stem: str, scan: dict[str, np.ndarray],
               mesh_format: str = "ply", preview: bool = False) -> list[Path]:
    """Write ``stem.npz`` (+ ``stem.ply``/``.obj``, + ``stem.png``) into ``out_dir``.

    Keys are written in a fixed order, so equal scans give equal bytes.
    """
    from close_blender.scan_io import save_scan

    from .meshwrite import write_mesh

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{stem}.npz"]
    save_scan(written[0], {k: scan[k] for k in NPZ_KEYS}, require=("points", "labels"))
    if mesh_format != "none":
        if mesh_format not in ("ply", "obj"):
            raise ValueError(f"unknown mesh format {mesh_format!r}; use ply, obj or none")
        path = out / f"{stem}.{mesh_format}"
        write_mesh(path, mesh_vertices(scan), scan["faces"], scan["colors"],
                   scan["normals"] if mesh_format == "ply" else None)
        written.append(path)
    if preview:
        from .preview import write_preview

        path = out / f"{stem}.png"
        write_preview(path, scan, f"{stem}: {scan['outfit']} ({scan['pose_preset']})")
        written.append(path)
    return written


SAMPLE_SEED, SAMPLE_COUNT, SAMPLE_POINTS = 0, 4, 30000


def make_samples(out_dir: str | os.PathLike, n_points: int = SAMPLE_POINTS,
                 mesh_format: str = "ply", preview: bool = True) -> list[Path]:
    """The small fixed set of scans for tests and the demo.

    Same files as ``close-blender synth OUT_DIR --count 4 --seed 0 --preview`` (what
    ``make setup`` writes into ``data/samples``).
    """
    written: list[Path] = []
    for i in range(SAMPLE_COUNT):
        scan = generate_scan(SAMPLE_SEED, n_points, index=i)
        written += write_scan(out_dir, f"synth_{SAMPLE_SEED}_{i:04d}", scan, mesh_format, preview)
    return written
