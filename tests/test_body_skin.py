"""Skin points from colours: the face's tone found elsewhere, and the cases it refuses."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy")

from inference.body.skin import face_vertex_mask, skin_from_colors  # noqa: E402

SKIN = np.array([224.0, 172.0, 138.0])
CLOTH = np.array([[60.0, 90.0, 150.0], [20.0, 20.0, 22.0], [150.0, 30.0, 35.0]])


@pytest.fixture(scope="module")
def person() -> dict:
    """The rest body: canonical table as positions, skin on head and hands, cloth elsewhere."""
    pytest.importorskip("anny")
    from inference.body.anny_body import AnnyBody

    body = AnnyBody("default")
    canon = np.asarray(body.canonical_vertices, dtype=np.float64)
    skin = (canon[:, 1] > 0.30) | (np.abs(canon[:, 0]) > 0.68)
    rng = np.random.default_rng(0)
    colors = np.where(skin[:, None], SKIN, CLOTH[rng.integers(len(CLOTH), size=len(canon))])
    shade = rng.uniform(0.62, 1.0, len(canon))[:, None]  # baked lighting
    colors = np.clip(colors * shade + rng.normal(0, 3, colors.shape), 0, 255)
    return {"points": canon, "colors": colors, "skin": skin,
            "face": canon[face_vertex_mask(canon)]}


def test_face_tone_finds_the_skin(person: dict) -> None:
    mask, note = skin_from_colors(person["colors"], person["points"], person["face"])
    assert note == "" and mask is not None
    hit = (mask & person["skin"]).sum()
    assert hit / mask.sum() > 0.98  # precision
    assert hit / person["skin"].sum() > 0.95  # recall


def test_grey_scan_gives_no_skin(person: dict) -> None:
    grey = np.full_like(person["colors"], 160.0)
    mask, note = skin_from_colors(grey, person["points"], person["face"])
    assert mask is None and "not skin-coloured" in note


def test_a_scan_all_of_one_tone_gives_no_skin(person: dict) -> None:
    tone = np.broadcast_to(SKIN, person["colors"].shape).copy()
    mask, note = skin_from_colors(tone, person["points"], person["face"])
    assert mask is None and "whole scan" in note


def test_a_patterned_face_gives_no_skin(person: dict) -> None:
    colors = person["colors"].copy()
    near = person["points"][:, 1] > 0.30  # a speckled mask over the whole head
    rng = np.random.default_rng(1)
    colors[near] = np.clip(SKIN + rng.normal(0, 40, (near.sum(), 3)), 0, 255)  # speckled
    mask, note = skin_from_colors(colors, person["points"], person["face"])
    assert mask is None and "not one colour" in note


def test_no_face_nearby_gives_no_skin(person: dict) -> None:
    mask, note = skin_from_colors(person["colors"], person["points"], person["face"] + 5.0)
    assert mask is None and "face" in note
