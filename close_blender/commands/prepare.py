"""Turn a scan mesh (OBJ, PLY, GLB, ...) into a CloSe-D scan ready for `predict`.

Reads the mesh keeping its vertex order, takes colours from vertex colours or
the UV texture (grey with a warning otherwise), computes normals, fits a body
(Anny automatically, or SMPL from your registration) and writes each point's
canonical body coordinate. The fit quality is printed; a failed fit still
writes the file (flagged body_ok = False) but exits with status 3.
"""

from __future__ import annotations

import argparse
import sys

HELP = "make a CloSe-D scan (.npz) from a mesh: colours, normals, body fit"
ORDER = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mesh", metavar="MESH", help="scan mesh or point cloud (OBJ/PLY/GLB/...)")
    parser.add_argument("--out", required=True, metavar="SCAN.npz", help="output CloSe-D scan")
    parser.add_argument("--body", choices=("anny", "smpl"), default="anny",
                        help="body model: anny (automatic fit, default) or smpl "
                             "(needs --smpl-model-dir and --registration)")
    parser.add_argument("--smpl-model-dir", default=None, metavar="DIR",
                        help="folder holding SMPL_NEUTRAL.pkl / SMPL_MALE.pkl / SMPL_FEMALE.pkl")
    parser.add_argument("--registration", default=None, metavar="FILE",
                        help="SMPL registration (.pkl/.npz: betas, body_pose, global_orient, "
                             "transl, optional scale, gender)")
    parser.add_argument("--garments", default=None,
                        help="comma-separated classes present, e.g. Body,TShirt,Pants,Shoes "
                             "(default: all classes)")
    parser.add_argument("--up", default="auto", choices=("auto", "y", "z", "x", "-y", "-z", "-x"),
                        help="the mesh's up axis (default: found automatically)")
    parser.add_argument("--body-mesh", default=None, metavar="OUT.ply",
                        help="also write the fitted body mesh (in the mesh's frame and units)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit's sampling")
    parser.add_argument("--effort", type=float, default=1.0,
                        help="fit iterations relative to the default (e.g. 0.3: quicker, rougher)")


def run(args: argparse.Namespace) -> int:
    from ..errors import ScanError
    from ..scan_io import save_scan

    if not 0.05 <= args.effort <= 10:
        raise ScanError(f"--effort {args.effort} is out of range", "use a value from 0.05 to 10")
    from .predict import progress_printer

    try:
        from inference.body.prepare import prepare_arrays
        from inference.meshio import read_mesh
    except ImportError as exc:
        raise ScanError(f"the body-fitting packages are missing ({exc})",
                        "install the worker requirements: pip install 'close-blender[worker]'"
                        ) from None
    mesh = read_mesh(args.mesh)
    for note in mesh.warnings:
        print(f"warning: {note}", file=sys.stderr)
    kind = "point cloud" if mesh.faces is None else f"{len(mesh.faces)} triangles"
    print(f"read {mesh.source}: {len(mesh.vertices)} vertices, {kind}", file=sys.stderr)
    arrays, fit = prepare_arrays(
        mesh.vertices, mesh.faces, mesh.colors, mesh.normals, body=args.body, up=args.up,
        garments=args.garments, smpl_model_dir=args.smpl_model_dir,
        registration=args.registration, progress=progress_printer("prepare"), seed=args.seed,
        effort=args.effort)
    save_scan(args.out, arrays)
    q = fit.quality
    print(f"wrote {args.out}: {len(arrays['points'])} points; {fit.message}")
    print(f"  fit: {q.get('iterations', 0)} iterations, {q.get('seconds', 0.0):.1f} s, "
          f"residual mean {100 * q['residual_mean_m']:.1f} cm / p95 "
          f"{100 * q['residual_p95_m']:.1f} cm, body outside scan "
          f"{100 * q['outside_fraction']:.0f}%, inside {100 * q['inside_fraction']:.0f}%")
    if args.body_mesh:
        _write_body_mesh(args.body_mesh, fit.vertices, fit.faces)
        print(f"wrote the fitted body to {args.body_mesh}")
    if not fit.ok:
        print("warning: the body fit failed; canonical coordinates are unreliable "
              "(check the up axis with --up, or the scan itself)", file=sys.stderr)
        return 3
    return 0


def _write_body_mesh(path: str, vertices, faces) -> None:
    import trimesh

    from ..fileio import write_bytes_atomic

    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else "ply"
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    data = mesh.export(file_type=suffix)
    write_bytes_atomic(path, data if isinstance(data, bytes) else data.encode())
