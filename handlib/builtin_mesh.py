"""The built-in hand's mesh: one fixed, structured topology cast onto the implicit surface of builtin_sdf.

Tubes of vertex rings: the palm (48 vertices around, capped at the forearm stub), the four fingers and the thumb
(12 around, closed by a pole at the tip, the fingertip vertex). The fingers' first rings make up the palm's last
ring (the web between two fingers is one vertex that both share); the thumb's first ring is the rim of a hole in
the palm's radial side. Rings crowd around the joints so that the mesh bends smoothly. Every vertex is cast from
an anchor inside the hand along a fixed direction onto the surface. Hand coordinates, millimetres.
"""

import numpy as np

from handlib.builtin_cast import FIXED, cast, relax
from handlib.builtin_sdf import HAND, PALM, HandSDF
from handlib.builtin_skeleton import D, skeleton, unit

RING = 12
ANGLES = 2 * np.pi * np.arange(RING) / RING  # 0 lateral (toward the thumb), 3 dorsal, 6 ulnar, 9 palmar
RADIAL_TO_ULNAR = (0, 1, 3, 2)  # the four fingers (FINGERS order) from the thumb side
PALM_SLOTS = 48
PALM_CHART, WRIST_CHART = 5, 6  # UV charts besides the digits' 0-4
PALM_RELAX = 0.5  # how much the palm's vertices even out over the surface (1 where the fingers join)
MIN_RING_GAP = 2.5  # mm: each vertex of a finger's ring lies at least this far beyond the one before it
FLAT = 0.8  # how flat the rays are where the fingers leave the palm (see _ring_vertices)
BASE_STATIONS = 6.0 - 7.0 * np.sin(ANGLES)  # a finger's first ring, mm from its MCP: back -1, sides 6, palm 13


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class Chain:
    """A digit's bones as a polyline: stations are millimetres from its first joint along the bones."""

    def __init__(self, points: np.ndarray, frames: np.ndarray, radii: np.ndarray):
        self.points, self.frames, self.radii = points, frames, radii
        self.knots = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])

    def point(self, s: np.ndarray) -> np.ndarray:
        b = np.clip(np.searchsorted(self.knots, s, side="right") - 1, 0, 2)
        return self.points[b] + (s - self.knots[b])[:, None] * self.frames[b][:, 2]

    def frame(self, s: np.ndarray, blend: float = 5.0) -> np.ndarray:
        """(n, 3, 3) rows lateral, dorsal, axial; turned gradually across each joint so rings never cross."""
        f = np.repeat(self.frames[:1], len(s), axis=0)
        for j in (1, 2):
            t = smoothstep((s - self.knots[j] + blend) / (2 * blend))[:, None, None]
            f = (1 - t) * f + t * self.frames[j]
        a = unit(f[:, 2])
        d = unit(f[:, 1] - np.sum(f[:, 1] * a, axis=1, keepdims=True) * a)
        return np.stack([np.cross(d, a), d, a], axis=1)

    def radius(self, s: np.ndarray) -> np.ndarray:
        return np.interp(s, self.knots, self.radii)


def stations(start: float, end: float, joints, fine: float, coarse: float, width: float) -> np.ndarray:
    """Ring stations from start to end, `fine` apart at the joints and up to `coarse` between them."""
    s = [start]
    while s[-1] < end:
        near = min(abs(s[-1] - j) for j in joints) if len(joints) else np.inf
        s.append(s[-1] + fine + (coarse - fine) * smoothstep(near / width))
    s = np.array(s)
    return start + (s - start) * (end - start) / (s[-1] - start)


def _min_angle(p: np.ndarray, tris: list) -> float:
    """The smallest corner angle (radians) of triangles given as index triples into points p."""
    out = np.pi
    for t in tris:
        for i in range(3):
            u, v = p[t[(i + 1) % 3]] - p[t[i]], p[t[(i + 2) % 3]] - p[t[i]]
            out = min(out, np.arccos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12), -1.0, 1.0)))
    return out


