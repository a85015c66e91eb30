"""Speed of ``close.separate_garments`` on a ~300k-face labelled mesh.

Builds a grid mesh of about 300k triangles with a UV map, a colour attribute,
two materials and labels in bands (6 classes), then times our separation
against Blender's own ``mesh.separate(type='MATERIAL')`` on a copy carrying one
material per class, measured in the same run. Target: under 2 s.

    .venv/bin/python benchmarks/separate_speed.py [--faces 300000]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def load_extension():
    """Import the repository as a package (its operators use relative imports)."""
    spec = importlib.util.spec_from_file_location(
        "close_ext", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["close_ext"] = module
    spec.loader.exec_module(module)
    return module


def grid_mesh(n_faces: int):
    import bpy

    side = int(np.sqrt(n_faces / 2)) + 1
    xs, ys = np.meshgrid(np.linspace(0, 1, side), np.linspace(0, 2, side))
    co = np.stack([xs.ravel(), np.zeros(xs.size), ys.ravel()], 1).astype(np.float32)
    idx = np.arange(side * side).reshape(side, side)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    tris = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    mesh = bpy.data.meshes.new("bench")
    mesh.vertices.add(len(co))
    mesh.vertices.foreach_set("co", co.ravel())
    mesh.loops.add(tris.size)
    mesh.loops.foreach_set("vertex_index", tris.ravel().astype(np.int32))
    mesh.polygons.add(len(tris))
    mesh.polygons.foreach_set("loop_start", np.arange(0, tris.size, 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    uv = mesh.uv_layers.new(name="UVMap")
    uv.uv.foreach_set("vector", co[tris.ravel()][:, [0, 2]].ravel())
    col = mesh.color_attributes.new("Col", "BYTE_COLOR", "POINT")
    col.data.foreach_set("color_srgb", np.random.default_rng(0).random(len(co) * 4,
                                                                      dtype=np.float32))
    return mesh, co


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=300_000)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import bpy

    ext = load_extension()
    from close_ext.operators import mesh_labels, separate

    mesh, co = grid_mesh(args.faces)
    classes = np.array([12, 1, 3, 8, 10, 0])
    labels = classes[np.minimum((co[:, 2] / 2.0 * 6).astype(int), 5)]
    obj = bpy.data.objects.new("bench_scan", mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    mesh_labels.write_labels(obj, labels)
    print(f"mesh: {len(mesh.vertices):,} vertices, {len(mesh.polygons):,} faces, "
          f"{len(set(labels.tolist()))} classes")

    t0 = time.perf_counter()
    objects, _ = separate.separate(bpy.context, obj, tidy=True)
    ours = time.perf_counter() - t0
    assert sum(len(o.data.polygons) for o in objects) == len(mesh.polygons)

    # baseline: Blender's own separate by material, on a copy with one material per class
    copy = obj.copy()
    copy.data = mesh.copy()
    bpy.context.scene.collection.objects.link(copy)
    for c in classes:
        copy.data.materials.append(bpy.data.materials.new(f"m{c}"))
    loop_vert = np.empty(len(copy.data.loops), np.int32)
    copy.data.loops.foreach_get("vertex_index", loop_vert)
    face_class = labels[loop_vert.reshape(-1, 3)[:, 0]]
    slot = np.searchsorted(np.sort(classes), face_class)
    copy.data.polygons.foreach_set("material_index", slot.astype(np.int32))
    for o in bpy.context.selected_objects:
        o.select_set(False)
    copy.select_set(True)
    bpy.context.view_layer.objects.active = copy
    t0 = time.perf_counter()
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.select_all(action="SELECT")
    bpy.ops.mesh.separate(type="MATERIAL")
    bpy.ops.object.mode_set(mode="OBJECT")
    native = time.perf_counter() - t0
    print(f"close.separate_garments: {ours:.2f} s ({len(objects)} pieces)  target < 2 s")
    print(f"Blender mesh.separate(MATERIAL) baseline: {native:.2f} s  "
          f"ratio ours/native {ours / native:.2f}")
    del ext
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
