"""Fine-tuning: versions never overwritten, metadata, replay lineage, frozen layers, flags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from close_blender.cli import main as cli_main
from close_blender.errors import Cancelled, CloseError, ScanError
from close_blender.fileio import save_npz_atomic
from inference.checkpoints import load_checkpoint, save_native
from inference.closenet import CloseNet
from inference.finetune import (
    ColourMix,
    FinetuneConfig,
    _short,
    correction_from_arrays,
    distillation,
    finetune,
    next_version_path,
    reference_tune,
    replay_scans,
)
from inference.training import evaluate_scans, scan_from_arrays
from tests.test_training import TINY, fake_scan

FAST = dict(steps=6, n_points=256, eval_max_points=300)


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = CloseNet(TINY).eval()
    path = tmp_path_factory.mktemp("parent") / "base.safetensors"
    save_native(path, model, TINY, {"provenance": {"source": "test"}})
    return path


@pytest.fixture()
def dirs(tmp_path) -> dict[str, Path]:
    d = {k: tmp_path / k for k in ("corr", "replay", "held", "out")}
    for k in ("corr", "replay", "held"):
        d[k].mkdir()
    a = fake_scan(10)
    a["changed"] = np.zeros(len(a["labels"]), bool)
    a["changed"][:50] = True
    save_npz_atomic(d["corr"] / "c1.npz", a)
    save_npz_atomic(d["replay"] / "r1.npz", fake_scan(20))
    save_npz_atomic(d["replay"] / "r2.npz", fake_scan(21))
    save_npz_atomic(d["held"] / "h1.npz", fake_scan(30))
    return d


def run_ft(parent, d, held=True, **kw):
    cfg = FinetuneConfig(**{**FAST, **kw.pop("cfg", {})})
    return finetune(parent, [d["corr"]], d["out"], replay=d["replay"],
                    heldout=[d["held"]] if held else [], cfg=cfg, **kw)


def test_version_metadata_and_frozen_layers(parent, dirs):
    from close_blender.model_versions import version_info

    res = run_ft(parent, dirs, cfg={"layers": "head"})
    assert res.path.name == "finetuned-v001.safetensors"
    base = load_checkpoint(parent)
    new = load_checkpoint(res.path)
    meta = new.meta
    assert meta["provenance"]["parent_sha256"] == base.sha256 == meta["finetune"]["parent_sha256"]
    data = meta["provenance"]["training_data"]
    assert [c["file"] for c in data["corrections"]] == ["c1.npz"]
    assert data["corrections"][0]["n_changed"] == 50
    assert data["heldout"] == ["h1.npz"] and len(data["replay_eval"]) == 1
    m = meta["provenance"]["metrics"]
    for when in ("before", "after"):
        assert 0 <= m[when]["replay"]["miou_strict"] <= 1
        assert 0 <= m[when]["heldout"]["miou_strict"] <= 1
    assert meta["finetune"]["flagged"] is False or m["replay_drop"] > 0.01
    info = version_info(res.path)  # the torch-free reader of the versions list understands it
    assert info.ok and info.parent_sha256 == base.sha256 and info.metrics_after
    # only the decoder trained; every BN statistic stayed as it was
    a, b = base.model.state_dict(), new.model.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)
    assert not any("running_" in k for k in changed)


def test_colour_mix_folds_into_the_first_layer_exactly():
    torch.manual_seed(1)
    model = CloseNet(TINY).eval()
    mix = ColourMix(model)
    with torch.no_grad():
        mix.matrix.copy_(torch.tensor([[0.1, 0.2, 0.9], [0.0, 1.1, 0.1], [0.8, -0.1, 0.2]]))
        mix.offset.copy_(torch.tensor([0.05, -0.1, 0.2]))
    p = torch.rand(2, 200, 9)
    c, g = torch.rand(2, 200, 3), torch.ones(2, TINY.n_garments)
    with torch.inference_mode():
        mixed = model(p, c, g)
        mix.fold()  # the hook is gone; the same function is now in the weights
        folded = model(p, c, g)
    assert torch.allclose(mixed, folded, atol=1e-5)


def test_default_colour_round_changes_only_the_first_layer(parent, dirs):
    res = run_ft(parent, dirs)  # layers "colour" (the default), gated
    base, new = load_checkpoint(parent), load_checkpoint(res.path)
    a, b = base.model.state_dict(), new.model.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    first = "point_encoder.edge_convs.0.layers.0."
    assert changed == {first + "conv.weight", first + "bn.running_mean"}
    assert new.fallback is not None  # the gate keeps the original look
    assert new.meta["finetune"]["config"]["train_on_replay"] is False


def test_versions_never_overwrite_and_replay_earlier_corrections(parent, dirs):
    v1 = run_ft(parent, dirs)
    v1_bytes = v1.path.read_bytes()
    with pytest.raises(CloseError, match="already used"):
        run_ft(v1.path, dirs)
    save_npz_atomic(dirs["corr"] / "c2.npz", fake_scan(11))
    (dirs["out"] / "finetuned-v002.safetensors").write_bytes(b"taken")  # someone else's
    v3 = run_ft(v1.path, dirs, held=False)
    assert v3.path.name == "finetuned-v003.safetensors"
    assert v1.path.read_bytes() == v1_bytes
    data = load_checkpoint(v3.path).meta["provenance"]["training_data"]
    assert [c["file"] for c in data["corrections"]] == ["c2.npz"]
    assert [c["file"] for c in data["earlier_corrections"]] == ["c1.npz"]
    assert next_version_path(dirs["out"], "finetuned").name == "finetuned-v004.safetensors"
    # v1's replay score was kept when v1 was written: the round from it starts with it
    m1 = load_checkpoint(v1.path).meta
    m3 = load_checkpoint(v3.path).meta
    assert not m1["finetune"]["timing"]["replay_before_cached"]
    assert m3["finetune"]["timing"]["replay_before_cached"]
    assert (m3["provenance"]["metrics"]["before"]["replay"]
            == m1["provenance"]["metrics"]["after"]["replay"])
    # ... and it is what scoring v1 again, gated as it predicts, gives (deterministic)
    c1 = load_checkpoint(v1.path)
    rescored = evaluate_scans(c1.model, replay_scans(dirs["replay"])[1::2],
                              FAST["eval_max_points"], fallback=c1.fallback)
    assert json.loads(json.dumps(_short(rescored))) == m1["provenance"]["metrics"]["after"]["replay"]
    assert next_version_path(dirs["out"], "other").name == "other-v001.safetensors"


def test_gated_versions_keep_the_weights_before_the_first_gated_round(parent, dirs):
    from close_blender.model_versions import version_info

    base = load_checkpoint(parent)
    v1 = load_checkpoint(run_ft(parent, dirs).path)
    assert v1.meta["finetune"]["gated"] and v1.fallback is not None
    assert version_info(v1.path).gated  # the torch-free versions list says so
    assert "scans_to_tuned" in v1.meta["provenance"]["metrics"]["after"]["replay"]
    save_npz_atomic(dirs["corr"] / "c2.npz", fake_scan(11))
    v2 = load_checkpoint(run_ft(v1.path, dirs, held=False).path)
    ref = base.model.state_dict()
    for model in (v1.fallback, v2.fallback):  # v2 falls back to the base, not to v1
        assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    plain = load_checkpoint(run_ft(v1.path, dirs, held=False, name="plain",
                                   cfg={"gate": False}).path)
    assert plain.fallback is None and not plain.meta["finetune"]["gated"]


def test_all_head_and_input_layer_choices(parent, dirs):
    base = load_checkpoint(parent).model.state_dict()
    res = run_ft(parent, dirs, held=False, name="all", cfg={"layers": "all", "steps": 2})
    changed = {k for k, v in load_checkpoint(res.path).model.state_dict().items()
               if not torch.equal(v, base[k])}
    assert any(k.startswith("point_encoder.") for k in changed)
    res = run_ft(parent, dirs, held=False, name="head", cfg={"layers": "head", "steps": 2})
    changed = {k for k, v in load_checkpoint(res.path).model.state_dict().items()
               if not torch.equal(v, base[k])}
    n = len(TINY.decoder_channels)  # layers 0..n; the head is the last two
    assert changed and all(k.startswith((f"decoder.layers.{n - 1}.", f"decoder.layers.{n}."))
                           for k in changed)
    res = run_ft(parent, dirs, held=False, name="input", cfg={"layers": "input", "steps": 2})
    changed = {k for k, v in load_checkpoint(res.path).model.state_dict().items()
               if not torch.equal(v, base[k])}
    assert changed == {"point_encoder.edge_convs.0.layers.0.conv.weight"}


def test_distillation_is_zero_for_the_teacher_itself_and_runs_on_both_paths(parent, dirs):
    logits = torch.randn(2, 18, 50)
    teacher = torch.log_softmax(logits, dim=1)
    assert float(distillation(logits, teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation(logits + torch.randn_like(logits), teacher)) > 0
    for layers in ("decoder", "all"):
        res = run_ft(parent, dirs, held=False, name=layers,
                     cfg={"layers": layers, "steps": 2, "distill": 1.0})
        assert load_checkpoint(res.path).meta["finetune"]["config"]["distill"] == 1.0


def test_flagged_run_is_written_but_not_activated(parent, dirs, capsys):
    code = cli_main(["finetune", "--checkpoint", str(parent), "--corrections", str(dirs["corr"]),
                     "--out", str(dirs["out"]), "--replay", str(dirs["replay"]), "--steps", "2",
                     "--flag-threshold", "-2", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flagged"] and not out["activated"] and Path(out["path"]).is_file()
    assert not (dirs["out"] / "active.json").exists()
    code = cli_main(["finetune", "--checkpoint", out["path"], "--corrections",
                     str(dirs["held"]), "--out", str(dirs["out"]), "--replay",
                     str(dirs["replay"]), "--steps", "2", "--flag-threshold", "2", "--json"])
    assert code == 0
    out2 = json.loads(capsys.readouterr().out)
    assert out2["activated"] and not out2["flagged"]
    active = json.loads((dirs["out"] / "active.json").read_text())
    assert Path(active["path"]).name == Path(out2["path"]).name


def test_cancel_and_bad_input(parent, dirs, tmp_path, capsys):
    with pytest.raises(Cancelled):
        run_ft(parent, dirs, cancelled=lambda: True)
    assert not list(dirs["out"].glob("*.safetensors"))
    arrays = fake_scan(1)
    arrays["changed"] = np.zeros(5, bool)
    with pytest.raises(ScanError, match="changed"):
        correction_from_arrays(arrays, "x.npz", 5.0)
    del arrays["labels"]
    save_npz_atomic(tmp_path / "nolabels.npz", arrays)
    assert cli_main(["finetune", "--checkpoint", str(parent), "--corrections",
                     str(tmp_path / "nolabels.npz"), "--out", str(dirs["out"]),
                     "--replay", str(dirs["replay"])]) == 2
    assert "labels" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["finetune", "--checkpoint", str(parent), "--corrections", str(empty),
                     "--out", str(dirs["out"])]) == 2
    assert cli_main(["finetune", "--checkpoint", str(tmp_path / "none.pth"), "--corrections",
                     str(dirs["corr"]), "--out", str(dirs["out"])]) == 2
    capsys.readouterr()
    assert cli_main(["finetune", "--checkpoint", str(parent), "--corrections", str(dirs["corr"]),
                     "--out", str(dirs["out"]), "--replay", str(dirs["replay"]),
                     "--layers", "colour+heads"]) == 2
    assert "unknown layer choice" in capsys.readouterr().err
    assert not list(dirs["out"].glob("*.safetensors"))


def test_reference_recipe_trains_its_layers(parent):
    base = load_checkpoint(parent)
    model = load_checkpoint(parent).model
    reference_tune(model, scan_from_arrays(fake_scan(3), "s"), passes=1)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, base.model.state_dict()[k])}
    trained = ("decoder.", "point_encoder.global_conv.", "point_encoder.edge_convs.2.")
    assert any(k.startswith("decoder.") for k in changed)
    assert all(k.startswith(trained) for k in changed if "running_" not in k
               and "num_batches" not in k)


@pytest.mark.slow
def test_published_checkpoint_as_start(closenet_reference, dirs):
    pth = closenet_reference / "closenet.pth"
    if not pth.is_file():
        pytest.skip("no published fixture")
    shutil.rmtree(dirs["held"])
    res = finetune(pth, [dirs["corr"]], dirs["out"], replay=dirs["replay"],
                   cfg=FinetuneConfig(steps=1, n_points=256, eval_max_points=200,
                                      max_replay_chunks=1))
    ck = load_checkpoint(res.path)
    assert ck.path.suffix == ".safetensors" and ck.meta["provenance"]["source"] == "finetune"


def test_replay_set_is_filled_up_but_a_users_folder_is_kept(tmp_path, monkeypatch):
    import inference.finetune as ft
    from inference.synth import generate_scan, write_scan

    monkeypatch.setattr(ft, "REPLAY_COUNT", 3)
    monkeypatch.setattr(ft, "REPLAY_POINTS", 400)
    made = tmp_path / "made"  # an older, smaller generated set grows to REPLAY_COUNT
    write_scan(made, f"replay_{ft.REPLAY_SEED}_0000", generate_scan(ft.REPLAY_SEED, 400, index=0),
               "none")
    assert [s.name for s in ft.replay_scans(made)] == [
        f"replay_{ft.REPLAY_SEED}_{i:04d}.npz" for i in range(3)]
    mine = tmp_path / "mine"  # the user's own replay scans are never added to
    save_npz_atomic(mine / "mine.npz", fake_scan(5))
    assert [s.name for s in ft.replay_scans(mine)] == ["mine.npz"]