class _Builder:
    """Collects vertices (as rays to cast) and polygons. Each polygon belongs to a UV chart and carries, per
    corner, the fraction of the way round its ring (NaN at a pole); quads are split after casting."""

    def __init__(self):
        self.anchor, self.dir, self.part, self.digit, self.station = [], [], [], [], []
        self.polys, self.chart, self.param = [], [], []
        self.n = 0

    def add(self, anchor, direction, part: int, digit: int, station) -> np.ndarray:
        anchor = np.atleast_2d(anchor)
        k = len(anchor)
        direction = np.atleast_2d(direction).astype(float)
        norm = np.linalg.norm(direction, axis=1, keepdims=True)
        self.anchor.append(anchor)
        self.dir.append(np.divide(direction, norm, out=np.zeros_like(direction), where=norm > 0))
        self.part.append(np.full(k, part))
        self.digit.append(np.full(k, digit))
        self.station.append(np.broadcast_to(np.asarray(station, float), (k,)).copy())
        self.n += k
        return np.arange(self.n - k, self.n)

    def _poly(self, ids, params, chart: int, flip: bool = False) -> None:
        ids, params = (tuple(ids), tuple(params)) if not flip else (tuple(ids)[::-1], tuple(params)[::-1])
        self.polys.append(ids)
        self.param.append(params)
        self.chart.append(chart)

    def strip(self, r0, r1, chart: int) -> None:
        """Quads between two rings that run counter-clockwise about the direction from r0 to r1."""
        n = len(r0)
        for k in range(n):
            k1 = (k + 1) % n
            self._poly((r0[k], r0[k1], r1[k1], r1[k]), (k / n, k1 / n, k1 / n, k / n), chart)

    def halve(self, outer, inner, chart: int, flip: bool = False) -> None:
        """Triangles from a ring to one with half its vertices, further along the ring's axis (flip: back)."""
        n, m = len(inner), len(outer)
        for i in range(n):
            o0, o1, o2 = 2 * i, 2 * i + 1, (2 * i + 2) % m
            c0, c1 = i, (i + 1) % n
            self._poly((outer[o0], outer[o1], inner[c0]), (o0 / m, o1 / m, c0 / n), chart, flip)
            self._poly((outer[o1], inner[c1], inner[c0]), (o1 / m, c1 / n, c0 / n), chart, flip)
            self._poly((outer[o1], outer[o2], inner[c1]), (o1 / m, o2 / m, c1 / n), chart, flip)

    def fan(self, ring, pole, chart: int, flip: bool = False) -> None:
        n = len(ring)
        for k in range(n):
            self._poly((ring[k], ring[(k + 1) % n], pole), (k / n, (k + 1) % n / n, np.nan), chart, flip)

    def drop(self, quads: set) -> None:
        """Remove the quads with these vertex sets (frozensets)."""
        keep = [i for i, p in enumerate(self.polys) if frozenset(p) not in quads]
        self.polys, self.param, self.chart = ([x[i] for i in keep] for x in (self.polys, self.param, self.chart))

    def rays(self, start: int = 0) -> tuple:
        anchor, direction, part = (np.concatenate(x)[start:] for x in (self.anchor, self.dir, self.part))
        return anchor, direction, part

    def faces(self, pos: np.ndarray) -> tuple:
        """Triangles (F, 3), their charts (F,) and corner params (F, 3); each quad split along the diagonal that
        leaves the larger smallest angle."""
        tris, chart, param = [], [], []
        for ids, par, c in zip(self.polys, self.param, self.chart):
            if len(ids) == 3:
                split = [(0, 1, 2)]
            elif _min_angle(pos[list(ids)], [(0, 1, 2), (0, 2, 3)]) >= _min_angle(pos[list(ids)],
                                                                                [(0, 1, 3), (1, 2, 3)]):
                split = [(0, 1, 2), (0, 2, 3)]
            else:
                split = [(0, 1, 3), (1, 2, 3)]
            for t in split:
                tris.append([ids[i] for i in t])
                param.append([par[i] for i in t])
                chart.append(c)
        return np.array(tris, dtype=np.int64), np.array(chart), np.array(param)


