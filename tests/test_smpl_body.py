"""SMPL path with a stand-in model file of the real structure and random values."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("smplx")
sparse = pytest.importorskip("scipy.sparse")

from close_blender.errors import CloseError  # noqa: E402
from inference.body.smpl_body import (  # noqa: E402
    SMPLBody,
    find_model_file,
    fit_from_registration,
    load_registration,
)

SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]


def make_standin_smpl(folder: Path, n_vertices: int = 6890, seed: int = 0,
                      name: str = "SMPL_NEUTRAL.pkl") -> Path:
    """An SMPL-structured model file (keys, shapes, sparse J_regressor) with random values."""
    rng = np.random.default_rng(seed)
    v = rng.normal(0, 0.25, (n_vertices, 3))
    v[:, 1] *= 2.5
    weights = rng.random((n_vertices, 24)) ** 8
    weights /= weights.sum(1, keepdims=True)
    jreg = rng.random((24, n_vertices)) * (rng.random((24, n_vertices)) < 0.02)
    jreg /= np.maximum(jreg.sum(1, keepdims=True), 1e-9)
    data = {
        "v_template": v,
        "shapedirs": rng.normal(0, 0.01, (n_vertices, 3, 10)),
        "posedirs": rng.normal(0, 0.001, (n_vertices, 3, 207)).astype(np.float32),
        "J_regressor": sparse.csc_matrix(jreg),
        "weights": weights,
        "kintree_table": np.array([[4294967295] + SMPL_PARENTS[1:], list(range(24))],
                                  dtype=np.int64),
        "f": rng.integers(0, n_vertices, (2 * n_vertices, 3)).astype(np.uint32),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=2)
    return path


def make_registration(path: Path, seed: int = 1, scale: float = 1.0) -> Path:
    rng = np.random.default_rng(seed)
    reg = {"betas": rng.normal(0, 1, 10), "body_pose": rng.normal(0, 0.1, 69),
           "global_orient": rng.normal(0, 0.1, 3), "transl": rng.normal(0, 0.1, 3),
           "scale": np.array(scale), "gender": "neutral"}
    if path.suffix == ".npz":
        np.savez(path, **reg)
    else:
        with open(path, "wb") as fh:
            pickle.dump(reg, fh)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("smpl")
    make_standin_smpl(d)
    return d


def test_model_loads_and_poses(model_dir: Path) -> None:
    body = SMPLBody(model_dir)
    assert body.n_vertices == 6890
    np.testing.assert_allclose(body.canonical_vertices.mean(0), 0.0, atol=1e-5)
    assert len(body.bone_parents) == 24 and body.bone_parents[0] == -1
    v0 = body.posed_numpy()
    assert v0.shape == (6890, 3) and np.isfinite(v0).all()
    v1 = body.posed_numpy(None, None, transl=[1.0, 0, 0], scale=2.0)
    np.testing.assert_allclose(v1, 2 * v0 + [1.0, 0, 0], atol=1e-5)


def test_registration_fit(model_dir: Path, tmp_path: Path) -> None:
    for suffix in (".pkl", ".npz"):
        reg_path = make_registration(tmp_path / f"reg{suffix}", scale=1.1)
        reg = load_registration(reg_path)
        body = SMPLBody(model_dir)
        pose = np.concatenate([reg["global_orient"], reg["body_pose"]])
        scan = body.posed_numpy(reg["betas"][None], pose[None], reg["transl"][None], 1.1)
        fit = fit_from_registration(scan, reg_path, model_dir)
        assert fit.body == "smpl"
        np.testing.assert_allclose(fit.vertices, scan, atol=1e-5)
        assert fit.quality["residual_mean_m"] < 1e-3
        assert fit.params["scale"] == pytest.approx(1.1)


def test_missing_and_invalid_files(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CloseError, match="no SMPL model folder"):
        find_model_file(tmp_path / "nowhere")
    with pytest.raises(CloseError, match="no SMPL neutral model"):
        find_model_file(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "SMPL_NEUTRAL.pkl").write_bytes(b"not a pickle")
    with pytest.raises(CloseError, match="not a readable pickle"):
        SMPLBody(bad)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    with open(wrong / "SMPL_NEUTRAL.pkl", "wb") as fh:
        pickle.dump({"v_template": np.zeros((5, 3))}, fh)
    with pytest.raises(CloseError, match="not an SMPL model file"):
        SMPLBody(wrong)
    # a pickle that would run code is refused, not executed
    evil = tmp_path / "evil"
    evil.mkdir()
    with open(evil / "SMPL_NEUTRAL.pkl", "wb") as fh:
        pickle.dump({"x": Path("/tmp")}, fh)
    with pytest.raises(CloseError, match="not plain data"):
        SMPLBody(evil)
    with pytest.raises(CloseError, match="no registration file"):
        load_registration(tmp_path / "none.pkl")
    partial = tmp_path / "partial.npz"
    np.savez(partial, betas=np.zeros(10))
    with pytest.raises(CloseError, match="lacks 'body_pose'"):
        load_registration(partial)
    short = tmp_path / "short.npz"
    np.savez(short, betas=np.zeros(10), body_pose=np.zeros(10), global_orient=np.zeros(3),
             transl=np.zeros(3))
    with pytest.raises(CloseError, match="expected 69"):
        load_registration(short)
    with pytest.raises(CloseError, match="smpl-model-dir"):
        fit_from_registration(np.zeros((300, 3)), partial, None)
