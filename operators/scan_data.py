"""Read a scan out of Blender as numpy arrays for the worker.

The evaluated mesh (modifiers applied), in world space, converted from
Blender's z-up to the network's y-up frame, with per-vertex colours from the
active colour attribute, else the material's base-colour image sampled at the
UVs, else grey (with a warning). Reading never changes the object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import bpy
import numpy as np

from ..close_blender.errors import CloseError
from .mesh_labels import read_color_attribute, scan_color_name

GREY = 0.5

# Blender world (x, y, z), z up -> network frame (x, z, -y), y up.
Z_UP_TO_Y_UP = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=np.float64)


@dataclass
class ScanInput:
    """One object's scan, ready to send to the worker."""

    name: str
    vertices: np.ndarray          # (N, 3) float32, world space, y up, scene units (metres)
    faces: np.ndarray             # (F, 3) int64 triangles
    colors: np.ndarray            # (N, 3) float32 sRGB in [0, 1]
    normals: np.ndarray           # (N, 3) float32, y up
    color_source: str             # "attribute:<name>", "texture:<image>" or "grey"
    warnings: list[str] = field(default_factory=list)

    def worker_arrays(self) -> dict[str, np.ndarray]:
        """The arrays scan jobs (segment, fit_body, ...) take."""
        return {"vertices": self.vertices, "faces": self.faces, "colors": self.colors,
                "normals": self.normals}


def check_target(obj: bpy.types.Object | None) -> str | None:
    """Why this object cannot be segmented, or None if it can."""
    if obj is None:
        return "Nothing selected: select a scan (a mesh object)"
    if obj.type != "MESH":
        return f"'{obj.name}' is a {obj.type.lower()}, not a mesh: select a scan mesh"
    if len(obj.data.vertices) == 0:
        return f"'{obj.name}' has no vertices: select a scan with geometry"
    return None


def active_mesh_in_object_mode(cls, context: bpy.types.Context) -> bool:
    """Poll for operators on the active mesh in Object mode, saying why not when it fails."""
    obj = context.active_object
    if obj is None or obj.type != "MESH":
        cls.poll_message_set("Select a scan (a mesh object) and make it active")
        return False
    if context.mode != "OBJECT":
        cls.poll_message_set("Switch to Object Mode first")
        return False
    return True


def _evaluated_mesh(obj: bpy.types.Object, depsgraph) -> tuple[bpy.types.Object, bpy.types.Mesh]:
    eval_obj = obj.evaluated_get(depsgraph)
    return eval_obj, eval_obj.to_mesh()


