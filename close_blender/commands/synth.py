"""Make synthetic clothed scans with exact labels (CloSe-D .npz + a matching mesh).

Each scan is an Anny body (adult, 18-70, either sex) in a random pose and outfit,
scanned by a virtual ring of cameras: one merged visible surface at even density.
Scan i of a run uses the seed pair (SEED, i): the same seed gives identical files.
"""

from __future__ import annotations

import argparse
import time

HELP = "make synthetic labelled clothed scans"
ORDER = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="folder for the scans (created if missing)")
    parser.add_argument("--count", type=int, default=1, help="number of scans (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--start", type=int, default=0,
                        help="index of the first scan (default 0): scans START..START+COUNT-1 "
                             "of the seed, to extend a set or split it across processes")
    parser.add_argument("--points", type=int, default=30000,
                        help="vertices per scan (default 30000)")
    parser.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                        help="only these garment classes (names or aliases, e.g. TShirt pants "
                             "hair); Body is always present")
    parser.add_argument("--mesh-format", choices=("ply", "obj", "none"), default="ply",
                        help="mesh written beside each .npz (default ply)")
    parser.add_argument("--preview", action="store_true",
                        help="also write a PNG contact sheet per scan")
    parser.add_argument("--prefix", default="synth", help="file name prefix (default synth)")


def run(args: argparse.Namespace) -> int:
    from ..errors import CloseError
    from ..labels import class_index

    if args.count < 1:
        raise CloseError(f"--count must be at least 1, not {args.count}")
    if args.start < 0:
        raise CloseError(f"--start must be 0 or more, not {args.start}")
    if not 1000 <= args.points <= 500000:
        raise CloseError(f"--points {args.points} is out of range",
                         "use between 1000 and 500000 points")
    classes = None
    if args.classes:
        names = [n for item in args.classes for n in item.split(",") if n.strip()]
        try:
            classes = [class_index(n) for n in names]
        except ValueError as exc:
            raise CloseError(str(exc), "use class names like TShirt, Pants, Hair") from None
    from inference.synth import generate_scan, write_scan

    for i in range(args.start, args.start + args.count):
        t0 = time.perf_counter()
        scan = generate_scan(args.seed, args.points, classes, index=i)
        stem = f"{args.prefix}_{args.seed}_{i:04d}"
        write_scan(args.out_dir, stem, scan, args.mesh_format, args.preview)
        print(f"{stem}: {scan['outfit']} ({scan['pose_preset']}), "
              f"{len(scan['points'])} points, {time.perf_counter() - t0:.1f} s", flush=True)
    return 0
