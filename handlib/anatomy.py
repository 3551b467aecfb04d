"""Anatomical joint limits: each joint's rotation split into twist, spread and bend in its own anatomical frame.

A MANO joint's axis-angle rotates about axes of the rest pose (its parent frame there is the world frame), so
each joint gets a fixed frame from the rest skeleton (β = 0):
  twist  t: along the bone, from the joint to its child (the fingertip vertex for the last joint),
  bend   b: t × n with n the palm normal pointing out of the palm, so a positive bend curls towards the palm,
  spread s: the palm normal made perpendicular to t, signed so that a positive spread moves the bone towards the
            thumb side (radial abduction; for the thumb, away from the index finger).
The thumb's nail faces partly sideways, so its three joints flex about an axis rolled THUMB_ROLL_DEG about the
bone from that of the fingers (the built-in hand's thumb_roll, builtin_skeleton).
The rotation is split as R = R_swing(spread·s + bend·b) · R_twist(twist·t) (swing-twist decomposition), which
is exact, differentiable and independent of any Euler order. Limits are those of reference.md (manotorch's
anatomy loss), in degrees, and apply to the articulation the mesh shows: hand_pose plus the model's mean pose
when the model is not `flat_hand_mean`.
"""

import math

import numpy as np
import torch

# (twist, spread, bend) limits in degrees per MANO joint 1..15 (reference.md, "Anatomical limits").
# Where reference.md names no range (finger MCP twist, thumb MCP twist, thumb IP spread/twist) the joint is
# treated like the PIP/DIP joints: no rotation that way.
_FINGER_MCP = ((0, 0), (-5, 5), (0, 90))
_HINGE = ((0, 0), (0, 0), (0, 90))
LIMITS_DEG = np.array([
    _FINGER_MCP, _HINGE, _HINGE,                       # index
    _FINGER_MCP, _HINGE, _HINGE,                       # middle
    _FINGER_MCP, _HINGE, _HINGE,                       # pinky
    _FINGER_MCP, _HINGE, _HINGE,                       # ring
    ((-45, 45), (-15, 45), (0, 45)),                  # thumb CMC
    ((0, 0), (-10, 10), (0, 90)),                      # thumb MCP
    _HINGE,                                            # thumb IP
], dtype=np.float64)  # (15, 3, 2)
AXES = ("twist", "spread", "bend")
# MANO's finger joints in kinematic order and the fingertip (in tip_ids order thumb, index, middle, ring, pinky)
# that ends each finger.
_LAST_JOINT_TIP = {3: 1, 6: 2, 9: 4, 12: 3, 15: 0}
THUMB_ROLL_DEG = 55.0
_THUMB = slice(12, 15)  # joints 13-15 among joints 1-15
_EPS = 1e-20


def skeleton_frames(joints: torch.Tensor, tips: torch.Tensor, parents: torch.Tensor, side: str) -> torch.Tensor:
    """Anatomical frames (15, 3, 3) of joints 1..15, rows (twist, spread, bend), from rest joints (16, 3)
    and fingertips (5, 3) in tip_ids order."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    parents = [int(p) for p in parents]
    child = {p: j for j, p in enumerate(parents) if j > 0 and p > 0}
    ends = torch.stack([joints[child[j]] if j in child else tips[_LAST_JOINT_TIP[j]] for j in range(1, 16)])
    twist = _unit(ends - joints[1:])                                        # (15, 3)
    up = _unit(joints[4] - joints[0])                                      # wrist -> middle MCP
    radial = _unit(joints[1] - joints[7])                                  # pinky MCP -> index MCP
    # Right hand, palm towards the viewer, fingers up: the thumb points right, so palm normal = radial × up.
    palm = _unit(torch.linalg.cross(radial, up)) * (1.0 if side == "right" else -1.0)
    bend = _unit(torch.linalg.cross(twist, palm.expand_as(twist)))
    spread = torch.linalg.cross(bend, twist)
    spread = spread * torch.sign((torch.linalg.cross(spread, twist) * radial).sum(-1, keepdim=True))
    roll = torch.zeros(15, 1, dtype=joints.dtype, device=joints.device)
    roll[_THUMB] = math.radians(THUMB_ROLL_DEG)
    spread, bend = torch.cos(roll) * spread + torch.sin(roll) * bend, torch.cos(roll) * bend - torch.sin(roll) * spread
    return torch.stack([twist, spread, bend], dim=1)


def model_frames(model) -> torch.Tensor:
    """Anatomical frames (15, 3, 3) of a HandModel's rest skeleton."""
    v = model.v_template
    joints = _regress(model.J_regressor, v)
    return skeleton_frames(joints, v[model.tip_ids], model.parents, model.side)


def articulation(hand_pose: torch.Tensor, model) -> torch.Tensor:
    """The rotations (B, 45) the joints actually make: hand_pose plus the mean pose unless flat_hand_mean."""
    if getattr(model, "use_pca", False):
        raise ValueError("joint limits need an axis-angle hand_pose: build the model with use_pca=False")
    return hand_pose if model.flat_hand_mean else hand_pose + model.hands_mean.to(hand_pose)


def joint_angles(hand_pose: torch.Tensor, model) -> torch.Tensor:
    """(twist, spread, bend) in radians (B, 15, 3) of a HandModel's hand_pose (B, 45) axis-angle."""
    return decompose(articulation(hand_pose, model).reshape(-1, 15, 3), model_frames(model).to(hand_pose))


