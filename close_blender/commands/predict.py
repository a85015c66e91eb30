"""Segment a CloSe-D scan with CloSe-Net and write per-point logits, labels and confidence.

IN.npz needs points (normalized), colors, normals, canon_pose and garments
(or --garments). OUT.npz gets logits (N, 18) float32, labels (N,) int64,
confidence (N,) float32 and entropy (N,) float32. With --passes > 1 the logits
are the log of the probabilities averaged over the passes. Labels keep to the
classes of the garments vector, as Segment in Blender does (--no-restrict: the
network's plain argmax); the logits are the network's either way.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..defaults import PASSES

HELP = "segment a CloSe-D scan (.npz) with CloSe-Net"
ORDER = 20


def add_prediction_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by predict and evaluate."""
    parser.add_argument("--checkpoint", default="default",
                        help="published .pth (with its _cfg.yaml beside it), native "
                             ".safetensors, or 'default' (the bundled model)")
    parser.add_argument("--chunk-size", type=int, default=2048,
                        help="points per network chunk (default 2048, as in training)")
    parser.add_argument("--passes", type=int, default=PASSES,
                        help=f"random chunkings to average (default {PASSES}; 1 is twice as "
                             "fast and about one point of mIoU worse)")
    parser.add_argument("--order", choices=("shuffled", "sequential"), default="shuffled",
                        help="shuffled (as the reference) or sequential (reproducible debugging)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutations")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--no-restrict", dest="restrict", action="store_false",
                        help="keep labels of classes the garments vector does not list "
                             "(the network's plain argmax; default: relabel them with the "
                             "most probable listed class, as Segment in Blender does)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN.npz", help="CloSe-D scan file")
    parser.add_argument("--out", required=True, metavar="OUT.npz", help="output file")
    parser.add_argument("--garments", default=None,
                        help="comma-separated classes present (overrides the file's garments), "
                             "e.g. Body,TShirt,Pants,Shoes")
    add_prediction_options(parser)


def garments_option(text: str):
    """Parse --garments into an (18,) vector or raise ScanError."""
    from ..errors import ScanError
    from ..labels import CLASS_NAMES, garments_from_names

    try:
        garments = garments_from_names(text)
    except ValueError as exc:
        raise ScanError(f"--garments: {exc}") from None
    if not garments.any():
        raise ScanError("--garments names no class",
                        "give at least one of: " + ", ".join(CLASS_NAMES))
    return garments


def progress_printer(label: str):
    """A progress callback that redraws one stderr line (only on a terminal)."""
    if not sys.stderr.isatty():
        return None

    def report(fraction: float, stage: str) -> None:
        end = "\n" if fraction >= 1.0 else ""
        print(f"\r{label}: {fraction:6.1%} ({stage})", end=end, file=sys.stderr, flush=True)

    return report


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..fileio import save_npz_atomic
    from ..labels import CLASS_NAMES
    from ..scan_io import PREDICT_KEYS, load_scan

    garments = garments_option(args.garments) if args.garments else None
    require = [k for k in PREDICT_KEYS if not (k == "garments" and garments is not None)]
    scan = load_scan(args.input, require=require)
    if garments is not None:
        scan["garments"] = garments

    from inference.checkpoints import load_checkpoint
    from inference.predictor import predict_scan

    ckpt = load_checkpoint(args.checkpoint)
    start = time.perf_counter()
    pred = predict_scan(scan, ckpt, device=args.device, chunk_size=args.chunk_size,
                        passes=args.passes, order=args.order, seed=args.seed,
                        restrict=args.restrict, progress=progress_printer("predict"))
    seconds = time.perf_counter() - start
    save_npz_atomic(args.out, {"logits": pred.logits, "labels": pred.labels,
                               "confidence": pred.confidence, "entropy": pred.entropy})
    n = len(pred.labels)
    counts = [(int(c), CLASS_NAMES[i]) for i, c in enumerate(
        np.bincount(pred.labels, minlength=len(CLASS_NAMES))) if c]
    summary = ", ".join(f"{name} {c / n:.1%}" for c, name in sorted(counts, reverse=True))
    print(f"{n} points in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f} points/s) -> {args.out}")
    print(f"labels: {summary}")
    print(f"mean confidence {float(pred.confidence.mean()):.3f}")
    return 0
