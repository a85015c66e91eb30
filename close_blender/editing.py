"""Label-editing algorithms on per-vertex class labels, in pure numpy.

Every function leaves its inputs untouched and returns new arrays with a
summary: label edits return ``(new_labels, ChangeReport)``, selection tools
return ``(new_mask, SelectionReport)``. The Blender operators are thin
wrappers around these, so everything here is tested without Blender.

Labels are int arrays of class indices 0..17 (``labels.CLASS_NAMES`` order);
masks are boolean arrays over the same vertices; colours are floats in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .labels import CLASS_NAMES, N_CLASSES, PALETTE, UNLABELLED_COLOR
from .mesh_graph import Adjacency, connected_components, same_value_components, within_radius


def _name(cls: int) -> str:
    return CLASS_NAMES[cls] if 0 <= cls < N_CLASSES else "Unlabelled"


def _labels(labels: np.ndarray) -> np.ndarray:
    return np.asarray(labels).astype(np.int64, copy=False)


def _mask(mask: np.ndarray | None, n: int) -> np.ndarray:
    if mask is None:
        return np.ones(n, bool)
    m = np.asarray(mask, bool)
    if m.shape != (n,):
        raise ValueError(f"mask has shape {m.shape}, expected ({n},)")
    return m


def _check_class(cls: int) -> int:
    cls = int(cls)
    if not 0 <= cls < N_CLASSES:
        raise ValueError(f"class index {cls} outside 0..{N_CLASSES - 1}")
    return cls


@dataclass(frozen=True)
class ChangeReport:
    """What a label edit changed: how many vertices, and from which class to which.

    ``pairs`` maps ``(from_class, to_class)`` to a vertex count, largest first
    (-1 stands for "no label").
    """

    n_changed: int = 0
    pairs: dict[tuple[int, int], int] = field(default_factory=dict)

    @classmethod
    def between(cls, old: np.ndarray, new: np.ndarray) -> ChangeReport:
        old, new = _labels(old), _labels(new)
        changed = old != new
        n = int(changed.sum())
        if not n:
            return cls()
        # +1 so that -1 ("no label") is a valid bin
        base = N_CLASSES + 1
        key = (old[changed] + 1) * base + (new[changed] + 1)
        uniq, counts = np.unique(key, return_counts=True)
        order = np.lexsort((uniq, -counts))
        pairs = {(int(uniq[i] // base) - 1, int(uniq[i] % base) - 1): int(counts[i])
                 for i in order}
        return cls(n, pairs)

    def summary(self, max_pairs: int = 4) -> str:
        """One line, e.g. ``1,204 vertices: 1,100 Shirt -> Jacket, 104 Body -> Jacket``."""
        if not self.n_changed:
            return "no vertex changed"
        items = list(self.pairs.items())
        parts = [f"{c:,} {_name(a)} -> {_name(b)}" for (a, b), c in items[:max_pairs]]
        if len(items) > max_pairs:
            rest = sum(c for _, c in items[max_pairs:])
            parts.append(f"{rest:,} in {len(items) - max_pairs} more changes")
        noun = "vertex" if self.n_changed == 1 else "vertices"
        return f"{self.n_changed:,} {noun}: " + ", ".join(parts)

    def __str__(self) -> str:
        return self.summary()


@dataclass(frozen=True)
class SelectionReport:
    """Size of a selection before and after a selection tool."""

    n_before: int
    n_after: int

    @property
    def n_added(self) -> int:
        return self.n_after - self.n_before

    def summary(self) -> str:
        delta = self.n_after - self.n_before
        return f"{self.n_after:,} vertices selected ({delta:+,})"

    def __str__(self) -> str:
        return self.summary()


def _selection(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, SelectionReport]:
    return new, SelectionReport(int(np.count_nonzero(old)), int(np.count_nonzero(new)))


# --- label edits ---------------------------------------------------------------------------

def assign(labels: np.ndarray, mask: np.ndarray, cls: int) -> tuple[np.ndarray, ChangeReport]:
    """Give class ``cls`` to every vertex of the mask."""
    old = _labels(labels)
    new = old.copy()
    new[_mask(mask, len(old))] = _check_class(cls)
    return new, ChangeReport.between(old, new)


def majority_class(labels: np.ndarray, mask: np.ndarray | None = None) -> int | None:
    """Most common class in the mask (ties: lowest class index); None if empty."""
    lab = _labels(labels)[_mask(mask, len(labels))]
    lab = lab[(lab >= 0) & (lab < N_CLASSES)]
    if not lab.size:
        return None
    return int(np.bincount(lab, minlength=N_CLASSES).argmax())


def majority_in_selection(labels: np.ndarray, mask: np.ndarray
                          ) -> tuple[np.ndarray, ChangeReport]:
    """Give the selection's most common class (ties: lowest index) to all of it."""
    old = _labels(labels)
    cls = majority_class(old, mask)
    if cls is None:
        return old.copy(), ChangeReport()
    return assign(old, mask, cls)


