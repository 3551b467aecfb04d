"""The built-in hand's pose correctives (MANO's posedirs), learned from dual-quaternion skinning.

Linear blend skinning folds the skin inward at a bent joint and loses volume there; dual-quaternion skinning
blends the bones' rigid motions instead and does not. For a set of training poses (every joint bent alone over
its range, and natural poses) we take the dual-quaternion result as the ideal, carry it back into the rest pose
through each vertex's blended LBS transform, and fit posedirs: the linear map from MANO's pose feature
(R_k - I for joints 1-15) to those rest-pose displacements (ridge least squares). Then MANO's own formula,
LBS(T + B_P(theta)), reproduces dual-quaternion skinning closely, in any MANO implementation.
"""

import numpy as np
from scipy.spatial.transform import Rotation

PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]


def world_transforms(pose: np.ndarray, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (16, 3, 3) and translations (16, 3) of the skinning transforms x -> R x + t for one pose
    (16, 3) axis-angle (joint 0 global) about rest joints (16, 3)."""
    local = Rotation.from_rotvec(pose).as_matrix()
    rot, pos = np.zeros((16, 3, 3)), np.zeros((16, 3))
    rot[0], pos[0] = local[0], joints[0]
    for k in range(1, 16):
        p = PARENTS[k]
        rot[k] = rot[p] @ local[k]
        pos[k] = pos[p] + rot[p] @ (joints[k] - joints[p])
    return rot, pos - np.einsum("kij,kj->ki", rot, joints)


def _qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Quaternion products (w, x, y, z), broadcasting."""
    w1, v1, w2, v2 = a[..., :1], a[..., 1:], b[..., :1], b[..., 1:]
    return np.concatenate([w1 * w2 - np.sum(v1 * v2, -1, keepdims=True),
                           w1 * v2 + w2 * v1 + np.cross(v1, v2)], -1)


def dual_quaternion_skinning(vertices: np.ndarray, weights: np.ndarray, rot: np.ndarray, transl: np.ndarray):
    """Vertices (V, 3) moved by the per-vertex blend of the joints' rigid transforms as dual quaternions."""
    xyzw = Rotation.from_matrix(rot).as_quat()
    real = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], 1)  # (16, 4) w, x, y, z
    dual = 0.5 * _qmul(np.concatenate([np.zeros((16, 1)), transl], 1), real)
    ref = real[np.argmax(weights, axis=1)]  # (V, 4): blend in the dominant joint's hemisphere
    w = weights * np.sign(ref @ real.T + 1e-12)
    br, bd = w @ real, w @ dual
    norm = np.linalg.norm(br, axis=1, keepdims=True)
    br, bd = br / norm, bd / norm
    conj = br * np.array([1.0, -1.0, -1.0, -1.0])
    moved = _qmul(_qmul(br, np.concatenate([np.zeros((len(vertices), 1)), vertices], 1)), conj)[:, 1:]
    return moved + 2.0 * _qmul(bd, conj)[:, 1:]


def corrective(vertices: np.ndarray, weights: np.ndarray, joints: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(V, 3) rest-pose displacement that makes LBS of one pose land on dual-quaternion skinning."""
    rot, transl = world_transforms(pose, joints)
    target = dual_quaternion_skinning(vertices, weights, rot, transl)
    a = np.einsum("vk,kij->vij", weights, rot)
    b = weights @ transl
    return np.linalg.solve(a, (target - b)[..., None])[..., 0] - vertices


def pose_feature(pose: np.ndarray) -> np.ndarray:
    """(135,) MANO's pose feature: R_k - I flattened for joints 1-15."""
    return (Rotation.from_rotvec(pose[1:]).as_matrix() - np.eye(3)).reshape(-1)


def _relevant_joints(influence: frozenset) -> list[int]:
    """Joints whose local rotation changes a vertex's corrective: those between the vertex's influencing joints
    and their deepest common ancestor (a rotation shared by all of them moves the vertex rigidly)."""
    paths = []
    for k in influence:
        path = [k]
        while PARENTS[path[-1]] >= 0:
            path.append(PARENTS[path[-1]])
        paths.append(path[::-1])
    depth = 0
    while all(len(p) > depth + 1 and p[depth + 1] == paths[0][depth + 1] for p in paths):
        depth += 1
    return sorted({j for p in paths for j in p[depth + 1:]})


def fit_posedirs(vertices: np.ndarray, weights: np.ndarray, joints: np.ndarray, poses: np.ndarray,
                 ridge: float = 1e-3, influence: float = 1e-3) -> np.ndarray:
    """posedirs (V, 3, 135) fitted to the corrective of each training pose (N, 16, 3). Each vertex's row uses
    only the features of its relevant joints (local, as MANO's), so a bend moves nothing beyond its reach."""
    feats = np.stack([pose_feature(p) for p in poses])  # (N, 135)
    disp = np.stack([corrective(vertices, weights, joints, p) for p in poses])  # (N, V, 3)
    posedirs = np.zeros((len(vertices), 3, feats.shape[1]))
    groups = {}
    for v, w in enumerate(weights):
        groups.setdefault(frozenset(np.flatnonzero(w > influence).tolist()), []).append(v)
    for infl, verts in groups.items():
        cols = [9 * (j - 1) + i for j in _relevant_joints(infl) if j > 0 for i in range(9)]
        if not cols:
            continue
        f = feats[:, cols]
        target = disp[:, verts].reshape(len(poses), -1)
        coef = np.linalg.solve(f.T @ f + ridge * len(poses) * np.eye(len(cols)), f.T @ target)
        posedirs[np.ix_(verts, range(3), cols)] = coef.T.reshape(len(verts), 3, len(cols))
    return posedirs


def training_poses(axes: np.ndarray, natural: np.ndarray) -> np.ndarray:
    """(N, 16, 3) poses to learn from: each joint alone, flexed from -15 to 90 degrees and spread +-15 about
    its axes (15, 3, 3), then natural whole-hand poses (n, 45); the global rotation is zero."""
    poses = []
    for j in range(15):
        for axis, degrees in ((0, (-15, 20, 45, 70, 90)), (1, (-15, 15))):
            for deg in degrees:
                q = np.zeros((16, 3))
                q[j + 1] = np.radians(deg) * axes[j, axis]
                poses.append(q)
    natural = np.concatenate([np.zeros((len(natural), 1, 3)), natural.reshape(-1, 15, 3)], axis=1)
    return np.concatenate([np.array(poses), natural])