def read_scan(obj: bpy.types.Object, context: bpy.types.Context) -> ScanInput:
    """Gather the evaluated mesh of ``obj`` as arrays (the object is not modified)."""
    problem = check_target(obj)
    if problem:
        raise CloseError(problem)
    depsgraph = context.evaluated_depsgraph_get()
    eval_obj, mesh = _evaluated_mesh(obj, depsgraph)
    try:
        n = len(mesh.vertices)
        if n == 0:
            raise CloseError(f"'{obj.name}' has no vertices after its modifiers",
                             "check the modifier stack")
        if n != len(obj.data.vertices):
            raise CloseError(
                f"the modifiers of '{obj.name}' change its vertex count "
                f"({len(obj.data.vertices)} -> {n}), so labels could not be written back",
                "apply or disable the modifiers that add or remove vertices")
        co = np.empty(n * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        nor = np.empty(n * 3, np.float32)
        mesh.vertices.foreach_get("normal", nor)
        mesh.calc_loop_triangles()
        tris = np.empty(len(mesh.loop_triangles) * 3, np.int32)
        mesh.loop_triangles.foreach_get("vertices", tris)

        world = np.array(eval_obj.matrix_world, dtype=np.float64)
        v = co.reshape(-1, 3).astype(np.float64) @ world[:3, :3].T + world[:3, 3]
        normal_matrix = np.linalg.inv(world[:3, :3]).T
        nrm = nor.reshape(-1, 3).astype(np.float64) @ normal_matrix.T
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        if not np.isfinite(v).all():
            raise CloseError(f"'{obj.name}' has NaN or infinite vertex positions",
                             "repair the mesh (Mesh > Clean Up) first")
        colors, source, warnings = read_vertex_colors(obj, mesh)
    finally:
        eval_obj.to_mesh_clear()
    return ScanInput(
        name=obj.name,
        vertices=(v @ Z_UP_TO_Y_UP.T).astype(np.float32),
        faces=tris.reshape(-1, 3).astype(np.int64),
        colors=colors,
        normals=(nrm @ Z_UP_TO_Y_UP.T).astype(np.float32),
        color_source=source,
        warnings=warnings,
    )


def read_vertex_colors(obj: bpy.types.Object, mesh: bpy.types.Mesh
                       ) -> tuple[np.ndarray, str, list[str]]:
    """Per-vertex sRGB colours (N, 3): colour attribute, else texture at UVs, else grey."""
    n = len(mesh.vertices)
    name = scan_color_name(mesh)
    colors = read_color_attribute(mesh, name) if name else None
    if colors is not None:
        return colors[:, :3], f"attribute:{name}", []
    sampled = _sample_base_color_texture(obj, mesh)
    if sampled is not None:
        return sampled
    return (np.full((n, 3), GREY, np.float32), "grey",
            [f"'{obj.name}' has no colour attribute and no base-colour image texture: "
             "using grey, which makes the labels less reliable"])


def _average_per_vertex(loop_vert: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(loop_vert, minlength=n).astype(np.float32)
    out = np.stack([np.bincount(loop_vert, weights=values[:, c], minlength=n)
                    for c in range(values.shape[1])], axis=1)
    out /= np.maximum(counts, 1.0)[:, None]
    return out.astype(np.float32)


def _base_color_image(obj: bpy.types.Object):
    for slot in obj.material_slots:
        mat = slot.material
        if mat is None or not mat.use_nodes or mat.node_tree is None:
            continue
        for node in mat.node_tree.nodes:
            if node.type != "BSDF_PRINCIPLED":
                continue
            socket = node.inputs.get("Base Color")
            if socket is None or not socket.is_linked:
                continue
            src = socket.links[0].from_node
            if src.type == "TEX_IMAGE" and src.image is not None:
                return src.image
    return None


def _sample_base_color_texture(obj: bpy.types.Object, mesh: bpy.types.Mesh):
    image = _base_color_image(obj)
    uv_layer = mesh.uv_layers.active
    if image is None or uv_layer is None:
        return None
    width, height = image.size
    if width == 0 or height == 0:
        return None
    pixels = np.empty(width * height * image.channels, np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(height, width, image.channels)
    if image.channels < 3:
        pixels = np.repeat(pixels[..., :1], 3, axis=2)
    uv = np.empty(len(mesh.loops) * 2, np.float32)
    uv_layer.uv.foreach_get("vector", uv)
    uv = uv.reshape(-1, 2) % 1.0
    px = np.clip((uv[:, 0] * width).astype(np.int64), 0, width - 1)
    py = np.clip((uv[:, 1] * height).astype(np.int64), 0, height - 1)
    loop_colors = pixels[py, px, :3]
    if image.is_float:
        # Float buffers hold linear values: encode as sRGB like the training colours.
        loop_colors = np.where(loop_colors <= 0.0031308, loop_colors * 12.92,
                               1.055 * np.power(np.clip(loop_colors, 0, None), 1 / 2.4) - 0.055)
    loop_vert = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("vertex_index", loop_vert)
    colors = _average_per_vertex(loop_vert, loop_colors.astype(np.float32), len(mesh.vertices))
    return colors.clip(0, 1), f"texture:{image.name}", []
