"""A vessel's centerline: the longest path through the skeleton of its mask, and walking along it.

A centerline is an (N, 3) float array of voxel positions. Skeleton voxels are visited breadth-first
in a fixed neighbour order and the longest endpoint-to-endpoint path of each skeleton piece is kept, as
the official report does, so that ties fall the same way and the same masks give the same landmarks.
"""
from __future__ import annotations

from collections import deque

import numpy as np

# Neighbour offsets in the official visiting order: z slowest, then x, then y.
_OFFSETS = [(x, y, z) for z in (-1, 0, 1) for x in (-1, 0, 1) for y in (-1, 0, 1) if (x, y, z) != (0, 0, 0)]


def skeleton(mask: np.ndarray) -> np.ndarray:
    """The 3-D skeleton (scikit-image's thinning) of ``mask``."""
    try:
        from skimage.morphology import skeletonize
    except ImportError:
        from totalseg.errors import UserError

        raise UserError("the vessel reports need scikit-image: pip install scikit-image") from None
    return skeletonize(mask > 0)


def _trees(skel: np.ndarray) -> list[tuple[list[tuple], dict]]:
    """Breadth-first spanning trees of the skeleton's pieces: (nodes in visiting order, parent links)."""
    unseen = skel.astype(bool).copy()
    shape = unseen.shape
    trees = []
    for start in map(tuple, np.argwhere(unseen)):
        if not unseen[start]:
            continue
        unseen[start] = False
        nodes, links, queue = [start], {start: []}, deque([start])
        while queue:
            cur = queue.popleft()
            for dx, dy, dz in _OFFSETS:
                p = (cur[0] + dx, cur[1] + dy, cur[2] + dz)
                if min(p) < 0 or p[0] >= shape[0] or p[1] >= shape[1] or p[2] >= shape[2] or not unseen[p]:
                    continue
                unseen[p] = False
                links[cur].append(p)
                links[p] = [cur]
                nodes.append(p)
                queue.append(p)
        trees.append((nodes, links))
    return trees


def _hops(links: dict, source) -> dict:
    """Path length in edges from ``source`` to every node of a tree, and each node's predecessor."""
    dist, prev, queue = {source: 0}, {source: None}, deque([source])
    while queue:
        cur = queue.popleft()
        for nxt in links[cur]:
            if nxt not in dist:
                dist[nxt], prev[nxt] = dist[cur] + 1, cur
                queue.append(nxt)
    return dist, prev


def _longest_path(nodes: list, links: dict) -> list | None:
    """The path between the two endpoints furthest apart (the first such pair in endpoint order)."""
    ends = [n for n in nodes if len(links[n]) == 1]
    if len(ends) < 2:
        return None
    best, pair, prev_of = -1, None, None
    for i, a in enumerate(ends[:-1]):
        dist, prev = _hops(links, a)
        for b in ends[i + 1:]:
            if dist[b] > best:
                best, pair, prev_of = dist[b], (a, b), prev
    path, node = [], pair[1]
    while node is not None:
        path.append(node)
        node = prev_of[node]
    return path[::-1]


def path_length(points: np.ndarray, spacing=None) -> float:
    """Length along ``points`` (in voxels, or in mm with ``spacing``)."""
    if len(points) < 2:
        return 0.0
    steps = np.diff(np.asarray(points, dtype=float), axis=0)
    if spacing is not None:
        steps *= np.asarray(spacing, dtype=float)
    return float(np.concatenate(([0.0], np.cumsum(np.linalg.norm(steps, axis=1))))[-1])


def longest_path(skel: np.ndarray) -> np.ndarray:
    """The longest endpoint-to-endpoint path of the skeleton (longest in voxel units over its pieces)."""
    paths = [p for p in (_longest_path(n, l) for n, l in _trees(skel)) if p is not None]
    if not paths:
        from totalseg.errors import UserError

        raise UserError("no centerline can be traced through the vessel mask; check the mask")
    lengths = [path_length(np.asarray(p)) for p in paths]
    return np.asarray(paths[int(np.argmax(lengths))], dtype=float)


def append_point(line: np.ndarray, point) -> np.ndarray:
    """``line`` continued to ``point`` in unit steps (voxel units)."""
    point = np.asarray(point)
    last = line[-1]
    dist = np.linalg.norm(last - point)
    extra = []
    if dist > 1:
        count = int(dist)
        extra = [last + i / float(count + 1) * (point - last) for i in range(1, count + 1)]
    return np.vstack([line, *extra, point]) if extra else np.vstack([line, point])


def extended(line: np.ndarray, distance: float) -> np.ndarray:
    """``line`` continued ``distance`` voxels straight on beyond its last point."""
    direction = line[-1] - line[-2]
    direction = direction / np.linalg.norm(direction)
    return append_point(line, line[-1] + distance * direction)


