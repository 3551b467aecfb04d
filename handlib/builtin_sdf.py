"""The built-in hand's surface as an implicit function: a smooth union of rounded cones along the bones, a rounded
palm slab with a thinner web, thenar and hypothenar pads and a forearm stub (hand coordinates, millimetres).

Values are negative inside. They approximate distances well enough for root finding and Newton projection.
"""

import numpy as np

HAND, PALM = -1, -3  # parts of HandSDF.value besides the digits 0-4


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: min(a, b) with a fillet of size k."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k / 4.0


def round_cone(q: np.ndarray, length: float, r1: float, r2: float) -> np.ndarray:
    """Exact distance to a cone from the origin (radius r1) to (0, 0, length) (radius r2) with spherical caps."""
    l2 = length * length
    rr = r1 - r2
    a2 = l2 - rr * rr
    y = q[:, 2] * length
    z = y - l2
    x2 = (q[:, 0] ** 2 + q[:, 1] ** 2) * l2 * l2
    y2, z2 = y * y * l2, z * z * l2
    k = np.sign(rr) * rr * rr * x2
    far = np.sign(z) * a2 * z2 > k
    near = np.sign(y) * a2 * y2 < k
    side = (np.sqrt(np.maximum(x2 * a2 / l2, 0.0)) + y * rr) / l2 - r1
    return np.where(far, np.sqrt(x2 + z2) / l2 - r2, np.where(near, np.sqrt(x2 + y2) / l2 - r1, side))