def replace_label(labels: np.ndarray, src: int, dst: int,
                  mask: np.ndarray | None = None) -> tuple[np.ndarray, ChangeReport]:
    """Change every vertex of class ``src`` (inside ``mask`` if given) to ``dst``."""
    old = _labels(labels)
    new = old.copy()
    new[(old == _check_class(src)) & _mask(mask, len(old))] = _check_class(dst)
    return new, ChangeReport.between(old, new)


def _neighbour_counts(adjacency: Adjacency, labels: np.ndarray,
                      rows: np.ndarray | None = None) -> np.ndarray:
    """(V, 18) count of each class over each vertex's neighbours."""
    n = adjacency.n_vertices
    rows = adjacency.rows() if rows is None else rows
    lab = labels[adjacency.indices]
    ok = (lab >= 0) & (lab < N_CLASSES)
    flat = np.bincount(rows[ok] * N_CLASSES + lab[ok], minlength=n * N_CLASSES)
    return flat.reshape(n, N_CLASSES)


def smooth_labels(adjacency: Adjacency, labels: np.ndarray, iterations: int = 1,
                  mask: np.ndarray | None = None) -> tuple[np.ndarray, ChangeReport]:
    """Majority filter over mesh neighbours, ``iterations`` times.

    Each vertex (inside ``mask`` if given) takes the most common class among
    itself and its neighbours; all vertices update at once. Ties keep the
    vertex's own class when it is among the most common, else the lowest class
    index wins. Vertices outside the mask still vote. Stops early when stable.
    """
    old = _labels(labels)
    n = len(old)
    if adjacency.n_vertices != n:
        raise ValueError("labels and adjacency have different vertex counts")
    editable = _mask(mask, n)
    rows = adjacency.rows()
    cur = old.copy()
    idx = np.arange(n)
    for _ in range(max(0, int(iterations))):
        counts = _neighbour_counts(adjacency, cur, rows).astype(np.float64)
        own = (cur >= 0) & (cur < N_CLASSES)
        counts[idx[own], cur[own]] += 1.5  # itself (1) + wins ties (0.5)
        best = counts.argmax(axis=1)
        has_vote = counts.max(axis=1) > 0
        nxt = np.where(editable & has_vote, best, cur)
        if np.array_equal(nxt, cur):
            break
        cur = nxt
    return cur, ChangeReport.between(old, cur)


def remove_islands(adjacency: Adjacency, labels: np.ndarray, min_size: int,
                   mask: np.ndarray | None = None, max_rounds: int = 10
                   ) -> tuple[np.ndarray, ChangeReport]:
    """Relabel connected same-class regions smaller than ``min_size`` vertices.

    An island takes the class most common among the distinct vertices on its
    border (neighbours outside it), counting first only vertices of regions
    that are not islands themselves; if it touches none, all border vertices
    count. Ties go to the lowest class index. An island with no border at all
    (a loose piece of the mesh) keeps its class. With ``mask``, only islands
    lying wholly inside the mask change. Repeats (up to ``max_rounds``) while
    relabelling merges islands into new small regions.
    """
    old = _labels(labels)
    n = len(old)
    if adjacency.n_vertices != n:
        raise ValueError("labels and adjacency have different vertex counts")
    editable = _mask(mask, n)
    cur = old.copy()
    u_all, v_all = adjacency.edges()
    for _ in range(max(1, int(max_rounds))):
        comp, n_comp = same_value_components(adjacency, cur)
        size = np.bincount(comp, minlength=n_comp)
        small = size < int(min_size)
        if mask is not None:
            outside = np.bincount(comp, weights=~editable, minlength=n_comp) > 0
            small &= ~outside
        if not small.any():
            break
        # border entries: directed (island vertex -> neighbour in another region)
        u = np.concatenate([u_all, v_all])
        v = np.concatenate([v_all, u_all])
        cross = (comp[u] != comp[v]) & small[comp[u]]
        cu, nv = comp[u[cross]], v[cross]
        pair = np.unique(cu * n + nv)  # distinct border vertices per island
        isl, nb = np.divmod(pair, n)
        lab = cur[nb]
        ok = (lab >= 0) & (lab < N_CLASSES)
        isl, nb, lab = isl[ok], nb[ok], lab[ok]
        solid = ~small[comp[nb]]
        votes_solid = np.bincount(isl[solid] * N_CLASSES + lab[solid],
                                  minlength=n_comp * N_CLASSES).reshape(n_comp, N_CLASSES)
        votes_all = np.bincount(isl * N_CLASSES + lab,
                                minlength=n_comp * N_CLASSES).reshape(n_comp, N_CLASSES)
        use_solid = votes_solid.sum(axis=1) > 0
        votes = np.where(use_solid[:, None], votes_solid, votes_all)
        has_border = votes.sum(axis=1) > 0
        target = np.where(small & has_border, votes.argmax(axis=1), -2)
        new_lab = target[comp]
        change = new_lab >= 0
        nxt = cur.copy()
        nxt[change] = new_lab[change]
        if np.array_equal(nxt, cur):
            break
        cur = nxt
    return cur, ChangeReport.between(old, cur)


