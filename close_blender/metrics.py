"""Segmentation metrics (numpy only): confusion matrix, per-class IoU, accuracy, mIoU.

Two mIoU conventions are reported side by side, because they differ a lot on
scans that contain few of the 18 classes:

* reference convention (``miou_reference``): per scan, a class absent from both the
  prediction and the ground truth scores IoU 1.0; the scan's mIoU is the mean over
  all classes, and the result is the mean over scans (what the CloSe code reports);
* strict (``miou_strict``): per scan, only classes present in the prediction or the
  ground truth count; mean over scans. ``miou_strict_pooled`` is the mean IoU of
  the classes present anywhere, from the confusion matrix summed over all scans.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .labels import CLASS_NAMES, N_CLASSES


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """(C, C) int64 counts; rows are ground truth, columns predictions."""
    gt = np.asarray(gt, dtype=np.int64).reshape(-1)
    pred = np.asarray(pred, dtype=np.int64).reshape(-1)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has {gt.size} labels, prediction {pred.size}")
    for name, a in (("ground truth", gt), ("prediction", pred)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise ValueError(f"{name} labels outside 0..{n_classes - 1}")
    return np.bincount(gt * n_classes + pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes).astype(np.int64)


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU per class; NaN where the class is in neither prediction nor ground truth."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def accuracy(cm: np.ndarray) -> float:
    """Fraction of points labelled correctly (NaN for an empty matrix)."""
    total = float(np.asarray(cm).sum())
    return float(np.trace(cm)) / total if total else float("nan")


def miou_reference(iou: np.ndarray) -> float:
    """Mean over all classes, absent classes (NaN IoU) counting as 1.0."""
    return float(np.where(np.isnan(iou), 1.0, iou).mean())


def miou_strict(iou: np.ndarray) -> float:
    """Mean over the classes present in the prediction or the ground truth."""
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


def scan_metrics(gt: np.ndarray, pred: np.ndarray, n_classes: int = N_CLASSES) -> dict:
    """Metrics of one scan: confusion, per-class IoU, accuracy and both mIoUs."""
    cm = confusion_matrix(gt, pred, n_classes)
    iou = per_class_iou(cm)
    return {"confusion": cm, "iou": iou, "accuracy": accuracy(cm),
            "miou_reference": miou_reference(iou), "miou_strict": miou_strict(iou),
            "n_points": int(cm.sum())}


def _none_if_nan(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def aggregate(scans: Iterable[dict], names: Sequence[str] | None = None,
              class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """Combine :func:`scan_metrics` results into a JSON-ready summary."""
    scans = list(scans)
    if not scans:
        raise ValueError("no scans to aggregate")
    names = list(names) if names is not None else [str(i) for i in range(len(scans))]
    total = np.sum([s["confusion"] for s in scans], axis=0)
    pooled = per_class_iou(total)
    return {
        "n_scans": len(scans),
        "n_points": int(total.sum()),
        "accuracy": _none_if_nan(accuracy(total)),
        "miou_reference": float(np.mean([s["miou_reference"] for s in scans])),
        "miou_strict": _none_if_nan(float(np.nanmean([s["miou_strict"] for s in scans]))),
        "miou_strict_pooled": _none_if_nan(miou_strict(pooled)),
        "per_class_iou": {n: _none_if_nan(v) for n, v in zip(class_names, pooled, strict=True)},
        "conventions": {
            "miou_reference": "per scan, a class absent from both prediction and ground "
                              "truth scores 1.0; mean over all classes, then over scans",
            "miou_strict": "per scan, only classes present in prediction or ground truth; "
                           "mean over scans",
            "miou_strict_pooled": "classes present anywhere, IoU from the confusion "
                                  "matrix summed over scans",
            "per_class_iou": "from the summed confusion matrix; null if never present",
            "accuracy": "fraction of all points labelled correctly",
        },
        "per_scan": [
            {"scan": name, "n_points": s["n_points"], "accuracy": _none_if_nan(s["accuracy"]),
             "miou_reference": s["miou_reference"], "miou_strict": _none_if_nan(s["miou_strict"])}
            for name, s in zip(names, scans, strict=True)
        ],
    }
