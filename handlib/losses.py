"""The training losses: the thesis's w·L_reproj + L_shape, and 3D, anatomical and silhouette terms beyond it.

Every term is per sample, summed over its points, and averaged over the whole batch (samples without the label
count as zero), then averaged over the IEF iterations: weights keep their meaning for any T and, across DDP
processes, the mean of the processes' losses is the loss of the global batch. A weight of 0 switches a term off.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from handlib.camera import pixels_to_normalized, weak_perspective
from handlib.network import SIDES, HandNet, HandPrediction
from handlib.model import batch_rodrigues


@dataclass
class LossWeights:
    reproj: float = 100.0       # thesis: certainty-weighted L1 of the 21 keypoints in [-1, 1]
    shape: float = 1.0          # thesis: ||β||_1
    pose: float = 0.0           # 3D labels: squared Frobenius error of the 15 joint rotation matrices
    global_rot: float = 0.0     # 3D labels: squared Frobenius error of the global rotation
    betas: float = 0.0          # 3D labels: squared error of β
    keypoints3d: float = 0.0    # 3D labels: L1 of the wrist-relative keypoints, metres
    vertices: float = 0.0       # 3D labels: mean L1 of the wrist-relative vertices, metres
    joint_limits: float = 0.0   # any sample: handlib.anatomy.joint_limit_loss of the pose
    silhouette: float = 0.0     # samples with masks: projected vertices inside the mask, and mask covered

    @property
    def needs_vertices(self) -> bool:
        """Whether a term uses the meshes; else the keypoints alone will do (a fraction of the cost)."""
        return bool(self.vertices or self.silhouette)


def reprojection_loss(pred2d: torch.Tensor, gt2d: torch.Tensor, certainty: torch.Tensor) -> torch.Tensor:
    """Σ_i ‖c_i (x_i − x̂_i)‖_1 per sample: pred2d, gt2d (B, 21, 2), certainty (B, 21) -> (B,)."""
    return (certainty[..., None] * (pred2d - gt2d).abs()).sum((1, 2))


def shape_loss(betas: torch.Tensor) -> torch.Tensor:
    """‖β‖_1 per sample (B,)."""
    return betas.abs().sum(1)


def rotation_loss(R_pred: torch.Tensor, R_gt: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius distance summed over joints: (B, ..., 3, 3) x2 -> (B,)."""
    return (R_pred - R_gt).pow(2).flatten(1).sum(1)


def keypoints3d_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """L1 of wrist-relative points (keypoint 0 is the wrist), summed: (B, N, 3) x2 -> (B,)."""
    return ((pred - pred[:, :1]) - (gt - gt[:, :1])).abs().sum((1, 2))


def silhouette_loss(verts2d: torch.Tensor, mask_dist: torch.Tensor, mask_points: torch.Tensor) -> torch.Tensor:
    """A differentiable stand-in for comparing rendered and true silhouettes (B,).

    verts2d (B, V, 2) projected vertices in [-1, 1]; mask_dist (B, 1, h, w) each pixel's distance to the mask
    in [-1, 1] units (0 inside); mask_points (B, M, 2) points sampled inside the mask. Vertices outside the mask
    pay their distance to it; mask points pay their distance to the nearest vertex (the mask must be covered).
    """
    outside = F.grid_sample(mask_dist, verts2d[:, None], align_corners=False, padding_mode="border")
    cover = torch.cdist(mask_points, verts2d).min(dim=2).values  # (B, M)
    return outside.flatten(1).mean(1) + cover.mean(1)


def mask_targets(mask: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """What `silhouette_loss` needs of a square mask (m, m) bool: each pixel's distance to the mask (m, m) and the
    centres of the mask's pixels (N, 2) row by row, both in [-1, 1] units (float64)."""
    m = len(mask)
    ys, xs = np.nonzero(mask)
    centres = pixels_to_normalized(torch.as_tensor(np.stack([xs, ys], 1), dtype=torch.float64), m, m)
    return ndimage.distance_transform_edt(~mask) * (2 / m), centres


def joint_limits(hand_pose: torch.Tensor, side: torch.Tensor, net: HandNet) -> torch.Tensor:
    """handlib.anatomy.joint_limit_loss (B,), each sample against its side's hand model."""
    from handlib.anatomy import joint_limit_loss

    out = hand_pose.new_zeros(len(hand_pose))
    for k, name in enumerate(SIDES):
        idx = (side == k).nonzero()[:, 0]
        if len(idx):
            out = out.index_copy(0, idx, joint_limit_loss(hand_pose[idx], net.hand_models[name]))
    return out


def hand_losses(preds: list[HandPrediction], batch: dict, w: LossWeights,
                net: HandNet) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted total and each weighted term (averaged over the T iterations) for one batch.

    batch: keypoints2d (B, 21, 2) in [-1, 1], certainty (B, 21), side (B,); with 3D labels where has3d (B,):
    keypoints3d (B, 21, 3) metres, hand_pose (B, 45), betas (B, 10), global_rotmat (B, 3, 3);
    with masks where has_mask (B,): mask_dist (B, 1, h, w), mask_points (B, M, 2).
    """
    B = len(batch["keypoints2d"])
    has3d = batch["has3d"].float() if "has3d" in batch else torch.zeros(B, device=batch["keypoints2d"].device)
    terms = {name: [] for name, weight in asdict(w).items() if weight}
    gt_verts = R_gt = None
    if w.pose:  # the true joint rotations, once for all T iterations
        R_gt = batch_rodrigues(batch["hand_pose"].reshape(-1, 3)).view(B, 15, 3, 3)
    if w.vertices:
        with torch.no_grad():
            v, k = net.pose(batch["hand_pose"], batch["betas"], batch["global_rotmat"], batch["side"])
            gt_verts = v - k[:, :1]  # (B, V, 3) wrist-relative
    for p in preds:
        per_sample = {}
        if w.reproj:
            per_sample["reproj"] = reprojection_loss(p.keypoints2d, batch["keypoints2d"], batch["certainty"])
        if w.shape:
            per_sample["shape"] = shape_loss(p.betas)
        if w.pose:
            R = batch_rodrigues(p.hand_pose.reshape(-1, 3)).view(B, 15, 3, 3)
            per_sample["pose"] = has3d * rotation_loss(R, R_gt)
        if w.global_rot:
            per_sample["global_rot"] = has3d * rotation_loss(p.global_rotmat, batch["global_rotmat"])
        if w.betas:
            per_sample["betas"] = has3d * (p.betas - batch["betas"]).pow(2).sum(1)
        if w.keypoints3d:
            per_sample["keypoints3d"] = has3d * keypoints3d_loss(p.keypoints3d, batch["keypoints3d"])
        if w.vertices:
            per_sample["vertices"] = has3d * (p.vertices - p.keypoints3d[:, :1] - gt_verts).abs().sum(2).mean(1)
        if w.joint_limits:
            per_sample["joint_limits"] = joint_limits(p.hand_pose, batch["side"], net)
        if w.silhouette:
            has_mask = batch["has_mask"].float()
            per_sample["silhouette"] = has_mask * silhouette_loss(
                weak_perspective(p.vertices, p.cam), batch["mask_dist"], batch["mask_points"])
        for name, value in per_sample.items():
            terms[name].append(getattr(w, name) * value.sum() / B)
    parts = {name: torch.stack(values).mean() for name, values in terms.items()}
    return sum(parts.values()), parts

