"""Procedural skin textures in the common UV atlas, for the four 11K Hands skinColor classes.

The regions (palm side, nails, creases, knuckles) are not hand-drawn UV boxes: every atlas texel gets the rest
position and normal of the surface point mapped onto it (the faces rasterised in UV space through vt/ft), and
each region is a function of that point relative to the rest skeleton. So the same code fits any mesh that
carries a UV atlas, and the regions follow the geometry. Texels outside every UV triangle copy their nearest
covered texel, so bilinear lookups at island borders do not bleed background into the skin.

Image convention: row 0 of an atlas is v = 1 (the top of UV space), column 0 is u = 0.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


SKIN_CLASSES = ("very fair", "fair", "medium", "dark")  # 11K Hands skinColor values
# Back-of-hand colour (sRGB, 0..1) at the centre of each class, and how much lighter the palm is (0: not at all).
_BASE = np.array([[0.90, 0.76, 0.68], [0.84, 0.66, 0.54], [0.70, 0.50, 0.37], [0.42, 0.28, 0.20]], np.float32)
_PALM_LIGHTER = np.array([0.35, 0.35, 0.42, 0.58], np.float32)
_PALM_TINT = np.array([0.98, 0.84, 0.78], np.float32)
_NAIL_TINT = np.array([0.93, 0.78, 0.76], np.float32)
_NAIL_EDGE = np.array([0.96, 0.93, 0.88], np.float32)

NOISE_FIELDS, NOISE_SEED = 12, 7  # the atlas's noise fields (a texture mixes a few of them)

# MANO joint numbers (handlib.joints.MANO_JOINT_NAMES)
_WRIST, _INDEX, _MIDDLE, _PINKY, _RING, _THUMB = 0, 1, 4, 7, 10, 13
_FINGER_BASES = (_THUMB, _INDEX, _MIDDLE, _RING, _PINKY)  # in tip_ids order: thumb, index, middle, ring, pinky


@dataclass(frozen=True)
class SkinAtlas:
    """Region maps (S, S) in [0, 1] of one mesh's UV atlas, from its rest geometry."""

    size: int
    covered: np.ndarray    # (S, S) bool: texel inside some UV triangle
    position: np.ndarray   # (S, S, 3) rest position of the surface point of each texel, metres
    normal: np.ndarray     # (S, S, 3) its outward unit normal
    palm: np.ndarray       # palmar side (1) vs back of the hand (0), smooth across the sides
    nail: np.ndarray       # nail plate
    nail_tip: np.ndarray   # the nail's free edge (whiter)
    crease: np.ndarray     # flexion creases and palm lines (darker)
    knuckle: np.ndarray    # back of the knuckles (pigmented on darker skin)
    noise: np.ndarray      # (K, S, S) smooth noise fields of unit variance, continuous across UV seams


