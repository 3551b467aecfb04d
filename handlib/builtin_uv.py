"""The built-in hand's UV atlas: charts unrolled from the mesh's rings, laid out in [0, 1]^2 at one scale.

Each digit is unrolled about its axis with the seam along the palmar midline (nail in the middle of the chart),
the palm about the hand's axis with the seam along its ulnar edge (palmar half left, dorsal half right), and the
wrist cap is projected flat. u runs round a ring, v along the digit or the hand (millimetres before the layout),
so a texture painted once fits every shape and pose: the charts belong to the topology, not the geometry.
"""

import numpy as np

from handlib.builtin_mesh import PALM_CHART, WRIST_CHART, Chain

SEAM = {PALM_CHART: 0.5}  # ring fraction of each chart's seam: the palm's ulnar edge (slot 24 of 48)
DIGIT_SEAM = 0.75  # a digit's palmar midline (angle 270 degrees)
GUTTER = 4.0  # mm between charts
RIM_GAP = 5.0  # mm in the thumb's chart between the rim of the palm's hole and the thumb's first ring


def _unwrap(u: np.ndarray) -> np.ndarray:
    """Per face, move corners across the seam so that no face spans the whole chart; poles (NaN) take the
    mean of the face's other corners."""
    u = u.copy()
    wide = np.nanmax(u, axis=1) - np.nanmin(u, axis=1) > 0.5
    u[wide] = np.where(u[wide] < 0.5, u[wide] + 1.0, u[wide])
    pole = np.isnan(u)
    u[pole] = np.broadcast_to(np.nanmean(u, axis=1, keepdims=True), u.shape)[pole]
    return u


def _ring_perimeter(pos: np.ndarray, rings: list) -> float:
    loops = [r[r >= 0] for r in rings if np.sum(r >= 0) > 2]
    return float(np.mean([np.linalg.norm(pos[r] - pos[np.roll(r, -1)], axis=1).sum() for r in loops]))


def chart_coordinates(mesh: dict) -> np.ndarray:
    """(F, 3, 2) millimetre coordinates of every face corner in its own chart, from where the vertices were
    cast (their structured places, before the junctions were evened out)."""
    pos, faces, chart, param = mesh["cast_vertices"], mesh["faces"], mesh["chart"], mesh["corner_param"]
    skel, rings = mesh["skeleton"], mesh["rings"]
    uv = np.zeros(faces.shape + (2,))
    for c in np.unique(chart):
        m = chart == c
        corner = pos[faces[m]]  # (n, 3, 3)
        if c == WRIST_CHART:
            uv[m] = corner[..., [2, 1]]
            continue
        seam = SEAM.get(c, DIGIT_SEAM)
        u = _unwrap(np.mod(param[m] - seam, 1.0))
        if c == PALM_CHART:
            uv[m, :, 0] = u * _ring_perimeter(pos, rings["palm"])
            uv[m, :, 1] = corner[..., 0]
        else:
            ch = Chain(skel["chains"][c], skel["frames"][c], skel["radii"][c])
            own = mesh["digit"][faces[m]] == c
            # the corners of other parts: a web's place along the finger; the thumb's rim, one line before it
            if c < 4:
                other = (corner - ch.points[0]) @ ch.frames[0][2]
            else:
                other = mesh["station"][mesh["digit"] == c].min() - RIM_GAP
            uv[m, :, 0] = u * _ring_perimeter(pos, rings[f"digit{c}"])
            uv[m, :, 1] = np.where(own, mesh["station"][faces[m]], other)
    return uv


def atlas(mesh: dict) -> tuple[np.ndarray, np.ndarray]:
    """vt (T, 2) in [0, 1] and ft (F, 3): the four fingers in a row with the palm above them, the thumb and the
    wrist cap in a column beside them, all at one scale."""
    faces, chart = mesh["faces"], mesh["chart"]
    uv = chart_coordinates(mesh)
    lo = {c: uv[chart == c].reshape(-1, 2).min(axis=0) for c in np.unique(chart)}
    size = {c: uv[chart == c].reshape(-1, 2).max(axis=0) - lo[c] for c in lo}
    offset, x = {}, 0.0
    for c in (0, 1, 3, 2):  # index, middle, ring, pinky
        offset[c] = np.array([x, 0.0])
        x += size[c][0] + GUTTER
    offset[PALM_CHART] = np.array([0.0, max(size[c][1] for c in offset) + GUTTER])
    x = max(x, size[PALM_CHART][0] + GUTTER)
    offset[4], offset[WRIST_CHART] = np.array([x, 0.0]), np.array([x, size[4][1] + GUTTER])
    extent = max(x + max(size[4][0], size[WRIST_CHART][0]) + GUTTER,
                 offset[PALM_CHART][1] + size[PALM_CHART][1] + GUTTER,
                 offset[WRIST_CHART][1] + size[WRIST_CHART][1] + GUTTER)
    out = np.empty_like(uv)
    for c in lo:
        m = chart == c
        out[m] = (uv[m] - lo[c] + offset[c] + GUTTER / 2) / extent
    keys = np.concatenate([faces.reshape(-1, 1), chart.repeat(3)[:, None], np.round(out.reshape(-1, 2) * 1e7)], 1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return out.reshape(-1, 2)[first], inverse.reshape(faces.shape)
