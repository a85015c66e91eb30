"""Anny wrapper: frames, posing, skinning data and the canonical table."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("anny")

from close_blender.canonical import SMPL_TEMPLATE_BBOX_MAX, SMPL_TEMPLATE_BBOX_MIN  # noqa: E402
from close_blender.errors import CloseError  # noqa: E402
from inference.body.anny_body import MEAN_PHENOTYPES, PHENOTYPES, AnnyBody  # noqa: E402
from inference.body.model import anny_to_yup, rotvec_to_matrix, yup_to_anny  # noqa: E402


@pytest.fixture(scope="module")
def body() -> AnnyBody:
    return AnnyBody("default")


@pytest.fixture(scope="module")
def reduced() -> AnnyBody:
    return AnnyBody("reduced")


def test_structure(body: AnnyBody, reduced: AnnyBody) -> None:
    assert body.n_vertices == 13718 and reduced.n_vertices == 1229
    for b in (body, reduced):
        assert b.faces.dtype == np.int64 and b.faces.shape[1] == 3
        assert b.faces.max() < b.n_vertices
        assert b.skin_weights.shape == b.skin_indices.shape == (b.n_vertices, 9)
        np.testing.assert_allclose(b.skin_weights.sum(1), 1.0, atol=1e-4)
        assert len(b.bone_labels) == len(b.bone_parents) == b.n_bones
        assert b.bone_parents[0] == -1
        assert b.canonical_vertices.shape == (b.n_vertices, 3)
        assert b.canonical_vertices.dtype == np.float32
        assert not b.canonical_vertices.flags.writeable
    assert PHENOTYPES == tuple(body.model.phenotype_labels)
    np.testing.assert_allclose(body.phenotypes()[0].numpy(), MEAN_PHENOTYPES)


def test_tpose_box_matches_smpl(body: AnnyBody, reduced: AnnyBody) -> None:
    lo, hi = np.array(SMPL_TEMPLATE_BBOX_MIN), np.array(SMPL_TEMPLATE_BBOX_MAX)
    for b in (body, reduced):
        c = b.canonical_vertices
        np.testing.assert_allclose(c.min(0), lo, atol=0.02)
        np.testing.assert_allclose(c.max(0), hi, atol=0.02)
    # the reduced table lies on the default table's surface
    from scipy.spatial import cKDTree

    d, _ = cKDTree(body.canonical_vertices).query(reduced.canonical_vertices)
    assert np.median(d) < 0.01 and d.max() < 0.04


def test_frames_roundtrip() -> None:
    p = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(yup_to_anny(anny_to_yup(p)), p)
    np.testing.assert_allclose(anny_to_yup(np.array([0.0, -1.0, 0.0])), [0, 0, 1])  # faces +z


def test_rest_pose_is_anny_rest(body: AnnyBody) -> None:
    v = body.posed_numpy()
    raw = body.model(None, body.phenotypes())["vertices"][0].detach().numpy()
    np.testing.assert_allclose(v, anny_to_yup(raw), atol=1e-5)
    # y up, facing +z: the head is high, the toes point to +z
    assert v[:, 1].max() > 0.6 and v[:, 1].min() < -0.8
    soles = v[:, 1] < v[:, 1].min() + 0.05
    assert v[soles, 2].max() - v[soles, 2].min() > 0.2  # foot length along z
    assert v[soles, 2].max() > v[:, 2].max() - 0.2  # the toes are at the front


def test_posing_conventions(body: AnnyBody) -> None:
    v0 = body.posed_numpy()
    foot = body.skin_indices[:, 0] == body.bone_index("foot.L")
    knee = body.posed_numpy(None, body.pose_from_rotations({"lowerleg01.L": [1.0, 0, 0]}))
    move = knee[foot].mean(0) - v0[foot].mean(0)
    assert move[2] < -0.3 and move[1] > 0.1  # the foot swings back and up
    turned = body.posed_numpy(None, body.pose_from_rotations({"root": [0, np.pi / 2, 0]}))
    np.testing.assert_allclose(turned[:, 0], v0[:, 2], atol=1e-4)  # +z -> +x
    moved = body.posed_numpy(None, None, transl=[1.0, 2.0, 3.0], scale=2.0)
    np.testing.assert_allclose(moved, 2.0 * v0 + [1.0, 2.0, 3.0], atol=1e-4)
    with pytest.raises(CloseError):
        body.pose_from_rotations({"no-such-bone": [0, 0, 0]})
    with pytest.raises(CloseError):
        body.phenotypes(tallness=1.0)


def test_batch_and_gradients(reduced: AnnyBody) -> None:
    phen = reduced.phenotypes(batch=2)
    phen[1, 4] = 1.0  # taller
    pose = reduced.zero_pose(2).requires_grad_(True)
    v = reduced.forward(phen, pose)
    assert v.shape == (2, reduced.n_vertices, 3)
    h = v[..., 1].amax(1) - v[..., 1].amin(1)
    assert h[1] > h[0]
    v.sum().backward()
    assert pose.grad is not None and torch.isfinite(pose.grad).all()


def test_rotvec_matrix() -> None:
    from scipy.spatial.transform import Rotation

    rv = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    rv[0] = 0.0
    m = rotvec_to_matrix(torch.as_tensor(rv)).numpy()
    np.testing.assert_allclose(m, Rotation.from_rotvec(rv).as_matrix(), atol=1e-5)