# --- selection tools -----------------------------------------------------------------------

def select_label(labels: np.ndarray, cls: int, mask: np.ndarray | None = None,
                 extend: bool = False) -> tuple[np.ndarray, SelectionReport]:
    """Vertices of class ``cls``; with ``extend`` added to the current ``mask``."""
    lab = _labels(labels)
    cur = _mask(mask, len(lab)) if mask is not None else np.zeros(len(lab), bool)
    new = lab == _check_class(cls)
    if extend:
        new = new | cur
    return _selection(cur, new)


def grow_same_label(adjacency: Adjacency, labels: np.ndarray, mask: np.ndarray
                    ) -> tuple[np.ndarray, SelectionReport]:
    """Grow the selection over all connected vertices that share a selected
    vertex's class (a flood fill of each selected vertex's label region)."""
    lab = _labels(labels)
    cur = _mask(mask, len(lab))
    comp, n_comp = same_value_components(adjacency, lab)
    hit = np.zeros(n_comp, bool)
    hit[comp[cur]] = True
    return _selection(cur, hit[comp] | cur)


def grow_radius(points: np.ndarray, mask: np.ndarray, radius: float,
                labels: np.ndarray | None = None) -> tuple[np.ndarray, SelectionReport]:
    """Add every vertex within ``radius`` (straight-line distance) of a selected
    vertex; with ``labels``, only vertices whose class is one of the selection's."""
    pts = np.asarray(points, dtype=np.float64)
    cur = _mask(mask, len(pts))
    if radius < 0:
        raise ValueError("radius must be >= 0")
    near = within_radius(pts, pts[cur], float(radius))
    if labels is not None:
        lab = _labels(labels)
        near &= np.isin(lab, np.unique(lab[cur]))
    return _selection(cur, cur | near)


def select_by_color(colors: np.ndarray, seed_mask: np.ndarray, tolerance: float,
                    points: np.ndarray | None = None, radius: float | None = None,
                    adjacency: Adjacency | None = None, match: str = "mean"
                    ) -> tuple[np.ndarray, SelectionReport]:
    """Select vertices whose scan colour is like the selection's (texture similarity).

    A vertex is similar when its RGB colour (0-1) lies within ``tolerance``
    (Euclidean distance) of the mean colour of the seed vertices
    (``match="mean"``), or of any one seed's colour (``match="any"``, for
    patterned fabric whose mean colour appears nowhere). With
    ``points`` and ``radius`` only vertices within ``radius`` of a seed count;
    with ``adjacency`` only similar vertices connected to a seed through
    similar vertices (a magic wand). The seeds stay selected.
    """
    col = np.asarray(colors, dtype=np.float64)[:, :3]
    seeds = _mask(seed_mask, len(col))
    if not seeds.any():
        return _selection(seeds, seeds.copy())
    tol = float(tolerance)
    if match == "mean":
        ref = col[seeds].mean(axis=0)
        similar = ((col - ref) ** 2).sum(axis=1) <= tol ** 2
    elif match == "any":
        # a grid hash in colour space: a cube of side `tol` per cell
        similar = within_radius(col, np.unique(col[seeds], axis=0), tol)
    else:
        raise ValueError(f"match must be 'mean' or 'any', not {match!r}")
    if radius is not None:
        if points is None:
            raise ValueError("a radius needs the vertex positions (points)")
        pts = np.asarray(points, dtype=np.float64)
        similar &= within_radius(pts, pts[seeds], float(radius))
    similar |= seeds
    if adjacency is not None:
        comp, n_comp = connected_components(adjacency, mask=similar)
        hit = np.zeros(n_comp, bool)
        hit[comp[seeds]] = True
        similar = similar & hit[np.maximum(comp, 0)] & (comp >= 0)
    return _selection(seeds, similar)


# --- display and painting ------------------------------------------------------------------

