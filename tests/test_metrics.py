"""Segmentation metrics: hand-checked values for both mIoU conventions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from close_blender.metrics import (
    accuracy,
    aggregate,
    confusion_matrix,
    miou_reference,
    miou_strict,
    per_class_iou,
    scan_metrics,
)


def test_confusion_and_iou_by_hand():
    gt = np.array([1, 1, 1, 3, 3, 8])
    pred = np.array([1, 1, 3, 3, 8, 8])
    cm = confusion_matrix(gt, pred)
    assert cm.shape == (18, 18) and cm.sum() == 6
    assert cm[1, 1] == 2 and cm[1, 3] == 1 and cm[3, 3] == 1 and cm[3, 8] == 1 and cm[8, 8] == 1
    iou = per_class_iou(cm)
    assert iou[1] == pytest.approx(2 / 3)  # tp 2, union 3
    assert iou[3] == pytest.approx(1 / 3)  # tp 1, gt 2 + pred 2 - 1
    assert iou[8] == pytest.approx(1 / 2)
    assert np.isnan(iou[0]) and np.isnan(iou[17])
    assert accuracy(cm) == pytest.approx(4 / 6)
    strict = (2 / 3 + 1 / 3 + 1 / 2) / 3
    assert miou_strict(iou) == pytest.approx(strict)
    assert miou_reference(iou) == pytest.approx((2 / 3 + 1 / 3 + 1 / 2 + 15) / 18)


def test_class_only_in_prediction_counts_as_zero():
    iou = per_class_iou(confusion_matrix([1, 1], [1, 5]))
    assert iou[5] == 0.0 and iou[1] == pytest.approx(0.5)
    assert miou_strict(iou) == pytest.approx(0.25)


def test_aggregate_over_scans():
    a = scan_metrics([1, 1, 2, 2], [1, 1, 2, 2])  # perfect
    b = scan_metrics([1, 1, 1, 1], [1, 1, 3, 3])  # half right
    out = aggregate([a, b], names=["a", "b"])
    assert out["n_scans"] == 2 and out["n_points"] == 8
    assert out["accuracy"] == pytest.approx(6 / 8)
    assert out["miou_strict"] == pytest.approx((1.0 + (0.5 + 0.0) / 2) / 2)
    assert out["miou_reference"] == pytest.approx((1.0 + (0.5 + 0.0 + 16) / 18) / 2)
    assert out["per_class_iou"]["Body"] == pytest.approx(4 / 6)
    assert out["per_class_iou"]["Hat"] is None
    assert out["per_class_iou"]["TShirt"] == 0.0
    pooled = (4 / 6 + 1.0 + 0.0) / 3
    assert out["miou_strict_pooled"] == pytest.approx(pooled)
    assert [s["scan"] for s in out["per_scan"]] == ["a", "b"]
    json.dumps(out)  # JSON-ready


def test_bad_labels():
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0])
    with pytest.raises(ValueError):
        confusion_matrix([0, 18], [0, 1])
    with pytest.raises(ValueError):
        aggregate([])
    assert math.isnan(accuracy(np.zeros((18, 18))))


def test_metrics_module_is_numpy_only():
    import ast
    from pathlib import Path

    import close_blender.metrics as m

    tree = ast.parse(Path(m.__file__).read_text())
    imported = {n.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for n in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported <= {"numpy", "__future__", "collections"}
