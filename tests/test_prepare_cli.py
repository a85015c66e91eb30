"""`close-blender prepare`: meshes of several formats -> CloSe-D scans, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
trimesh = pytest.importorskip("trimesh")
pytest.importorskip("anny")

from close_blender.cli import main  # noqa: E402
from close_blender.scan_io import PREDICT_KEYS, load_scan  # noqa: E402
from inference.body.anny_body import AnnyBody  # noqa: E402
from inference.meshio import read_mesh  # noqa: E402

FAST = ["--effort", "0.3"]


@pytest.fixture(scope="module")
def person() -> tuple[np.ndarray, np.ndarray]:
    """A posed Anny body in metres, y-up (vertices, faces)."""
    body = AnnyBody("default")
    pose = body.pose_from_rotations({"upperarm01.L": [0, 0, -0.6], "upperarm01.R": [0, 0, 0.6],
                                     "root": [0, 0.7, 0]})
    return body.posed_numpy(None, pose).astype(np.float64), body.faces


def write_obj_zup_cm(path: Path, v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """A z-up OBJ in centimetres with vertex colours; returns the colours."""
    vz = np.stack([v[:, 0], -v[:, 2], v[:, 1]], 1) * 100.0
    colors = np.random.default_rng(0).integers(0, 256, (len(v), 3)).astype(np.uint8)
    mesh = trimesh.Trimesh(vz, f, vertex_colors=colors, process=False)
    path.write_text(trimesh.exchange.obj.export_obj(mesh, include_color=True))
    return colors


@pytest.fixture(scope="module")
def prepared_obj(tmp_path_factory: pytest.TempPathFactory, person) -> dict:
    d = tmp_path_factory.mktemp("prep")
    mesh = d / "person.obj"
    colors = write_obj_zup_cm(mesh, *person)
    out, body = d / "person.npz", d / "body.ply"
    rc = main(["prepare", str(mesh), "--out", str(out), "--body-mesh", str(body),
               "--garments", "Body,TShirt"] + FAST)
    return {"rc": rc, "mesh": mesh, "out": out, "body": body, "colors": colors}


@pytest.mark.slow
def test_obj_zup_cm(prepared_obj: dict, person) -> None:
    assert prepared_obj["rc"] == 0
    scan = load_scan(prepared_obj["out"], require=PREDICT_KEYS + ("faces",))
    n = len(person[0])
    assert scan["points"].shape == (n, 3)
    np.testing.assert_array_equal(scan["colors"], prepared_obj["colors"])  # vertex order kept
    assert scan["garments"].tolist()[:4] == [0, 1, 0, 1]
    # points are y-up, normalized like the reference
    p = scan["points"]
    assert np.ptp(p, axis=0).max() == pytest.approx(1.0, abs=1e-5)
    assert np.argmax(np.ptp(p, axis=0)) == 1
    # the stored transform recovers the file's vertices
    original = read_mesh(prepared_obj["mesh"]).vertices
    back = ((p * scan["scale"] + scan["centers"]) / scan["unit_m"]) @ scan["up_rotation"]
    np.testing.assert_allclose(back, original, atol=1e-3)  # cm, float32 points
    assert float(scan["scale"]) == pytest.approx(np.ptp(person[0], axis=0).max(), rel=1e-4)
    # unit normals, a plausible canonical body, a passing fit
    np.testing.assert_allclose(np.linalg.norm(scan["normals"], axis=1), 1.0, atol=1e-4)
    assert np.abs(scan["canon_pose"]).max() < 1.3
    assert bool(scan["body_ok"]) and str(scan["body_model"]) == "anny"
    assert scan["body_phenotypes"].shape == (6,) and scan["body_pose"].shape == (104, 3)
    body = trimesh.load(prepared_obj["body"], process=False)
    assert len(body.vertices) == 13718


@pytest.mark.slow
def test_point_cloud_ply_without_colours(tmp_path: Path, person, capsys) -> None:
    v = person[0][::3]
    path = tmp_path / "cloud.ply"
    path.write_bytes(trimesh.PointCloud(v).export(file_type="ply"))
    out = tmp_path / "cloud.npz"
    assert main(["prepare", str(path), "--out", str(out), "--up", "y"] + FAST) == 0
    assert "grey" in capsys.readouterr().err
    scan = load_scan(out)
    assert "faces" not in scan
    assert (scan["colors"] == 160).all()
    np.testing.assert_allclose(np.linalg.norm(scan["normals"], axis=1), 1.0, atol=1e-4)
    assert scan["garments"].all()  # unknown garments: every class allowed


def test_texture_is_sampled_per_vertex(tmp_path: Path) -> None:
    from PIL import Image

    img = Image.new("RGB", (64, 64), (255, 0, 0))
    img.paste((0, 0, 255), (32, 0, 64, 64))  # right half blue
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], float)
    f = np.array([[0, 1, 2], [1, 3, 2]])
    uv = np.array([[0.1, 0.5], [0.9, 0.5], [0.1, 0.6], [0.9, 0.6]])
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=img,
                                                   baseColorFactor=[255, 255, 255, 255])
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    mesh = trimesh.Trimesh(v, f, visual=visual, process=False)
    path = tmp_path / "tex.glb"
    path.write_bytes(mesh.export(file_type="glb"))
    data = read_mesh(path)
    assert not data.warnings
    assert data.colors[0].tolist() == [255, 0, 0] and data.colors[1].tolist() == [0, 0, 255]


def test_bad_input_exits_2(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "x.npz")
    assert main(["prepare", str(tmp_path / "missing.obj"), "--out", out]) == 2
    assert "no mesh file" in capsys.readouterr().err
    junk = tmp_path / "junk.obj"
    junk.write_text("this is not a mesh\n")
    assert main(["prepare", str(junk), "--out", out]) == 2
    nan = tmp_path / "nan.obj"
    rng = np.random.default_rng(0)
    lines = [f"v {a} {b} {c}" for a, b, c in rng.normal(size=(300, 3))] + ["v nan 0 0"]
    nan.write_text("\n".join(lines) + "\n")
    assert main(["prepare", str(nan), "--out", out]) == 2
    assert "NaN" in capsys.readouterr().err
    cloud = tmp_path / "c.ply"
    cloud.write_bytes(trimesh.PointCloud(rng.normal(size=(300, 3))).export(file_type="ply"))
    assert main(["prepare", str(cloud), "--out", out, "--garments", "Cape"]) == 2
    assert main(["prepare", str(cloud), "--out", out, "--body", "smpl"]) == 2
    assert "--registration" in capsys.readouterr().err
    assert not Path(out).exists()


@pytest.mark.slow
def test_smpl_registration(tmp_path: Path) -> None:
    from test_smpl_body import make_registration, make_standin_smpl

    from inference.body.smpl_body import SMPLBody, load_registration

    model_dir = tmp_path / "models"
    make_standin_smpl(model_dir)
    reg_path = make_registration(tmp_path / "reg.npz")
    reg = load_registration(reg_path)
    body = SMPLBody(model_dir)
    pose = np.concatenate([reg["global_orient"], reg["body_pose"]])
    v = body.posed_numpy(reg["betas"][None], pose[None], reg["transl"][None], 1.0)
    mesh = tmp_path / "scan.ply"
    mesh.write_bytes(trimesh.PointCloud(v).export(file_type="ply"))
    out = tmp_path / "scan.npz"
    rc = main(["prepare", str(mesh), "--out", str(out), "--body", "smpl",
               "--smpl-model-dir", str(model_dir), "--registration", str(reg_path)])
    assert rc == 0
    scan = load_scan(out)
    np.testing.assert_allclose(scan["canon_pose"], body.canonical_vertices, atol=1e-6)
    assert str(scan["body_model"]) == "smpl"
    assert main(["prepare", str(mesh), "--out", str(out), "--body", "smpl",
                 "--smpl-model-dir", str(tmp_path / "nope"),
                 "--registration", str(reg_path)]) == 2


@pytest.mark.slow
def test_cube_exits_3_but_writes(tmp_path: Path, capsys) -> None:
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0)).subdivide().subdivide().subdivide()
    path = tmp_path / "cube.obj"
    path.write_text(trimesh.exchange.obj.export_obj(cube))
    out = tmp_path / "cube.npz"
    assert main(["prepare", str(path), "--out", str(out), "--effort", "0.2"]) == 3
    assert "FAILED" in capsys.readouterr().out
    assert not bool(load_scan(out)["body_ok"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["synthetic_cesiumman/CesiumMan.glb",
                                  "pifu_ryota/result_ryota.obj"])
def test_real_inputs(shared: Path, tmp_path: Path, name: str) -> None:
    path = shared / "real_inputs" / name
    out = tmp_path / "real.npz"
    assert main(["prepare", str(path), "--out", str(out)] + FAST) == 0
    scan = load_scan(out)
    assert len(scan["points"]) == len(read_mesh(path).vertices)
    assert scan["colors"].std() > 5  # real colours, not the grey fallback
