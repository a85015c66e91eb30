"""Checkpoints: strict published loading, native safetensors round trip, export, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from close_blender.canonical import CANONICAL_FRAME_ID
from close_blender.errors import CheckpointError
from close_blender.labels import CLASS_NAMES
from inference.checkpoints import (
    export_published,
    load_checkpoint,
    load_native,
    published_to_native_key,
    resolve_checkpoint,
    save_native,
    sha256_file,
)


@pytest.fixture(scope="module")
def published(closenet_reference):
    return load_checkpoint(closenet_reference / "closenet.pth")


@pytest.fixture(scope="module")
def state(closenet_reference):
    return torch.load(closenet_reference / "closenet.pth", weights_only=True)


@pytest.fixture
def pair(tmp_path, closenet_reference):
    """A writable copy of the published pair: returns a function writing NAME.pth + cfg."""
    def write(state_obj, name="model") -> Path:
        pth = tmp_path / f"{name}.pth"
        torch.save(state_obj, pth)
        shutil.copy(closenet_reference / "closenet_cfg.yaml", tmp_path / f"{name}_cfg.yaml")
        return pth
    return write


def _logits(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(1, 300, 9, generator=g) - 0.5
    can = torch.rand(1, 300, 3, generator=g)
    garments = torch.zeros(1, 18, dtype=torch.int32)
    garments[0, [1, 3]] = 1
    with torch.inference_mode():
        return model(pts, can, garments)


def test_every_published_key_has_a_place(state, published):
    assert len(state) == 129
    targets = {published_to_native_key(k) for k in state}
    assert None not in targets
    assert targets == set(published.model.state_dict())
    assert published.meta["canonical_frame"] == CANONICAL_FRAME_ID
    assert published.meta["class_names"] == list(CLASS_NAMES)
    assert published.sha256 == sha256_file(published.path)
    assert published.config.k == 40 and published.config.n_heads == 4


def test_tnet_duplicate_bn_must_agree(state, pair):
    bad = dict(state)
    bad["pc_enc.transform_net.bn1.running_mean"] = bad["pc_enc.transform_net.bn1.running_mean"] + 1
    with pytest.raises(CheckpointError, match=r"bn1\.running_mean|conv1\.1\.running_mean"):
        load_checkpoint(pair(bad))


def test_wrong_shape_names_key_and_shapes(state, pair):
    bad = dict(state)
    bad["segm_dec.layers.2.0.weight"] = torch.zeros(512, 256, 1)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(pair(bad))
    msg = str(err.value)
    assert "segm_dec.layers.2.0.weight" in msg and "(512, 256, 1)" in msg and "(512, 512, 1)" in msg


def test_extra_and_missing_keys(state, pair):
    extra = dict(state, **{"something.else": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="something.else"):
        load_checkpoint(pair(extra, "extra"))
    missing = {k: v for k, v in state.items() if k != "garm_enc.norm.bias"}
    with pytest.raises(CheckpointError, match=r"garm_enc\.norm\.bias"):
        load_checkpoint(pair(missing, "missing"))
    # a duplicate alone is enough for its BN; dropping both names is not
    no_bn1 = {k: v for k, v in state.items() if not k.startswith("pc_enc.transform_net.bn1.")}
    load_checkpoint(pair(no_bn1, "nobn1"))


def test_not_a_state_dict(pair):
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(pair([torch.zeros(3)], "alist"))


class _Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickled_code_is_refused(pair, capsys):
    with pytest.raises(CheckpointError, match="plain"):
        load_checkpoint(pair({"x": _Payload()}, "evil"))
    assert "this would run" not in capsys.readouterr().out


def test_pth_without_cfg(tmp_path, state):
    pth = tmp_path / "lonely.pth"
    torch.save(state, pth)
    with pytest.raises(CheckpointError, match="lonely_cfg.yaml"):
        load_checkpoint(pth)


def test_garbage_file(tmp_path, closenet_reference):
    pth = tmp_path / "junk.pth"
    pth.write_bytes(b"not a checkpoint at all")
    shutil.copy(closenet_reference / "closenet_cfg.yaml", tmp_path / "junk_cfg.yaml")
    with pytest.raises(CheckpointError):
        load_checkpoint(pth)
    st = tmp_path / "junk.safetensors"
    st.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError):
        load_checkpoint(st)


def test_native_round_trip(tmp_path, published):
    meta = {"provenance": {"parent_sha256": published.sha256,
                           "training_data": {"scans": 3}, "metrics": {"mIoU": 0.5}}}
    path = tmp_path / "ft" / "model_v1.safetensors"
    digest = save_native(path, published.model, published.config, meta)
    assert digest == sha256_file(path)
    back = load_checkpoint(path)
    assert back.sha256 == digest and back.config == published.config
    for key, value in published.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[key], value), key
    assert torch.equal(_logits(back.model), _logits(published.model))
    prov = back.meta["provenance"]
    assert prov["parent_sha256"] == published.sha256 and prov["metrics"] == {"mIoU": 0.5}
    assert prov["date"]
    assert back.meta["format_version"] == 1
    assert back.meta["canonical_frame"] == CANONICAL_FRAME_ID
    assert back.meta["palette"][1] == [255, 206, 160]
    assert not back.model.training
    with pytest.raises(CheckpointError, match="never overwritten"):
        save_native(path, published.model, published.config, {})


def test_export_published_round_trip(tmp_path, published, state):
    native = tmp_path / "m.safetensors"
    save_native(native, published.model, published.config, {})
    out = tmp_path / "exported.pth"
    export_published(native, out)
    assert (tmp_path / "exported_cfg.yaml").is_file()
    exported = torch.load(out, weights_only=True)
    assert set(exported) == set(state)
    for key in state:
        assert torch.equal(exported[key], state[key]), key
    again = load_checkpoint(out)
    assert torch.equal(_logits(again.model), _logits(published.model))


def test_export_published_never_overwrites(tmp_path, published):
    native = tmp_path / "m.safetensors"
    save_native(native, published.model, published.config, {})
    out = tmp_path / "exported.pth"
    export_published(native, out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CheckpointError, match="never overwritten") as info:
        export_published(native, out)
    assert info.value.hint
    # a config left from another export blocks too, and no lone .pth is written
    other = tmp_path / "other.pth"
    (tmp_path / "other_cfg.yaml").write_text("model_arch: {}\n")
    with pytest.raises(CheckpointError, match="other_cfg.yaml exists"):
        export_published(native, other)
    assert not other.exists()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "other_cfg.yaml"} \
        == before


def test_export_published_race_keeps_the_other_file(tmp_path, published, monkeypatch):
    """A file that appears after the first check is still never replaced."""
    from inference import checkpoints

    native = tmp_path / "m.safetensors"
    save_native(native, published.model, published.config, {})
    out = tmp_path / "late.pth"
    real = checkpoints.load_native

    def load_then_someone_writes(path):
        loaded = real(path)
        out.write_bytes(b"theirs")
        return loaded

    monkeypatch.setattr(checkpoints, "load_native", load_then_someone_writes)
    with pytest.raises(CheckpointError, match="never overwritten"):
        export_published(native, out)
    assert out.read_bytes() == b"theirs" and not (tmp_path / "late_cfg.yaml").exists()


def test_native_metadata_is_checked(tmp_path, published):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in published.model.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="metadata"):
        load_native(path)
    newer = tmp_path / "newer.safetensors"
    meta = dict(published.meta, format_version=99)
    save_file({k: v.contiguous() for k, v in published.model.state_dict().items()}, str(newer),
              metadata={"close_blender": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="version"):
        load_native(newer)


def test_one_hash_and_one_metadata_key_for_core_and_inference(tmp_path):
    import hashlib

    from close_blender import model_versions
    from inference import checkpoints

    assert checkpoints.META_KEY == model_versions.META_KEY == "close_blender"
    assert checkpoints.sha256_file is model_versions.file_sha256
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights" * 1000)
    assert checkpoints.sha256_file(f) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_resolve(tmp_path, monkeypatch):
    import inference.checkpoints as ck

    bundled = resolve_checkpoint("default")
    assert bundled == ck.MODELS_DIR / "default.safetensors" and bundled.is_file()
    assert load_checkpoint("default").meta["canonical_frame"] == "smpl-tpose-centroid-v1"
    monkeypatch.setitem(ck.PROJECT_NAMES, "default", tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="bundled"):
        resolve_checkpoint("default")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_checkpoint(tmp_path / "nope.pth")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        resolve_checkpoint(other)


def test_config_from_published_yaml(closenet_reference):
    import yaml

    from inference.closenet import CloseNetConfig

    cfg_yaml = yaml.safe_load((closenet_reference / "closenet_cfg.yaml").read_text())
    cfg = CloseNetConfig.from_model_arch(cfg_yaml["model_arch"], cfg_yaml["data"]["n_classes"])
    assert cfg.decoder_channels == (512, 512, 512, 512, 256) and cfg.decoder_input == 1283
    assert CloseNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    again = CloseNetConfig.from_model_arch(cfg.to_model_arch(), 18)
    assert again == cfg
    with pytest.raises(CheckpointError):
        CloseNetConfig.from_model_arch({"pc_enc": {}}, 18)
    np.testing.assert_equal(cfg.n_classes, 18)


def test_gated_version_stores_only_the_changed_fallback_tensors(tmp_path, published):
    import copy

    from safetensors import safe_open
    from safetensors.torch import save_file

    from inference.checkpoints import FALLBACK_PREFIX

    tuned = copy.deepcopy(published.model)
    with torch.no_grad():
        tuned.decoder.layers[-1].bn.bias.add_(0.5)
    path = tmp_path / "gated.safetensors"
    save_native(path, tuned, published.config, {}, fallback=published.model)
    with safe_open(str(path), framework="pt") as fh:
        stored = [k for k in fh.keys() if k.startswith(FALLBACK_PREFIX)]  # noqa: SIM118
    assert len(stored) == 1 and stored[0].endswith(".bn.bias")  # the one tensor changed
    back = load_checkpoint(path)
    assert back.meta["format_version"] == 2 and back.fallback is not None
    for key, value in published.model.state_dict().items():
        assert torch.equal(back.fallback.state_dict()[key], value), key
        assert torch.equal(back.model.state_dict()[key], tuned.state_dict()[key]), key
    plain = tmp_path / "plain.safetensors"
    save_native(plain, tuned, published.config, {}, fallback=tuned)  # nothing differs
    assert load_checkpoint(plain).fallback is None
    assert load_checkpoint(plain).meta["format_version"] == 1
    # a fallback tensor for a weight the network does not have: refused clearly
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        header = fh.metadata()
    tensors[FALLBACK_PREFIX + "no.such.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=header)
    with pytest.raises(CheckpointError, match="unknown weights"):
        load_checkpoint(bad)
