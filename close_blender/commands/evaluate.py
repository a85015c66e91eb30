"""Run CloSe-Net on labelled CloSe-D scans and report per-class IoU, accuracy and mIoU.

mIoU is reported two ways: miou_reference (the CloSe code's convention: per
scan, a class absent from both prediction and ground truth scores 1.0, mean over
scans) and miou_strict (per scan, only classes present in the prediction or the
ground truth; mean over scans), plus miou_strict_pooled over all points.
Labels keep to the scan's garments vector unless --no-restrict (see predict).
"""

from __future__ import annotations

import argparse
import json

from .predict import add_prediction_options, progress_printer

HELP = "measure CloSe-Net's accuracy and mIoU on labelled CloSe-D scans"
ORDER = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="labelled CloSe-D .npz files, folders or zips holding them")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_prediction_options(parser)


def run(args: argparse.Namespace) -> int:
    from ..scan_io import expanded_scan_paths

    with expanded_scan_paths(args.paths) as paths:  # zips are extracted for this run only
        return _evaluate(args, paths)


def _evaluate(args: argparse.Namespace, paths: list) -> int:
    from inference.checkpoints import load_checkpoint
    from inference.predictor import predictor_for

    from ..labels import CLASS_NAMES
    from ..metrics import aggregate, scan_metrics
    from ..scan_io import LABELLED_KEYS, load_scan

    ckpt = load_checkpoint(args.checkpoint)
    predictor = predictor_for(ckpt.model, ckpt.fallback, device=args.device,
                              chunk_size=args.chunk_size)
    results = []
    for path in paths:
        scan = load_scan(path, require=LABELLED_KEYS)
        pred = predictor.predict(scan["points"], scan["colors"], scan["normals"],
                                 scan["canon_pose"], scan["garments"], passes=args.passes,
                                 order=args.order, seed=args.seed, restrict=args.restrict,
                                 progress=None if args.json else progress_printer(path.name))
        results.append(scan_metrics(scan["labels"], pred.labels, len(CLASS_NAMES)))
    summary = aggregate(results, names=[str(p) for p in paths])
    summary["checkpoint"] = {"path": str(ckpt.path), "sha256": ckpt.sha256}
    summary["restricted_to_garments"] = bool(args.restrict)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for scan in summary["per_scan"]:
        print(f"{scan['scan']}: accuracy {scan['accuracy']:.4f}, mIoU reference "
              f"{scan['miou_reference']:.4f}, strict {_fmt(scan['miou_strict'])}")
    print(f"scans {summary['n_scans']}, points {summary['n_points']}")
    print(f"accuracy            {_fmt(summary['accuracy'])}")
    print(f"mIoU reference      {summary['miou_reference']:.4f}  "
          "(absent classes score 1.0, mean over scans)")
    print(f"mIoU strict         {_fmt(summary['miou_strict'])}  "
          "(present classes only, mean over scans)")
    print(f"mIoU strict pooled  {_fmt(summary['miou_strict_pooled'])}  (all points together)")
    print("per-class IoU: " + ", ".join(
        f"{name} {_fmt(v)}" for name, v in summary["per_class_iou"].items() if v is not None))
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
