"""Vertex graph, components, growth and the spatial hash, on meshes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from close_blender.mesh_graph import (
    Adjacency,
    SpatialGrid,
    connected_components,
    grow,
    neighbors_of_set,
    same_value_components,
    union_find,
    within_radius,
)


def grid_mesh(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """A w x h grid of vertices in the z = 0 plane, spacing 1, two triangles per square."""
    idx = np.arange(w * h).reshape(h, w)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    ys, xs = np.divmod(np.arange(w * h), w)
    points = np.stack([xs, ys, np.zeros_like(xs)], 1).astype(np.float64)
    return points, faces


def test_adjacency_from_triangles_is_symmetric_sorted_unique() -> None:
    adj = Adjacency.from_faces(np.array([[0, 1, 2], [0, 2, 3], [0, 1, 2]]), 5)
    assert adj.n_vertices == 5
    assert adj.neighbors(0).tolist() == [1, 2, 3]
    assert adj.neighbors(1).tolist() == [0, 2]
    assert adj.neighbors(2).tolist() == [0, 1, 3]
    assert adj.neighbors(4).tolist() == []  # loose vertex
    u, v = adj.edges()
    assert sorted(zip(u.tolist(), v.tolist(), strict=True)) == [(0, 1), (0, 2), (0, 3), (1, 2), (2, 3)]


def test_adjacency_from_polygons_and_edges_agree_with_faces() -> None:
    # a quad 0-1-2-3 and a triangle 1-4-2 as Blender stores them
    corner_verts = np.array([0, 1, 2, 3, 1, 4, 2])
    starts = np.array([0, 4])
    adj = Adjacency.from_polygons(corner_verts, starts, 5)
    assert adj.neighbors(0).tolist() == [1, 3]  # no diagonal in a quad
    assert adj.neighbors(1).tolist() == [0, 2, 4]
    adj2 = Adjacency.from_edges(np.array([[0, 1], [1, 2], [2, 3], [3, 0], [1, 4], [4, 2], [2, 2]]), 5)
    assert np.array_equal(adj.indptr, adj2.indptr) and np.array_equal(adj.indices, adj2.indices)


def test_adjacency_rejects_out_of_range_indices() -> None:
    with pytest.raises(ValueError):
        Adjacency.from_edges(np.array([[0, 5]]), 5)


def test_components_with_mask_and_edge_mask() -> None:
    # path 0-1-2-3-4-5 plus a separate edge 6-7 and a loose vertex 8
    adj = Adjacency.from_edges(np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [6, 7]]), 9)
    comp, n = connected_components(adj)
    assert n == 3
    assert comp.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 2]
    mask = np.array([1, 1, 0, 1, 1, 1, 1, 0, 1], bool)
    comp, n = connected_components(adj, mask=mask)
    assert comp.tolist() == [0, 0, -1, 1, 1, 1, 2, -1, 3] and n == 4
    values = np.array([5, 5, 5, 7, 7, 5, 1, 1, 1])
    comp, n = same_value_components(adj, values)
    assert comp.tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 4] and n == 5


def test_union_find_on_adversarial_orders() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    perm = rng.permutation(n)  # one long path visiting vertices in random order
    roots = union_find(n, perm[:-1], perm[1:])
    assert (roots == 0).all()
    # two interleaved paths (even, odd)
    ev, od = np.arange(0, n, 2), np.arange(1, n, 2)
    roots = union_find(n, np.concatenate([ev[:-1], od[:-1]]), np.concatenate([ev[1:], od[1:]]))
    assert set(roots[ev].tolist()) == {0} and set(roots[od].tolist()) == {1}


def test_grow_rings_and_allowed() -> None:
    adj = Adjacency.from_edges(np.stack([np.arange(9), np.arange(1, 10)], 1), 10)  # a path
    seed = np.zeros(10, bool)
    seed[5] = True
    assert np.flatnonzero(grow(adj, seed, steps=1)).tolist() == [4, 5, 6]
    assert np.flatnonzero(grow(adj, seed, steps=2)).tolist() == [3, 4, 5, 6, 7]
    allowed = np.ones(10, bool)
    allowed[7] = False
    assert np.flatnonzero(grow(adj, seed, allowed=allowed)).tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert seed.sum() == 1  # input untouched


def test_neighbors_of_set() -> None:
    adj = Adjacency.from_edges(np.array([[0, 1], [0, 2], [3, 4]]), 5)
    assert sorted(neighbors_of_set(adj, np.array([0, 3])).tolist()) == [1, 2, 4]
    assert neighbors_of_set(adj, np.array([], np.int64)).size == 0


def brute_within(points: np.ndarray, seeds: np.ndarray, r: float) -> np.ndarray:
    d2 = ((points[:, None, :] - seeds[None, :, :]) ** 2).sum(-1)
    return (d2 <= r * r).any(axis=1)


@pytest.mark.parametrize("radius", [0.05, 0.13, 0.4])
def test_within_radius_matches_brute_force(radius: float) -> None:
    rng = np.random.default_rng(1)
    pts = rng.random((1500, 3))
    seeds = rng.random((40, 3)) * 0.5
    assert np.array_equal(within_radius(pts, seeds, radius), brute_within(pts, seeds, radius))


def test_within_radius_far_queries_and_empty_seeds() -> None:
    pts = np.array([[0.0, 0, 0], [100.0, 0, 0], [-50.0, 3, 2], [0.09, 0, 0]])
    assert within_radius(pts, pts[:1], 0.1).tolist() == [True, False, False, True]
    assert not within_radius(pts, pts[:0], 0.1).any()


def test_pairs_within_and_chunking_match_brute_force() -> None:
    rng = np.random.default_rng(2)
    pts = rng.random((800, 3))
    q = rng.random((300, 3))
    grid = SpatialGrid(pts, 0.1)
    grid_pairs = set()
    for chunk in (7, 1 << 20):
        qs, ps = [], []
        for qi, pi in grid.candidate_pairs(q, chunk=chunk):
            d2 = ((q[qi] - pts[pi]) ** 2).sum(1)
            qs.append(qi[d2 <= 0.01])
            ps.append(pi[d2 <= 0.01])
        got = set(zip(np.concatenate(qs).tolist(), np.concatenate(ps).tolist(), strict=True))
        grid_pairs = grid_pairs or got
        assert got == grid_pairs
    qi, pi = grid.pairs_within(q, 0.1)
    d2 = ((q[:, None] - pts[None]) ** 2).sum(-1)
    want = set(zip(*np.nonzero(d2 <= 0.01), strict=True))
    assert set(zip(qi.tolist(), pi.tolist(), strict=True)) == {(int(a), int(b)) for a, b in want}
    with pytest.raises(ValueError):
        grid.any_within(q, 0.2)


@pytest.mark.slow
def test_large_grid_mesh_components_and_radius() -> None:
    """Vectorization sanity on a 90k-vertex mesh: stripes of labels give known components."""
    points, faces = grid_mesh(300, 300)
    adj = Adjacency.from_faces(faces, len(points))
    assert adj.degree.max() == 6
    stripes = (points[:, 0] // 30).astype(int)  # 10 vertical stripes
    comp, n = same_value_components(adj, stripes)
    assert n == 10
    assert np.array_equal(comp, stripes)
    seed = np.zeros(len(points), bool)
    seed[150 * 300 + 150] = True
    near = within_radius(points, points[seed], 5.0)
    assert near.sum() == brute_within(points, points[seed], 5.0).sum() == 81