def build(spec: dict) -> dict:
    """The template mesh of one spec.

    Returns vertices (V, 3) mm (and `cast_vertices`, where the rays first hit, before the junctions were evened
    out), faces (F, 3), per face its UV `chart` and `corner_param` (see _Builder), per vertex `digit` (-1 palm,
    0-4 FINGERS order) and `station` (mm along the digit from its first joint; for the palm the distance along
    `dist`), and `rings`: the vertex ids of every ring by region.
    """
    skel = skeleton(spec)
    sdf = HandSDF(skel, spec)
    chains = [Chain(skel["chains"][f], skel["frames"][f], skel["radii"][f]) for f in range(5)]
    b = _Builder()
    rings = {}
    first, web_station = _knuckles(b, sdf, chains)
    for f in range(4):
        rings[f"digit{f}"] = _finger(b, chains[f], first[f], web_station[f], f)
        rings[f"cap{f}"] = _cap(b, chains[f], rings[f"digit{f}"][-1], f)
    pos = cast(sdf, *b.rays())
    last = _knuckle_ring(first)
    rings["palm"] = _palm(b, spec, chains, pos[last], last)
    pos = np.concatenate([pos, cast(sdf, *b.rays(start=len(pos)))])
    hole = _thumb_hole(b, rings["palm"], pos, chains[4])
    rings["thumb_hole"] = [hole]
    rings["digit4"] = _thumb(b, chains[4], hole, pos)
    rings["cap4"] = _cap(b, chains[4], rings["digit4"][-1], 4)
    rings["wrist_cap"] = _wrist_cap(b, rings["palm"][0], pos[rings["palm"][0]], spec["stub"][0])
    pos = np.concatenate([pos, cast(sdf, *b.rays(start=len(pos)))])
    part = b.rays()[2]
    relaxed = relax(sdf, pos, b.faces(pos)[0], part, _junction_weights(pos, rings, part))
    faces, chart, param = b.faces(relaxed)
    keep = np.unique(faces)  # drops the vertices inside the thumb's hole; rings mark them -1
    new = np.full(len(pos), -1)
    new[keep] = np.arange(len(keep))
    return {"vertices": relaxed[keep], "cast_vertices": pos[keep], "faces": new[faces], "chart": chart,
            "corner_param": param, "digit": np.concatenate(b.digit)[keep],
            "station": np.concatenate(b.station)[keep], "rings": {k: [new[r] for r in v] for k, v in rings.items()},
            "skeleton": skel}


def _knuckles(b: _Builder, sdf: HandSDF, chains: list) -> tuple[dict, np.ndarray]:
    """The four fingers' first rings along the knuckles, slanted (back of the hand proximal, palm distal), with
    one shared vertex at each web; and per finger the stations where its radial and ulnar sides leave the palm."""
    first = {}
    for f in range(4):
        ks = [k for k in range(RING) if k not in (0, 6)]
        first[f] = np.full(RING, -1)
        first[f][ks] = _ring_vertices(b, chains[f], BASE_STATIONS[ks], ANGLES[ks], f, flat=FLAT)
    web_station = np.full((4, 2), 6.0)
    for i, f in enumerate(RADIAL_TO_ULNAR[:-1]):  # cast the webs right away: the fingers' sides start there
        g = RADIAL_TO_ULNAR[i + 1]
        anchor = 0.5 * (chains[f].points[:1] + chains[g].points[:1])
        direction = unit(unit(chains[f].frames[0][2] + chains[g].frames[0][2])[None] - 0.25 * D)
        web = cast(sdf, anchor, direction, np.array([HAND]))[0]
        first[f][6] = first[g][0] = b.add(anchor, direction, HAND, -1, 0.0)[0]
        web_station[f, 1] = (web - chains[f].points[0]) @ chains[f].frames[0][2]
        web_station[g, 0] = (web - chains[g].points[0]) @ chains[g].frames[0][2]
    for f, k in ((0, 0), (2, 6)):  # the palm's radial and ulnar edges at the knuckles
        first[f][k] = _ring_vertices(b, chains[f], np.array([6.0]), ANGLES[[k]], f)[0]
    return first, web_station


