"""Label-editing algorithms on small meshes with known answers, plus a large random mesh."""

from __future__ import annotations

import numpy as np
import pytest
from test_mesh_graph import grid_mesh

from close_blender import editing
from close_blender.labels import PALETTE, UNLABELLED_COLOR, class_index
from close_blender.mesh_graph import Adjacency, same_value_components

SHIRT, JACKET, BODY, PANTS, HAT = (class_index(n) for n in ("Shirt", "Jacket", "Body", "Pants", "Hat"))


def path(n: int) -> Adjacency:
    return Adjacency.from_edges(np.stack([np.arange(n - 1), np.arange(1, n)], 1), n)


def test_change_report_counts_and_summary() -> None:
    old = np.array([SHIRT] * 1100 + [BODY] * 104 + [PANTS] * 5)
    new = np.array([JACKET] * 1204 + [PANTS] * 5)
    rep = editing.ChangeReport.between(old, new)
    assert rep.n_changed == 1204
    assert rep.pairs == {(SHIRT, JACKET): 1100, (BODY, JACKET): 104}
    assert list(rep.pairs) == [(SHIRT, JACKET), (BODY, JACKET)]  # largest first
    assert rep.summary() == "1,204 vertices: 1,100 Shirt -> Jacket, 104 Body -> Jacket"
    assert str(editing.ChangeReport.between(old, old)) == "no vertex changed"
    one = editing.ChangeReport.between(np.array([-1]), np.array([HAT]))
    assert one.summary() == "1 vertex: 1 Unlabelled -> Hat"
    many = editing.ChangeReport.between(np.arange(6), np.arange(6) + 1)
    assert many.summary(max_pairs=2).endswith("4 in 4 more changes")


def test_assign_and_majority_leave_inputs_untouched() -> None:
    labels = np.array([BODY, SHIRT, SHIRT, PANTS, BODY])
    mask = np.array([0, 1, 1, 1, 0], bool)
    new, rep = editing.assign(labels, mask, JACKET)
    assert new.tolist() == [BODY, JACKET, JACKET, JACKET, BODY]
    assert rep.pairs == {(SHIRT, JACKET): 2, (PANTS, JACKET): 1}
    assert labels.tolist() == [BODY, SHIRT, SHIRT, PANTS, BODY]
    new, rep = editing.majority_in_selection(labels, mask)
    assert new.tolist() == [BODY, SHIRT, SHIRT, SHIRT, BODY] and rep.n_changed == 1
    # tie -> lowest class index
    new, _ = editing.majority_in_selection(np.array([PANTS, SHIRT]), np.array([1, 1], bool))
    assert new.tolist() == [SHIRT, SHIRT]
    new, rep = editing.majority_in_selection(labels, np.zeros(5, bool))
    assert np.array_equal(new, labels) and rep.n_changed == 0
    with pytest.raises(ValueError):
        editing.assign(labels, mask, 18)
    with pytest.raises(ValueError):
        editing.assign(labels, mask[:3], 1)


def test_replace_and_select_label() -> None:
    labels = np.array([SHIRT, BODY, SHIRT, PANTS])
    new, rep = editing.replace_label(labels, SHIRT, JACKET)
    assert new.tolist() == [JACKET, BODY, JACKET, PANTS] and rep.summary() == "2 vertices: 2 Shirt -> Jacket"
    new, _ = editing.replace_label(labels, SHIRT, JACKET, mask=np.array([1, 0, 0, 0], bool))
    assert new.tolist() == [JACKET, BODY, SHIRT, PANTS]
    sel, srep = editing.select_label(labels, SHIRT)
    assert sel.tolist() == [True, False, True, False] and srep.n_after == 2
    sel, srep = editing.select_label(labels, PANTS, mask=sel, extend=True)
    assert sel.tolist() == [True, False, True, True] and srep.n_added == 1
    assert srep.summary() == "3 vertices selected (+1)"


def test_grow_same_label_floods_connected_regions_only() -> None:
    adj = path(8)
    labels = np.array([SHIRT, SHIRT, SHIRT, BODY, BODY, SHIRT, SHIRT, PANTS])
    mask = np.zeros(8, bool)
    mask[1] = True
    sel, rep = editing.grow_same_label(adj, labels, mask)
    assert np.flatnonzero(sel).tolist() == [0, 1, 2]  # not the other Shirt region 5-6
    assert rep.n_before == 1 and rep.n_after == 3
    mask[4] = True
    sel, _ = editing.grow_same_label(adj, labels, mask)
    assert np.flatnonzero(sel).tolist() == [0, 1, 2, 3, 4]


