"""Model versions without torch: listing from safetensors headers, activation, roll-back."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from close_blender import model_versions as mv
from close_blender.errors import CheckpointError, CloseError


def _write_version(path, *, parent: str | None = None, date: str = "2026-01-01T00:00:00+00:00",
                   flagged=False, seed: int = 0, before=None, after=None) -> str:
    """A native-format checkpoint file as save_native writes it (numpy tensors)."""
    meta = {"format": "close-blender-closenet", "format_version": 1,
            "provenance": {"source": "finetune", "parent_sha256": parent, "date": date,
                           "training_data": {"files": ["a.npz"], "n_scans": 1},
                           "metrics": {"before": before or {"replay": {"miou_strict": 0.5}},
                                       "after": after or {"replay": {"miou_strict": 0.52}}},
                           "flagged": flagged}}
    tensors = {"w": np.full((4,), seed, np.float32)}
    try:
        from safetensors.numpy import save_file
    except ImportError:  # the same layout by hand: u64 length, JSON header, raw data
        header = {"__metadata__": {"close_blender": json.dumps(meta)},
                  "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
        raw = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + tensors["w"].tobytes())
    else:
        save_file(tensors, str(path), metadata={"close_blender": json.dumps(meta)})
    return mv.file_sha256(path)


@pytest.fixture
def chain(tmp_path):
    """base (outside the folder) -> v001 -> v002 (flagged) in <data>/models."""
    data = tmp_path / "data"
    models = mv.models_dir(data)
    models.mkdir(parents=True)
    base = tmp_path / "base.safetensors"
    base_sha = _write_version(base, seed=9)
    v1 = models / "closenet-v001.safetensors"
    v1_sha = _write_version(v1, parent=base_sha, date="2026-01-02T00:00:00+00:00", seed=1)
    v2 = models / "closenet-v002.safetensors"
    v2_sha = _write_version(v2, parent=v1_sha, date="2026-01-03T00:00:00+00:00", seed=2,
                            flagged={"flagged": True, "reason": "replay -3.0 points"})
    return data, models, (base, base_sha), (v1, v1_sha), (v2, v2_sha)


def test_list_versions_reads_headers(chain) -> None:
    data, models, (base, base_sha), (v1, v1_sha), (v2, v2_sha) = chain
    infos = mv.list_versions(models)
    assert [i.path for i in infos] == [v1, v2]
    a, b = infos
    assert a.ok and a.sha256 == v1_sha and a.parent_sha256 == base_sha
    assert a.metrics_before == {"replay": {"miou_strict": 0.5}}
    assert a.metrics_after["replay"]["miou_strict"] == 0.52
    assert not a.flagged and a.data["files"] == ["a.npz"]
    assert b.flagged and b.flag_reason == "replay -3.0 points" and b.parent_sha256 == v1_sha
    assert mv.find_version(models, v1_sha).path == v1
    assert mv.find_version(models, "0" * 64) is None
    assert mv.list_versions(data / "nowhere") == []


def test_broken_versions_are_listed_not_raised(chain, tmp_path) -> None:
    data, models, *_ = chain
    good = models / "closenet-v001.safetensors"
    (models / "truncated.safetensors").write_bytes(good.read_bytes()[:20])
    (models / "empty.safetensors").write_bytes(b"")
    (models / "junk.safetensors").write_bytes(struct.pack("<Q", 5) + b"{nope")
    raw = json.dumps({"__metadata__": {"other": "x"}}).encode()
    (models / "foreign.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    infos = {i.path.name: i for i in mv.list_versions(models)}
    assert infos["closenet-v001.safetensors"].ok
    for name in ("truncated", "empty", "junk", "foreign"):
        assert not infos[f"{name}.safetensors"].ok, name
        assert infos[f"{name}.safetensors"].problem
    assert "no CloSe metadata" in infos["foreign.safetensors"].problem
    with pytest.raises(CheckpointError, match="cannot be activated"):
        mv.activate(data, models / "junk.safetensors")
    assert mv.active_version(data) is None  # a refused activation changes nothing


def test_activate_and_rollback_chain(chain) -> None:
    data, models, (base, base_sha), (v1, v1_sha), (v2, v2_sha) = chain
    assert mv.active_version(data) is None and mv.active_checkpoint(data) is None
    active = mv.activate(data, v2)
    assert active.path == v2.resolve() and active.sha256 == v2_sha
    assert mv.active_checkpoint(data) == str(v2.resolve())
    saved = json.loads((data / "active.json").read_text())
    assert saved["sha256"] == v2_sha
    # v2 -> its parent v1 -> v1's parent is not a version: back to the base (None).
    assert mv.rollback(data).path == v1.resolve()
    assert mv.active_checkpoint(data) == str(v1.resolve())
    assert mv.rollback(data) is None
    assert mv.active_version(data) is None and mv.active_checkpoint(data) is None
    with pytest.raises(CloseError, match="no fine-tuned version is active"):
        mv.rollback(data)
    history = json.loads((data / "active.json").read_text())["history"]
    assert [h["sha256"] for h in history] == [v2_sha, v1_sha]
    # Any file can be activated, a published .pth too (hashed, not parsed).
    pth = data / "published.pth"
    pth.write_bytes(b"weights")
    assert mv.activate(data, pth).sha256 == mv.file_sha256(pth)
    with pytest.raises(CloseError, match="no model version"):
        mv.activate(data, data / "missing.safetensors")


def test_active_pointer_to_missing_or_swapped_file_is_ignored(chain) -> None:
    data, models, _, (v1, _), _ = chain
    mv.activate(data, v1)
    v1.rename(v1.with_suffix(".moved"))
    assert mv.active_version(data).exists is False
    assert mv.active_checkpoint(data) is None
    v1.with_suffix(".moved").rename(v1)
    assert mv.active_checkpoint(data) == str(v1.resolve())
    v1.write_bytes(v1.read_bytes() + b" ")  # changed behind the pointer's back
    assert mv.active_checkpoint(data) is None
    (data / "active.json").write_text("{corrupt")
    assert mv.active_version(data) is None and mv.active_checkpoint(data) is None


def test_no_torch_needed() -> None:
    import subprocess
    import sys

    code = ("import sys; import close_blender.model_versions, close_blender.corrections; "
            "assert 'torch' not in sys.modules and 'bpy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=str(__import__('conftest').REPO))
