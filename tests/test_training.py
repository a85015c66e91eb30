"""Training: sampler and augmentations, a tiny overfit, exact resume, cancel, bad input, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from close_blender.cli import main as cli_main
from close_blender.defaults import PASSES
from close_blender.errors import Cancelled, CloseError, ScanError
from close_blender.fileio import save_npz_atomic
from close_blender.labels import N_CLASSES
from inference.closenet import CloseNet, CloseNetConfig
from inference.training import (
    AugmentConfig,
    TrainConfig,
    WeightAverage,
    augment_sample,
    class_weights,
    confusion,
    garments_input,
    load_scans,
    make_batch,
    scan_balanced_weights,
    scan_from_arrays,
    summarize_confusions,
    train,
    train_command,
    weighted_cross_entropy,
)

TINY = CloseNetConfig(k=4, point_emb=32, garment_emb=16, n_heads=2, edge_channels=(16, 16, 16),
                      decoder_channels=(32, 32))
TINY_YAML = """model: {k: 4, point_emb: 32, garment_emb: 16, n_heads: 2,
        edge_channels: [16, 16, 16], decoder_channels: [32, 32]}
train: {epochs: 2, batch_size: 2, n_points: 128, val_max_points: 300}
"""


def fake_scan(seed: int, n: int = 600) -> dict[str, np.ndarray]:
    """A small labelled CloSe-D dict whose labels follow height and colour (learnable)."""
    rng = np.random.default_rng(seed)
    canon = rng.uniform(-0.5, 0.5, (n, 3)).astype(np.float32)
    labels = np.where(canon[:, 1] > 0.2, 12, np.where(canon[:, 1] > -0.1, 3, 8))
    labels[rng.random(n) < 0.1] = 1
    palette = {1: (220, 180, 150), 3: (20, 60, 200), 8: (30, 30, 40), 12: (90, 50, 10)}
    colors = np.array([palette[int(c)] for c in labels], np.uint8)
    pts = canon * np.array([0.6, 1.0, 0.3], np.float32)
    normals = rng.normal(size=(n, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    g = np.zeros(N_CLASSES, np.int32)
    g[np.unique(labels)] = 1
    return {"points": pts, "normals": normals, "colors": colors, "canon_pose": canon,
            "labels": labels.astype(np.int64), "garments": g}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("train_data")
    for i in range(4):
        save_npz_atomic(d / f"scan_{i}.npz", fake_scan(i))
    return d


@pytest.fixture(scope="module")
def scans(data_dir):
    return load_scans([data_dir])


def small_cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=2, n_points=128, lr=3e-3, val_max_points=300, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_augmented_sample_stays_in_the_canonical_frame(scans):
    rng = np.random.default_rng(0)
    scan = scans[0]
    idx = np.arange(len(scan))
    pts, canon = augment_sample(scan, idx, rng, AugmentConfig(position_noise=0))
    assert pts.shape == (len(scan), 9) and canon.shape == (len(scan), 3)
    xyz = pts[:, :3]
    # re-normalized like CloSe-D (then shrunk by at most 8 %)
    assert 0.9 <= float((xyz.max(0) - xyz.min(0)).max()) <= 1.0 + 1e-5
    assert np.allclose(np.linalg.norm(pts[:, 6:], axis=1), 1.0, atol=1e-5)
    assert pts[:, 3:6].min() >= 0 and pts[:, 3:6].max() <= 1
    np.testing.assert_array_equal(canon, scan.canon)  # the body input is pose-free
    # vertical extent stays vertical: rotation is about y only
    plain, _ = augment_sample(scan, idx, rng, AugmentConfig(
        axis_scale=0, shrink=0, position_noise=0, color_dropout=0))
    assert np.corrcoef(plain[:, 1], scan.points[:, 1])[0, 1] == pytest.approx(1.0, abs=1e-6)


def test_channel_shuffle_gives_another_colourway(scans):
    scan = scans[0]
    idx = np.arange(len(scan))
    plain = dict(brightness=0, contrast=0, channel_gain=0, color_noise=0, color_dropout=0)
    seen = set()
    for seed in range(12):
        pts, _ = augment_sample(scan, idx, np.random.default_rng(seed),
                                AugmentConfig(channel_shuffle=1.0, **plain))
        rgb = pts[:, 3:6]
        order = [int(np.argmin([np.abs(rgb[:, j] - scan.colors[:, i]).max() for i in range(3)]))
                 for j in range(3)]
        np.testing.assert_allclose(rgb, scan.colors[:, order], atol=1e-6)
        seen.add(tuple(order))
    assert len(seen) > 2  # several channel orders, not one fixed swap


def test_batch_shapes_and_garments(scans):
    rng = np.random.default_rng(1)
    b = make_batch(scans[:3], rng, 2048, AugmentConfig(), 0.0)  # more than the scan has
    assert b["points"].shape == (3, 2048, 9) and b["canon"].shape == (3, 2048, 3)
    assert b["labels"].shape == (3, 2048) and b["garments"].shape == (3, N_CLASSES)
    for i, s in enumerate(scans[:3]):
        np.testing.assert_array_equal(b["garments"][i].numpy(), s.garments)
    extra = [garments_input(scans[0], rng, 1.0) for _ in range(20)]
    for g in extra:
        added = (g - scans[0].garments)
        assert added.min() == 0 and 1 <= added.sum() <= 3  # only absent classes, 1-3 of them


def test_metrics_both_conventions():
    gt = np.array([1, 1, 3, 3])
    pred = np.array([1, 1, 3, 8])
    m = summarize_confusions([confusion(pred, gt)])
    # strict: classes 1 (1.0), 3 (0.5), 8 (0.0)
    assert m["miou_strict"] == pytest.approx(0.5)
    assert m["miou_reference"] == pytest.approx((15 + 1.0 + 0.5) / 18)
    assert m["per_class_iou"]["Body"] == 1.0 and m["per_class_iou"]["Hat"] is None


def test_class_weights_lift_rare_classes(scans):
    assert class_weights(scans, 0.0) is None
    w = class_weights(scans, 0.5).numpy()
    counts = np.bincount(np.concatenate([s.labels for s in scans]), minlength=N_CLASSES)
    freq = counts / counts.sum()
    assert (w[counts == 0] == 0).all()
    assert float((freq * w).sum()) == pytest.approx(1.0, rel=1e-5)  # a mean point weighs 1
    rare, common = int(np.argmin(np.where(counts > 0, counts, 1 << 30))), int(np.argmax(counts))
    assert w[rare] / w[common] == pytest.approx(np.sqrt(counts[common] / counts[rare]), rel=1e-5)


def test_scan_balance_weighs_each_samples_small_classes_up():
    labels = torch.tensor([[1] * 6 + [2] * 2, [3] * 8])
    w = scan_balanced_weights(labels, 0.5, N_CLASSES)
    assert torch.allclose(w.mean(dim=1), torch.ones(2))
    assert w[0, 6] / w[0, 0] == pytest.approx(np.sqrt(3.0))  # a quarter vs three quarters
    assert torch.allclose(w[1], torch.ones(8))  # one class: plain weights
    logits = torch.randn(2, N_CLASSES, 8)
    plain = weighted_cross_entropy(logits, labels, None, None)
    assert weighted_cross_entropy(logits, labels, None, torch.ones(2, 8)) == pytest.approx(
        float(plain), rel=1e-5)


def test_loss_decreases_on_a_tiny_overfit_set(scans, tmp_path):
    losses = []
    cfg = small_cfg(epochs=12, steps_per_epoch=3, augment=AugmentConfig(
        rotate_y=False, axis_scale=0, shrink=0, color_dropout=0, density=0))
    res = train(TINY, cfg, scans, [], tmp_path / "st",
                log=lambda t: losses.append(float(t.split("loss ")[1].split()[0].rstrip(","))))
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3])
    assert not res.model.training


@pytest.mark.parametrize("average_from", [0.0, 0.4])
def test_resume_continues_exactly(scans, tmp_path, average_from):
    cfg = small_cfg(epochs=3, steps_per_epoch=2, average_from=average_from)
    full = train(TINY, cfg, scans, scans[:1], tmp_path / "full")
    calls = {"n": 0}

    def cancel_in_epoch_3() -> bool:
        calls["n"] += 1
        return calls["n"] > 5  # 2 checks per epoch + eval checks: stops inside epoch 3

    with pytest.raises(Cancelled):
        train(TINY, cfg, scans, scans[:1], tmp_path / "cut", cancelled=cancel_in_epoch_3)
    state = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    assert 1 <= state["epoch"] < 3
    resumed = train(TINY, cfg, scans, scans[:1], tmp_path / "cut", resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]


def test_weight_average_is_the_mean_of_the_states():
    models = [CloseNet(TINY) for _ in range(3)]
    for i, m in enumerate(models):
        with torch.no_grad():
            m.decoder.layers[-1].bn.running_mean.fill_(float(i))
    avg = WeightAverage()
    for m in models:
        avg.update(m)
    mean = avg.model_like(models[0])
    assert mean is not models[0] and avg.count == 3
    for k, v in mean.state_dict().items():
        if v.is_floating_point():
            expected = torch.stack([m.state_dict()[k] for m in models]).mean(0)
            torch.testing.assert_close(v, expected, msg=k)
    assert float(mean.decoder.layers[-1].bn.running_mean[0]) == pytest.approx(1.0)
    assert WeightAverage().model_like(models[1]) is models[1]  # nothing averaged yet


def test_resume_refuses_other_data_and_fresh_start_refuses_old_state(scans, tmp_path):
    cfg = small_cfg(epochs=1, steps_per_epoch=1)
    train(TINY, cfg, scans, [], tmp_path / "st")
    with pytest.raises(CloseError, match="differ"):
        train(TINY, cfg, scans[:2], [], tmp_path / "st", resume=True)
    with pytest.raises(CloseError, match="--resume"):
        train(TINY, cfg, scans, [], tmp_path / "st")
    with pytest.raises(CloseError, match="nothing to resume"):
        train(TINY, cfg, scans, [], tmp_path / "none", resume=True)


def test_train_command_writes_metadata_and_never_overwrites(data_dir, tmp_path):
    from inference.checkpoints import load_checkpoint

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(TINY_YAML)
    out = tmp_path / "m.safetensors"
    res = train_command([data_dir], out, config_path=str(cfg_file), val=[data_dir / "scan_0.npz"],
                        test=[data_dir / "scan_1.npz"])
    ck = load_checkpoint(out)
    prov = ck.meta["provenance"]
    assert ck.config == TINY and ck.sha256 == res["sha256"]
    assert prov["training_data"]["n_scans"] == 4 and prov["date"]
    assert set(prov["metrics"]) == {"val", "test", "test_default_passes"}
    assert prov["metrics"]["test_default_passes"]["passes"] == PASSES == 2
    assert 0 <= prov["metrics"]["test"]["miou_strict"] <= 1
    assert len(ck.meta["training"]["history"]) == 2
    before = out.read_bytes()
    with pytest.raises(CloseError, match="never overwritten"):
        train_command([data_dir], out, config_path=str(cfg_file))
    assert out.read_bytes() == before


def test_train_dropout_is_recorded_and_keeps_the_architecture(data_dir, tmp_path):
    from inference.checkpoints import load_checkpoint

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(TINY_YAML)
    with pytest.raises(CloseError, match="outside"):
        train_command([data_dir], tmp_path / "bad.safetensors", config_path=str(cfg_file),
                      dropout=1.0)
    out = tmp_path / "d.safetensors"
    train_command([data_dir], out, config_path=str(cfg_file), dropout=0.2,
                  overrides={"epochs": 1})
    ck = load_checkpoint(out)
    assert ck.config == TINY and ck.meta["training"]["dropout"] == pytest.approx(0.2)
    # the architecture is unchanged, so the checkpoint continues under the same --config
    train_command([data_dir], tmp_path / "e.safetensors", config_path=str(cfg_file),
                  init=str(out), overrides={"epochs": 1})


def test_rescore_tool_adds_the_default_pass_score_to_a_new_file(data_dir, tmp_path):
    import subprocess
    import sys

    from inference.checkpoints import load_checkpoint

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(TINY_YAML)
    old = tmp_path / "old.safetensors"
    train_command([data_dir], old, config_path=str(cfg_file), test=[data_dir / "scan_1.npz"],
                  overrides={"epochs": 1})
    tool = Path(__file__).resolve().parents[1] / "tools" / "rescore_checkpoint.py"

    def rescore(test: str, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(tool), str(old), str(data_dir / test),
                               "--out", str(out)], capture_output=True, text=True)

    wrong = rescore("scan_2.npz", tmp_path / "wrong.safetensors")
    assert wrong.returncode == 2 and "held-out set" in wrong.stderr
    assert not (tmp_path / "wrong.safetensors").exists()
    new = tmp_path / "new.safetensors"
    assert rescore("scan_1.npz", new).returncode == 0
    a, b = load_checkpoint(old), load_checkpoint(new)
    assert b.meta["provenance"]["rescored_from"] == a.sha256 != b.sha256
    assert b.meta["provenance"]["metrics"]["test_default_passes"]["passes"] == PASSES
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    again = rescore("scan_1.npz", new)  # never overwritten
    assert again.returncode == 2 and "never overwritten" in again.stderr


def test_cancel_leaves_no_model(data_dir, tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(TINY_YAML)
    out = tmp_path / "m.safetensors"
    with pytest.raises(Cancelled):
        train_command([data_dir], out, config_path=str(cfg_file), cancelled=lambda: True)
    assert not out.exists()


def test_bad_input_gives_clear_errors(data_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScanError, match="no .npz"):
        load_scans([empty])
    arrays = fake_scan(0)
    del arrays["labels"]
    save_npz_atomic(tmp_path / "nolabels.npz", arrays)
    with pytest.raises(ScanError, match="labels"):
        load_scans([tmp_path / "nolabels.npz"])
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ScanError, match="not a readable"):
        load_scans([tmp_path / "corrupt.npz"])
    bad = fake_scan(1)
    bad["canon_pose"] = bad["canon_pose"][:10]
    with pytest.raises(ScanError, match="canon_pose"):
        scan_from_arrays(bad, "bad.npz")


def test_cli_errors_and_run(data_dir, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    assert cli_main(["train", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli_main(["train", str(data_dir), "--out", str(tmp_path / "m.pt")]) == 2
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(TINY_YAML)
    assert cli_main(["train", str(data_dir), "--out", str(out), "--config", str(cfg_file),
                     "--epochs", "1", "--quiet"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert cli_main(["train", str(data_dir), "--out", str(out), "--config", str(cfg_file)]) == 2
