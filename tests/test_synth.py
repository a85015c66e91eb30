"""The synthetic scan generator: consistency, canonical coordinates, visibility, determinism."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("anny")
warnings.filterwarnings("ignore")

from close_blender.labels import CLASS_NAMES, garments_from_labels  # noqa: E402
from close_blender.scan_io import LABELLED_KEYS, check_scan, load_scan  # noqa: E402

N_POINTS = 4000
SEEDS = (3, 4)


@pytest.fixture(scope="module")
def scans():
    from inference.synth import generate_scan

    return {s: generate_scan(s, N_POINTS) for s in SEEDS}


@pytest.fixture(scope="module")
def body():
    from inference.body.anny_body import AnnyBody

    return AnnyBody("default")


def test_arrays_and_labels(scans):
    for scan in scans.values():
        check_scan(scan, LABELLED_KEYS)
        assert scan["points"].shape == (N_POINTS, 3)
        assert scan["labels"].dtype == np.int64
        assert scan["colors"].dtype == np.uint8
        np.testing.assert_array_equal(scan["garments"], garments_from_labels(scan["labels"]))
        p = scan["points"]
        assert np.allclose((p.min(0) + p.max(0)) / 2, 0, atol=1e-5)
        assert abs(float((p.max(0) - p.min(0)).max()) - 1.0) < 1e-5
        assert abs(np.linalg.norm(scan["normals"], axis=1) - 1).max() < 1e-3
        f = scan["faces"]
        assert f.min() >= 0 and f.max() < N_POINTS and len(f) > N_POINTS
        used = np.zeros(N_POINTS, bool)
        used[f.ravel()] = True
        assert used.mean() > 0.97  # a surface, not a point cloud


def _posed_body_in_scan(scan, body):
    """The generating body's vertices in the scan's mesh frame (metres)."""
    from inference.synth.generator import _rotate_y

    v = body.posed_numpy(scan["phenotypes"][None], scan["pose"][None]).astype(np.float64)
    return _rotate_y(v, float(scan["heading"])) + scan["body_offset"]


def test_canon_pose_matches_generating_body(scans, body):
    from scipy.spatial import cKDTree

    from inference.synth import mesh_vertices

    for scan in scans.values():
        verts = _posed_body_in_scan(scan, body)
        mesh = mesh_vertices(scan)
        dist, idx = cKDTree(verts).query(mesh)
        skin = scan["labels"] == CLASS_NAMES.index("Body")
        assert np.median(dist[skin]) < 0.015  # skin points lie on the generating body (vertices ~1-2 cm apart)
        err = np.linalg.norm(scan["canon_pose"] - body.canonical_vertices[idx], axis=1)
        assert np.median(err[skin]) < 0.01 and np.percentile(err[skin], 95) < 0.03
        # garments: canonical coordinate of the body under them (loose cloth: nearest)
        assert np.median(err) < 0.04


def _ray_hits(origins, dirs, tri, chunk=64):
    """(R,) bool: does each ray hit any triangle (Moller-Trumbore, t > 0)."""
    v0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    out = np.zeros(len(origins), bool)
    for s in range(0, len(origins), chunk):
        o, d = origins[s:s + chunk, None], dirs[s:s + chunk, None]
        p = np.cross(d, e2[None])
        det = (e1[None] * p).sum(-1)
        ok = np.abs(det) > 1e-12
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        tv = o - v0[None]
        u = (tv * p).sum(-1) * inv
        q = np.cross(tv, e1[None])
        v = (d * q).sum(-1) * inv
        t = (e2[None] * q).sum(-1) * inv
        hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-5)
        out[s:s + chunk] = hit.any(1)
    return out


def test_no_interior_points(scans):
    """Every kept point is seen (an unobstructed ray) from some camera of the ring."""
    from inference.synth import mesh_vertices
    from inference.synth.scanner import ScannerConfig, camera_directions

    dirs = -camera_directions(ScannerConfig())  # from the surface towards each camera
    rng = np.random.default_rng(0)
    for scan in scans.values():
        mesh = mesh_vertices(scan)
        tri = mesh[scan["faces"]]
        sample = rng.choice(len(mesh), 120, replace=False)
        origins = mesh[sample] + 0.004 * scan["normals"][sample]
        seen = np.zeros(len(sample), bool)
        for d in dirs:
            todo = ~seen
            facing = scan["normals"][sample] @ d > 0.0
            idx = np.flatnonzero(todo & facing)
            if len(idx):
                hit = _ray_hits(origins[idx], np.broadcast_to(d, (len(idx), 3)), tri)
                seen[idx[~hit]] = True
        assert seen.mean() > 0.9, seen.mean()


def test_same_seed_same_bytes(scans, tmp_path):
    from inference.synth import generate_scan, write_scan

    again = generate_scan(SEEDS[0], N_POINTS)
    a = write_scan(tmp_path / "a", "s", scans[SEEDS[0]], "ply")
    b = write_scan(tmp_path / "b", "s", again, "ply")
    for x, y in zip(a, b, strict=True):
        assert x.read_bytes() == y.read_bytes(), x.name
    other = generate_scan(SEEDS[0], N_POINTS, index=1)
    assert not np.array_equal(other["points"], again["points"])


def test_every_generated_class_appears():
    from inference.synth import outfits

    seen = set()
    for seed in range(300):
        seen |= {s.label for s in outfits.sample_outfit(np.random.default_rng(seed))}
    body = CLASS_NAMES.index("Body")
    assert seen | {body} == set(outfits.GENERATED_CLASSES)
    assert len(outfits.GENERATED_CLASSES) >= 13


def test_every_garment_kind_builds_surface(body):
    """Each garment kind gives non-empty geometry off the skin, outside the body."""
    from inference.synth import garments, outfits
    from inference.synth.generator import _posed_body
    from inference.synth.poses import sample_pose

    rng = np.random.default_rng(1)
    _, rot = sample_pose(rng, "relaxed")
    b, _ = _posed_body(np.array([0.5, 0.66, 0.5, 0.5, 0.5, 0.5], np.float32), rot)
    specs = {}
    for seed in range(300):
        for s in outfits.sample_outfit(np.random.default_rng(seed)):
            specs.setdefault(s.kind, s)
    assert set(specs) == set(outfits.KIND_CLASS)
    for kind, spec in specs.items():
        surfs = outfits.build(b, spec, rng, {})
        assert surfs and all(isinstance(s, garments.Surface) for s in surfs)
        n = sum(len(s.vertices) for s in surfs)
        assert n > 50, kind
        assert all(s.label == spec.label for s in surfs)


def test_class_filter():
    from inference.synth import outfits

    allowed = {CLASS_NAMES.index(c) for c in ("Body", "TShirt", "Pants")}
    for seed in range(50):
        for s in outfits.sample_outfit(np.random.default_rng(seed), allowed):
            assert s.label in allowed


def test_landmarks_match_canonical_table(body):
    from inference.body.anny_body import canonical_mapping
    from inference.synth import garments as g

    scale, offset = canonical_mapping()
    heads = body.forward_full(None, body.tpose())["bone_poses"][0, :, :3, 3].numpy()
    heads = heads * scale + offset
    at = lambda name: heads[body.bone_index(name)]  # noqa: E731
    assert abs(at("lowerleg01.L")[1] - g.KNEE_Y) < 0.01
    assert abs(at("foot.L")[1] - g.ANKLE_Y) < 0.01
    assert abs(at("upperleg01.L")[1] - g.HIP_Y) < 0.01
    assert abs(at("lowerarm01.L")[0] - g.ELBOW_X) < 0.01
    assert abs(at("wrist.L")[0] - g.WRIST_X) < 0.01
    assert abs(body.canonical_vertices[:, 1].max() - g.HEAD_TOP_Y) < 0.01


def test_phenotypes_are_adults():
    from inference.synth.generator import sample_phenotypes

    for seed in range(20):
        phen, years = sample_phenotypes(np.random.default_rng(seed))
        assert 18 <= years <= 70
        assert phen.shape == (6,) and (phen >= 0).all() and (phen <= 1).all()


def test_cli_writes_npz_and_matching_mesh(tmp_path):
    from close_blender.cli import main

    out = tmp_path / "scans"
    assert main(["synth", str(out), "--count", "1", "--seed", "7", "--points", "3000",
                 "--mesh-format", "obj", "--classes", "tshirt", "pants", "hair"]) == 0
    scan = load_scan(out / "synth_7_0000.npz", LABELLED_KEYS)
    allowed = {CLASS_NAMES.index(c) for c in ("Body", "TShirt", "Pants", "Hair")}
    assert set(np.unique(scan["labels"]).tolist()) <= allowed
    lines = (out / "synth_7_0000.obj").read_text().splitlines()
    v = np.array([[float(t) for t in ln.split()[1:]] for ln in lines if ln.startswith("v ")])
    assert len(v) == len(scan["points"])
    mesh = scan["points"] * scan["scale"] + scan["centers"]
    np.testing.assert_allclose(v[:, :3], mesh, atol=2e-6)
    np.testing.assert_allclose(v[:, 3:] * 255, scan["colors"], atol=0.6)
    assert v[:, 1].min() > -0.01 and v[:, 1].max() > 1.3  # metres, y up, feet on the floor
    assert main(["synth", str(out), "--classes", "nonsense"]) == 2


def test_cli_start_gives_the_same_scan_as_a_full_run(tmp_path):
    """--start splits a set across processes: scan i is the same whichever run made it."""
    from close_blender.cli import main
    from inference.synth import generate_scan

    assert main(["synth", str(tmp_path), "--start", "1", "--count", "1", "--seed", "7",
                 "--points", "2000", "--mesh-format", "none"]) == 0
    assert [f.name for f in tmp_path.iterdir()] == ["synth_7_0001.npz"]
    scan = load_scan(tmp_path / "synth_7_0001.npz", LABELLED_KEYS)
    ref = generate_scan(7, 2000, index=1)
    np.testing.assert_array_equal(scan["labels"], ref["labels"])
    np.testing.assert_allclose(scan["points"], ref["points"], atol=1e-6)
    assert main(["synth", str(tmp_path), "--start", "-1"]) == 2


def test_ply_roundtrip(scans, tmp_path):
    from inference.synth import mesh_vertices
    from inference.synth.meshwrite import write_mesh

    scan = scans[SEEDS[1]]
    path = tmp_path / "m.ply"
    write_mesh(path, mesh_vertices(scan), scan["faces"], scan["colors"], scan["normals"])
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    n = N_POINTS
    vert = np.frombuffer(body[: n * 27], dtype=[("p", "<f4", 3), ("n", "<f4", 3), ("c", "u1", 3)])
    np.testing.assert_allclose(vert["p"], mesh_vertices(scan), atol=1e-5)
    np.testing.assert_array_equal(vert["c"], scan["colors"])
    assert b"element face %d" % len(scan["faces"]) in head
