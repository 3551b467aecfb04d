"""The built-in hand's pose space: a generated population of natural hand poses and its PCA (MANO's
`hands_components`, `hands_mean`).

Poses are drawn as anatomical angles per joint (flexion, spread, twist) from a few synergies: how closed the
hand is (all fingers together, the ring and little fingers most alike), how spread, and how far the thumb
opposes; plus whole families (open, relaxed, fist, pointing, pinch, V). Each joint's angles become one
axis-angle vector about its rest-pose anatomical axes (`joint_axes`), MANO's convention: a joint's rotation in
its parent's frame, which at rest is the model's frame. Limits follow reference.md.
"""

import numpy as np
from scipy.spatial.transform import Rotation

# per joint (15, MANO order without the wrist): (min, max) degrees of flexion, spread, twist
_FINGER = [((-15, 90), (-20, 20), (-5, 5)), ((0, 110), (-3, 3), (-3, 3)), ((0, 80), (-2, 2), (-2, 2))]
_THUMB = [((-15, 50), (-20, 45), (-30, 45)), ((0, 90), (-10, 10), (-5, 5)), ((0, 90), (-3, 3), (-3, 3))]
LIMITS = np.radians(np.array(_FINGER * 4 + _THUMB, dtype=float))  # (15, 3, 2)
_SPREAD = np.radians([10.0, 2.0, -14.0, -7.0])  # MCP spread of a fully spread hand: index, middle, pinky, ring
CMC_ROLL = np.radians(40.0)  # the thumb CMC's flexion axis, turned about the bone from the hinges' axis


def joint_axes(frames: list) -> np.ndarray:
    """(15, 3, 3) rows flexion, spread, twist axes of MANO joints 1-15 at rest, from the skeleton's bone frames
    (rows lateral, dorsal, axial): flexion turns about the lateral axis (curling toward the palm), spread about
    the dorsal axis, twist about the bone. The thumb's hinges (MCP, IP) curl it toward its pad; its CMC swings
    it out in front of the palm (that frame is turned CMC_ROLL further about the bone toward the thumbnail)."""
    axes = np.stack([frames[f][b] for f in range(5) for b in range(3)])
    c, s = np.cos(CMC_ROLL), np.sin(CMC_ROLL)
    lateral, dorsal, axial = axes[12]
    axes[12] = [c * lateral + s * dorsal, c * dorsal - s * lateral, axial]
    return axes


def sample_angles(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 15, 3) radians of flexion, spread and twist per joint."""
    # families: 0 any, 1 closing to a fist, 2 open, 3 pointing, 4 pinch, 5 V sign
    family = rng.choice(6, size=n, p=[0.35, 0.2, 0.15, 0.1, 0.1, 0.1])
    close = np.select([family == 1, family == 2], [rng.uniform(0.55, 1.0, n), rng.uniform(0.0, 0.25, n)],
                      rng.uniform(0.0, 0.7, n))
    per = np.clip(close[:, None] + 0.15 * rng.standard_normal((n, 4)), 0.0, 1.0)  # index, middle, pinky, ring
    per[:, 2] = np.clip(0.6 * per[:, 2] + 0.4 * per[:, 3], 0.0, 1.0)  # little and ring fingers move together
    curled, straight = rng.uniform(0.7, 1.0, (n, 4)), rng.uniform(0.0, 0.15, (n, 4))
    for fam, extended in ((3, [True, False, False, False]), (5, [True, True, False, False])):  # point, V
        per = np.where((family == fam)[:, None], np.where(extended, straight, curled), per)
    spread = np.clip(rng.normal(0.35, 0.35, n), -0.3, 1.0)
    spread = np.where(family == 5, rng.uniform(0.8, 1.0, n), spread)
    oppose = np.clip(0.6 * close + rng.normal(0.15, 0.25, n), 0.0, 1.0)
    oppose = np.where(family == 4, rng.uniform(0.7, 1.0, n), oppose)  # pinch
    per[:, 0] = np.where(family == 4, rng.uniform(0.3, 0.6, n), per[:, 0])

    ang = np.zeros((n, 15, 3))
    noise = rng.standard_normal((n, 15, 3))
    for f in range(4):
        c = per[:, f]
        ang[:, 3 * f, 0] = np.radians(85.0) * c + np.radians(6.0) * noise[:, 3 * f, 0] - np.radians(8.0) * (c < 0.1)
        ang[:, 3 * f + 1, 0] = np.radians(100.0) * c + np.radians(6.0) * noise[:, 3 * f + 1, 0]
        ang[:, 3 * f + 2, 0] = 0.7 * ang[:, 3 * f + 1, 0] + np.radians(5.0) * noise[:, 3 * f + 2, 0]
        ang[:, 3 * f, 1] = _SPREAD[f] * spread * (1.0 - 0.7 * c) + np.radians(2.0) * noise[:, 3 * f, 1]
        ang[:, 3 * f + 1:3 * f + 3, 1:] = np.radians(1.0) * noise[:, 3 * f + 1:3 * f + 3, 1:]
        ang[:, 3 * f, 2] = np.radians(2.0) * noise[:, 3 * f, 2]
    t = 12
    ang[:, t, 0] = np.radians(35.0) * oppose + np.radians(5.0) * noise[:, t, 0]
    ang[:, t, 1] = np.radians(25.0) * (spread - 0.5 * oppose) + np.radians(5.0) * noise[:, t, 1]
    ang[:, t, 2] = np.radians(30.0) * oppose + np.radians(5.0) * noise[:, t, 2]
    thumb_close = np.clip(0.5 * close + 0.5 * oppose + 0.1 * noise[:, t + 1, 2], 0.0, 1.0)
    ang[:, t + 1, 0] = np.radians(45.0) * thumb_close + np.radians(6.0) * noise[:, t + 1, 0]
    ang[:, t + 2, 0] = np.radians(60.0) * thumb_close + np.radians(8.0) * noise[:, t + 2, 0]
    ang[:, t + 1:, 1:] = np.radians(2.0) * noise[:, t + 1:, 1:]
    return np.clip(ang, LIMITS[:, :, 0], LIMITS[:, :, 1])


def angles_to_pose(angles: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """(n, 45) axis-angle hand poses: per joint the rotation flex, then spread, then twist about its axes."""
    n = len(angles)
    pose = np.zeros((n, 15, 3))
    for j in range(15):
        rot = Rotation.identity(n)
        for a in range(3):
            rot = rot * Rotation.from_rotvec(angles[:, j, a, None] * axes[j, a])
        pose[:, j] = rot.as_rotvec()
    return pose.reshape(n, 45)


def pose_pca(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """hands_components (45, 45): orthonormal rows by falling variance; hands_mean (45,)."""
    mean = poses.mean(axis=0)
    _, _, vh = np.linalg.svd(poses - mean, full_matrices=False)
    vh = vh * np.sign(vh[np.arange(len(vh)), np.argmax(np.abs(vh), axis=1)])[:, None]
    return vh, mean
