"""The corrections library in numpy: save, list (broken files too), remove, export, zip reading."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from close_blender import corrections as corr
from close_blender.errors import CloseError, ScanError
from close_blender.labels import CLASS_NAMES
from close_blender.scan_io import expanded_scan_paths, load_scan, scan_paths


def _arrays(n: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    points = rng.uniform(-0.5, 0.5, (n, 3)).astype(np.float32)
    normals = rng.normal(size=(n, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    predicted = np.where(points[:, 1] > 0, 3, 8).astype(np.int64)  # TShirt over Pants
    labels = predicted.copy()
    labels[:10] = 1           # 10 vertices TShirt/Pants -> Body
    labels[points[:, 1] < -0.4] = 10  # feet: Pants -> Shoes
    return {"points": points, "normals": normals,
            "colors": rng.integers(0, 256, (n, 3)).astype(np.uint8),
            "faces": rng.integers(0, n, (50, 3)).astype(np.int64),
            "canon_pose": points * 1.7, "labels": labels, "predicted_labels": predicted,
            "scale": np.float64(1.7), "centers": np.zeros(3), "body_betas": np.ones(10)}


PROV = {"source": "Blender object 'scan.001'", "object_name": "scan.001",
        "checkpoint": "/models/closenet.pth", "checkpoint_sha256": "ab" * 32}


def test_save_writes_closed_npz_with_provenance(tmp_path) -> None:
    arrays = _arrays()
    path = corr.save_correction(tmp_path, arrays, PROV)
    assert path.parent == tmp_path / "corrections"
    assert path.name.startswith("scan.001-") and path.suffix == ".npz"
    scan = load_scan(path, require=corr.REQUIRED_KEYS)  # a valid CloSe-D file
    changed = arrays["labels"] != arrays["predicted_labels"]
    assert np.array_equal(scan["changed"], changed) and scan["changed"].dtype == bool
    assert scan["predicted_labels"].dtype == np.int64
    assert np.array_equal(scan["labels"], arrays["labels"])
    assert np.array_equal(np.flatnonzero(scan["garments"]), [1, 3, 8, 10])
    assert np.array_equal(scan["body_betas"], np.ones(10))
    prov = json.loads(str(scan["provenance"][()]))
    assert prov["checkpoint_sha256"] == "ab" * 32 and prov["object_name"] == "scan.001"
    assert prov["changed"] == int(changed.sum()) and prov["n_points"] == 200
    assert sum(r["count"] for r in prov["changes"]) == int(changed.sum())
    assert {(r["from"], r["to"]) for r in prov["changes"]} <= {
        ("TShirt", "Body"), ("Pants", "Body"), ("Pants", "Shoes")}
    assert prov["created"].endswith("+00:00")
    # Training reads it as is.
    training = pytest.importorskip("inference.training")
    (s,) = training.load_scans([path.parent])
    assert len(s) == 200


def test_save_never_overwrites(tmp_path) -> None:
    paths = {corr.save_correction(tmp_path, _arrays(seed=i), PROV) for i in range(3)}
    assert len(paths) == 3  # same second, same object: suffixes keep them apart
    assert len(corr.list_corrections(tmp_path)) == 3


def test_save_refuses_bad_input(tmp_path) -> None:
    arrays = _arrays()
    del arrays["predicted_labels"]
    with pytest.raises(ScanError, match="predicted"):
        corr.save_correction(tmp_path, arrays, PROV)
    arrays = _arrays()
    arrays["labels"][3] = -1  # an unlabelled vertex
    with pytest.raises(ScanError, match="labels"):
        corr.save_correction(tmp_path, arrays, PROV)
    arrays = _arrays()
    del arrays["canon_pose"]
    with pytest.raises(ScanError, match="canon_pose"):
        corr.save_correction(tmp_path, arrays, PROV)
    arrays = _arrays()
    arrays["predicted_labels"] = arrays["predicted_labels"][:-1]
    with pytest.raises(ScanError, match="predicted"):
        corr.save_correction(tmp_path, arrays, PROV)
    assert not (tmp_path / "corrections").exists() or not any(
        (tmp_path / "corrections").iterdir())


def test_list_reports_broken_files_and_never_raises(tmp_path) -> None:
    good = corr.save_correction(tmp_path, _arrays(), PROV)
    folder = good.parent
    (folder / "truncated.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "garbage.npz").write_bytes(b"not a zip at all")
    (folder / "empty.npz").write_bytes(b"")
    np.savez(folder / "nolabels.npz", points=np.zeros((3, 3), np.float32))
    plain = {k: v for k, v in _arrays().items() if k not in ("predicted_labels",)}
    np.savez(folder / "plain-closed.npz", **plain)  # a CloSe-D file without provenance
    (folder / ".partial.npz.abc.part").write_bytes(b"x")  # a write in progress
    before = sorted(p.name for p in folder.iterdir())

    infos = {i.name: i for i in corr.list_corrections(tmp_path)}
    assert set(infos) == {good.name, "truncated.npz", "garbage.npz", "empty.npz",
                          "nolabels.npz", "plain-closed.npz"}
    assert infos[good.name].ok and infos[good.name].n_changed > 0
    assert infos[good.name].classes == ["Body", "TShirt", "Pants", "Shoes"]
    assert infos["plain-closed.npz"].ok and infos["plain-closed.npz"].n_changed == 0
    for name in ("truncated.npz", "garbage.npz", "empty.npz"):
        assert not infos[name].ok and "unreadable" in infos[name].problem
    assert not infos["nolabels.npz"].ok and "labels" in infos["nolabels.npz"].problem
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing deleted or moved
    usable, broken = corr.usable_paths(tmp_path)
    assert {p.name for p in usable} == {good.name, "plain-closed.npz"}
    assert len(broken) == 4
    assert corr.list_corrections(tmp_path / "nowhere") == []


def test_remove_moves_into_trash(tmp_path) -> None:
    a = corr.save_correction(tmp_path, _arrays(), PROV)
    data = a.read_bytes()
    moved = corr.remove_correction(a)
    assert not a.exists() and moved.parent == a.parent / ".trash"
    assert moved.read_bytes() == data
    assert corr.list_corrections(tmp_path) == []
    # Removing a second file of the same name keeps both in the trash.
    a.write_bytes(data)
    moved2 = corr.remove_correction(a)
    assert moved2 != moved and moved.exists() and moved2.exists()
    with pytest.raises(CloseError, match="no correction"):
        corr.remove_correction(a)


def test_export_zip_is_read_by_scan_paths(tmp_path) -> None:
    a = corr.save_correction(tmp_path, _arrays(seed=1), PROV)
    b = corr.save_correction(tmp_path, _arrays(seed=2), {**PROV, "object_name": "other"})
    (a.parent / "broken.npz").write_bytes(b"junk")
    result = corr.export_corrections(tmp_path, tmp_path / "out" / "library")
    assert result.path.name == "library.zip" and result.path.is_file()
    assert sorted(result.files) == sorted([a.name, b.name])
    assert len(result.skipped) == 1 and result.skipped[0].startswith("broken.npz")
    with zipfile.ZipFile(result.path) as zf:
        assert sorted(zf.namelist()) == sorted([a.name, b.name, "manifest.json"])
        manifest = json.loads(zf.read("manifest.json"))
    assert {f["name"] for f in manifest["files"]} == {a.name, b.name}

    files = scan_paths([result.path])
    assert sorted(p.name for p in files) == sorted([a.name, b.name])
    for p in files:
        original = load_scan(a if p.name == a.name else b, require=("points",))
        again = load_scan(p, require=corr.REQUIRED_KEYS)
        assert np.array_equal(again["labels"], original["labels"])
    training = pytest.importorskip("inference.training")
    assert len(training.load_scans([result.path])) == 2


def test_export_with_nothing_usable(tmp_path) -> None:
    with pytest.raises(CloseError, match="no usable corrections"):
        corr.export_corrections(tmp_path, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


def test_scan_paths_zip_is_safe_and_bad_zip_is_reported(tmp_path) -> None:
    src = corr.save_correction(tmp_path, _arrays(), PROV)
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(src, arcname="../../outside.npz")
        zf.write(src, arcname="sub/outside.npz")
        zf.writestr("readme.txt", "hello")
    files = scan_paths([z])
    assert len(files) == 2 and all(p.parent == files[0].parent for p in files)
    assert not (tmp_path.parent / "outside.npz").exists()
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"nope")
    with pytest.raises(ScanError, match="not a readable zip"):
        scan_paths([bad])


def _library(tmp_path, name: str = "library"):
    """Two saved corrections and their exported zip."""
    a = corr.save_correction(tmp_path / "data", _arrays(seed=1), PROV)
    b = corr.save_correction(tmp_path / "data", _arrays(seed=2), {**PROV, "object_name": "other"})
    return a, b, corr.export_corrections(tmp_path / "data", tmp_path / name).path


def test_expanded_scan_paths_removes_the_extracted_files(tmp_path) -> None:
    """The worker ends with os._exit, so zips are extracted for a with block, not a process."""
    a, b, zipped = _library(tmp_path)
    other = _library(tmp_path / "second", "other")[2]  # equal member names in two zips
    with expanded_scan_paths([zipped, other, a.parent]) as files:
        assert len(files) == 6 and len(set(files)) == 6 and all(f.is_file() for f in files)
        extracted = [f for f in files if f.parent != a.parent]
        assert len(extracted) == 4 and len({f.parent for f in extracted}) == 2
        assert sorted(f.name for f in extracted[:2]) == sorted([a.name, b.name])
        assert np.array_equal(load_scan(extracted[0], require=corr.REQUIRED_KEYS)["labels"],
                              load_scan(a if extracted[0].name == a.name else b,
                                        require=("points",))["labels"])
    assert not any(f.exists() for f in extracted) and not extracted[0].parent.parent.exists()
    assert a.is_file() and b.is_file()  # only what it extracted is removed

    with pytest.raises(RuntimeError), expanded_scan_paths([zipped]) as files:
        raise RuntimeError("a failed job")
    assert not files[0].parent.exists()
    with expanded_scan_paths([a]) as files:  # files and folders need no temporary folder
        assert files == [a]
    with pytest.raises(ScanError, match="no .npz"), expanded_scan_paths([tmp_path / "second"]):
        pass
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"nope")
    with pytest.raises(ScanError, match="not a readable zip"), expanded_scan_paths([a, bad]):
        pass


def test_finetune_job_reads_zips_only_while_it_runs(tmp_path, monkeypatch) -> None:
    finetune_mod = pytest.importorskip("inference.finetune")
    from types import SimpleNamespace

    from inference.finetune_jobs import finetune_job
    from inference.jobs import JobContext

    a, b, zipped = _library(tmp_path)
    seen = {}

    def fake_finetune(checkpoint, files, out_dir, *, heldout=(), **kwargs):
        seen["files"], seen["heldout"] = list(files), list(heldout)
        assert all(f.is_file() for f in (*files, *heldout))
        return SimpleNamespace(path=tmp_path / "v.safetensors", sha256="0" * 64, flagged=False,
                               flag_reason="", metrics={}, timing={})

    monkeypatch.setattr(finetune_mod, "finetune", fake_finetune)
    fields = finetune_job({"checkpoint": "parent.safetensors", "corrections": str(zipped),
                           "models_dir": str(tmp_path / "models"),
                           "options": {"heldout": [str(zipped)]}}, {}, JobContext())
    assert sorted(fields["files"]) == sorted([a.name, b.name]) and len(seen["heldout"]) == 2
    assert not any(f.exists() for f in (*seen["files"], *seen["heldout"]))


def test_change_counts_names_unlabelled_predictions() -> None:
    rows = corr.change_counts(np.array([-1, 2, 2, 5]), np.array([1, 2, 3, 3]))
    assert {(r["from"], r["to"], r["count"]) for r in rows} == {
        ("None", "Body", 1), ("Shirt", "TShirt", 1), ("Coat", "TShirt", 1)}
    assert corr.change_counts(np.array([1, 2]), np.array([1, 2])) == []
    assert CLASS_NAMES[1] == "Body"


def test_safe_name() -> None:
    assert corr.safe_name("My scan/../x") == "My_scan_.._x"
    assert corr.safe_name("///") == "scan"
    assert len(corr.safe_name("a" * 200)) == 60