def _knuckle_ring(first: dict) -> np.ndarray:
    """The palm's last ring: radial edge, the backs of the fingers, ulnar edge, the palm side back."""
    last = [first[0][0]]
    for f in RADIAL_TO_ULNAR:
        last += list(first[f][1:7])
    for f in RADIAL_TO_ULNAR[::-1]:
        last += list(first[f][7:12]) + ([first[f][0]] if f != 0 else [])
    return np.array(last)


def _finger(b: _Builder, ch: Chain, first: np.ndarray, web_station: np.ndarray, f: int) -> list:
    """A finger's rings from its first ring to the fingertip sphere; the first ring's slant fades over three."""
    profile = BASE_STATIONS - BASE_STATIONS.mean()
    profile[[0, 6]] = web_station - BASE_STATIONS.mean()
    s_ring = stations(BASE_STATIONS.mean() + 4.5, ch.knots[3] - ch.radii[3], ch.knots[:3], fine=3.2, coarse=6.0,
                      width=7.0)
    tube, st = [first], BASE_STATIONS.mean() + profile
    for i, s in enumerate(s_ring):
        fade = 1.0 - smoothstep(i / 3.0)
        st = np.maximum(s + profile * fade, st + MIN_RING_GAP)
        tube.append(_ring_vertices(b, ch, st, ANGLES, f, flat=FLAT * fade))
        b.strip(tube[-2], tube[-1], f)
    return tube


def _thumb(b: _Builder, ch: Chain, hole: np.ndarray, pos: np.ndarray) -> list:
    """The thumb's rings from the rim of the palm's hole (cast at pos) to the fingertip sphere."""
    s0 = float((pos[hole].mean(axis=0) - ch.points[0]) @ ch.frames[0][2]) + 4.0
    tube = [_align_loop(hole, pos, ch, s0)]
    for s in stations(s0, ch.knots[3] - ch.radii[3], ch.knots[1:3], fine=3.2, coarse=6.0, width=7.5):
        tube.append(_ring_vertices(b, ch, np.full(RING, s), ANGLES, 4))
        b.strip(tube[-2], tube[-1], 4)
    return tube


def _junction_weights(pos: np.ndarray, rings: dict, part: np.ndarray) -> np.ndarray:
    """How much each vertex may move when the mesh is evened out: fully where the digits leave the palm (their
    first rings, the palm's last rings, around the thumb's hole), PALM_RELAX over the rest of the palm."""
    weight = np.zeros(len(pos))
    for f in range(5):
        for i, ring in enumerate(rings[f"digit{f}"][:4]):
            weight[ring] = np.maximum(weight[ring], 1.0 - i / 4)
    for i, ring in enumerate(rings["palm"][::-1]):
        weight[ring] = np.maximum(weight[ring], max(1.0 - i / 3, PALM_RELAX))
    near_hole = np.linalg.norm(pos[:, None] - pos[rings["thumb_hole"][0]][None], axis=2).min(axis=1)
    weight = np.maximum(weight, 1.0 - smoothstep(near_hole / 15.0))
    weight[part == FIXED] = 0.0
    return weight


def _ring_vertices(b: _Builder, ch: Chain, st: np.ndarray, angles: np.ndarray, f: int, flat: float = 0.0):
    """A ring around a digit at stations st. With flat > 0 the rays start from a segment across the digit and
    lean toward the back and the palm, so that where the digit merges into the palm they stay over it."""
    fr = ch.frame(st)
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    anchor = ch.point(st) + flat * ch.radius(st)[:, None] * c * fr[:, 0]
    return b.add(anchor, (1 - flat) * c * fr[:, 0] + s * fr[:, 1], f, f, st)