def rasterize_uv(vt: np.ndarray, ft: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Face index (S, S) (-1 where none; the first face where several overlap) and barycentric weights (S, S, 3)
    of each atlas texel centre."""
    corners = np.stack([vt[:, 0] * size - 0.5, (1 - vt[:, 1]) * size - 0.5], axis=1)[ft]  # (F, 3, 2) pixels
    lo = np.clip(np.floor(corners.min(1)), 0, size - 1).astype(np.int64)                  # (F, 2) bounding boxes
    hi = np.clip(np.ceil(corners.max(1)), 0, size - 1).astype(np.int64)
    width, height = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    # every texel of every face's bounding box, face by face
    counts = width * height
    face = np.repeat(np.arange(len(ft)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    xs, ys = lo[face, 0] + local % width[face], lo[face, 1] + local // width[face]
    a, b, c = (corners[face, k] for k in range(3))
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    ok = np.abs(area) > 1e-12
    area = np.where(ok, area, 1.0)
    w1 = ((xs - a[:, 0]) * (c[:, 1] - a[:, 1]) - (ys - a[:, 1]) * (c[:, 0] - a[:, 0])) / area
    w2 = ((b[:, 0] - a[:, 0]) * (ys - a[:, 1]) - (b[:, 1] - a[:, 1]) * (xs - a[:, 0])) / area
    w = np.stack([1 - w1 - w2, w1, w2], axis=-1)
    inside = np.flatnonzero(ok & (w >= -1e-9).all(-1))
    texel = ys[inside] * size + xs[inside]
    _, first = np.unique(texel, return_index=True)  # candidates come in face order: the first face wins
    pick = inside[first]
    out_face = np.full(size * size, -1, np.int64)
    out_bary = np.zeros((size * size, 3))
    out_face[texel[first]], out_bary[texel[first]] = face[pick], w[pick]
    return out_face.reshape(size, size), out_bary.reshape(size, size, 3)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3), oriented outwards whatever the faces' winding."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    if ((vertices - vertices.mean(0)) * n).sum() < 0:  # inward winding (e.g. a mirrored left hand)
        n = -n
    return n


def bake_surface(vertices: np.ndarray, faces: np.ndarray, vt: np.ndarray, ft: np.ndarray,
                 size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(covered (S, S) bool, position (S, S, 3), normal (S, S, 3)): the surface point of each atlas texel;
    texels outside every UV triangle take their nearest covered texel's point (padding against bleeding)."""
    faces, ft = np.asarray(faces, np.int64), np.asarray(ft, np.int64)
    face, bary = rasterize_uv(np.asarray(vt, np.float64), ft, size)
    covered = face >= 0
    if not covered.any():
        raise ValueError("no face of the UV atlas covers a texel: are vt in [0, 1]?")
    normals = vertex_normals(vertices, faces)
    f = np.where(covered, face, 0)
    position = np.einsum("hwk,hwkc->hwc", bary, vertices[faces[f]])
    normal = np.einsum("hwk,hwkc->hwc", bary, normals[faces[f]])
    nearest = ndimage.distance_transform_edt(~covered, return_distances=False, return_indices=True)
    position, normal = position[nearest[0], nearest[1]], normal[nearest[0], nearest[1]]
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-12
    return covered, position, normal


def bake_atlas(vertices: np.ndarray, faces: np.ndarray, vt: np.ndarray, ft: np.ndarray, joints: np.ndarray,
               tip_ids: np.ndarray, side: str, size: int = 256) -> SkinAtlas:
    """Region maps of a mesh at rest: vertices (V, 3), faces/ft (F, 3), vt (T, 2), joints (16, 3) MANO order,
    tip_ids (5,) thumb..pinky, side 'right' or 'left'."""
    vertices, joints = np.asarray(vertices, np.float64), np.asarray(joints, np.float64)
    covered, position, normal = bake_surface(vertices, faces, vt, ft, size)
    tips = vertices[np.asarray(tip_ids)]
    maps = _regions(position.reshape(-1, 3), normal.reshape(-1, 3), joints, tips, side)
    maps = {k: v.reshape(size, size).astype(np.float32) for k, v in maps.items()}
    noise = np.stack([_smooth_noise(position, np.random.default_rng([NOISE_SEED, k]), wavelength=w, terms=6)
                      for k, w in enumerate(np.repeat([0.02, 0.035, 0.06], NOISE_FIELDS // 3))]).astype(np.float32)
    return SkinAtlas(size, covered, position.astype(np.float32), normal.astype(np.float32), noise=noise, **maps)


def model_atlas(model, size: int = 256) -> SkinAtlas | None:
    """The region maps of a HandModel's atlas, from its template (zero articulation); None without UVs."""
    if model.vt is None:
        return None
    vertices = model.v_template.detach().cpu().double().numpy()
    joints = model.J_regressor.detach().cpu().double().numpy() @ vertices
    return bake_atlas(vertices, model.faces.cpu().numpy(), model.vt.cpu().numpy(), model.ft.cpu().numpy(), joints,
                      model.tip_ids.cpu().numpy(), model.side, size)


def palm_frame(joints: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (radial, up, palm) of a rest skeleton: towards the thumb, wrist -> middle MCP, out of the palm."""
    up = _unit(joints[_MIDDLE] - joints[_WRIST])
    radial = joints[_INDEX] - joints[_PINKY]
    radial = _unit(radial - (radial @ up) * up)
    # right hand, palm to the viewer, fingers up: the thumb points right, so palm = radial × up
    palm = np.cross(radial, up) * (1.0 if side == "right" else -1.0)
    return radial, up, palm


def _regions(p: np.ndarray, n: np.ndarray, joints: np.ndarray, tips: np.ndarray, side: str) -> dict:
    radial, up, palm_dir = palm_frame(joints, side)
    palm = _smoothstep(-0.25, 0.35, n @ palm_dir)
    nail, nail_tip = np.zeros(len(p)), np.zeros(len(p))
    crease, knuckle = np.zeros(len(p)), np.zeros(len(p))
    for finger, base in enumerate(_FINGER_BASES):
        chain = [joints[base], joints[base + 1], joints[base + 2], tips[finger]]  # MCP (CMC), PIP, DIP, tip
        last, tip = chain[2], chain[3]
        axis = _unit(tip - last)
        length = np.linalg.norm(tip - last)
        along = (p - last) @ axis / length                 # 0 at the last joint, 1 at the tip
        off = (p - last) - np.outer(along * length, axis)  # radial offset from the bone
        dist = np.linalg.norm(off, axis=1)
        dorsal = _unit(-(palm_dir - (palm_dir @ axis) * axis))
        facing = off @ dorsal / (dist + 1e-9)              # 1 straight on the back of the finger
        near = dist < 0.6 * length
        plate = _smoothstep(0.30, 0.45, along) * _smoothstep(1.0, 0.9, along) * _smoothstep(0.45, 0.65, facing)
        nail = np.maximum(nail, plate * near)
        nail_tip = np.maximum(nail_tip, plate * near * _smoothstep(0.86, 0.94, along))
        # palmar flexion creases at the joints between phalanges, and where a finger meets the palm
        folds = [(chain[1], chain[2], 0.0), (chain[2], tip, 0.0)]
        if base != _THUMB:
            folds.append((chain[0], chain[1], 0.35))
        for a, b, at in folds:
            bone = _unit(b - a)
            centre = a + at * (b - a)
            s = (p - centre) @ bone
            r = np.linalg.norm((p - centre) - np.outer(s, bone), axis=1)
            line = np.exp(-0.5 * (s / 0.0009) ** 2) * (r < 0.35 * np.linalg.norm(b - a) + 0.006)
            crease = np.maximum(crease, line * palm)
        for joint in chain[1:3] if base == _THUMB else chain[:2]:  # MCP and PIP; the thumb's MCP and IP
            knuckle = np.maximum(knuckle, np.exp(-0.5 * (np.linalg.norm(p - joint, axis=1) / 0.008) ** 2))
    crease = np.maximum(crease, _palm_lines(p, joints, radial, up) * _smoothstep(0.5, 0.8, palm))
    return {"palm": palm, "nail": nail, "nail_tip": nail_tip, "crease": crease, "knuckle": knuckle * (1 - palm)}


def _palm_lines(p: np.ndarray, joints: np.ndarray, radial: np.ndarray, up: np.ndarray) -> np.ndarray:
    """The three main palm lines (distal and proximal transverse, thenar) as thin lines in the palm plane,
    placed by the metacarpal heads, the thumb's base and the wrist."""
    def plane(x):  # (…, 3) -> (…, 2) palm-plane coordinates
        return np.stack([(x - joints[_WRIST]) @ radial, (x - joints[_WRIST]) @ up], axis=-1)

    w, mi, mm, mr, mp, tc = (plane(joints[j]) for j in (_WRIST, _INDEX, _MIDDLE, _RING, _PINKY, _THUMB))
    width = mi[0] - mp[0]                                    # palm breadth at the metacarpal heads
    lerp = lambda a, b, t: a + t * (b - a)                   # noqa: E731
    ulnar, rad = np.array([-0.12 * width, 0.0]), np.array([0.12 * width, 0.0])
    lines = [
        [lerp(mp, w, 0.22) + ulnar, lerp(mr, w, 0.22), lerp(mm, w, 0.16), lerp(lerp(mi, mm, 0.5), w, 0.08)],
        [lerp(mi, w, 0.30) + rad, lerp(mm, w, 0.40), lerp(mr, w, 0.48), lerp(mp, w, 0.52)],
        [lerp(mi, w, 0.30) + rad, lerp(lerp(mm, tc, 0.45), w, 0.45), lerp(lerp(mm, tc, 0.3), w, 0.8),
         lerp(w, tc, 0.25)],
    ]
    q = plane(p)
    dist = np.min([_polyline_distance(q, np.array(line)) for line in lines], axis=0)
    return np.exp(-0.5 * (dist / 0.0008) ** 2)


def _polyline_distance(q: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance (N,) of points q (N, 2) to the polyline through line (K, 2)."""
    best = np.full(len(q), np.inf)
    for a, b in zip(line[:-1], line[1:]):
        t = np.clip((q - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
        best = np.minimum(best, np.linalg.norm(q - a - t[:, None] * (b - a), axis=1))
    return best


def skin_colour(rng: np.random.Generator, skin_class: int) -> np.ndarray:
    """A random back-of-hand colour (3,) in [0, 1] of class `skin_class` (index into SKIN_CLASSES)."""
    return np.clip(_BASE[skin_class] * rng.uniform(0.9, 1.07) * (1 + rng.normal(0, 0.025, 3)), 0, 1)


def skin_texture(atlas: SkinAtlas, rng: np.random.Generator, skin_class: int) -> np.ndarray:
    """A random skin texture (S, S, 3) uint8 of class `skin_class` (index into SKIN_CLASSES).

    Varies the tone within the class, the palm's lightening, mottling and redness (random mixes of the atlas's
    noise fields), crease depth, knuckle pigmentation, nail colour and, now and then, nail polish.
    """
    base = skin_colour(rng, skin_class).astype(np.float32)
    palm_colour = base + rng.uniform(0.7, 1.3) * _PALM_LIGHTER[skin_class] * (_PALM_TINT - base)
    picks = rng.choice(len(atlas.noise), 4, replace=False)
    amp = (rng.uniform(0, 1, 4) * [0.04, 0.02, 0.03, 0.02]).astype(np.float32)  # mottling, then redness
    knuckle_depth = rng.uniform(0.05, 0.15) * (0.4 + skin_class / 3)
    # made once per person (then cached) but a few ms each: in-place, one channel at a time, few temporaries
    shade = atlas.knuckle * np.float32(-knuckle_depth)                                   # (S, S)
    shade += 1
    shade -= np.float32(rng.uniform(0.1, 0.25)) * atlas.crease
    shade += amp[0] * atlas.noise[picks[0]]
    shade += amp[1] * atlas.noise[picks[1]]
    red = np.maximum(atlas.noise[picks[2]], 0)
    red *= amp[2]
    red += amp[3] * np.maximum(atlas.noise[picks[3]], 0)
    colour = np.empty((*shade.shape, 3), np.float32)                                     # (S, S, 3)
    for c, redness in enumerate((1.0, -0.3, -0.5)):
        channel = atlas.palm * (palm_colour[c] - base[c])
        channel += base[c]
        channel *= shade
        channel += np.float32(redness) * red
        colour[..., c] = channel
    if rng.random() < 0.1:  # nail polish
        nail = edge = rng.uniform(0.05, 0.9, 3).astype(np.float32)
    else:
        nail, edge = base + rng.uniform(0.5, 0.8) * (_NAIL_TINT - base), _NAIL_EDGE
    on = atlas.nail > 0  # few texels: blend the nails only there
    plate = nail + atlas.nail_tip[on][:, None] * (edge - nail)
    colour[on] += atlas.nail[on][:, None] * (plate - colour[on])
    np.clip(colour, 0, 1, out=colour)
    colour *= 255
    colour += 0.5
    return colour.astype(np.uint8)


def _smooth_noise(position: np.ndarray, rng: np.random.Generator, wavelength: float, terms: int) -> np.ndarray:
    """Smooth noise of unit variance over 3D points (..., 3): a sum of random plane waves, so it is continuous
    on the surface even across UV seams."""
    k = rng.normal(size=(terms, 3)).astype(np.float32)
    k *= (2 * np.pi / wavelength) * rng.uniform(0.6, 1.4, (terms, 1)).astype(np.float32) / np.linalg.norm(
        k, axis=1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, terms).astype(np.float32)
    return np.sin(position @ k.T + phase).sum(-1) / np.sqrt(terms / 2)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0, 1)
    return t * t * (3 - 2 * t)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