def test_grow_radius_with_and_without_label_filter() -> None:
    pts = np.array([[0.0, 0, 0], [0.5, 0, 0], [1.2, 0, 0], [0, 0.9, 0], [3, 0, 0]])
    labels = np.array([SHIRT, SHIRT, SHIRT, BODY, SHIRT])
    mask = np.array([1, 0, 0, 0, 0], bool)
    sel, _ = editing.grow_radius(pts, mask, 1.0)
    assert sel.tolist() == [True, True, False, True, False]
    sel, _ = editing.grow_radius(pts, mask, 1.0, labels=labels)
    assert sel.tolist() == [True, True, False, False, False]


def test_select_by_color_tolerance_radius_and_connectivity() -> None:
    colors = np.array([[0.5, 0.5, 0.5], [0.52, 0.5, 0.5], [0.9, 0.1, 0.1], [0.5, 0.51, 0.5],
                       [0.5, 0.5, 0.49]])
    pts = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [10, 0, 0]])
    seeds = np.array([1, 0, 0, 0, 0], bool)
    sel, _ = editing.select_by_color(colors, seeds, 0.05)
    assert sel.tolist() == [True, True, False, True, True]
    sel, _ = editing.select_by_color(colors, seeds, 0.05, points=pts, radius=3.5)
    assert sel.tolist() == [True, True, False, True, False]
    # the red vertex 2 breaks the path 0-1-2-3-4: only 0 and 1 are connected to the seed
    sel, _ = editing.select_by_color(colors, seeds, 0.05, adjacency=path(5))
    assert sel.tolist() == [True, True, False, False, False]
    sel, rep = editing.select_by_color(colors, np.zeros(5, bool), 0.05)
    assert not sel.any() and rep.n_after == 0
    with pytest.raises(ValueError):
        editing.select_by_color(colors, seeds, 0.05, radius=1.0)


def test_select_by_color_any_seed_matches_patterns() -> None:
    # a black/white check pattern: its mean grey matches nothing, any-seed matches both
    colors = np.array([[0.0, 0, 0], [1, 1, 1], [0.02, 0, 0], [0.98, 1, 1], [0.5, 0.5, 0.5]])
    seeds = np.array([1, 1, 0, 0, 0], bool)
    sel, _ = editing.select_by_color(colors, seeds, 0.05)
    assert sel.tolist() == [True, True, False, False, True]
    sel, _ = editing.select_by_color(colors, seeds, 0.05, match="any")
    assert sel.tolist() == [True, True, True, True, False]
    with pytest.raises(ValueError):
        editing.select_by_color(colors, seeds, 0.05, match="median")


def test_smooth_labels_majority_filter() -> None:
    adj = path(7)
    labels = np.array([SHIRT, SHIRT, BODY, SHIRT, SHIRT, PANTS, PANTS])
    new, rep = editing.smooth_labels(adj, labels, iterations=1)
    # vertex 2 (Body between two Shirts) flips; 4 (Shirt, Shirt, Pants) stays; ends keep ties
    assert new.tolist() == [SHIRT, SHIRT, SHIRT, SHIRT, SHIRT, PANTS, PANTS]
    assert rep.pairs == {(BODY, SHIRT): 1}
    mask = np.ones(7, bool)
    mask[2] = False
    new, rep = editing.smooth_labels(adj, labels, iterations=3, mask=mask)
    assert np.array_equal(new, labels) and rep.n_changed == 0
    new, _ = editing.smooth_labels(adj, labels, iterations=0)
    assert np.array_equal(new, labels)


def test_smooth_labels_tie_keeps_own_class() -> None:
    # star: centre 0 (Body) with neighbours Shirt, Pants: counts Body 1+, Shirt 1, Pants 1
    adj = Adjacency.from_edges(np.array([[0, 1], [0, 2]]), 3)
    new, _ = editing.smooth_labels(adj, np.array([BODY, SHIRT, PANTS]), iterations=1)
    assert new[0] == BODY
    # two Jacket neighbours outvote the centre; vertex 1 and 2 tie with the centre and stay
    new, _ = editing.smooth_labels(adj, np.array([BODY, JACKET, JACKET]), iterations=1)
    assert new.tolist() == [JACKET, JACKET, JACKET]


