"""The main job on the bundled defaults, as an artist would run it, headless.

1. Build the extension zip and install it into a headless Blender (a temporary
   user folder), with this environment's Python as the worker.
2. Import a sample synthetic scan (``data/samples``; made by ``make setup``).
3. ``bpy.ops.close.segment()``: the worker fits the Anny body automatically and
   runs the default checkpoint; labels land as attributes and vertex groups.
4. Write ``out/demo.blend`` and ``out/demo.png`` (Cycles on the CPU, front and
   back, coloured by label), and print per-class vertex counts and the mIoU
   against the scan's known labels.

Usage: ``python tools/demo.py [--scan data/samples/X.ply] [--checkpoint default]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCAN = REPO / "data" / "samples" / "synth_0_0000.ply"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import headless  # noqa: E402

from close_blender.labels import CLASS_NAMES, DISPLAY_NAMES, N_CLASSES, names_of  # noqa: E402
from close_blender.metrics import scan_metrics  # noqa: E402


def label_material(bpy):
    mat = bpy.data.materials.new("CloSe labels")
    if mat.node_tree is None:  # Blender < 5 makes node trees on request
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    attr = nodes.new("ShaderNodeAttribute")
    attr.attribute_name = "close_label_color"
    links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.8
    return mat


def render(bpy, obj, out_png: Path) -> None:
    """Front and back views, Cycles on the CPU, stitched side by side."""
    from PIL import Image

    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y = 400, 640
    scene.render.film_transparent = False
    world = bpy.data.worlds.new("demo") if scene.world is None else scene.world
    scene.world = world
    if world.node_tree is None:
        world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.9, 0.9, 0.9, 1)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 1.0
    obj.data.materials.clear()
    obj.data.materials.append(label_material(bpy))

    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    world = np.array(obj.matrix_world)
    points = co.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
    lo, hi = points.min(0), points.max(0)
    centre = (lo + hi) / 2
    height = float(hi[2] - lo[2])
    cam_data = bpy.data.cameras.new("demo")
    cam_data.type = "ORTHO"
    xy = points[:, :2] - points[:, :2].mean(0)
    _, axes = np.linalg.eigh(xy.T @ xy)  # columns: least, most horizontal spread
    width = float(np.ptp(xy @ axes[:, 1]))
    aspect = scene.render.resolution_y / scene.render.resolution_x
    cam_data.ortho_scale = 1.08 * max(height, width * aspect)
    cam = bpy.data.objects.new("demo_camera", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    sun = bpy.data.objects.new("demo_sun", bpy.data.lights.new("demo_sun", "SUN"))
    sun.data.energy = 3.0
    scene.collection.objects.link(sun)
    tiles = []
    with tempfile.TemporaryDirectory() as tmp:
        # A person is wider across the shoulders than front to back: look along the
        # horizontal direction of least spread, from both sides.
        view = axes[:, 0]
        for i, side in enumerate((-1.0, 1.0)):
            direction = side * view
            cam.location = (centre[0] + 4.0 * direction[0], centre[1] + 4.0 * direction[1],
                            centre[2])
            heading = float(np.arctan2(direction[0], -direction[1]))
            cam.rotation_euler = (np.pi / 2, 0.0, heading)
            sun.rotation_euler = (np.pi / 3, 0.0, heading + 0.3)
            scene.render.filepath = os.path.join(tmp, f"view{i}.png")
            bpy.ops.render.render(write_still=True)
            tiles.append(Image.open(scene.render.filepath).convert("RGB"))
    sheet = Image.new("RGB", (sum(t.width for t in tiles), tiles[0].height), "white")
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    bpy.data.objects.remove(cam)
    bpy.data.objects.remove(sun)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=Path, default=DEFAULT_SCAN,
                        help="a scan mesh, y up, metres (.ply, .obj or .glb)")
    parser.add_argument("--checkpoint", default="default", help="checkpoint name or path")
    parser.add_argument("--out", type=Path, default=REPO / "out")
    parser.add_argument("--name", default="demo", help="stem of the .blend and .png written")
    parser.add_argument("--garments", default="known",
                        help="'known': the classes the scan's .npz lists, as an artist would "
                             "tick them (auto-detect when there is no .npz); 'auto'; or a "
                             "comma-separated list")
    args = parser.parse_args()
    if not args.scan.is_file():
        raise SystemExit(f"no sample scan at {args.scan}: run `make setup` (it makes data/samples)")
    truth_path = args.scan.with_suffix(".npz")
    if Path(args.checkpoint).is_file():
        args.checkpoint = str(Path(args.checkpoint).resolve())
    bpy, ext = headless.start()
    obj = headless.import_scan(bpy, args.scan)
    print(f"scan {args.scan.name}: {len(obj.data.vertices):,} vertices")
    start = time.perf_counter()
    garments = args.garments
    if garments == "known":
        garments = (",".join(names_of(np.load(truth_path)["garments"])) if truth_path.is_file()
                    else "auto")
    print(f"garments: {garments}")
    result = bpy.ops.close.segment(checkpoint=args.checkpoint, garments=garments)
    seconds = time.perf_counter() - start
    if result != {"FINISHED"}:
        raise SystemExit("segmentation failed")
    labels = ext.operators.mesh_labels.read_labels(obj.data)
    print(f"segmented in {seconds:.1f} s (body fit: {obj.close_blender.body_fit})")
    args.out.mkdir(parents=True, exist_ok=True)
    blend, png = args.out / f"{args.name}.blend", args.out / f"{args.name}.png"
    render(bpy, obj, png)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), check_existing=False)
    print(f"wrote {blend} and {png}")
    report(labels, obj, truth_path)
    return 0


def report(labels: np.ndarray, obj, truth_path: Path) -> None:
    stats = {row.index: row for row in obj.close_blender.stats}
    print(f"\n{'class':<12}{'vertices':>10}{'confidence':>12}")
    for i in sorted(stats, key=lambda i: -stats[i].count):
        print(f"{DISPLAY_NAMES[i]:<12}{stats[i].count:>10,}{stats[i].mean_confidence:>12.2f}")
    if not truth_path.is_file():
        return
    truth = np.load(truth_path)["labels"]
    if len(truth) != len(labels):
        print("known labels do not match the mesh's vertex count; no mIoU")
        return
    m = scan_metrics(truth, labels, N_CLASSES)
    print(f"\nagainst the known labels: accuracy {m['accuracy']:.3f}, "
          f"strict mIoU {m['miou_strict']:.3f}, "
          f"reference-convention mIoU {m['miou_reference']:.3f}")
    for i in np.flatnonzero(~np.isnan(m["iou"])):
        print(f"  {CLASS_NAMES[i]:<12} IoU {m['iou'][i]:.3f}")


if __name__ == "__main__":
    sys.exit(main())
