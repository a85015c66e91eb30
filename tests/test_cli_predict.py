"""`predict` and `evaluate` on the command line: outputs, options and clear refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from close_blender.cli import main
from close_blender.fileio import save_npz_atomic

N = 700


def scan_arrays(seed: int = 0, n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-0.5, 0.5, (n, 3)).astype(np.float32)
    nrm = rng.normal(size=(n, 3))
    garments = np.zeros(18, np.int32)
    garments[[1, 3, 8]] = 1
    return {"points": pts, "colors": rng.integers(0, 256, (n, 3)).astype(np.uint8),
            "normals": (nrm / np.linalg.norm(nrm, axis=1, keepdims=True)).astype(np.float32),
            "canon_pose": (pts * 1.7).astype(np.float32), "garments": garments,
            "labels": rng.choice([1, 3, 8], n).astype(np.int64), "extra": np.arange(3)}


@pytest.fixture
def ckpt(closenet_reference):
    return str(closenet_reference / "closenet.pth")


@pytest.fixture
def scan(tmp_path):
    path = tmp_path / "scan.npz"
    save_npz_atomic(path, scan_arrays())
    return path


def write(tmp_path, name, arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_predict_writes_outputs(tmp_path, scan, ckpt, capsys):
    out, raw = tmp_path / "out.npz", tmp_path / "raw.npz"
    common = ["--checkpoint", ckpt, "--chunk-size", "256", "--order", "sequential",
              "--device", "cpu"]
    rc = main(["predict", str(scan), "--out", str(out), *common])
    assert rc == 0, capsys.readouterr().err
    assert main(["predict", str(scan), "--out", str(raw), "--no-restrict", *common]) == 0
    listed = np.flatnonzero(scan_arrays()["garments"])
    with np.load(out) as data, np.load(raw) as plain:
        assert data["logits"].shape == (N, 18) and data["logits"].dtype == np.float32
        assert data["labels"].shape == (N,) and data["labels"].dtype == np.int64
        assert data["confidence"].dtype == np.float32
        np.testing.assert_array_equal(data["logits"], plain["logits"])
        # labels keep to the listed garments: the best listed class of the logits
        assert np.isin(data["labels"], listed).all()
        np.testing.assert_array_equal(data["labels"], listed[data["logits"][:, listed].argmax(1)])
        np.testing.assert_array_equal(plain["labels"], plain["logits"].argmax(1))
    assert "points/s" in capsys.readouterr().out


def test_predict_options_and_garments_override(tmp_path, scan, ckpt):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    common = ["--checkpoint", ckpt, "--chunk-size", "300", "--seed", "4", "--passes", "2"]
    assert main(["predict", str(scan), "--out", str(a), *common]) == 0
    assert main(["predict", str(scan), "--out", str(b), *common,
                 "--garments", "Body,T-shirt,Pants,Shoes"]) == 0
    with np.load(a) as da, np.load(b) as db:
        assert not np.allclose(da["logits"], db["logits"])  # Shoes changes the attention


@pytest.mark.parametrize("change, message", [
    ({"drop": "canon_pose"}, "canon_pose"),
    ({"normals": np.zeros((5, 3), np.float32)}, "normals"),
    ({"points": np.full((N, 3), np.nan, np.float32)}, "NaN"),
    ({"garments": np.zeros(18, np.int32)}, "Hat, Body"),
])
def test_predict_bad_scan(tmp_path, ckpt, capsys, change, message):
    arrays = scan_arrays()
    if "drop" in change:
        del arrays[change["drop"]]
    else:
        arrays.update(change)
    path = write(tmp_path, "bad.npz", arrays)
    rc = main(["predict", str(path), "--checkpoint", ckpt, "--out", str(tmp_path / "o.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o.npz").exists()


def test_predict_empty_scan(tmp_path, ckpt, capsys):
    arrays = {k: v[:0] if k not in ("garments", "extra") else v for k, v in scan_arrays().items()}
    path = write(tmp_path, "empty.npz", arrays)
    assert main(["predict", str(path), "--checkpoint", ckpt, "--out",
                 str(tmp_path / "o.npz")]) == 2
    assert "N = 0" in capsys.readouterr().err


def test_predict_bad_garments_option(scan, tmp_path, ckpt, capsys):
    assert main(["predict", str(scan), "--checkpoint", ckpt, "--out", str(tmp_path / "o.npz"),
                 "--garments", "Body,Cape"]) == 2
    assert "Cape" in capsys.readouterr().err


def test_predict_bad_checkpoints(tmp_path, scan, closenet_reference, capsys, monkeypatch):
    import inference.checkpoints as ck

    out = str(tmp_path / "o.npz")
    monkeypatch.setitem(ck.PROJECT_NAMES, "default", tmp_path / "missing.safetensors")
    assert main(["predict", str(scan), "--out", out]) == 2  # a broken install: no bundled model
    assert "bundled" in capsys.readouterr().err
    lonely = tmp_path / "lonely.pth"
    shutil.copy(closenet_reference / "closenet.pth", lonely)
    assert main(["predict", str(scan), "--checkpoint", str(lonely), "--out", out]) == 2
    assert "lonely_cfg.yaml" in capsys.readouterr().err


def test_evaluate_json(tmp_path, ckpt, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(2):
        save_npz_atomic(folder / f"s{i}.npz", scan_arrays(seed=i, n=300))
    rc = main(["evaluate", str(folder), "--checkpoint", ckpt, "--json", "--chunk-size", "300"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out)
    assert result["n_scans"] == 2 and result["n_points"] == 600
    for key in ("miou_reference", "miou_strict", "miou_strict_pooled", "accuracy"):
        assert 0.0 <= result[key] <= 1.0
    assert result["miou_reference"] >= result["miou_strict"]
    assert set(result["per_class_iou"]) >= {"Body", "TShirt", "Pants"}
    rc = main(["evaluate", str(folder / "s0.npz"), "--checkpoint", ckpt, "--chunk-size", "300"])
    assert rc == 0 and "mIoU reference" in capsys.readouterr().out


def test_evaluate_needs_labels(tmp_path, ckpt, capsys):
    arrays = scan_arrays(n=100)
    del arrays["labels"]
    path = write(tmp_path, "nolabels.npz", arrays)
    assert main(["evaluate", str(path), "--checkpoint", ckpt]) == 2
    assert "labels" in capsys.readouterr().err


def test_module_entry_point(tmp_path, scan, ckpt, repo):
    out = tmp_path / "cli.npz"
    env = dict(os.environ, PYTHONPATH=str(repo))
    proc = subprocess.run(
        [sys.executable, "-m", "close_blender", "predict", str(scan), "--checkpoint", ckpt,
         "--out", str(out), "--chunk-size", "350"],
        capture_output=True, text=True, cwd=repo, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


def test_predict_with_the_bundled_default(tmp_path, scan):
    out = tmp_path / "o.npz"
    assert main(["predict", str(scan), "--out", str(out)]) == 0  # --checkpoint default
    with np.load(out) as result:
        assert result["labels"].shape == result["confidence"].shape
