"""A small MANO-layout hand for tests: a hand-shaped skeleton (MANO kintree), rings of vertices around the
bones, random blend shapes and random skinning weights that sum to 1. Any vertex count works with the model."""

import numpy as np

PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
# Right hand, palm facing +z, fingers along +y, thumb towards +x. Joint 0 wrist; MCPs; tips last.
_FINGERS = {  # first joint id: (MCP x, bone lengths)
    1: (0.030, [0.040, 0.025, 0.020]),   # index
    4: (0.010, [0.045, 0.028, 0.021]),   # middle
    7: (-0.030, [0.032, 0.020, 0.018]),  # pinky
    10: (-0.010, [0.042, 0.026, 0.020]),  # ring
}
_THUMB = np.array([[0.025, 0.020, -0.005], [0.050, 0.045, -0.010], [0.065, 0.068, -0.012], [0.075, 0.088, -0.012]])
_TIP_ORDER = [13, 1, 4, 10, 7]  # the fingers of tip_ids: thumb, index, middle, ring, pinky


def skeleton() -> tuple[np.ndarray, np.ndarray]:
    """Rest joints (16, 3) and fingertips (5, 3) in tip_ids order."""
    joints = np.zeros((16, 3))
    tips = {}
    for first, (x, lengths) in _FINGERS.items():
        y = 0.09
        for k, length in enumerate(lengths):
            joints[first + k] = [x, y, 0.0]
            y += length
        tips[first] = [x, y, 0.0]
    joints[13:16] = _THUMB[:3]
    tips[13] = _THUMB[3]
    return joints, np.array([tips[f] for f in _TIP_ORDER])


def toy_params(seed: int = 0, ring: int = 6, side: str = "right") -> dict:
    """MANO-layout params (plain numpy) of the toy hand."""
    rng = np.random.default_rng(seed)
    joints, tips = skeleton()
    ends = [joints[j + 1] if j + 1 < 16 and PARENTS[j + 1] == j else None for j in range(16)]
    finger_tip = dict(zip([3, 6, 9, 12, 15], tips[[1, 2, 4, 3, 0]]))
    verts, owner = [], []
    blocks = []
    for j in range(16):
        start = joints[j]
        end = joints[4] if j == 0 else (ends[j] if ends[j] is not None else finger_tip[j])
        axis = (end - start) / np.linalg.norm(end - start)
        u = np.cross(axis, [0.0, 0.0, 1.0])
        u = u / np.linalg.norm(u) if np.linalg.norm(u) > 1e-9 else np.array([1.0, 0.0, 0.0])
        w = np.cross(axis, u)
        ang = np.linspace(0, 2 * np.pi, ring, endpoint=False)
        radius = 0.025 if j == 0 else 0.008
        for frac in (0.0, 0.5, 0.9):
            centre = start + frac * (end - start)
            for a in ang:
                verts.append(centre + radius * (np.cos(a) * u + np.sin(a) * w))
                owner.append(j)
            blocks.append((j, frac, len(verts) - ring, len(verts)))
    tip_ids = []
    for t in tips:
        tip_ids.append(len(verts))
        verts.append(t)
        owner.append(int(np.argmin(np.linalg.norm(joints - t, axis=1))))
    verts = np.array(verts)
    V = len(verts)
    J_regressor = np.zeros((16, V))
    for j, frac, a, b in blocks:
        if frac == 0.0:
            J_regressor[j, a:b] = 1.0 / (b - a)  # ring centred on the joint: the mean is the joint
    weights = np.zeros((V, 16))
    owner = np.array(owner)
    weights[np.arange(V), owner] = 1.0
    weights[np.arange(V), np.maximum(np.array(PARENTS)[owner], 0)] += 0.3 * rng.random(V)
    weights += 0.02 * rng.random((V, 16))
    weights /= weights.sum(1, keepdims=True)
    faces = np.stack([np.arange(V - 2), np.arange(1, V - 1), np.arange(2, V)], 1)
    comps, _ = np.linalg.qr(rng.normal(size=(45, 45)))
    kintree = np.stack([np.array(PARENTS) % 2**32, np.arange(16)])
    params = {
        "v_template": verts,
        "shapedirs": rng.normal(0, 0.004, (V, 3, 10)),
        "posedirs": rng.normal(0, 0.0005, (V, 3, 135)),
        "J_regressor": J_regressor,
        "weights": weights,
        "kintree_table": kintree,
        "f": faces,
        "hands_components": comps * np.linspace(0.8, 0.05, 45)[:, None],
        "hands_mean": np.tile([0.2, 0.0, 0.0], 15),  # a slight curl: +x bends the fingers towards the palm
        "tip_ids": np.array(tip_ids),
    }
    if side == "left":  # the mirror image x -> -x, poses mirrored as well
        params["v_template"] = params["v_template"] * [-1, 1, 1]
        params["shapedirs"] = params["shapedirs"] * np.array([-1, 1, 1])[:, None]
        params["hands_mean"] = params["hands_mean"] * np.tile([1, -1, -1], 15)
    return params
