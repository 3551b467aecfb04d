"""The built-in hand's shape space: a generated population of adult hands, the template deformed to each, PCA.

A population spec varies overall size, palm length, breadth and thickness, each finger's length and thickness,
the finger-length ratios, the fingers' spread and the thumb's placement, length and thickness, calibrated to
adult anthropometry (reference.md: hand length SD about 11 mm across men and women, breadth about 6 mm).
The template (built once at the mean) is carried to each spec by its bones: every digit bone maps rigidly plus
a stretch along and a scale across it, the palm by a thin-plate spline through its landmarks, blended by the
skinning weights (smoothed); so every sample shares the template's topology. Hand coordinates, millimetres.
"""

import numpy as np
import scipy.optimize
import scipy.sparse

from handlib.builtin_cast import adjacency
from handlib.builtin_skeleton import MEAN_SPEC, skeleton

NUM_BETAS = 10


def sample_specs(rng: np.random.Generator, n: int) -> list[dict]:
    """n hand specs around MEAN_SPEC (symmetric factors, so their mean is the mean hand)."""
    specs = []
    for _ in range(n):
        g = rng.standard_normal(24)
        size = 1.0 + 0.056 * g[0]
        palm_len = size * (1.0 + 0.022 * g[1])
        breadth = size * (1.0 + 0.030 * g[2])
        finger_len = size * (1.0 + 0.022 * g[3]) * (1.0 + 0.018 * g[4:8])  # per finger
        finger_len[[0, 3]] *= 1.0 + 0.015 * np.array([g[8], -g[8]])  # index : ring ratio
        thick = size * (1.0 + 0.05 * g[9]) * (1.0 + 0.035 * g[10:14])
        spec = {k: np.array(v, dtype=float) for k, v in MEAN_SPEC.items()}
        spec["mcp"][:, 0] *= palm_len
        spec["mcp"][:, 1] *= breadth
        spec["phalanges"] *= finger_len[:, None]
        spec["radii"] *= thick[:, None]
        spec["splay"] += np.radians(1.5) * g[14:18]
        spec["thumb_cmc"] = spec["thumb_cmc"] * np.array([palm_len, breadth, size]) + 2.0 * np.array([g[18], g[19], 0])
        spec["thumb_bones"] *= size * (1.0 + 0.03 * g[20])
        spec["thumb_abduct"] += np.radians(4.0) * g[21]
        spec["thumb_radii"] *= size * (1.0 + 0.05 * g[22])
        spec["palm_half_thick"] *= size * (1.0 + 0.05 * g[23])
        spec["wrist_half_breadth"] *= breadth
        spec["stub"] *= size
        specs.append(spec)
    return specs


def _palm_landmarks(skel: dict, spec: dict) -> np.ndarray:
    """(dist, rad) points that pin the palm: the wrist's ends, the knuckles and their outer edges, the thumb."""
    mcp = np.stack([c[0] for c in skel["chains"][:4]])
    r = np.array([c[0] for c in skel["radii"][:4]])
    hw = spec["wrist_half_breadth"][0]
    thumb = skel["chains"][4]
    pts = [[0.0, 0.0], [0.0, 0.85 * hw], [0.0, -hw], [-spec["stub"][0], 0.0], thumb[0][:2], thumb[1][:2],
           mcp[0, :2] + [0.0, r[0]], mcp[2, :2] - [0.0, r[2]]]
    return np.concatenate([np.array(pts), mcp[:, :2]])