def step_length(a, b, spacing) -> float:
    """Distance in mm between voxel positions ``a`` and ``b``."""
    return np.sqrt(np.sum(((np.asarray(a) - np.asarray(b)) * spacing) ** 2))


def index_of(line: np.ndarray, point) -> int | None:
    """The first index of ``point`` on ``line`` (None when absent)."""
    if point is None:
        return None
    hits = np.flatnonzero(np.all(line == np.asarray(point), axis=1))
    return int(hits[0]) if len(hits) else None


def closest_point(line: np.ndarray, point):
    """The point of ``line`` closest (in voxels) to ``point``."""
    if point is None or not len(line):
        return None
    return tuple(line[np.argmin(np.linalg.norm(line - point, axis=1))])


def closest_section(line: np.ndarray, point, length_mm: float, spacing: float) -> np.ndarray:
    """About ``length_mm`` of ``line`` centred on its point closest to ``point``."""
    idx = index_of(line, closest_point(line, point))
    if idx is None:
        return line[:0]
    count = int(length_mm / spacing)
    start, end = max(idx - count // 2, 0), min(idx + count // 2, len(line) - 1)
    if end - start < count - 1:
        if start == 0:
            end = min(count - 1, len(line) - 1)
        elif end == len(line) - 1:
            start = max(end - count + 1, 0)
    return line[start:end + 1]


def walk(line: np.ndarray, start: int | None, distance_mm: float, spacing) -> int | None:
    """The index reached by walking ``distance_mm`` from ``start`` (towards the end when positive).

    As in the official report, a backward walk starts one step back and a forward walk never reaches
    the last point; None when the line is too short.
    """
    if not len(line) or start is None or not 0 <= start < len(line):
        return None
    if distance_mm == 0:
        return start
    total = 0.0
    if distance_mm > 0:
        steps, back = range(start + 1, len(line) - 1), -1
    else:
        steps, back = reversed(range(0, start - 1)), 1
    for i in steps:
        total += step_length(line[i], line[i + back], spacing)
        if total >= abs(distance_mm):
            return i
    return None


def midpoint(line: np.ndarray, a: int | None, b: int | None) -> int | None:
    """The index half way (in voxel units) between indices ``a`` and ``b``."""
    if not len(line) or a is None or b is None or not (0 <= a < len(line) and 0 <= b < len(line)):
        return None
    a, b = min(a, b), max(a, b)
    target = path_length(line[a:b]) // 2
    total = 0.0
    for i in range(max(1, a), b):
        total += np.linalg.norm(line[i] - line[i - 1])
        if total >= target:
            return i
    return a if a == b else None


def direction_at(line: np.ndarray, idx: int | None, reach=(3, 10)) -> np.ndarray:
    """The (unnormalised) direction of ``line`` at ``idx``, averaged over 3..9 points either side."""
    if len(line) < 2 or idx is None or not 0 <= idx < len(line):
        return np.array([0.0, 0.0, 1.0])
    last = len(line) - 1
    vecs = [line[max(0, idx - d)] - line[min(last, idx + d)] for d in range(*reach)]
    normal = np.asarray(vecs).mean(axis=0)
    if np.linalg.norm(normal) > 0:
        return normal
    for d in range(1, len(line)):
        normal = line[max(0, idx - d)] - line[min(last, idx + d)]
        if np.linalg.norm(normal) > 0:
            return normal
    return np.array([0.0, 0.0, 1.0])


def resampled(line: np.ndarray, affine: np.ndarray, step_mm: float) -> np.ndarray:
    """``line`` resampled (linearly, along its length in world mm) to points ``step_mm`` apart, in voxels."""
    import nibabel as nib

    if len(line) < 2:
        return line.copy()
    mm = nib.affines.apply_affine(affine, line)
    total = np.linalg.norm(np.diff(mm, axis=0), axis=1).sum()
    if total == 0:
        return line[:1].copy()
    positions = np.linspace(0, total, max(2, int(total / step_mm)))
    return nib.affines.apply_affine(np.linalg.inv(affine), along(mm, positions))


def along(points: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Points at ``positions`` along the polyline ``points`` (linear; repeated points do not count)."""
    points = np.asarray(points, dtype=float)
    if not len(points) or not len(positions):
        return np.empty((0, 3))
    cum = np.concatenate(([0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))))
    unique, first = np.unique(cum, return_index=True)
    last = np.searchsorted(cum, unique, side="right") - 1
    rows = np.where(unique == 0, first, last)
    return np.column_stack([np.interp(positions, unique, points[rows, d]) for d in range(3)])