def ellipsoid(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Approximate distance to an axis-aligned ellipsoid with semi-axes r (iq's bound)."""
    k0 = np.linalg.norm(q / r, axis=1)
    k1 = np.linalg.norm(q / (r * r), axis=1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def polygon2d(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Signed distance from points p (N, 2) to a closed polygon (M, 2), negative inside."""
    a = np.roll(poly, 1, axis=0)
    e = poly - a  # (M, 2) edges a -> poly
    w = p[:, None, :] - a[None]  # (N, M, 2)
    t = np.clip(np.einsum("nmc,mc->nm", w, e) / np.sum(e * e, axis=1), 0.0, 1.0)
    d = np.sqrt(np.min(np.sum((w - t[..., None] * e) ** 2, axis=2), axis=1))
    c1 = p[:, None, 1] >= a[None, :, 1]
    c2 = p[:, None, 1] < poly[None, :, 1]
    c3 = e[None, :, 0] * w[..., 1] > e[None, :, 1] * w[..., 0]
    crossings = np.sum((c1 & c2 & c3) | (~c1 & ~c2 & ~c3), axis=1)
    return np.where(crossings % 2 == 1, -d, d)


def rounded_slab(p: np.ndarray, poly: np.ndarray, centre, half, rho) -> np.ndarray:
    """A polygon (in the dist-rad plane) extruded along dor to +-half about `centre`, edges rounded by rho."""
    d2 = polygon2d(p[:, :2], poly)
    dy = np.abs(p[:, 2] - centre) - half
    qx, qy = d2 + rho, dy + rho
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - rho


class HandSDF:
    """The implicit surface of one skeleton (see builtin_skeleton.skeleton)."""

    def __init__(self, skel: dict, spec: dict):
        self.skel, self.spec = skel, spec
        chains, radii = skel["chains"], skel["radii"]
        mcp = np.stack([c[0] for c in chains[:4]])
        r_mcp = np.array([r[0] for r in radii[:4]])
        hw = spec["wrist_half_breadth"][0]
        idx, pinky = mcp[0], mcp[2]
        # palm outline: wrist, ulnar edge, the knuckles (a little beyond the MCP joints), radial edge
        self.palm_poly = np.array([
            [0.0, -hw],
            [pinky[0] - 22.0, pinky[1] - r_mcp[2] - 5.0],
            [pinky[0] + 1.0, pinky[1] - r_mcp[2] - 3.0],
            *[[m[0] + 4.0, m[1]] for m in mcp[[2, 3, 1, 0]]],
            [idx[0] + 1.0, idx[1] + r_mcp[0] + 4.5],
            [idx[0] - 30.0, idx[1] + r_mcp[0] + 3.5],
            [0.0, 0.85 * hw],
        ])[:, :2]
        # the webs between fingers: a thin palmar-biased slab reaching ~40% up the proximal phalanges
        web_tip = np.stack([c[0] + 0.38 * (c[1] - c[0]) for c in chains[:4]])
        self.web_poly = np.array([
            [pinky[0] - 4.0, pinky[1] - 4.0],
            *[[w[0], w[1]] for w in web_tip[[2, 3, 1, 0]]],
            [idx[0] - 4.0, idx[1] + 4.0],
        ])
        # the first web space: a membrane from the index knuckle to the thumb's proximal phalanx
        thumb = chains[4]
        self.thumb_web_poly = np.array([
            [idx[0] - 28.0, idx[1] + r_mcp[0]],
            [idx[0] + 4.0, idx[1] + r_mcp[0] - 1.0],
            (thumb[1] + 0.3 * (thumb[2] - thumb[1]))[:2],
            thumb[1][:2],
            thumb[0][:2],
        ])
        self.mcp_dist = mcp[:, 0].mean()

    def palm(self, p: np.ndarray) -> np.ndarray:
        spec = self.spec
        h0, h1 = spec["palm_half_thick"]
        t = np.clip(p[:, 0] / self.mcp_dist, 0.0, 1.0)
        half = h0 + (h1 - h0) * t
        slab = rounded_slab(p, self.palm_poly, 0.0, half, 0.85 * half)
        web = rounded_slab(p, self.web_poly, -3.5, 5.0, 4.5)
        f = smin(slab, web, 6.0)
        f = smin(f, self._thenar(p), 12.0)
        f = smin(f, self._hypothenar(p), 10.0)
        f = smin(f, self._stub(p), 14.0)
        f = smin(f, self.digit(p, 4, bones=(0,)), 8.0)
        return smin(f, rounded_slab(p, self.thumb_web_poly, -5.0, 5.0, 4.5), 8.0)

    def _thenar(self, p: np.ndarray) -> np.ndarray:
        chain, frame = self.skel["chains"][4], self.skel["frames"][4][0]
        centre = chain[0] + 0.42 * (chain[1] - chain[0]) - 6.0 * frame[1] - 5.0 * frame[0]
        q = (p - centre) @ frame.T
        return ellipsoid(q, np.array([17.0, 13.0, 30.0]))

    def _hypothenar(self, p: np.ndarray) -> np.ndarray:
        pinky = self.skel["chains"][2][0]
        centre = np.array([0.45 * pinky[0], pinky[1] - 4.0, -5.0])
        q = p - centre
        return ellipsoid(q, np.array([34.0, 11.0, 10.0]))

    def _stub(self, p: np.ndarray) -> np.ndarray:
        hw, stub = self.spec["wrist_half_breadth"][0], self.spec["stub"][0]
        ht = self.spec["palm_half_thick"][0]
        q = np.stack([np.clip(p[:, 0], -stub - 10.0, 8.0) - p[:, 0], p[:, 1] / hw, p[:, 2] / ht], axis=1)
        d = (np.hypot(q[:, 1], q[:, 2]) - 1.0) * min(hw, ht)
        return np.maximum(np.hypot(np.maximum(d, 0.0), q[:, 0]) + np.minimum(d, 0.0), -stub - p[:, 0])

    def digit(self, p: np.ndarray, f: int, bones=(0, 1, 2)) -> np.ndarray:
        """A digit's bones as rounded cones, elliptical in cross-section (flatter on the back)."""
        chain, frames, radii = self.skel["chains"][f], self.skel["frames"][f], self.skel["radii"][f]
        kd, kp = self.spec["depth"]
        out = None
        for b in bones:
            q = (p - chain[b]) @ frames[b].T
            q[:, 1] = q[:, 1] / np.where(q[:, 1] > 0, kd, kp)
            length = np.linalg.norm(chain[b + 1] - chain[b])
            r2 = radii[b + 1]
            if b == 2:  # the tip sphere ends at the tip point
                length -= r2
            d = round_cone(q, length, radii[b], r2) * kd
            out = d if out is None else smin(out, d, 2.0)
        return out

    def value(self, p: np.ndarray, part: int = HAND) -> np.ndarray:
        """The whole hand (HAND), the palm alone (PALM), a finger 0-3 joined to the palm, or the thumb alone (4)."""
        if part == PALM:
            return self.palm(p)
        if part == 4:
            return self.digit(p, 4)
        digits = range(5) if part == HAND else [part]
        return smin(self.palm(p), np.min([self.digit(p, f) for f in digits], axis=0), 7.0)

    def gradient(self, p: np.ndarray, part: int = -1, eps: float = 1e-3) -> np.ndarray:
        g = np.empty_like(p)
        for i in range(3):
            e = np.zeros(3)
            e[i] = eps
            g[:, i] = (self.value(p + e, part) - self.value(p - e, part)) / (2 * eps)
        return g