def _palm(b: _Builder, spec: dict, chains: list, preview: np.ndarray, last: np.ndarray) -> list:
    """Palm rings from the forearm stub to the knuckle ring `last` (cast at `preview`). Each slot keeps its place
    around a stadium-shaped section (a core segment across the palm, rounded by the half-thickness)."""
    stub = spec["stub"][0]
    start = -stub + 0.8
    end = preview[:, 0].mean()
    x = stations(start, end, [end], fine=4.0, coarse=9.0, width=22.0)[:-1]
    g = (x - start) / (end - start)
    loop = np.append(preview[:, 1:], preview[:1, 1:], axis=0)
    steps = np.linalg.norm(np.diff(loop, axis=0), axis=1)
    sigma = np.concatenate([[0.0], np.cumsum(steps)[:-1]]) / steps.sum()  # the knuckle ring's arc length
    mcp = np.stack([c.points[0] for c in chains[:4]])
    hw, (h0, h1) = spec["wrist_half_breadth"][0], spec["palm_half_thick"]
    out = []
    for gr in g:
        dist = start + gr * (preview[:, 0] - start)
        t = np.clip(dist / mcp[:, 0].mean(), 0.0, 1.0)
        lo = (1 - t) * (-hw + 14.0) + t * (mcp[2, 1] + 3.0)
        hi = (1 - t) * (0.85 * hw - 14.0) + t * (mcp[0, 1] - 3.0)
        rho = (1 - t) * h0 + t * h1
        core, normal = _stadium(sigma, lo, hi, rho)
        w = smoothstep((gr - 0.5) / 0.5)
        core = (1 - w) * core + w * np.clip(preview[:, 1], lo, hi)
        anchor = np.stack([dist, core, np.zeros_like(dist)], axis=1)
        direction = np.stack([np.zeros_like(dist), normal[:, 0], normal[:, 1]], axis=1)
        ids = b.add(anchor, direction, PALM, -1, dist)
        if out:
            b.strip(out[-1], ids, PALM_CHART)
        out.append(ids)
    b.strip(out[-1], last, PALM_CHART)
    out.append(last)
    return out


def _stadium(sigma: np.ndarray, lo: np.ndarray, hi: np.ndarray, rho: np.ndarray) -> tuple:
    """Points at perimeter fraction sigma around a stadium in the rad-dor plane, counter-clockwise from its
    radial end: the rad of the nearest core point, and the outward normal (rad, dor)."""
    w = hi - lo
    per = 2 * w + 2 * np.pi * rho
    u = sigma * per
    q = np.pi * rho / 2
    ends = np.stack([q, q + w, 3 * q + w, 3 * q + 2 * w], axis=1)
    seg = np.sum(u[:, None] >= ends, axis=1)
    alpha = np.select([seg == 0, seg == 2, seg == 4],
                      [u / rho, np.pi / 2 + (u - q - w) / rho, 3 * np.pi / 2 + (u - 3 * q - 2 * w) / rho], 0.0)
    core = np.select([seg == 1, seg == 2, seg == 3], [hi - (u - q), lo, lo + (u - 3 * q - w)], hi)
    normal = np.stack([np.cos(alpha), np.sin(alpha)], axis=1)
    normal[seg == 1] = (0.0, 1.0)
    normal[seg == 3] = (0.0, -1.0)
    return core, normal


