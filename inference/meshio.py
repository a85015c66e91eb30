"""Reading scan meshes and point clouds with trimesh, keeping the file's vertex order.

``read_mesh(path)`` gives a :class:`MeshData`: vertices (N, 3) float64 in the
file's units and axes, triangles (or None for a point cloud), per-vertex
colours (uint8, from vertex colours, face colours, or the UV texture sampled
at each vertex; grey with a warning otherwise) and, where faces exist, unit
vertex normals. Files are loaded with ``process=False`` so vertices are never
merged or reordered: labels predicted per point map back onto the file's vertices.
Scenes (GLB/GLTF with several meshes) are flattened in scene order with their
node transforms applied.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from close_blender.errors import ScanError

GREY = 160


@dataclass
class MeshData:
    """A scan as arrays; ``faces`` is None for point clouds, ``normals`` None when unknown."""

    vertices: np.ndarray
    faces: np.ndarray | None
    colors: np.ndarray
    normals: np.ndarray | None
    warnings: list[str] = field(default_factory=list)
    source: str = ""


def read_mesh(path: str | os.PathLike) -> MeshData:
    """Read any mesh or point cloud trimesh reads (OBJ, PLY, GLB/GLTF, STL, OFF, ...)."""
    try:
        import trimesh
    except ImportError as exc:
        raise ScanError(f"trimesh is not installed ({exc})",
                        "install the worker requirements: pip install 'close-blender[worker]'"
                        ) from None
    p = Path(path)
    if not p.is_file():
        raise ScanError(f"no mesh file at {p}", "check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = trimesh.load(str(p), process=False, maintain_order=True)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise ScanError(f"cannot read {p.name} as a mesh ({type(exc).__name__}: {exc})",
                        "export the scan as OBJ, PLY or GLB") from None
    notes: list[str] = []
    parts = _flatten(loaded, trimesh)
    if not parts:
        raise ScanError(f"{p.name} holds no mesh or point geometry",
                        "export the scan as OBJ, PLY or GLB")
    verts, faces, colors = [], [], []
    offset = 0
    has_faces = any(isinstance(g, trimesh.Trimesh) and len(g.faces) for g in parts)
    for g in parts:
        v = np.asarray(g.vertices, dtype=np.float64)
        verts.append(v)
        c, note = _colors(g, trimesh)
        colors.append(c)
        if note and note not in notes:
            notes.append(note)
        if isinstance(g, trimesh.Trimesh) and len(g.faces):
            faces.append(np.asarray(g.faces, dtype=np.int64) + offset)
        offset += len(v)
    vertices = np.concatenate(verts)
    if len(vertices) == 0:
        raise ScanError(f"{p.name} has no vertices")
    face_arr = np.concatenate(faces) if has_faces and faces else None
    if face_arr is not None:
        from inference.body.fit import mesh_normals

        if np.isfinite(vertices).all():
            normals_arr = mesh_normals(vertices, face_arr).astype(np.float32)
        else:
            normals_arr = None
    else:
        normals_arr = None
    return MeshData(vertices, face_arr, np.concatenate(colors), normals_arr, notes, p.name)


def _flatten(loaded: object, trimesh: object) -> list:
    """Geometries of a Trimesh, PointCloud or Scene (transforms applied), in order."""
    tm = trimesh  # type: ignore[assignment]
    if isinstance(loaded, tm.Scene):  # type: ignore[attr-defined]
        out = []
        for node in loaded.graph.nodes_geometry:
            transform, name = loaded.graph[node]
            geom = loaded.geometry[name].copy()
            geom.apply_transform(transform)
            out.append(geom)
        return [g for g in out if isinstance(g, (tm.Trimesh, tm.PointCloud))]  # type: ignore[attr-defined]
    if isinstance(loaded, (tm.Trimesh, tm.PointCloud)):  # type: ignore[attr-defined]
        return [loaded]
    return []


def _colors(geom: object, trimesh: object) -> tuple[np.ndarray, str]:
    """(N, 3) uint8 per-vertex colours of one geometry, and a note when they are made up."""
    n = len(geom.vertices)  # type: ignore[attr-defined]
    grey = np.full((n, 3), GREY, dtype=np.uint8)
    if isinstance(geom, trimesh.PointCloud):  # type: ignore[attr-defined]
        c = np.asarray(geom.colors)
        if c.ndim == 2 and len(c) == n and c.shape[1] >= 3:
            return c[:, :3].astype(np.uint8), ""
        return grey, "the point cloud has no colours; using grey"
    visual = geom.visual  # type: ignore[attr-defined]
    kind = getattr(visual, "kind", None)
    try:
        if kind == "texture":
            uv = getattr(visual, "uv", None)
            image = _texture_image(visual.material)
            if uv is not None and len(uv) == n and image is not None:
                return _sample_texture(np.asarray(uv, dtype=np.float64), image,
                                       _base_factor(visual.material)), ""
            color = _base_factor(visual.material)
            if color is not None:
                return np.tile((color[:3] * 255).clip(0, 255).astype(np.uint8), (n, 1)), \
                    "the mesh has a material colour but no usable texture; using it"
            return grey, "the mesh's texture could not be read; using grey"
        if kind in ("vertex", "face"):
            c = np.asarray(visual.vertex_colors)
            if c.ndim == 2 and len(c) == n:
                return c[:, :3].astype(np.uint8), ""
    except Exception as exc:  # a broken material must not stop the scan
        return grey, f"reading the mesh colours failed ({exc}); using grey"
    return grey, "the mesh has no vertex colours or texture; using grey"


def _texture_image(material: object) -> object | None:
    for attr in ("baseColorTexture", "image"):
        img = getattr(material, attr, None)
        if img is not None:
            return img
    return None


def _base_factor(material: object) -> np.ndarray | None:
    for attr in ("baseColorFactor", "diffuse"):
        c = getattr(material, attr, None)
        if c is not None:
            c = np.asarray(c, dtype=np.float64).reshape(-1)
            if c.size >= 3:
                return c / 255.0 if c.max() > 1.0 else c
    return None


def _sample_texture(uv: np.ndarray, image: object, factor: np.ndarray | None) -> np.ndarray:
    """Bilinear sample of a PIL image at UVs (wrapping, v up), times a base colour factor."""
    img = np.asarray(image.convert("RGB"), dtype=np.float64)  # type: ignore[attr-defined]
    h, w = img.shape[:2]
    u = np.mod(uv[:, 0], 1.0) * (w - 1)
    v = (1.0 - np.mod(uv[:, 1], 1.0)) * (h - 1)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    u1, v1 = np.minimum(u0 + 1, w - 1), np.minimum(v0 + 1, h - 1)
    fu, fv = (u - u0)[:, None], (v - v0)[:, None]
    c = ((1 - fu) * (1 - fv) * img[v0, u0] + fu * (1 - fv) * img[v0, u1]
         + (1 - fu) * fv * img[v1, u0] + fu * fv * img[v1, u1])
    if factor is not None:
        c = c * factor[:3]
    return c.clip(0, 255).round().astype(np.uint8)
