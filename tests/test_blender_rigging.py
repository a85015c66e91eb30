"""close.bind_to_body inside real Blender (worker job ``body_rig``): the armature sits
in the scan, posing a bone moves the clothing it should and nothing else, separated
garments bind to their scan's body, and a bad fit file changes nothing.

The body is the synthetic scan's generating body, saved as a fit file (the same
``body_*`` keys Export CloSe-D writes), so the tests need no body fit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = [pytest.mark.blender, pytest.mark.slow]

ARM_ROOT = "upperarm01.L"


@pytest.fixture(scope="module")
def synth_rig(tmp_path_factory):
    """(PLY path, scan arrays, fit npz path) of a small synthetic scan."""
    from inference.synth.generator import generate_scan, write_scan

    scan = generate_scan(3, n_points=3000)
    out = tmp_path_factory.mktemp("synth_rig")
    write_scan(out, "scan", scan, mesh_format="ply")
    c, s = math.cos(float(scan["heading"])), math.sin(float(scan["heading"]))
    turn = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    # the generator's mesh is turn @ body + body_offset; the fit frame is the body frame
    fit = out / "fit.npz"
    np.savez(fit, body_model=np.array("anny"), body_phenotypes=scan["phenotypes"],
             body_pose=scan["pose"], body_global_orient=scan["pose"][0],
             body_transl=np.zeros(3, np.float32), body_scale=np.float32(1.0),
             body_frame_rotation=turn.T, body_frame_centre=scan["body_offset"],
             body_frame_unit=np.float64(1.0))
    return out / "scan.ply", scan, fit


def _import(path, labels=None, blender_ext=None):
    import bpy

    bpy.ops.wm.ply_import(filepath=str(path), forward_axis="NEGATIVE_Z", up_axis="Y")
    obj = bpy.context.selected_objects[0]
    bpy.context.view_layer.objects.active = obj
    if labels is not None:
        blender_ext.operators.mesh_labels.write_labels(obj, labels)
    return obj


def _world(obj, evaluated: bool) -> np.ndarray:
    import bpy

    if evaluated:
        bpy.context.view_layer.update()
        eo = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        mesh = eo.to_mesh()
    else:
        mesh = obj.data
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    if evaluated:
        eo.to_mesh_clear()
    m = np.array(obj.matrix_world)
    return co.reshape(-1, 3).astype(np.float64) @ m[:3, :3].T + m[:3, 3]


def _subtree(arm, root: str) -> set[str]:
    bone = arm.data.bones[root]
    return {root, *(b.name for b in bone.children_recursive)}


def _arm_weight(obj, names: set[str]) -> np.ndarray:
    """Per vertex: total weight in the named groups, and total weight overall."""
    idx = {g.index for g in obj.vertex_groups if g.name in names}
    bones = {g.index for g in obj.vertex_groups if not g.name.startswith("CloSe_")}
    inside = np.zeros(len(obj.data.vertices))
    total = np.zeros(len(obj.data.vertices))
    for v in obj.data.vertices:
        for ge in v.groups:
            if ge.group in bones:
                total[v.index] += ge.weight
                if ge.group in idx:
                    inside[v.index] += ge.weight
    return inside, total


def _pose_arm_and_check(arm, obj) -> None:
    """Rotate the left upper arm: the arm moves (rigidly about the shoulder for
    vertices bound only to the arm), vertices with no arm weight stay put."""
    rest = _world(obj, evaluated=True)
    assert np.allclose(rest, _world(obj, evaluated=False), atol=1e-5)  # rest pose: no change
    subtree = _subtree(arm, ARM_ROOT)
    inside, total = _arm_weight(obj, subtree)
    assert (total > 0.99).all()
    pb = arm.pose.bones[ARM_ROOT]
    pb.rotation_mode = "XYZ"
    pb.rotation_euler = (0.8, 0.0, 0.0)
    try:
        posed = _world(obj, evaluated=True)
    finally:
        pb.rotation_euler = (0.0, 0.0, 0.0)
    moved = np.linalg.norm(posed - rest, axis=1)
    shoulder = np.array(arm.matrix_world @ arm.data.bones[ARM_ROOT].head_local)
    far = np.linalg.norm(rest - shoulder, axis=1)
    pure = (inside > 0.999) & (far > 0.15)
    assert pure.sum() > 10, "no vertex is bound to the left arm alone"
    assert moved[pure].min() > 0.05
    # a rotation about the shoulder keeps distances to it
    assert np.allclose(np.linalg.norm(posed[pure] - shoulder, axis=1), far[pure], atol=2e-3)
    untouched = inside == 0
    assert untouched.sum() > 0.5 * len(rest)
    assert moved[untouched].max() < 1e-5


def test_bind_scan_and_pose(clean_scene, blender_ext, synth_rig) -> None:
    import bpy

    path, scan, fit = synth_rig
    assert "UNDO" in bpy.types.CLOSE_OT_bind_to_body.bl_options
    obj = _import(path)
    obj.vertex_groups.new(name="artist").add([0], 1.0, "REPLACE")
    before = _world(obj, evaluated=False)
    assert bpy.ops.close.bind_to_body(fit_file=str(fit)) == {"FINISHED"}

    arm = bpy.data.objects[f"{obj.name}_rig"]
    assert arm.type == "ARMATURE" and len(arm.data.bones) > 100
    assert arm.name in bpy.data.collections["CloSe Bodies"].objects
    mods = [m for m in obj.modifiers if m.type == "ARMATURE"]
    assert len(mods) == 1 and mods[0].object == arm
    assert np.array_equal(before, _world(obj, evaluated=False))  # mesh data untouched
    assert "artist" in obj.vertex_groups
    # the skeleton sits in the scan: the left shoulder and the head bones lie near it
    for bone in (ARM_ROOT, "head", "foot.R"):
        head = np.array(arm.data.bones[bone].head_local)
        assert np.linalg.norm(before - head, axis=1).min() < 0.15, bone
    _pose_arm_and_check(arm, obj)

    # binding again replaces the rig and the weights, it does not add more
    n_groups = len(obj.vertex_groups)
    assert bpy.ops.close.bind_to_body(fit_file=str(fit)) == {"FINISHED"}
    assert len([o for o in bpy.data.objects if o.type == "ARMATURE"]) == 1
    assert len(obj.vertex_groups) == n_groups
    assert len([m for m in obj.modifiers if m.type == "ARMATURE"]) == 1


def test_rebind_with_bodies_collection_excluded(clean_scene, blender_ext, synth_rig) -> None:
    """"CloSe Bodies" excluded from the view layer (or a new scene without it): Blender
    raised after the old armature was already replaced. Now the collection is shown first."""
    import bpy

    path, _, fit = synth_rig
    obj = _import(path)
    assert bpy.ops.close.bind_to_body(fit_file=str(fit)) == {"FINISHED"}
    bodies = bpy.data.collections["CloSe Bodies"]
    layer = bpy.context.view_layer.layer_collection.children[bodies.name]
    layer.exclude = True
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    orphans = sum(1 for a in bpy.data.armatures if a.users == 0)
    assert bpy.ops.close.bind_to_body(fit_file=str(fit)) == {"FINISHED"}
    assert not bpy.context.view_layer.layer_collection.children[bodies.name].exclude
    rigs = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    assert [r.name for r in rigs] == [f"{obj.name}_rig"]
    assert rigs[0].name in bpy.context.view_layer.objects
    assert sum(1 for a in bpy.data.armatures if a.users == 0) == orphans  # old data removed
    assert [m.object for m in obj.modifiers if m.type == "ARMATURE"] == rigs
    assert bpy.context.view_layer.objects.active == obj
    # The collection unlinked from the scene: linked back in.
    bpy.context.scene.collection.children.unlink(bodies)
    assert bpy.ops.close.bind_to_body(fit_file=str(fit)) == {"FINISHED"}
    assert bodies.name in bpy.context.scene.collection.children
    assert sum(1 for a in bpy.data.armatures if a.users == 0) == orphans


def test_bind_separated_garments(clean_scene, blender_ext, synth_rig) -> None:
    import bpy

    path, scan, fit = synth_rig
    obj = _import(path, scan["labels"], blender_ext)
    assert bpy.ops.close.separate_garments() == {"FINISHED"}
    pieces = list(bpy.data.collections[f"{obj.name} Garments"].objects)
    for p in pieces:
        p.select_set(True)
    assert bpy.ops.close.bind_to_body(fit_file=str(fit)) == {"FINISHED"}
    arm = bpy.data.objects[f"{obj.name}_rig"]
    assert not [m for m in obj.modifiers if m.type == "ARMATURE"]  # the hidden scan stays
    for p in pieces:
        assert [m.object for m in p.modifiers if m.type == "ARMATURE"] == [arm]
    body = bpy.data.objects[f"{obj.name}_Body"]
    _pose_arm_and_check(arm, body)
    # feet (shoes) do not follow the arm
    shoes = bpy.data.objects.get(f"{obj.name}_Shoes")
    if shoes is not None:
        rest = _world(shoes, evaluated=True)
        arm.pose.bones[ARM_ROOT].rotation_mode = "XYZ"
        arm.pose.bones[ARM_ROOT].rotation_euler = (0.8, 0.0, 0.0)
        assert np.allclose(_world(shoes, evaluated=True), rest, atol=1e-5)
        arm.pose.bones[ARM_ROOT].rotation_euler = (0.0, 0.0, 0.0)


def test_bad_fit_file_changes_nothing(clean_scene, blender_ext, synth_rig, tmp_path) -> None:
    import bpy

    path, _, _ = synth_rig
    obj = _import(path)
    bad = tmp_path / "no_fit.npz"
    np.savez(bad, points=np.zeros((3, 3), np.float32))
    n_objects = len(bpy.data.objects)
    with pytest.raises(RuntimeError, match="no complete body fit"):
        bpy.ops.close.bind_to_body(fit_file=str(bad))
    assert len(bpy.data.objects) == n_objects
    assert not obj.modifiers and not obj.vertex_groups


def test_weights_at_body_vertices_are_the_skin_weights() -> None:
    """A point on a body vertex gets exactly that vertex's skinning weights."""
    from inference.body.anny_body import AnnyBody
    from inference.rig_jobs import transfer_weights

    body = AnnyBody("default")
    verts = body.posed_numpy().astype(np.float64)
    pick = np.random.default_rng(0).choice(len(verts), 300, replace=False)
    bones, weights = transfer_weights(verts[pick], verts, body.faces, body.skin_indices,
                                      body.skin_weights, body.n_bones, k=9)
    assert np.allclose(weights.sum(1), 1.0, atol=1e-5)
    for row, v in enumerate(pick):
        want: dict[int, float] = {}
        for b, w in zip(body.skin_indices[v], body.skin_weights[v], strict=True):
            if w > 0:
                want[int(b)] = want.get(int(b), 0.0) + float(w)
        total = sum(want.values())
        got = {int(b): float(w) for b, w in zip(bones[row], weights[row], strict=True) if w > 0}
        assert got.keys() == want.keys()
        for b, w in want.items():
            assert abs(got[b] - w / total) < 1e-4