def test_remove_islands_takes_the_border_majority() -> None:
    points, faces = grid_mesh(10, 10)
    adj = Adjacency.from_faces(faces, 100)
    labels = np.full(100, SHIRT)
    labels[:50] = BODY                  # bottom half Body, top half Shirt
    labels[77] = PANTS                  # a 1-vertex island inside Shirt
    labels[[22, 23, 32]] = HAT          # a 3-vertex island inside Body
    labels[0] = JACKET                  # corner island
    new, rep = editing.remove_islands(adj, labels, min_size=4)
    want = np.full(100, SHIRT)
    want[:50] = BODY
    assert np.array_equal(new, want)
    assert rep.pairs == {(HAT, BODY): 3, (PANTS, SHIRT): 1, (JACKET, BODY): 1}
    # min_size 3 keeps the 3-vertex island
    new, _ = editing.remove_islands(adj, labels, min_size=3)
    assert (new[[22, 23, 32]] == HAT).all() and new[77] == SHIRT
    # a mask that does not cover an island protects it
    mask = np.ones(100, bool)
    mask[77] = False
    new, _ = editing.remove_islands(adj, labels, min_size=4, mask=mask)
    assert new[77] == PANTS and (new[[22, 23, 32]] == BODY).all()


def test_remove_islands_border_vote_prefers_solid_regions_and_loose_pieces_stay() -> None:
    # path: Body x5 | Hat | Pants | Body x5 ; plus a loose 2-vertex piece (12, 13)
    edges = [[i, i + 1] for i in range(11)] + [[12, 13]]
    adj = Adjacency.from_edges(np.array(edges), 14)
    labels = np.array([BODY] * 5 + [HAT, PANTS] + [BODY] * 5 + [SHIRT, SHIRT])
    new, rep = editing.remove_islands(adj, labels, min_size=3)
    assert new[:12].tolist() == [BODY] * 12  # Hat and Pants vote only Body (solid) neighbours
    assert new[12:].tolist() == [SHIRT, SHIRT]  # no border: kept
    assert rep.n_changed == 2


def test_overlay_colors() -> None:
    scan = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.2, 0.4, 0.6]])
    labels = np.array([SHIRT, BODY, -1])
    out = editing.overlay_colors(scan, labels, 0.0)
    assert out.shape == (3, 4) and np.allclose(out[:, :3], scan) and (out[:, 3] == 1).all()
    out = editing.overlay_colors(scan, labels, 1.0)
    assert np.allclose(out[0, :3], PALETTE[SHIRT] / 255.0)
    assert np.allclose(out[2, :3], scan[2])  # unlabelled shows the scan
    half = editing.overlay_colors(scan, labels, 0.5)
    assert np.allclose(half[1, :3], 0.5 + 0.5 * PALETTE[BODY] / 255.0)


def test_snap_paint_round_trip_and_threshold() -> None:
    labels = np.array([SHIRT, SHIRT, BODY, PANTS])
    colors = PALETTE[labels].astype(np.float32) / 255.0
    new, rep = editing.snap_paint(colors, labels)
    assert np.array_equal(new, labels) and rep.n_changed == 0
    painted = colors.copy()
    painted[1] = PALETTE[JACKET] / 255.0 + 0.02   # painted Jacket, slightly off (soft brush)
    painted[3] = PALETTE[HAT] / 255.0
    new, rep = editing.snap_paint(painted, labels)
    assert new.tolist() == [SHIRT, JACKET, BODY, HAT]
    assert rep.summary() == "2 vertices: 1 Shirt -> Jacket, 1 Pants -> Hat"
    painted[2] = (0.5, 0.5, 0.52)  # a stray grey, far from every class colour
    new, _ = editing.snap_paint(painted, labels, max_distance=0.01)
    assert new[2] == BODY and new[1] == SHIRT and new[3] == HAT
    # RGBA input is fine
    new, _ = editing.snap_paint(np.concatenate([colors, np.ones((4, 1))], 1), labels)
    assert np.array_equal(new, labels)