def overlay_colors(scan_colors: np.ndarray, labels: np.ndarray, strength: float) -> np.ndarray:
    """(V, 4) display colours: class colours blended over the scan's own colours.

    ``strength`` 0 shows the scan, 1 the class palette; alpha is 1. Colours
    are sRGB floats in [0, 1]; unlabelled vertices (-1) show the scan colour.
    """
    scan = np.asarray(scan_colors, dtype=np.float32)[:, :3]
    lab = _labels(labels)
    s = float(np.clip(strength, 0.0, 1.0))
    pal = PALETTE.astype(np.float32)[np.clip(lab, 0, N_CLASSES - 1)] / 255.0
    valid = ((lab >= 0) & (lab < N_CLASSES))[:, None]
    rgb = np.where(valid, (1.0 - s) * scan + s * pal, scan)
    return np.concatenate([rgb, np.ones((len(rgb), 1), np.float32)], axis=1)


def snap_colors(colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest class of each sRGB colour and the distance to its palette colour."""
    c = np.asarray(colors, dtype=np.float32)[:, :3]
    pal = PALETTE.astype(np.float32) / 255.0
    d2 = np.empty((len(c), N_CLASSES), np.float32)
    for k in range(N_CLASSES):  # 18 passes keep memory at (V, 18), not (V, 18, 3)
        d2[:, k] = ((c - pal[k]) ** 2).sum(axis=1)
    best = d2.argmin(axis=1)
    return best.astype(np.int64), np.sqrt(d2[np.arange(len(c)), best])


def is_unlabelled_color(colors: np.ndarray, tolerance: float = 1.0 / 255.0) -> np.ndarray:
    """(V,) bool: the colour is the grey shown on unlabelled vertices.

    The tolerance of one 8-bit step also accepts the grey stored in a byte
    colour layer (127 or 128 of 255); no class colour is that close to it.
    """
    c = np.asarray(colors, dtype=np.float32)[:, :3]
    return (np.abs(c - np.asarray(UNLABELLED_COLOR, np.float32)) < tolerance).all(axis=1)


def snap_paint(painted_colors: np.ndarray, labels: np.ndarray,
               max_distance: float | None = None) -> tuple[np.ndarray, ChangeReport]:
    """Labels from colours painted over the class colours.

    Each vertex takes the class whose palette colour is nearest to its painted
    sRGB colour (ties: lowest index). With ``max_distance``, a vertex whose
    colour is farther than that from every class colour keeps its label (so
    stray colours never relabel anything silently). An unlabelled vertex (-1)
    still showing the unlabelled grey was not painted and stays unlabelled.
    """
    old = _labels(labels)
    cls, dist = snap_colors(painted_colors)
    new = cls if max_distance is None else np.where(dist <= max_distance, cls, old)
    new = np.where((old < 0) & is_unlabelled_color(painted_colors), old, new)
    return new.astype(np.int64), ChangeReport.between(old, new)


def labels_from_groups(weights: np.ndarray, labels: np.ndarray
                       ) -> tuple[np.ndarray, ChangeReport]:
    """Labels from per-class vertex-group weights (V, 18), e.g. after weight painting.

    Conflict rule (predictable, documented in the UI):

    * a vertex is in a group when its weight there is > 0;
    * a vertex in no group keeps its current label;
    * a vertex in groups takes the class of the highest weight;
    * ties go to a group the vertex was newly put in (a class other than its
      current label), then to the lowest class index.
    """
    old = _labels(labels)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(old), N_CLASSES):
        raise ValueError(f"weights have shape {w.shape}, expected ({len(old)}, {N_CLASSES})")
    w = np.where(np.isfinite(w), w, 0.0)
    best_w = w.max(axis=1)
    in_any = best_w > 0
    top = (w == best_w[:, None]) & in_any[:, None]
    # prefer classes other than the current one among the tied top groups
    own = np.zeros_like(top)
    ok = (old >= 0) & (old < N_CLASSES)
    own[np.flatnonzero(ok), old[ok]] = True
    pref = top & ~own
    choose = np.where(pref.any(axis=1), pref.argmax(axis=1), top.argmax(axis=1))
    new = np.where(in_any, choose, old).astype(np.int64)
    return new, ChangeReport.between(old, new)


def group_weights_from_labels(labels: np.ndarray) -> np.ndarray:
    """(V, 18) float32 one-hot weights: the ``CloSe_<Class>`` groups of a labelling."""
    lab = _labels(labels)
    w = np.zeros((len(lab), N_CLASSES), np.float32)
    ok = (lab >= 0) & (lab < N_CLASSES)
    w[np.flatnonzero(ok), lab[ok]] = 1.0
    return w