def test_bind_with_a_real_fit(clean_scene, blender_ext, synth_rig) -> None:
    """Without a fit file the worker fits the body (the path Segment uses)."""
    import bpy

    pytest.importorskip("inference.body.prepare")
    path, _, _ = synth_rig
    obj = _import(path)
    assert bpy.ops.close.bind_to_body(body="ANNY") == {"FINISHED"}
    arm = bpy.data.objects[f"{obj.name}_rig"]
    assert obj.close_blender.body_fit
    _pose_arm_and_check(arm, obj)


def test_smpl_registration_rig(tmp_path) -> None:
    """SMPL (a stand-in model file with SMPL's structure): 24 named joints as bones,
    each pointing at its child, in the registration's frame."""
    standin = pytest.importorskip("test_smpl_body")  # the SMPL tests' stand-in model maker
    SMPL_PARENTS = standin.SMPL_PARENTS  # noqa: N806
    from inference.body.smpl_body import SMPLBody, load_registration
    from inference.jobs import JOBS, JobContext
    from inference.rig_jobs import SMPL_JOINTS

    standin.make_standin_smpl(tmp_path / "smpl")
    reg_path = standin.make_registration(tmp_path / "reg.npz", scale=1.2)
    reg = load_registration(reg_path)
    body = SMPLBody(tmp_path / "smpl")
    pose = np.concatenate([reg["global_orient"], reg["body_pose"]])
    verts = body.posed_numpy(reg["betas"][None], pose[None], reg["transl"][None], reg["scale"])
    params = {"body": "smpl", "smpl_model_dir": str(tmp_path / "smpl"),
              "registration": str(reg_path)}
    arrays = {"vertices": verts, "colors": np.full_like(verts, 0.5),
              "query_points": verts}
    fields, out = JOBS["body_rig"](params, arrays, JobContext())
    assert fields["body"] == "smpl" and fields["bones"] == list(SMPL_JOINTS)
    assert out["bone_parents"].tolist() == SMPL_PARENTS
    m = out["bone_matrices"].astype(np.float64)
    assert np.allclose(np.einsum("jik,jil->jkl", m[:, :3, :3], m[:, :3, :3]), np.eye(3),
                       atol=1e-5)
    assert np.allclose(np.linalg.det(m[:, :3, :3]), 1.0, atol=1e-5)
    assert np.allclose(out["body_vertices"], verts, atol=1e-5)
    heads = m[:, :3, 3]
    elbow, wrist = SMPL_JOINTS.index("left_elbow"), SMPL_JOINTS.index("left_wrist")
    d = heads[wrist] - heads[elbow]
    assert np.allclose(m[elbow, :3, 1], d / np.linalg.norm(d), atol=1e-5)
    assert np.isclose(out["bone_lengths"][elbow], np.linalg.norm(d), atol=1e-5)
    assert np.allclose(out["weight_values"].sum(1), 1.0, atol=1e-5)
