"""Body-fit accuracy and speed on synthetic clothed scans with known bodies.

For each scan of ``inference.synth`` (loose garments, several pose presets,
random heading) the mesh is turned to a random up-axis convention (y-up or
z-up) and unit (m, cm, mm), fitted with ``fit_anny`` and its canonical
coordinates compared with the ground truth ``canon_pose``. Prints per-scan
figures and the summary against the targets: mean canonical-coordinate error
< 2 cm, 95th percentile < 6 cm, < 30 s per 30k-point scan.

    .venv/bin/python benchmarks/body_fit.py --scans 8 [--points 30000] [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_or_make(seed: int, points: int, cache: Path | None) -> dict[str, np.ndarray]:
    from inference.synth.generator import generate_scan

    if cache is not None:
        path = cache / f"synth_{seed}_{points}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    scan = generate_scan(seed, n_points=points)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, **scan)
    return scan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scans", type=int, default=8)
    ap.add_argument("--points", type=int, default=30000)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--cache", type=Path, default=None, help="keep generated scans here")
    ap.add_argument("--method", default="vertex", choices=("vertex", "barycentric"))
    ap.add_argument("--yup-only", action="store_true", help="no z-up / unit conversions")
    args = ap.parse_args(argv)

    from inference.body.coords import canonical_coordinates
    from inference.body.fit import fit_anny

    rng = np.random.default_rng(args.seed)
    rows = []
    all_err = []
    for i in range(args.scans):
        scan = load_or_make(args.seed + i, args.points, args.cache)
        verts = scan["points"].astype(np.float64) * float(scan["scale"]) + scan["centers"]
        normals = scan["normals"].astype(np.float64)
        zup = (not args.yup_only) and bool(rng.integers(2))
        unit = 1.0 if args.yup_only else float(rng.choice([1.0, 100.0, 1000.0]))
        if zup:  # y-up -> z-up: (x, y, z) -> (x, -z, y)
            verts = np.stack([verts[:, 0], -verts[:, 2], verts[:, 1]], 1)
            normals = np.stack([normals[:, 0], -normals[:, 2], normals[:, 1]], 1)
        verts = verts * unit
        t0 = time.perf_counter()
        fit = fit_anny(verts, scan["faces"], up="auto", seed=i)
        seconds = time.perf_counter() - t0
        canon = canonical_coordinates(verts, fit, method=args.method)
        err = np.linalg.norm(canon - scan["canon_pose"], axis=1)
        all_err.append(err)
        rows.append((float(err.mean()), float(np.percentile(err, 95)), seconds, fit.ok))
        print(f"scan {i}: {str(scan['pose_preset']):14s} {str(scan['outfit'])[:38]:38s} "
              f"{'z-up' if zup else 'y-up'} x{unit:<6g} canon err mean {100 * err.mean():5.2f} cm "
              f"p95 {100 * np.percentile(err, 95):5.2f} cm  {seconds:5.1f} s  "
              f"{'ok' if fit.ok else 'FLAGGED'}: {fit.message}", flush=True)
    err = np.concatenate(all_err)
    r = np.array([row[:3] for row in rows])
    print(f"\nall {len(rows)} scans ({args.points} points each, method {args.method}):")
    print(f"  canonical error mean {100 * err.mean():.2f} cm (target < 2), "
          f"p95 {100 * np.percentile(err, 95):.2f} cm (target < 6)")
    print(f"  per-scan mean: median {100 * np.median(r[:, 0]):.2f} cm, worst "
          f"{100 * r[:, 0].max():.2f} cm; flagged {sum(not x[3] for x in rows)}")
    print(f"  seconds per scan: mean {r[:, 2].mean():.1f}, max {r[:, 2].max():.1f} (target < 30)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
