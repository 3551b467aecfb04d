"""Evaluation metrics: 2D keypoints, 3D joints and meshes, shape, plausibility.

Inputs are numpy arrays or torch tensors with a batch axis first; outputs are numpy. Distances keep the inputs'
units (pixels in 2D, metres in 3D); the notebooks print millimetres.
"""

import numpy as np
import torch
from scipy.spatial import cKDTree


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _mask(visible, shape: tuple) -> np.ndarray:
    """A boolean (B, N) mask from certainties/visibility (> 0 counts), all True when None."""
    if visible is None:
        return np.ones(shape, dtype=bool)
    return to_numpy(visible).reshape(shape) > 0


def keypoint_distances(pred, gt) -> np.ndarray:
    """Euclidean distance per point: (B, N, D) x2 -> (B, N)."""
    return np.linalg.norm(to_numpy(pred) - to_numpy(gt), axis=-1)


def hand_size(gt, visible=None) -> np.ndarray:
    """Hand size per sample: the diagonal of the bounding box of the (visible) ground-truth points, (B,)."""
    gt = to_numpy(gt)
    mask = _mask(visible, gt.shape[:2])[..., None]
    lo = np.where(mask, gt, np.inf).min(axis=1)
    hi = np.where(mask, gt, -np.inf).max(axis=1)
    return np.linalg.norm(hi - lo, axis=-1)


def mean_keypoint_error(pred, gt, visible=None) -> float:
    """Mean distance over the visible keypoints (pixels for 2D input)."""
    dist = keypoint_distances(pred, gt)
    return float(dist[_mask(visible, dist.shape)].mean())


def relative_keypoint_error(pred, gt, visible=None) -> float:
    """Mean keypoint distance as a fraction of the hand size (`hand_size`), over the visible keypoints."""
    dist = keypoint_distances(pred, gt) / hand_size(gt, visible)[:, None]
    return float(dist[_mask(visible, dist.shape)].mean())


def pck_curve(distances, thresholds, visible=None) -> np.ndarray:
    """Percentage of correct keypoints: the share of (visible) distances <= each threshold, (T,)."""
    dist = to_numpy(distances)
    dist = dist[_mask(visible, dist.shape)]
    return (dist[None, :] <= np.asarray(thresholds, dtype=np.float64)[:, None]).mean(axis=1)


def auc(thresholds, pck) -> float:
    """Area under a PCK curve, normalised by the threshold range to [0, 1] (trapezoid rule)."""
    t, p = np.asarray(thresholds, dtype=np.float64), np.asarray(pck, dtype=np.float64)
    return float(np.sum((p[1:] + p[:-1]) * np.diff(t)) / 2 / (t[-1] - t[0]))


def procrustes(pred, gt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The similarity (s, R, t) minimising ||s·R·pred + t - gt||² per sample (Umeyama 1991).

    pred, gt (B, N, 3) -> s (B,), R (B, 3, 3), t (B, 3); reflections are excluded.
    """
    x, y = to_numpy(pred), to_numpy(gt)
    mx, my = x.mean(axis=1, keepdims=True), y.mean(axis=1, keepdims=True)
    x0, y0 = x - mx, y - my
    cov = np.einsum("bni,bnj->bij", y0, x0)  # (B, 3, 3)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones_like(sig)
    d[:, -1] = np.sign(np.linalg.det(u @ vt))
    rot = u @ (d[..., None] * vt)
    scale = (sig * d).sum(axis=1) / (x0 ** 2).sum(axis=(1, 2))
    t = my[:, 0] - scale[:, None] * np.einsum("bij,bj->bi", rot, mx[:, 0])
    return scale, rot, t


def procrustes_align(pred, gt) -> np.ndarray:
    """`pred` moved onto `gt` by the best similarity transform (B, N, 3)."""
    s, rot, t = procrustes(pred, gt)
    return s[:, None, None] * np.einsum("bij,bnj->bni", rot, to_numpy(pred)) + t[:, None]


def mpjpe(pred, gt, root: int | None = 0) -> float:
    """Mean per-joint position error after subtracting joint `root` from each set (None: no alignment)."""
    pred, gt = to_numpy(pred), to_numpy(gt)
    if root is not None:
        pred, gt = pred - pred[:, root:root + 1], gt - gt[:, root:root + 1]
    return float(keypoint_distances(pred, gt).mean())


def pa_mpjpe(pred, gt) -> float:
    """Mean per-joint position error after Procrustes (similarity) alignment."""
    return float(keypoint_distances(procrustes_align(pred, gt), gt).mean())


def vertex_errors(pred, gt, pred_root=None, gt_root=None) -> np.ndarray:
    """Per-vertex distances (B, V); the roots (B, 3), e.g. the wrist joints, are subtracted when given."""
    pred, gt = to_numpy(pred), to_numpy(gt)
    if pred_root is not None:
        pred = pred - to_numpy(pred_root)[:, None]
    if gt_root is not None:
        gt = gt - to_numpy(gt_root)[:, None]
    return keypoint_distances(pred, gt)


def aligned_vertex_errors(pred, gt) -> np.ndarray:
    """Per-vertex distances after Procrustes alignment of the whole mesh (B, V)."""
    return keypoint_distances(procrustes_align(pred, gt), gt)


def precision_recall(pred, gt, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Share of predicted points within `threshold` of the ground truth, and the reverse, per sample (B,)."""
    pred, gt = to_numpy(pred), to_numpy(gt)
    precision, recall = np.empty(len(pred)), np.empty(len(pred))
    for b in range(len(pred)):
        precision[b] = (cKDTree(gt[b]).query(pred[b])[0] <= threshold).mean()
        recall[b] = (cKDTree(pred[b]).query(gt[b])[0] <= threshold).mean()
    return precision, recall


def f_score(pred, gt, threshold: float) -> np.ndarray:
    """F-score at `threshold` per sample (B,): harmonic mean of `precision_recall` (FreiHAND uses aligned
    vertices and 5 / 15 mm)."""
    p, r = precision_recall(pred, gt, threshold)
    with np.errstate(invalid="ignore"):
        return np.where(p + r > 0, 2 * p * r / (p + r), 0.0)


def beta_error(pred, gt) -> np.ndarray:
    """Mean absolute error of the shape coefficients per sample (B,)."""
    return np.abs(to_numpy(pred) - to_numpy(gt)).mean(axis=-1)


def beta_magnitudes(betas) -> dict[str, float]:
    """How far the shapes stray from the mean: the distribution of |β| over all samples and coefficients."""
    mag = np.abs(to_numpy(betas)).ravel()
    return {"mean": float(mag.mean()), "median": float(np.median(mag)), "p95": float(np.percentile(mag, 95)),
            "max": float(mag.max()), "share_over_3": float((mag > 3).mean())}


def implausible_share(hand_pose, model, tolerance_deg: float = 1.0) -> float:
    """Share of joint angles (twist, spread, bend of the 15 joints of every sample) outside the anatomical
    limits (handlib.anatomy) by more than `tolerance_deg`, for hand_pose (B, 45) of a HandModel."""
    from handlib.anatomy import angle_violations

    pose = torch.as_tensor(hand_pose).to(model.v_template.dtype)
    return float((angle_violations(pose, model) > tolerance_deg).double().mean())
