"""The built-in hand's skinning weights: harmonic interpolation between the bones' rigid parts.

Every vertex well inside one bone's stretch of the hand is bound to that bone alone; the vertices near a joint
(a band of about half a radius each side of it, the knuckle region of the palm, the thenar) are left free and
take the solution of the mesh's Laplace equation. The weights are smooth, lie in [0, 1] and sum to 1 (both by
the maximum principle), and blend over the same few rings at every joint.
"""

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from handlib.builtin_cast import adjacency
from handlib.builtin_mesh import Chain

NUM_JOINTS = 16
KNUCKLE_BAND = 15.0  # mm: the palm's knuckle region (proximal of the MCP line) and the fingers' base (distal)
THENAR = (16.0, 26.0)  # mm from the thumb's metacarpal: the palm moves with it within the first, blends to the second


def digit_joint(f: int, bone: int) -> int:
    """MANO joint that moves bone 0-2 of digit f (FINGERS order is MANO's order)."""
    return 1 + 3 * f + bone


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    t = np.clip((p - a) @ (b - a) / ((b - a) @ (b - a)), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * (b - a)), axis=1)


def constraints(mesh: dict) -> np.ndarray:
    """(V,) the joint each vertex is bound to, or -1 where the weights are left to the Laplace equation."""
    pos, digit, station, skel = mesh["vertices"], mesh["digit"], mesh["station"], mesh["skeleton"]
    chains = [Chain(skel["chains"][f], skel["frames"][f], skel["radii"][f]) for f in range(5)]
    bound = np.full(len(pos), -1)

    mcp = np.stack([c.points[0] for c in chains[:4]])
    order = np.argsort(mcp[:, 1])
    knuckle_line = np.interp(pos[:, 1], mcp[order, 1], mcp[order, 0])
    thumb = chains[4].points
    palm = digit < 0
    near_thumb = _segment_distance(pos, thumb[0], thumb[1])
    bound[palm & (pos[:, 0] < knuckle_line - KNUCKLE_BAND) & (near_thumb > THENAR[1])] = 0
    bound[palm & (near_thumb < THENAR[0])] = digit_joint(4, 0)

    for f, ch in enumerate(chains):
        m = digit == f
        s = station[m]
        bone = (s >= ch.knots[1]).astype(int) + (s >= ch.knots[2])
        free = (np.abs(s - ch.knots[1]) < 0.55 * ch.radii[1]) | (np.abs(s - ch.knots[2]) < 0.55 * ch.radii[2])
        if f < 4:
            free |= s < KNUCKLE_BAND
        bound[np.flatnonzero(m)] = np.where(free, -1, digit_joint(f, bone))
    return bound


def skinning_weights(mesh: dict) -> np.ndarray:
    """(V, 16) weights: bound vertices one-hot, the free ones harmonic (uniform graph Laplacian)."""
    bound = constraints(mesh)
    n = len(bound)
    adj = adjacency(mesh["faces"], n)
    lap = (scipy.sparse.diags(np.asarray(adj.sum(axis=1)).ravel()) - adj).tocsr()
    free, fixed = np.flatnonzero(bound < 0), np.flatnonzero(bound >= 0)
    w = np.zeros((n, NUM_JOINTS))
    w[fixed, bound[fixed]] = 1.0
    rhs = -(lap[free][:, fixed] @ w[fixed])
    w[free] = scipy.sparse.linalg.splu(lap[free][:, free].tocsc()).solve(rhs)
    w = np.clip(w, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)