def test_snap_paint_keeps_unpainted_unlabelled_vertices() -> None:
    """Sync from Paint: unlabelled vertices show grey, which must never become a class."""
    labels = np.array([-1, -1, -1, -1, SHIRT])
    painted = np.array([UNLABELLED_COLOR,                 # untouched unlabelled vertex
                        (127 / 255, 127 / 255, 127 / 255),  # the same grey in a byte layer
                        PALETTE[JACKET] / 255.0,           # unlabelled, painted Jacket
                        (0.5, 0.5, 0.52),                  # unlabelled, a stray grey
                        UNLABELLED_COLOR], np.float32)     # labelled, painted grey
    new, rep = editing.snap_paint(painted, labels)
    assert new[:3].tolist() == [-1, -1, JACKET] and new[3] >= 0 and new[4] >= 0
    new, rep = editing.snap_paint(painted, labels, max_distance=0.05)
    assert new.tolist() == [-1, -1, JACKET, -1, SHIRT]
    assert rep.n_changed == 1
    assert editing.is_unlabelled_color(painted).tolist() == [True, True, False, False, True]


def test_no_class_colour_is_the_unlabelled_grey() -> None:
    pal = PALETTE.astype(np.float32) / 255.0
    assert not editing.is_unlabelled_color(pal).any()
    # far from grey and from each other, so neither painting nor the viewport confuses them
    assert np.sqrt(((pal - np.asarray(UNLABELLED_COLOR)) ** 2).sum(1)).min() > 0.25
    d = np.sqrt(((pal[:, None] - pal[None]) ** 2).sum(-1)) + np.eye(len(pal))
    assert d.min() > 0.15
    cls, _ = editing.snap_colors(pal)
    assert cls.tolist() == list(range(len(pal)))


def test_labels_from_groups_conflict_rule() -> None:
    labels = np.array([SHIRT, SHIRT, SHIRT, SHIRT, BODY, BODY])
    w = editing.group_weights_from_labels(labels)
    new, rep = editing.labels_from_groups(w, labels)
    assert np.array_equal(new, labels) and rep.n_changed == 0
    w[0, JACKET] = 1.0                # tie with own group -> the newly added group
    w[1, JACKET] = 0.4                # lower weight than own group -> keeps Shirt
    w[2, SHIRT] = 0.0                 # removed from own group, in no group -> keeps
    w[3, [SHIRT, PANTS, JACKET]] = 1  # tie of two new groups -> lowest index (Pants)
    w[4, BODY] = 0.3
    w[4, HAT] = 0.8                   # weight painted Hat over Body
    new, rep = editing.labels_from_groups(w, labels)
    assert new.tolist() == [JACKET, SHIRT, SHIRT, PANTS, HAT, BODY]
    assert rep.n_changed == 3
    with pytest.raises(ValueError):
        editing.labels_from_groups(w[:, :5], labels)


@pytest.mark.slow
def test_large_random_mesh_vectorized() -> None:
    """300x300 grid with random labels: algorithms run fast and keep invariants."""
    rng = np.random.default_rng(0)
    points, faces = grid_mesh(300, 300)
    adj = Adjacency.from_faces(faces, len(points))
    base = (points[:, 0] // 60).astype(np.int64) * 3  # 5 stripes of classes 0, 3, 6, 9, 12
    noisy = base.copy()
    flip = rng.random(len(base)) < 0.02
    noisy[flip] = rng.integers(0, 18, flip.sum())
    cleaned, rep = editing.remove_islands(adj, noisy, min_size=50)
    # away from stripe borders (where a flip can join the next stripe) all noise is gone
    inner = (points[:, 0] % 60 >= 2) & (points[:, 0] % 60 <= 57)
    assert np.array_equal(cleaned[inner], base[inner])
    comp, n_comp = same_value_components(adj, cleaned)
    assert np.bincount(comp).min() >= 50
    assert rep.n_changed == int((noisy != cleaned).sum()) > 1000
    smoothed, _ = editing.smooth_labels(adj, noisy, iterations=3)
    assert (smoothed != base).mean() < 0.002
    mask = np.zeros(len(base), bool)
    mask[rng.integers(0, len(base), 10)] = True
    grown, _ = editing.grow_same_label(adj, cleaned, mask)
    assert set(np.unique(cleaned[grown])) == set(np.unique(cleaned[mask]))