def limit_excess(hand_pose: torch.Tensor, model) -> torch.Tensor:
    """Radians (B, 15, 3) by which each joint's (twist, spread, bend) lies outside its limits; 0 inside."""
    return _beyond(joint_angles(hand_pose, model))


def angle_violations(hand_pose: torch.Tensor, model) -> torch.Tensor:
    """Degrees (B, 15, 3) by which each joint's (twist, spread, bend) lies outside its limits; 0 inside."""
    return torch.rad2deg(limit_excess(hand_pose, model))


def joint_limit_loss(hand_pose: torch.Tensor, model) -> torch.Tensor:
    """Sum of squared radians beyond the anatomical limits per hand (B,); 0 for a plausible pose."""
    return limit_excess(hand_pose, model).square().sum((1, 2))


def pose_from_angles(angles: torch.Tensor, model, frames: torch.Tensor | None = None) -> torch.Tensor:
    """The hand_pose (B, 45) whose joints make (twist, spread, bend) `angles` (B, 15, 3) in radians.
    frames: model_frames(model), for callers that keep them (the network, at every training step)."""
    frames = model_frames(model) if frames is None else frames
    aa = compose(angles, frames.to(angles)).reshape(-1, 45)
    return aa - (articulation(aa, model) - aa)


def limits(dtype: torch.dtype = torch.float32,
           device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """LIMITS_DEG in radians: the lower and the upper limits (15, 3) each."""
    rad = torch.deg2rad(torch.as_tensor(LIMITS_DEG, dtype=dtype, device=device))
    return rad[..., 0], rad[..., 1]


def random_angles(n: int, generator: torch.Generator | None = None, margin_deg: float = 0.0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Angles (n, 15, 3) drawn uniformly inside the limits shrunk by `margin_deg` (plausible random poses)."""
    lo, hi = limits(dtype)
    margin = math.radians(margin_deg)
    lo, hi = torch.minimum(lo + margin, (lo + hi) / 2), torch.maximum(hi - margin, (lo + hi) / 2)
    return lo + (hi - lo) * torch.rand(n, 15, 3, generator=generator, dtype=dtype)


def decompose(aa: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Swing-twist split of axis-angle rotations aa (B, J, 3) in frames (J, 3, 3) -> (B, J, 3) radians."""
    w, v = _quaternion(aa)                                                 # (B, J), (B, J, 3)
    t, s, b = frames[:, 0], frames[:, 1], frames[:, 2]
    tau = (v * t).sum(-1)                                                  # twist part of the vector
    twist = 2 * torch.atan2(tau, w)
    norm_t = torch.sqrt(w * w + tau * tau + _EPS)
    wt, vt = w / norm_t, (tau / norm_t)[..., None] * t
    # swing = q · conj(q_twist)
    ws = w * wt + (v * vt).sum(-1)
    vs = wt[..., None] * v - w[..., None] * vt - torch.linalg.cross(v, vt, dim=-1)
    norm_s = torch.sqrt((vs * vs).sum(-1) + _EPS)
    swing = (2 * torch.atan2(norm_s, ws) / norm_s)[..., None] * vs        # rotation vector, ⟂ t
    return torch.stack([twist, (swing * s).sum(-1), (swing * b).sum(-1)], dim=-1)


def compose(angles: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Inverse of `decompose`: (twist, spread, bend) (B, J, 3) in frames (J, 3, 3) -> axis-angle (B, J, 3)."""
    t, s, b = frames[:, 0], frames[:, 1], frames[:, 2]
    half = angles[..., :1] / 2
    qt = torch.cat([torch.cos(half), torch.sin(half) * t], dim=-1)
    qs = _quaternion_from_aa(angles[..., 1:2] * s + angles[..., 2:3] * b)
    return _aa_from_quaternion(_qmul(qs, qt))


def _beyond(angles: torch.Tensor) -> torch.Tensor:
    lo, hi = limits(angles.dtype, angles.device)
    return torch.relu(angles - hi) + torch.relu(lo - angles)


def _quaternion(aa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w, v) with w >= 0 of axis-angle aa (..., 3); smooth through the identity."""
    q = _quaternion_from_aa(aa)
    q = q * torch.where(q[..., :1] < 0, -1.0, 1.0)
    return q[..., 0], q[..., 1:]


def _quaternion_from_aa(aa: torch.Tensor) -> torch.Tensor:
    angle = torch.sqrt((aa * aa).sum(-1, keepdim=True) + _EPS)
    # angle >= 1e-10 (_EPS), where sin(angle/2)/angle is exact and smooth; ONNX has no sinc
    return torch.cat([torch.cos(angle / 2), aa * (torch.sin(angle / 2) / angle)], dim=-1)


def _aa_from_quaternion(q: torch.Tensor) -> torch.Tensor:
    q = q * torch.where(q[..., :1] < 0, -1.0, 1.0)
    norm = torch.sqrt((q[..., 1:] ** 2).sum(-1, keepdim=True) + _EPS)
    return 2 * torch.atan2(norm, q[..., :1]) / norm * q[..., 1:]


def _qmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    wa, va, wb, vb = a[..., :1], a[..., 1:], b[..., :1], b[..., 1:]
    return torch.cat([wa * wb - (va * vb).sum(-1, keepdim=True),
                      wa * vb + wb * va + torch.linalg.cross(va, vb, dim=-1)], dim=-1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.norm(x, dim=-1, keepdim=True)


def _regress(J_regressor: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (J_regressor.to_dense() if J_regressor.is_sparse else J_regressor) @ v
