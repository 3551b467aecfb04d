"""Rotation representations the network regresses: axis-angle (the thesis) and the continuous 6D form.
Axis-angle to matrix is handlib.model.batch_rodrigues.

The 6D form (Zhou et al. 2019, "On the Continuity of Rotation Representations") is the first two columns of the
rotation matrix; Gram-Schmidt turns any 6 numbers back into a rotation, with no discontinuity for the regressor
to straddle (axis-angle jumps at 180 degrees).
"""

import torch
import torch.nn.functional as F


def rot6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) = two 3D columns -> (..., 3, 3) rotation matrices (Gram-Schmidt)."""
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns, the inverse of `rot6d_to_matrix` on rotations."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3) axis-angle with angle in [0, pi] (for labels and exports, not for gradients)."""
    q = _matrix_to_quaternion(R)  # (..., 4) w, x, y, z with w >= 0
    sin_half = q[..., 1:].norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, q[..., :1])
    scale = torch.where(sin_half > 1e-8, angle / sin_half.clamp_min(1e-12), 2 + angle * 0)
    return q[..., 1:] * scale


def _matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Shepperd's method: pick the largest of 4 candidates for numerical stability."""
    m = R.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cands = torch.stack([
        torch.stack([1 + tr, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + 2 * m[:, 0, 0] - tr, m[:, 0, 1] + m[:, 1, 0],
                     m[:, 0, 2] + m[:, 2, 0]], -1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 + 2 * m[:, 1, 1] - tr,
                     m[:, 1, 2] + m[:, 2, 1]], -1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1],
                     1 + 2 * m[:, 2, 2] - tr], -1),
    ], dim=1)  # (N, 4 candidates, 4)
    diag = torch.stack([1 + tr, 1 + 2 * m[:, 0, 0] - tr, 1 + 2 * m[:, 1, 1] - tr, 1 + 2 * m[:, 2, 2] - tr], -1)
    best = diag.argmax(-1)
    q = cands[torch.arange(len(m)), best]
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(*R.shape[:-2], 4)


def mirror_axis_angle(aa: torch.Tensor) -> torch.Tensor:
    """A rotation seen in a mirror x -> -x (a right hand's pose as the left hand's): (x, y, z) -> (x, -y, -z)."""
    return aa * aa.new_tensor([1.0, -1.0, -1.0])
