"""Body-fit accuracy and speed on synthetic clothed scans with known bodies.

For each scan of ``inference.synth`` (loose garments, several pose presets,
random heading) the mesh is turned to a random up-axis convention (y-up or
z-up) and unit (m, cm, mm), fitted with ``fit_anny`` and its canonical
coordinates compared with the ground truth ``canon_pose``. Prints per-scan
figures and the summary against the targets: mean canonical-coordinate error
< 2 cm, 95th percentile < 6 cm, < 30 s per 30k-point scan.

    .venv/bin/python benchmarks/body_fit.py --scans 8 [--points 30000] [--cache DIR] [--breakdown]

``--oracle`` also assigns canonical coordinates against the *true* body (rebuilt
from the scan's phenotypes, pose, heading and offset) with the same method and
prints that error beside the fitted one: the floor of the canonical assignment,
which no fit can beat.

``--breakdown`` says where the error comes from: by body part (bucketed by the
ground-truth canonical coordinate), by the synthetic label of the scan point, and
inside vs outside loose garments, each with its share of the summed error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# garments whose surface may stand well off the body
LOOSE = ("Coat", "Dress", "Skirt", "Jacket", "Hoodies", "Hair", "Hat", "Scarf")


def body_part(canon: np.ndarray) -> np.ndarray:
    """Body-part name of each ground-truth canonical coordinate (T-pose frame)."""
    from inference.synth import garments as g

    x, y = np.abs(canon[:, 0]), canon[:, 1]
    part = np.full(len(canon), "torso", dtype=object)
    arm = (x > g.ARM_X) & (y > g.ARMPIT_Y - 0.12)
    part[y > g.NECK_BASE_Y] = "head"
    part[arm] = "upper arm"
    part[arm & (x > g.ELBOW_X)] = "forearm"
    part[arm & (x > g.WRIST_X)] = "hand"
    part[y < g.CROTCH_Y] = "thigh"
    part[y < g.KNEE_Y] = "shin"
    part[y < g.ANKLE_Y] = "foot"
    return part


def print_breakdown(title: str, keys: np.ndarray, err: np.ndarray) -> None:
    """Mean, p95 and share of the summed error for each key."""
    total = err.sum()
    print(f"  by {title}:")
    for k in sorted(set(keys.tolist()), key=lambda k: -err[keys == k].sum()):
        e = err[keys == k]
        print(f"    {str(k):22s} {100 * len(e) / len(err):5.1f}% of points  mean "
              f"{100 * e.mean():6.2f} cm  p95 {100 * np.percentile(e, 95):6.2f} cm  "
              f"share of error {100 * e.sum() / total:5.1f}%")


def true_body(scan: dict[str, np.ndarray]) -> np.ndarray:
    """The generating body's posed vertices (default topology) in the scan mesh's frame
    (metres, y up, before any benchmark up-axis or unit change)."""
    import torch

    from inference.synth.generator import _body_model, _rotate_y

    model = _body_model()
    with torch.no_grad():
        v = model.forward(torch.as_tensor(scan["phenotypes"][None]),
                          torch.as_tensor(scan["pose"][None]))[0].numpy().astype(np.float64)
    return _rotate_y(v, float(scan["heading"])) + scan["body_offset"]


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
    ap.add_argument("--method", default="barycentric", choices=("vertex", "barycentric"))
    ap.add_argument("--no-normals", action="store_true",
                    help="nearest point only (no normal-aware lookup with the scan normals)")
    ap.add_argument("--smooth-normals", type=int, default=None, metavar="N",
                    help="rounds of neighbour averaging of the lookup normals (default: as "
                         "prepare does)")
    ap.add_argument("--breakdown", action="store_true",
                    help="error by body part, label, scan and loose garments")
    ap.add_argument("--only", type=str, default=None,
                    help="comma-separated scan indices to run (others skipped, same set-up)")
    ap.add_argument("--oracle", action="store_true",
                    help="also the error of the same assignment against the true body")
    ap.add_argument("--save-fits", type=Path, default=None,
                    help="write each fit (vertices in the scan frame, parameters, quality) here")
    ap.add_argument("--no-colors", action="store_true",
                    help="fit without the scan colours (no skin cue)")
    ap.add_argument("--yup-only", action="store_true", help="no z-up / unit conversions")
    args = ap.parse_args(argv)
    if args.smooth_normals is None:
        from inference.body.coords import LOOKUP_SMOOTHING

        args.smooth_normals = LOOKUP_SMOOTHING

    from close_blender.labels import CLASS_NAMES
    from inference.body.coords import (
        NORMAL_WEIGHT,
        canonical_coordinates,
        canonical_from_body,
        smooth_normals,
    )
    from inference.body.fit import fit_anny, mesh_normals
    from inference.synth.generator import _body_model

    only = None if args.only is None else {int(x) for x in args.only.split(",")}
    if args.save_fits is not None:
        args.save_fits.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    rows = []
    all_err, all_floor, all_raw = [], [], []
    parts, labels, loose, scan_ids = [], [], [], []
    skin_pr: list[tuple[float, float]] = []
    for i in range(args.scans):
        scan = load_or_make(args.seed + i, args.points, args.cache)
        verts = scan["points"].astype(np.float64) * float(scan["scale"]) + scan["centers"]
        zup = (not args.yup_only) and bool(rng.integers(2))
        unit = 1.0 if args.yup_only else float(rng.choice([1.0, 100.0, 1000.0]))
        if zup:  # y-up -> z-up: (x, y, z) -> (x, -z, y)
            verts = np.stack([verts[:, 0], -verts[:, 2], verts[:, 1]], 1)
        verts = verts * unit
        if only is not None and i not in only:
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        fit = fit_anny(verts, scan["faces"], up="auto", seed=i,
                       colors=None if args.no_colors else scan["colors"])
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        if args.save_fits is not None:
            np.savez(args.save_fits / f"fit_{args.seed}_{i}.npz", vertices=fit.vertices,
                     scan_vertices=verts, ok=fit.ok, message=fit.message,
                     **{f"param_{k}": v for k, v in fit.params.items()},
                     **{f"quality_{k}": v for k, v in fit.quality.items()})
        # the mesh's own normals, as ``prepare`` computes them for a real scan
        nrm = None if args.no_normals else smooth_normals(mesh_normals(verts, scan["faces"]),
                                                          scan["faces"], args.smooth_normals)
        canon = canonical_coordinates(verts, fit, method=args.method, normals=nrm)
        err = np.linalg.norm(canon - scan["canon_pose"], axis=1)
        all_err.append(err)
        if nrm is not None:  # the same fit with the plain nearest-point lookup, for comparison
            raw = canonical_coordinates(verts, fit, method=args.method)
            all_raw.append(np.linalg.norm(raw - scan["canon_pose"], axis=1))
        extra_txt = ""
        if fit.skin is not None:
            true_skin = scan["labels"] == CLASS_NAMES.index("Body")
            hit = int((fit.skin & true_skin).sum())
            skin_pr.append((hit / max(1, fit.skin.sum()), hit / max(1, true_skin.sum())))
            extra_txt = f" | skin cue prec {skin_pr[-1][0]:.2f} rec {skin_pr[-1][1]:.2f}"
        if args.oracle:
            tv = true_body(scan)
            if zup:
                tv = np.stack([tv[:, 0], -tv[:, 2], tv[:, 1]], 1)
            ref = _body_model()
            fl = np.linalg.norm(canonical_from_body(verts, tv * unit, ref.faces,
                                                    ref.canonical_vertices, args.method,
                                                    normals=nrm, normal_weight=NORMAL_WEIGHT * unit)
                                - scan["canon_pose"], axis=1)
            all_floor.append(fl)
            extra_txt += (f" | true body mean {100 * fl.mean():5.2f} "
                         f"p95 {100 * np.percentile(fl, 95):5.2f}")
        names = np.array(CLASS_NAMES, dtype=object)[scan["labels"]]
        parts.append(body_part(scan["canon_pose"]))
        labels.append(names)
        loose.append(np.where(np.isin(names, LOOSE), "loose garment", "skin or tight garment"))
        scan_ids.append(np.full(len(err), f"scan {i} {scan['pose_preset']}", dtype=object))
        rows.append((float(err.mean()), float(np.percentile(err, 95)), seconds, cpu, fit.ok))
        print(f"scan {i}: {str(scan['pose_preset']):14s} {str(scan['outfit'])[:38]:38s} "
              f"{'z-up' if zup else 'y-up'} x{unit:<6g} canon err mean {100 * err.mean():5.2f} cm "
              f"p95 {100 * np.percentile(err, 95):5.2f} cm{extra_txt}  {seconds:5.1f} s "
              f"(CPU {cpu:5.1f} s)  hands differ "
              f"{100 * fit.quality.get('hand_disagreement_m', 0.0):4.1f} cm  "
              f"{'ok' if fit.ok else 'FLAGGED'}: {fit.message}", flush=True)
    err = np.concatenate(all_err)
    r = np.array([row[:4] for row in rows])
    print(f"\nall {len(rows)} scans ({args.points} points each, method {args.method}"
          f"{'' if args.no_normals else ', normal-aware'}):")
    print(f"  canonical error mean {100 * err.mean():.2f} cm (target < 2), "
          f"p95 {100 * np.percentile(err, 95):.2f} cm (target < 6)")
    if all_raw:
        er = np.concatenate(all_raw)
        print(f"  same fits, nearest point only (--no-normals): mean {100 * er.mean():.2f} cm, "
              f"p95 {100 * np.percentile(er, 95):.2f} cm")
    if skin_pr:
        pr = np.array(skin_pr)
        print(f"  skin from colours on {len(pr)} scans: precision mean {pr[:, 0].mean():.2f} "
              f"(worst {pr[:, 0].min():.2f}), recall mean {pr[:, 1].mean():.2f}")
    if all_floor:
        fl = np.concatenate(all_floor)
        print(f"  true-body floor (same assignment) mean {100 * fl.mean():.2f} cm, "
              f"p95 {100 * np.percentile(fl, 95):.2f} cm")
    print(f"  per-scan mean: median {100 * np.median(r[:, 0]):.2f} cm, worst "
          f"{100 * r[:, 0].max():.2f} cm; flagged {sum(not x[4] for x in rows)}")
    print(f"  seconds per scan: mean {r[:, 2].mean():.1f}, max {r[:, 2].max():.1f} (target < 30); "
          f"process CPU time mean {r[:, 3].mean():.1f}, max {r[:, 3].max():.1f} (compare this on "
          "a shared machine)")
    if args.breakdown:
        print_breakdown("body part", np.concatenate(parts), err)
        print_breakdown("label", np.concatenate(labels), err)
        print_breakdown("garment looseness", np.concatenate(loose), err)
        print_breakdown("scan", np.concatenate(scan_ids), err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
