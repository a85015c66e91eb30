"""Scan meshes with vertex colours (PLY or OBJ), written atomically and reproducibly.

Vertex ``i`` of the mesh is point ``i`` of the scan's ``.npz``; positions are
in metres with y up, so Blender imports it like a scanner's export.
"""

from __future__ import annotations

import io
import os

import numpy as np

from close_blender.fileio import write_bytes_atomic


def ply_bytes(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray,
              normals: np.ndarray | None = None) -> bytes:
    """Binary little-endian PLY with float xyz, optional normals, uchar rgb."""
    n = len(vertices)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vert = np.empty(n, dtype=fields)
    vert["x"], vert["y"], vert["z"] = np.asarray(vertices, np.float32).T
    if normals is not None:
        vert["nx"], vert["ny"], vert["nz"] = np.asarray(normals, np.float32).T
    c = np.asarray(colors, np.uint8)
    vert["red"], vert["green"], vert["blue"] = c[:, 0], c[:, 1], c[:, 2]
    face = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    face["n"] = 3
    face["v"] = np.asarray(faces, np.int32)
    header = ["ply", "format binary_little_endian 1.0", "comment close-blender synthetic scan",
              f"element vertex {n}"]
    header += [f"property {'float' if t == '<f4' else 'uchar'} {name}" for name, t in fields]
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices",
               "end_header"]
    return ("\n".join(header) + "\n").encode("ascii") + vert.tobytes() + face.tobytes()


def obj_bytes(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> bytes:
    """OBJ with per-vertex colours (``v x y z r g b``, colours 0-1, as Blender reads them)."""
    buf = io.StringIO()
    buf.write("# close-blender synthetic scan\n")
    data = np.concatenate([np.asarray(vertices, np.float64),
                           np.asarray(colors, np.float64) / 255.0], axis=1)
    np.savetxt(buf, data, fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
    np.savetxt(buf, np.asarray(faces, np.int64) + 1, fmt="f %d %d %d")
    return buf.getvalue().encode("ascii")


def write_mesh(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray,
               colors: np.ndarray, normals: np.ndarray | None = None) -> None:
    """Write a PLY or OBJ (by the file suffix) atomically."""
    suffix = os.fspath(path).lower().rsplit(".", 1)[-1]
    if suffix == "ply":
        data = ply_bytes(vertices, faces, colors, normals)
    elif suffix == "obj":
        data = obj_bytes(vertices, faces, colors)
    else:
        raise ValueError(f"unknown mesh format .{suffix}; use .ply or .obj")
    write_bytes_atomic(path, data)