def _thumb_hole(b: _Builder, palm: list, pos: np.ndarray, ch: Chain) -> np.ndarray:
    """Open the block of palm quads where the thumb leaves the palm and return its rim of RING vertices, ordered
    counter-clockwise about the outward normal.

    Of all blocks whose rim winds once around the thumb's axis, the one whose rim lies most nearly in one cross
    section of the thumb (least spread along its axis) wins.
    """
    best = None
    n = len(palm[0])
    for nr in range(1, RING // 2):
        ns = RING // 2 - nr
        for r in range(1, len(palm) - 1 - nr):
            for j in range(n):
                sl = [(j + i) % n for i in range(ns + 1)]
                rim = [palm[r][k] for k in sl] + [palm[i][sl[-1]] for i in range(r + 1, r + nr + 1)]
                rim += [palm[r + nr][k] for k in sl[-2::-1]] + [palm[i][sl[0]] for i in range(r + nr - 1, r, -1)]
                p = pos[rim]
                s = float(np.mean((p - ch.points[0]) @ ch.frames[0][2]))
                fr = ch.frame(np.array([s]))[0]
                rel = p - ch.point(np.array([s]))[0]
                ang = np.arctan2(rel @ fr[1], rel @ fr[0])
                turns = np.angle(np.exp(1j * np.diff(np.append(ang, ang[0])))).sum() / (2 * np.pi)
                spread = np.std(rel @ fr[2])
                if round(turns) == 1 and (best is None or spread < best[0]):
                    best = (spread, rim, [(i, k) for i in range(r, r + nr) for k in sl[:-1]])
    if best is None:
        raise RuntimeError("builtin hand: no block of the palm surrounds the thumb")
    _, rim, cells = best
    b.drop({frozenset((palm[i][k], palm[i][(k + 1) % n], palm[i + 1][k], palm[i + 1][(k + 1) % n]))
            for i, k in cells})
    return np.array(rim)


def _align_loop(loop: np.ndarray, pos: np.ndarray, ch: Chain, s: float) -> np.ndarray:
    """Rotate the loop so that its k-th vertex sits nearest the tube's angle ANGLES[k] (no twist)."""
    fr = ch.frame(np.array([s]))[0]
    rel = pos[loop] - ch.point(np.array([s]))[0]
    ang = np.arctan2(rel @ fr[1], rel @ fr[0])
    steps = np.angle(np.exp(1j * np.diff(np.append(ang, ang[0]))))
    if steps.sum() < 0:
        raise RuntimeError("builtin hand: the thumb's base loop runs the wrong way round")
    cost = [np.sum(1 - np.cos(ang - np.roll(ANGLES, k))) for k in range(RING)]
    return np.roll(loop, -int(np.argmin(cost)))


def _wrist_cap(b: _Builder, outer: np.ndarray, ring_pos: np.ndarray, stub: float) -> list:
    """A flat cap on the forearm stub: rings of 24, 12 and 6 vertices and a centre, on the cut plane."""
    centre = np.array([-stub, 0.0, 0.0])
    rings = [outer]
    src = ring_pos
    for scale in (0.7, 0.42, 0.18):
        src = 0.5 * (src[0::2] + src[1::2]) if len(rings) == 1 else src[0::2]
        pts = centre + scale * (src - centre) * np.array([0.0, 1.0, 1.0])
        rings.append(b.add(pts, np.zeros_like(pts), FIXED, -1, -stub))
        b.halve(rings[-2], rings[-1], WRIST_CHART, flip=True)
    rings.append(b.add(centre, np.zeros(3), FIXED, -1, -stub))
    b.fan(rings[-2], rings[-1][0], WRIST_CHART, flip=True)
    return rings[1:]


def _cap(b: _Builder, ch: Chain, ring: np.ndarray, f: int) -> list:
    """Cap rings on the fingertip sphere (12 -> 12 -> 6) and the pole."""
    r_tip = ch.radii[3]
    s_cap = ch.knots[3] - r_tip  # the sphere's centre
    centre = ch.point(np.array([s_cap]))
    fr = ch.frame(np.array([s_cap]))[0]
    rings = []
    for psi, n in ((np.radians(28.0), 12), (np.radians(56.0), 12), (np.radians(76.0), 6)):
        ang = ANGLES[:: RING // n]
        radial = np.cos(ang)[:, None] * fr[0] + np.sin(ang)[:, None] * fr[1]
        dirs = np.cos(psi) * radial + np.sin(psi) * fr[2]
        ids = b.add(np.repeat(centre, n, axis=0), dirs, f, f, s_cap + r_tip * psi)
        if n == len(ring):
            b.strip(ring, ids, f)
        else:
            b.halve(ring, ids, f)
        ring = ids
        rings.append(ids)
    pole = b.add(centre, fr[2], f, f, s_cap + r_tip * np.pi / 2)[0]
    b.fan(ring, pole, f)
    rings.append(np.array([pole]))
    return rings
