"""Putting the built-in hand's vertices onto its implicit surface (builtin_sdf): each vertex is cast along a ray
from inside the hand to where the ray first leaves its part of the surface, then the vertices near junctions are
evened out over the surface (which also unfolds what casting folded). Hand coordinates, millimetres."""

import functools

import numpy as np
import scipy.sparse

from handlib.builtin_sdf import HandSDF
from handlib.builtin_skeleton import unit

FIXED = -9  # a vertex placed directly, not cast


def cast(sdf: HandSDF, anchor: np.ndarray, direction: np.ndarray, part: np.ndarray) -> np.ndarray:
    """The first exit of each ray anchor + t * direction from the surface of its part (builtin_sdf.HandSDF.value;
    FIXED: no cast, the anchor is the vertex)."""
    out = anchor.copy()
    for p in np.unique(part[part != FIXED]):
        m = part == p
        a, d = anchor[m], direction[m]
        f = functools.partial(sdf.value, part=int(p))
        v = f(a)
        if np.any(v >= 0):
            raise RuntimeError(f"builtin hand: {int(np.sum(v >= 0))} cast anchors of part {p} lie outside the hand")
        lo = np.zeros(len(a))
        for _ in range(200):  # march outward by a safe fraction of the distance to the surface
            step = np.where(v < 0, np.maximum(-0.7 * v, 0.1), 0.0)
            if not np.any(step):
                break
            t = lo + step
            v = f(a + t[:, None] * d)
            lo = np.where(v < 0, t, lo)
            hi = np.where(v >= 0, t, np.inf)
        hi = np.where(np.isfinite(hi), hi, lo + 0.1)
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            inside = f(a + mid[:, None] * d) < 0
            lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
        out[m] = a + (0.5 * (lo + hi))[:, None] * d
    return out


def relax(sdf: HandSDF, pos: np.ndarray, faces: np.ndarray, part: np.ndarray, weight: np.ndarray,
          iterations: int = 30, step: float = 0.5) -> np.ndarray:
    """Even out the vertices (by `weight`, 0-1) over the surface: tangential umbrella steps, each followed by a
    Newton step back onto the vertex's part of the surface; this also unfolds what casting folded."""
    adj = adjacency(faces, len(pos))
    deg = np.maximum(np.asarray(adj.sum(axis=1)), 1)
    move = np.flatnonzero(weight > 0)
    pos = pos.copy()
    for _ in range(iterations):
        g = _by_part(sdf.gradient, pos[move], part[move])
        normal = unit(g)
        delta = ((adj @ pos) / deg - pos)[move]
        delta -= np.sum(delta * normal, axis=1, keepdims=True) * normal
        p = pos[move] + step * weight[move, None] * delta
        pos[move] = p - (_by_part(sdf.value, p, part[move]) / np.maximum(np.sum(g * g, axis=1), 1e-6))[:, None] * g
    pos[move] = project(sdf, pos[move], part[move])
    return pos


def _by_part(fn, p: np.ndarray, part: np.ndarray) -> np.ndarray:
    """fn(points, part) evaluated group by group."""
    out = None
    for q in np.unique(part):
        m = part == q
        r = fn(p[m], int(q))
        out = np.empty((len(p),) + r.shape[1:]) if out is None else out
        out[m] = r
    return out


def adjacency(faces: np.ndarray, n: int) -> scipy.sparse.csr_matrix:
    """(n, n) 0/1 matrix of the mesh's edges."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    adj = scipy.sparse.csr_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    adj.data[:] = 1.0
    return adj


def project(sdf: HandSDF, p: np.ndarray, part: np.ndarray, steps: int = 3) -> np.ndarray:
    """Newton steps onto the zero level of each point's part of the surface."""
    p = p.copy()
    for q in np.unique(part):
        m = part == q
        x = p[m]
        for _ in range(steps):
            g = sdf.gradient(x, int(q))
            x = x - (sdf.value(x, int(q)) / np.maximum(np.sum(g * g, axis=1), 1e-6))[:, None] * g
        p[m] = x
    return p
