"""Automatic Anny fit: orientation and units, clothing-style offsets, bad input."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("anny")
pytest.importorskip("scipy")

from close_blender.errors import Cancelled, ScanError  # noqa: E402
from inference.body.anny_body import AnnyBody  # noqa: E402
from inference.body.coords import canonical_coordinates, canonical_from_body  # noqa: E402
from inference.body.fit import fit_anny, mesh_normals  # noqa: E402

EFFORT = 0.35  # a quicker, rougher fit keeps the file fast


def yup_to_zup(p: np.ndarray) -> np.ndarray:
    return np.stack([p[:, 0], -p[:, 2], p[:, 1]], 1)


@pytest.fixture(scope="module")
def target() -> dict:
    """A posed, clothed-looking Anny: relaxed arms, a step, 1 cm 'clothing' offset."""
    body = AnnyBody("default")
    phen = body.phenotypes(gender=0.3, weight=0.6, height=0.6)
    pose = body.pose_from_rotations({
        "upperarm01.L": [0, 0, -0.5], "upperarm01.R": [0, 0, 0.5],
        "lowerarm01.L": [0.4, 0, 0], "upperleg01.L": [-0.25, 0, 0],
        "lowerleg01.R": [0.3, 0, 0], "spine03": [0.05, 0.1, 0],
        "root": [0, 2.1, 0]})
    v = body.posed_numpy(phen, pose).astype(np.float64)
    n = mesh_normals(v, body.faces)
    v = v + 0.01 * n  # a tight garment layer
    v = v + np.random.default_rng(0).normal(0, 0.002, v.shape)
    return {"vertices": v, "faces": body.faces, "canon": np.asarray(body.canonical_vertices)}


@pytest.fixture(scope="module")
def zup_mm_fit(target: dict):
    verts = yup_to_zup(target["vertices"]) * 1000.0
    steps: list[float] = []
    fit = fit_anny(verts, target["faces"], effort=EFFORT, progress=lambda f, s: steps.append(f))
    return fit, verts, steps


@pytest.mark.slow
def test_zup_mm_turned_scan(zup_mm_fit, target: dict) -> None:
    fit, verts, steps = zup_mm_fit
    assert fit.ok, fit.message
    assert "mm" in fit.message
    assert fit.params["frame_unit"] == pytest.approx(0.001)
    np.testing.assert_allclose(fit.params["frame_rotation"][1], [0, 0, 1], atol=0.05)  # z up
    assert fit.vertices.shape == (13718, 3) and np.isfinite(fit.vertices).all()
    q = fit.quality
    assert q["residual_mean_m"] < 0.03 and q["outside_fraction"] < 0.15
    assert 0 < q["seconds"] and q["iterations"] > 0
    # canonical coordinates of the scan vertices against their ground truth
    canon = canonical_coordinates(verts, fit)
    err = np.linalg.norm(canon - target["canon"], axis=1)
    assert np.median(err) < 0.04, np.median(err)
    assert steps[0] == 0.0 and steps[-1] == 1.0 and steps == sorted(steps)


@pytest.mark.slow
def test_point_cloud_partial_scan(target: dict) -> None:
    v = target["vertices"]
    rng = np.random.default_rng(1)
    keep = v[:, 2] > np.percentile(v[:, 2], 30)  # the back third is missing
    pts = v[keep][rng.choice(int(keep.sum()), 4000, replace=False)]
    fit = fit_anny(pts, None, effort=EFFORT)
    assert np.isfinite(fit.vertices).all()
    assert set(fit.quality) >= {"residual_mean_m", "residual_p95_m", "outside_fraction",
                                "inside_fraction", "iterations", "seconds"}
    assert fit.quality["residual_mean_m"] < 0.05, fit.message


@pytest.mark.slow
def test_cube_is_flagged() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(-0.5, 0.5, (3000, 3))
    axis = rng.integers(0, 3, 3000)
    p[np.arange(3000), axis] = np.sign(p[np.arange(3000), axis]) * 0.5  # on the faces
    fit = fit_anny(p, None, effort=0.2)
    assert not fit.ok
    assert "FAILED" in fit.message


@pytest.mark.slow
@pytest.mark.parametrize("factor", [1e-4, 1e5])
def test_tiny_or_huge_scale_is_rescaled(target: dict, factor: float) -> None:
    pts = target["vertices"][::4] * factor
    fit = fit_anny(pts, None, effort=0.2)
    assert "rescaled" in fit.message
    assert np.isfinite(fit.vertices).all()
    # the body comes back in the scan's own units
    ratio = np.ptp(fit.vertices[:, 1]) / np.ptp(pts[:, 1])
    assert 0.7 < ratio < 1.4


def test_bad_input_messages() -> None:
    good = np.random.default_rng(3).normal(size=(500, 3))
    bad = good.copy()
    bad[7] = np.nan
    with pytest.raises(ScanError, match="NaN"):
        fit_anny(bad)
    with pytest.raises(ScanError, match="at least"):
        fit_anny(good[:20])
    with pytest.raises(ScanError, match=r"\(N, 3\)"):
        fit_anny(good[:, :2])
    with pytest.raises(ScanError, match="no extent"):
        fit_anny(np.ones((500, 3)))
    with pytest.raises(ScanError, match="up axis"):
        fit_anny(good, up="w")
    with pytest.raises(ScanError, match="faces"):
        fit_anny(good, np.array([[0, 1, 999]]))


def test_cancel(target: dict) -> None:
    with pytest.raises(Cancelled):
        fit_anny(target["vertices"][::8], None, cancelled=lambda: True)


def test_canonical_lookup_methods() -> None:
    body = AnnyBody("reduced")
    v = body.posed_numpy()
    canon = np.asarray(body.canonical_vertices)
    for method in ("vertex", "barycentric"):
        c = canonical_from_body(v[::7], v, body.faces, canon, method)
        np.testing.assert_allclose(c, canon[::7], atol=1e-5)
    # a point just off a face centre interpolates the face's three table entries
    f = body.faces[100]
    centre = v[f].mean(0)
    normal = np.cross(v[f[1]] - v[f[0]], v[f[2]] - v[f[0]])
    p = centre + 1e-4 * normal / np.linalg.norm(normal)
    c = canonical_from_body(p[None], v, body.faces, canon, "barycentric")[0]
    np.testing.assert_allclose(c, canon[f].mean(0), atol=2e-3)
    with pytest.raises(ScanError):
        canonical_from_body(np.full((2, 3), np.nan), v, body.faces, canon)


def test_verdict_flags_a_large_p95_residual() -> None:
    from inference.body.fit import P95_FAIL, verdict

    good = {"unexplained_fraction": 0.05, "residual_median_m": 0.01, "residual_mean_m": 0.03,
            "residual_p95_m": 0.14, "scan_inside_body_fraction": 0.01, "coverage": 0.9,
            "outside_fraction": 0.01}
    ok, msg = verdict(good)
    assert ok, msg
    ok, msg = verdict({**good, "residual_p95_m": P95_FAIL + 0.03})
    assert not ok and "FAILED" in msg and "misplaced" in msg


def test_self_penetration_of_a_hand_in_the_thigh() -> None:
    """The rest pose costs nothing; a forearm swung into the thigh does."""
    from inference.body.fit import _arm_direction, _arm_rotations, _Fitter, _vertex_normals_t

    body = AnnyBody("reduced")
    rest = body.posed_numpy()
    ft = _Fitter(body, rest, None, None, None, None, np.random.default_rng(0))
    # upper arm hanging, forearm pointing down and across the body: the hand is in the hip
    inside = body.pose_from_rotations(_arm_rotations(body, "L", _arm_direction(1.0, -85, 0),
                                                     _arm_direction(-1.0, -45, 0)))
    verts = torch.as_tensor(np.stack([rest, body.posed_numpy(None, inside)]),
                            dtype=torch.float32)
    normals = _vertex_normals_t(verts, torch.as_tensor(body.faces, dtype=torch.long))
    pen = ft.self_penetration(verts, normals).tolist()  # one value per batch row
    assert pen[0] == 0.0
    assert pen[1] > 3e-4, pen


def test_arm_starts_hang_and_bend() -> None:
    """The hanging start's hands are beside the thighs, well below the rest pose's; hands on
    the hips come in beside the waist; raised hands are above the head."""
    from inference.body.fit import _arm_variants

    body = AnnyBody("reduced")
    cv = np.asarray(body.canonical_vertices)
    hand = np.abs(cv[:, 0]) > 0.7
    variants = _arm_variants(body)
    assert len(variants) == 7
    rest = body.posed_numpy()
    hanging = body.posed_numpy(None, body.pose_from_rotations(variants["hanging"]))
    assert hanging[hand, 1].mean() < rest[hand, 1].mean() - 0.1
    assert np.abs(hanging[hand, 0]).min() > 0.1  # beside the body, not in front of it
    # hands on the hips: elbows out, hands back in beside the waist
    akimbo = body.posed_numpy(None, body.pose_from_rotations(variants["akimbo"]))
    elbow = (np.abs(cv[:, 0]) > 0.3) & (np.abs(cv[:, 0]) < 0.36)
    assert np.abs(akimbo[hand, 0]).mean() < np.abs(akimbo[elbow, 0]).mean() - 0.05
    assert np.abs(akimbo[hand, 1].mean() - rest[hand, 1].mean()) < 0.25
    # arms raised: the hands above the head
    raised = body.posed_numpy(None, body.pose_from_rotations(variants["raised"]))
    assert raised[hand, 1].min() > rest[:, 1].max()


def test_limb_restart_moves_a_misplaced_arm() -> None:
    """A fitted body whose left arm settled far from the scan's gets it back from the
    arm restarts, the rest of the body kept; a body already right is returned as is."""
    from inference.body.fit import _arm_variants, _Fitter, _new_state, _reseed_limbs

    body = AnnyBody("reduced")
    true_pose = body.pose_from_rotations({**_arm_variants(body)["hanging"],
                                          "upperleg01.R": [-0.3, 0, 0]})
    scan = body.posed_numpy(None, true_pose).astype(np.float64)
    ft = _Fitter(body, scan, mesh_normals(scan, body.faces), None, None, None,
                 np.random.default_rng(0))
    hand = (np.asarray(body.canonical_vertices)[:, 0] > 0.7)
    state = _new_state(body, 1, np.zeros(3))
    wrong = true_pose.clone()
    wrong[0, body.bone_index("upperarm01.L")] = torch.tensor([0.0, 0.0, 0.9])  # arm raised
    wrong[0, body.bone_index("lowerarm01.L")] = 0.0
    state["pose"] = wrong
    score = float(ft.score(state)[0])
    new, new_score = _reseed_limbs(ft, state, score, 40, 30)
    assert new_score < 0.8 * score
    with torch.no_grad():
        moved = ft.posed(new)[0].numpy()
    assert np.linalg.norm(moved[hand].mean(0) - scan[hand].mean(0)) < 0.05
    # the right body: no restart beats it by enough, nothing changes
    right = _new_state(body, 1, np.zeros(3))
    right["pose"] = true_pose.clone()
    right_score = float(ft.score(right)[0])
    same, same_score = _reseed_limbs(ft, right, right_score, 20, 10)
    assert same_score <= right_score
    assert torch.allclose(same["pose"], true_pose, atol=0.05)


def test_normal_aware_lookup_takes_the_side_the_point_faces() -> None:
    """Between two close surfaces facing apart, the point's normal picks its surface."""
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0.02], [1, 0, 0.02], [0, 1, 0.02]],
                 dtype=np.float64)
    faces = np.array([[0, 2, 1], [3, 4, 5]])  # bottom faces -z, top faces +z
    canon = np.repeat([[0.0] * 3, [1.0] * 3], 3, axis=0)
    p = np.array([[0.2, 0.2, 0.008]] * 2)  # nearer the bottom
    n = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # facing up; unknown
    raw = canonical_from_body(p, v, faces, canon)
    aware = canonical_from_body(p, v, faces, canon, normals=n)
    np.testing.assert_allclose(raw, 0.0, atol=1e-6)
    np.testing.assert_allclose(aware[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(aware[1], 0.0, atol=1e-6)


def test_smoothed_lookup_normals_are_closer_to_the_surface() -> None:
    """Neighbour averaging takes noise out of a mesh's normals; unknown stays unknown."""
    from inference.body.coords import smooth_normals

    body = AnnyBody("reduced")
    v = body.posed_numpy().astype(np.float64)
    clean = mesh_normals(v, body.faces)
    noisy = clean + np.random.default_rng(0).normal(0, 0.3, clean.shape)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    smooth = smooth_normals(noisy, body.faces, 2)
    np.testing.assert_allclose(np.linalg.norm(smooth, axis=1), 1.0, atol=1e-9)
    assert (smooth * clean).sum(1).mean() > (noisy * clean).sum(1).mean() + 0.02
    np.testing.assert_array_equal(smooth_normals(noisy, body.faces, 0), noisy)
    lone = np.zeros((4, 3))
    assert not smooth_normals(lone, np.array([[0, 1, 2]]), 2).any()


def test_select_keeps_adam_moments_of_the_rows() -> None:
    """A coarse run stopped at the check continues on the kept rows with their moments."""
    from inference.body.fit import _Fitter, _new_state, _select

    body = AnnyBody("reduced")
    rest = body.posed_numpy().astype(np.float64)
    ft = _Fitter(body, rest, mesh_normals(rest, body.faces), None, None, None,
                 np.random.default_rng(0))
    state = _new_state(body, 3, np.zeros(3))
    with torch.no_grad():
        state["transl"][1] += 0.05
    ft.run(state, ("upperarm01.L",), 4, 300, 0.02, (0, 1), "t", span=(0, 2))
    assert set(state["adam"]) == {"glob", "transl", "logscale", "pose", "phen"}
    kept = _select(state, [2, 1])
    np.testing.assert_array_equal(kept["adam"]["transl"]["exp_avg"].numpy(),
                                  state["adam"]["transl"]["exp_avg"][[2, 1]].numpy())
    np.testing.assert_array_equal(kept["transl"].detach().numpy(),
                                  state["transl"].detach()[[2, 1]].numpy())
    ft.run(kept, ("upperarm01.L",), 4, 300, 0.02, (0, 1), "t", span=(2, 4))
    assert "adam" not in kept and ft.iterations == 4
    assert kept["transl"].shape == (2, 3)


def test_hand_disagreement_of_tied_final_candidates() -> None:
    """Tied candidates with the hands 10 cm apart disagree by 10 cm; a clear loser counts not."""
    from inference.body.fit import _hand_disagreement

    eye = np.eye(3)
    starts = [(eye, 1.0, ""), (eye[[2, 0, 1]], 1.0, "")]
    hands = np.array([[0.3, 1.0, 0.0], [-0.3, 1.0, 0.0]])
    moved = hands + [[0.0, 0.0, 0.0], [0.0, -0.1, 0.0]]
    finals = [(0.10, 0, None, hands), (0.102, 0, None, moved)]
    assert _hand_disagreement(finals, starts, np.zeros(3)) == pytest.approx(0.1)
    assert _hand_disagreement([finals[0], (0.2, 0, None, moved)], starts, np.zeros(3)) == 0.0
    # the same hands seen from another start's frame agree
    other = hands @ eye[[2, 0, 1]].T
    assert _hand_disagreement([finals[0], (0.1, 1, None, other)], starts,
                              np.zeros(3)) == pytest.approx(0.0, abs=1e-12)


def test_verdict_notes_tied_fits_that_disagree_about_the_hands() -> None:
    from inference.body.fit import HAND_NOTE, verdict

    good = {"unexplained_fraction": 0.05, "residual_median_m": 0.01, "residual_mean_m": 0.03,
            "residual_p95_m": 0.12, "scan_inside_body_fraction": 0.01, "coverage": 0.9,
            "outside_fraction": 0.01, "hand_disagreement_m": HAND_NOTE - 0.05}
    ok, msg = verdict(good)
    assert ok and "hand" not in msg
    ok, msg = verdict({**good, "hand_disagreement_m": HAND_NOTE + 0.1})
    assert ok and "hand" in msg and "uncertain" in msg


@pytest.mark.slow
def test_colours_mark_skin_for_the_fit(target: dict) -> None:
    """A face-coloured head and hands become the fit's skin points; a grey scan gets none."""
    canon = target["canon"]
    skin = (canon[:, 1] > 0.30) | (np.abs(canon[:, 0]) > 0.68)
    colors = np.where(skin[:, None], [224, 172, 138], [60, 90, 150]).astype(np.uint8)
    fit = fit_anny(target["vertices"], target["faces"], effort=0.2, colors=colors)
    assert fit.skin is not None and fit.skin.shape == (len(canon),)
    assert (fit.skin == skin).mean() > 0.95
    assert fit.quality["skin_fraction"] == pytest.approx(fit.skin.mean())
    grey = fit_anny(target["vertices"], target["faces"], effort=0.2,
                    colors=np.full((len(canon), 3), 160, np.uint8))
    assert grey.skin is None and "no skin cue" in grey.message
    with pytest.raises(ScanError, match="colours"):
        fit_anny(target["vertices"], target["faces"], colors=colors[:10])
