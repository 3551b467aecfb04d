"""The built-in hand's skeleton: joints, bone frames and radii from a handful of named proportions.

Hand coordinates, millimetres, right hand, a right-handed frame: `dist` points from the wrist toward the middle
fingertip, `rad` toward the thumb side, `dor` out of the back of the hand. The wrist joint is the origin.
`builtin.py` maps these to MANO's frame. A "spec" is a dict of numpy arrays (`MEAN_SPEC` is the mean adult hand);
`skeleton(spec)` turns one into geometry. Finger order everywhere: MANO's index, middle, pinky, ring, then thumb.
"""

import numpy as np

FINGERS = ("index", "middle", "pinky", "ring", "thumb")
A, L, D = np.eye(3)  # dist, rad, dor unit vectors

# Mean adult hand (about 185 mm long, 84 mm broad; reference.md). Per finger in FINGERS order (four fingers):
MEAN_SPEC = {
    "mcp": np.array([[85.0, 26.0, 1.0], [87.0, 6.5, 2.0], [75.0, -30.0, -1.0], [83.0, -13.5, 0.5]]),
    "splay": np.radians([7.0, 0.5, -14.0, -7.5]),  # finger direction toward rad, in the palm plane
    "phalanges": np.array([[41.0, 24.5, 22.0], [45.0, 28.5, 24.0], [32.0, 20.0, 21.0], [42.0, 27.5, 23.0]]),
    # lateral radius at MCP, PIP, DIP, tip, and the dorsal / palmar half-depths as fractions of it
    "radii": np.array([[9.9, 9.5, 8.4, 7.5], [10.3, 9.9, 8.7, 7.7], [8.7, 8.3, 7.4, 6.7], [9.7, 9.3, 8.2, 7.3]]),
    "depth": np.array([0.84, 1.0]),
    # thumb: CMC joint, bone lengths (metacarpal, proximal, distal to tip), abduction from `dist` toward `rad`
    # and tilt toward the palm per bone, nail roll toward `rad`
    "thumb_cmc": np.array([22.0, 18.0, -6.0]),
    "thumb_bones": np.array([45.0, 32.0, 28.0]),
    "thumb_abduct": np.radians([42.0, 34.0, 28.0]),
    "thumb_tilt": np.radians([8.0, 3.0, 0.0]),
    "thumb_roll": np.radians(55.0),
    "thumb_radii": np.array([13.0, 11.5, 10.6, 8.8]),
    # palm: half-thickness at the wrist and at the knuckles, wrist half-breadth, forearm stub length
    "palm_half_thick": np.array([17.0, 13.5]),
    "wrist_half_breadth": np.array([30.0]),
    "stub": np.array([20.0]),
}


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def bone_frame(axis: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """(3, 3) rows (lateral, dorsal, axial): a right-handed frame whose dorsal row is `dor` rolled toward `rad`."""
    a = unit(axis)
    d0 = unit(D - (D @ a) * a)
    l0 = np.cross(d0, a)
    d = np.cos(roll) * d0 + np.sin(roll) * l0
    return np.stack([np.cross(d, a), d, a])


def _thumb_direction(abduct: float, tilt: float) -> np.ndarray:
    return np.cos(tilt) * (np.cos(abduct) * A + np.sin(abduct) * L) - np.sin(tilt) * D


def skeleton(spec: dict) -> dict:
    """Geometry of one hand spec.

    Returns joints (16, 3) in MANO order, tips (5, 3) thumb..pinky as MANO's keypoints list them, and per finger
    (FINGERS order) `chains`: the 4 points joint1, joint2, joint3, tip; `frames` (3 bones, 3, 3); `radii` (4,)
    lateral radii at those points.
    """
    chains, frames, radii = [], [], []
    for f in range(4):
        a = np.cos(spec["splay"][f]) * A + np.sin(spec["splay"][f]) * L
        pts = [spec["mcp"][f]]
        for length in spec["phalanges"][f]:
            pts.append(pts[-1] + length * a)
        chains.append(np.stack(pts))
        frames.append(np.stack([bone_frame(a)] * 3))
        radii.append(spec["radii"][f])
    pts, fr = [spec["thumb_cmc"]], []
    for length, ab, ti in zip(spec["thumb_bones"], spec["thumb_abduct"], spec["thumb_tilt"]):
        a = _thumb_direction(ab, ti)
        pts.append(pts[-1] + length * a)
        fr.append(bone_frame(a, spec["thumb_roll"]))
    chains.append(np.stack(pts))
    frames.append(np.stack(fr))
    radii.append(spec["thumb_radii"])
    joints = np.concatenate([np.zeros((1, 3))] + [c[:3] for c in chains])
    tip_order = [4, 0, 1, 3, 2]  # thumb, index, middle, ring, pinky
    tips = np.stack([chains[f][3] for f in tip_order])
    return {"joints": joints, "tips": tips, "chains": chains, "frames": frames, "radii": radii}