def _tps(src: np.ndarray, dst: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Thin-plate spline in the plane through src -> dst, evaluated at x (n, 2)."""
    def kernel(a, b):
        r2 = np.sum((a[:, None] - b[None]) ** 2, axis=2)
        return 0.5 * r2 * np.log(np.maximum(r2, 1e-12))

    n = len(src)
    p = np.hstack([np.ones((n, 1)), src])
    system = np.zeros((n + 3, n + 3))
    system[:n, :n], system[:n, n:], system[n:, :n] = kernel(src, src), p, p.T
    coef = np.linalg.solve(system, np.vstack([dst, np.zeros((3, 2))]))
    return kernel(x, src) @ coef[:n] + np.hstack([np.ones((len(x), 1)), x]) @ coef[n:]


def deform(vertices: np.ndarray, weights: np.ndarray, spec: dict, mean_skel: dict | None = None) -> tuple:
    """The template (built at MEAN_SPEC) carried to `spec`: vertices (V, 3) and joints (16, 3)."""
    mean_skel = mean_skel or skeleton(MEAN_SPEC)
    skel = skeleton(spec)
    out = np.zeros_like(vertices)
    palm = np.empty_like(vertices)
    palm[:, :2] = _tps(_palm_landmarks(mean_skel, MEAN_SPEC), _palm_landmarks(skel, spec), vertices[:, :2])
    palm[:, 2] = vertices[:, 2] * spec["palm_half_thick"][0] / MEAN_SPEC["palm_half_thick"][0]
    out += weights[:, :1] * palm
    for f in range(5):
        for b in range(3):
            p0, p1 = mean_skel["chains"][f][b], mean_skel["chains"][f][b + 1]
            q0, q1 = skel["chains"][f][b], skel["chains"][f][b + 1]
            stretch = np.linalg.norm(q1 - q0) / np.linalg.norm(p1 - p0)
            scale = np.mean(skel["radii"][f][b:b + 2] / mean_skel["radii"][f][b:b + 2])
            local = (vertices - p0) @ mean_skel["frames"][f][b].T * np.array([scale, scale, stretch])
            out += weights[:, 1 + 3 * f + b, None] * (q0 + local @ skel["frames"][f][b])
    return out, skel["joints"]


def binding_weights(weights: np.ndarray, faces: np.ndarray, iterations: int = 20) -> np.ndarray:
    """The skinning weights smoothed over the mesh (still summing to 1): neighbours follow nearly the same bone
    maps, so a change of proportions never shears a small face."""
    adj = adjacency(faces, len(weights))
    mean = scipy.sparse.diags(1.0 / np.asarray(adj.sum(axis=1)).ravel()) @ adj
    for _ in range(iterations):
        weights = 0.5 * weights + 0.5 * (mean @ weights)
    return weights


def population(vertices: np.ndarray, weights: np.ndarray, specs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, V, 3) and joints (N, 16, 3) of the template deformed to each spec (weights: binding)."""
    mean_skel = skeleton(MEAN_SPEC)
    pairs = [deform(vertices, weights, spec, mean_skel) for spec in specs]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def shape_pca(template: np.ndarray, samples: np.ndarray, k: int = NUM_BETAS) -> tuple[np.ndarray, np.ndarray]:
    """shapedirs (V, 3, k) about the template, scaled so that beta ~ N(0, I) spans the population, and the
    fraction of the population's variance each component explains."""
    dev = (samples - template).reshape(len(samples), -1)
    var, u = np.linalg.eigh(dev @ dev.T / len(samples))  # the samples' Gram matrix: small, and fast
    var, u = np.maximum(var[::-1], 0.0), u[:, ::-1]
    vh = (dev.T @ u[:, :k] / np.sqrt(var[:k] * len(samples))).T  # (k, V * 3) orthonormal principal directions
    vh = vh * np.sign(vh[np.arange(k), np.argmax(np.abs(vh), axis=1)])[:, None]  # deterministic signs
    dirs = (vh * np.sqrt(var[:k])[:, None]).T.reshape(template.shape[0], 3, k)
    return dirs, var[:k] / var.sum()


def fit_joint_regressor(samples: np.ndarray, joints: np.ndarray, centre: np.ndarray, radius: np.ndarray,
                        template: np.ndarray) -> np.ndarray:
    """(16, V) non-negative rows summing to 1 that map each sample's vertices to its joints: per joint a
    non-negative least-squares fit over the template vertices within `radius` of it."""
    reg = np.zeros((len(centre), samples.shape[1]))
    for j in range(len(centre)):
        idx = np.flatnonzero(np.linalg.norm(template - centre[j], axis=1) < radius[j])
        a = samples[:, idx].transpose(0, 2, 1).reshape(-1, len(idx))  # (N * 3, n)
        b = joints[:, j].reshape(-1)
        penalty = 100.0 * np.sqrt(len(b))
        w, _ = scipy.optimize.nnls(np.vstack([a, penalty * np.ones(len(idx))]), np.append(b, penalty))
        reg[j, idx] = w / w.sum()
    return reg


def hand_dimensions(vertices: np.ndarray, joints: np.ndarray, middle_tip: int, knuckle_mask: np.ndarray):
    """Hand length (wrist joint to the middle fingertip along the hand's axis) and breadth (across the knuckles)
    of a batch: vertices (B, V, 3), joints (B, 16, 3) MANO order; knuckle_mask (V,) marks the palm's and the
    four fingers' first-bone vertices (not the thumb's). Any frame; the units of the input."""
    axis = joints[:, 4] - joints[:, 0]
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    length = np.sum((vertices[:, middle_tip] - joints[:, 0]) * axis, axis=1)
    across = joints[:, 1] - joints[:, 7]
    across -= np.sum(across * axis, axis=1, keepdims=True) * axis
    across /= np.linalg.norm(across, axis=1, keepdims=True)
    knuckles = joints[:, [1, 4, 7, 10]].mean(axis=1)
    along = np.einsum("bvc,bc->bv", vertices - knuckles[:, None], axis)
    side = np.einsum("bvc,bc->bv", vertices, across)
    band = knuckle_mask[None] & (np.abs(along) < 0.045 * length[:, None])
    breadth = np.where(band, side, -np.inf).max(axis=1) - np.where(band, side, np.inf).min(axis=1)
    return length, breadth
