"""Fitting the hand model to registrations (3D vertices) and to 2D keypoints, many at once.

Every fit is one batched least-squares problem (handlib.solver): all samples are evaluated in one forward pass
and stay independent, except that samples of one subject may share β (Eq. 5.2 of the thesis, "direct"), or
have it refined scan by scan ("iterative"). Fitting runs in the thesis's stages: pose only, then shape only,
then both; the rigid nuisance parameters (translation, or the weak-perspective camera) are free in every stage.
A 2D fit starts from a given prediction (a network's) or from six orientations, and may match hand masks too
(handlib.losses.silhouette_loss, the training's silhouette term).
Residual units: millimetres for vertices (divided by sqrt(V), so a cost is a mean squared distance), hundredths
of the half image for 2D keypoints, radians for the joint limits.
"""

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from handlib import anatomy, solver
from handlib.camera import weak_perspective
from handlib.losses import mask_targets, silhouette_loss
from handlib.metrics import procrustes

STAGES = ("pose", "shape", "both")
_TRANSL_UNIT = 0.01  # translation is optimised in centimetres, on the scale of the angles' radians
_KP_UNIT = 0.01      # 2D residuals in hundredths of the half image
# local parameters per sample: global_orient 0:3 | hand_pose 3:48 | rigid 48:51 (transl in cm, or log s, tx, ty)
_LOCAL = 51
_RIGID = slice(48, 51)
_KEYPOINT_MODEL_VERTICES = 40  # keypoint fits run on a model of the 5 fingertips and 35 more vertices


@dataclass
class FitConfig:
    """Stages, optimiser and priors. Iteration counts are optimiser steps (L-BFGS: iterations)."""
    pose_iters: int = 10
    shape_iters: int = 5
    both_iters: int = 20
    optimizer: str = "lm"           # "lm" (batched Levenberg-Marquardt), "lbfgs" or "adam"; see handlib.solver
    lr: float = 1.0                 # L-BFGS: first step length; Adam: learning rate (about 0.1); unused by LM
    history_size: int = 20          # L-BFGS memory
    tolerance: float = 1e-6         # LM: a sample is done when a step promises less than this share of its cost
    beta_weight: float = 0.0        # weight of ||β||²
    pose_prior_weight: float = 0.0  # weight of the Mahalanobis-like pose PCA prior (`pose_prior`)
    joint_limit_weight: float = 0.0  # weight of anatomy.joint_limit_loss
    vertex_subset: int = 0          # registrations: fit this many vertices spread over the mesh (0: all)
    silhouette_weight: float = 0.0  # 2D fits with masks: weight of handlib.losses.silhouette_loss
    silhouette_vertices: int = 300  # the vertices (spread over the mesh) that must fall inside the mask

    def __post_init__(self):
        if self.optimizer not in solver.METHODS:
            raise ValueError(f"optimizer must be one of {solver.METHODS}, got {self.optimizer!r}")
        if min(self.pose_iters, self.shape_iters, self.both_iters) < 0:
            raise ValueError("iteration counts must be >= 0")
        if min(self.beta_weight, self.pose_prior_weight, self.joint_limit_weight, self.silhouette_weight) < 0:
            raise ValueError("prior weights must be >= 0")


@dataclass
class HandFit:
    """A fit of B samples; betas are per sample (a subject's shared β repeated)."""
    global_orient: torch.Tensor  # (B, 3)
    hand_pose: torch.Tensor      # (B, 45) axis-angle, as the model takes it
    betas: torch.Tensor          # (B, 10)
    transl: torch.Tensor         # (B, 3) metres; zeros for 2D fits
    vertices: torch.Tensor | None = None       # (B, V, 3)
    vertex_error: torch.Tensor | None = None   # (B, V) metres to the registration; None for 2D fits
    record: list[dict] = field(default_factory=list)  # per cost evaluation: stage, step, loss, its terms, error
    seconds: float = 0.0
    cam: torch.Tensor | None = None            # (B, 3) weak perspective (s, tx, ty) for 2D fits
    keypoints_2d: torch.Tensor | None = None   # (B, 21, 2) fitted keypoints in [-1, 1] for 2D fits

    def mean_error_mm(self) -> float:
        return float(self.vertex_error.mean()) * 1000


@dataclass
class Silhouettes:
    """Hand masks over the 2D fit's [-1, 1] image frame, in the form handlib.losses.silhouette_loss takes."""
    mask_dist: torch.Tensor    # (B, 1, m, m) each pixel's distance to the mask in [-1, 1] units, 0 inside
    mask_points: torch.Tensor  # (B, M, 2) points inside the mask in [-1, 1]
    has_mask: torch.Tensor     # (B,) bool: rows without a mask get no silhouette term

    @classmethod
    def from_masks(cls, masks: list[np.ndarray | None], points: int = 256) -> "Silhouettes":
        """Square boolean masks (m, m) over the frame (None: no mask for that row); up to `points` mask pixels,
        evenly spread over the mask's pixels in row order (the same every time)."""
        sizes = {np.shape(m) for m in masks if m is not None}
        if len(sizes) > 1 or any(len(s) != 2 or s[0] != s[1] for s in sizes):
            raise ValueError(f"masks must all be square and of one size, got {sorted(sizes)}")
        m = sizes.pop()[0] if sizes else 1
        dist, pts, has = np.zeros((len(masks), 1, m, m)), np.zeros((len(masks), points, 2)), np.zeros(len(masks), bool)
        for i, mask in enumerate(masks):
            if mask is None or not np.any(mask):
                continue
            dist[i, 0], centres = mask_targets(np.asarray(mask, bool))
            pts[i] = centres[np.linspace(0, len(centres) - 1, points).round().astype(int)].numpy()
            has[i] = True
        return cls(torch.as_tensor(dist), torch.as_tensor(pts), torch.as_tensor(has))

    def repeat(self, n: int) -> "Silhouettes":
        return Silhouettes(self.mask_dist.repeat(n, 1, 1, 1), self.mask_points.repeat(n, 1, 1), self.has_mask.repeat(n))


def pose_prior_coefficients(hand_pose: torch.Tensor, model) -> torch.Tensor:
    """c (B, 45) with articulation = hands_mean + c · hands_components (least squares when not invertible)."""
    comps = model.hands_components.to(hand_pose)
    return (anatomy.articulation(hand_pose, model) - model.hands_mean.to(hand_pose)) @ torch.linalg.pinv(comps)


def pose_prior(hand_pose: torch.Tensor, model) -> torch.Tensor:
    """Mahalanobis-like pose prior (B,): ||c||² of `pose_prior_coefficients`. Under MANO's reading
    θ = hands_mean + c·hands_components with c ~ N(0, I) it is the Mahalanobis distance; for orthonormal
    components it is the squared distance from the mean pose."""
    return pose_prior_coefficients(hand_pose, model).square().sum(-1)


def prior_residuals(hand_pose: torch.Tensor, betas: torch.Tensor, model, config: FitConfig) -> dict:
    """The priors in use as residual blocks (B, n): each block's sum of squares is the weighted prior."""
    blocks = {}
    if config.beta_weight:
        blocks["beta"] = math.sqrt(config.beta_weight) * betas
    if config.pose_prior_weight:
        blocks["pose_prior"] = math.sqrt(config.pose_prior_weight) * pose_prior_coefficients(hand_pose, model)
    if config.joint_limit_weight:
        excess = anatomy.limit_excess(hand_pose, model).flatten(1)
        blocks["joint_limits"] = math.sqrt(config.joint_limit_weight) * excess
    return blocks


def check_registrations(vertices: torch.Tensor, n_vertices: int) -> None:
    """Raise unless registrations are (B, n_vertices, 3) and finite."""
    if vertices.ndim != 3 or vertices.shape[1:] != (n_vertices, 3):
        raise ValueError(f"registrations must be (B, {n_vertices}, 3) for this model, got {tuple(vertices.shape)}")
    bad = ~torch.isfinite(vertices).all(dim=(1, 2))
    if bad.any():
        raise ValueError(f"registrations {bad.nonzero().flatten().tolist()} contain NaN or inf")


def rigid_init(model, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """global_orient (B, 3), transl (B, 3) aligning the mean-pose model's palm to each registration (Kabsch)."""
    with torch.no_grad():
        out = model(betas=targets.new_zeros(len(targets), model.num_betas))
    palm = model.lbs_weights.argmax(dim=1) == 0  # the vertices that move with the wrist
    _, rot, _ = procrustes(out.vertices[:, palm], targets[:, palm])
    rot = torch.as_tensor(rot, dtype=targets.dtype)
    src, dst = out.vertices[:, palm].mean(1), targets[:, palm].mean(1)
    wrist = out.joints[:, 0]
    # the model gives R (v0 - wrist) + wrist + transl; Kabsch asks for R v0 + (dst - R src)
    transl = dst - _apply(rot, src) - wrist + _apply(rot, wrist)
    orient = torch.as_tensor(Rotation.from_matrix(rot.double().numpy()).as_rotvec(), dtype=targets.dtype)
    return orient, transl


def fit_registrations(model, registrations: torch.Tensor, config: FitConfig = FitConfig(),
                      subject_ids: torch.Tensor | None = None, init: HandFit | None = None, log=None) -> HandFit:
    """Fit registrations (B, V, 3) in metres. With subject_ids (B,) one β per subject is shared ("direct")."""
    targets = torch.as_tensor(registrations, dtype=model.v_template.dtype)
    _check_model(model)
    check_registrations(targets, model.v_template.shape[0])
    start = time.perf_counter()
    B = len(targets)
    index, n_betas = _beta_index(subject_ids, B)
    if init is None:
        orient, transl = rigid_init(model, targets)
        local = torch.cat([orient, targets.new_zeros(B, 45), transl / _TRANSL_UNIT], 1)
        betas = targets.new_zeros(n_betas, model.num_betas)
    else:
        local = torch.cat([init.global_orient, init.hand_pose, init.transl / _TRANSL_UNIT], 1).to(targets)
        betas = _mean_per_subject(init.betas.to(targets), index, n_betas)
    fit_model, ids = (model, None) if not config.vertex_subset else vertex_subset_model(model, config.vertex_subset)
    fit_targets = targets if ids is None else targets[:, ids]
    scale = 1000 / math.sqrt(fit_targets.shape[1])

    def residuals(loc, betas_rows):
        out = fit_model(betas=betas_rows, hand_pose=loc[:, 3:48], global_orient=loc[:, :3],
                        transl=loc[:, _RIGID] * _TRANSL_UNIT)
        diff = out.vertices - fit_targets
        blocks = {"data": diff.flatten(1) * scale, **prior_residuals(loc[:, 3:48], betas_rows, model, config)}
        return blocks, {**_parameters(loc, betas_rows), "transl": loc[:, _RIGID] * _TRANSL_UNIT,
                        "error": diff.detach().norm(dim=-1).mean(-1) * 1000}

    problem = solver.Problem(residuals, index, n_betas)
    local, betas, record = _stages(problem, local, betas, config, log)
    with torch.no_grad():
        out = model(betas=betas[index], hand_pose=local[:, 3:48], global_orient=local[:, :3],
                    transl=local[:, _RIGID] * _TRANSL_UNIT)
    return HandFit(local[:, :3], local[:, 3:48], betas[index], local[:, _RIGID] * _TRANSL_UNIT, out.vertices,
                   torch.linalg.norm(out.vertices - targets, dim=-1), record, time.perf_counter() - start)


def fit_shared_iterative(model, registrations: torch.Tensor, subject_ids: torch.Tensor,
                         config: FitConfig = FitConfig(), passes: int = 2, init: HandFit | None = None,
                         log=None) -> HandFit:
    """Shared β fitted scan by scan: starting from per-scan fits (`init`, else fitted here) and the subject's mean
    β, each subject's β is refined together with the pose of one of its scans at a time (the "both" stage; all
    subjects in one batch), `passes` times over the scans; finally every pose is refitted to the final β."""
    targets = torch.as_tensor(registrations, dtype=model.v_template.dtype)
    check_registrations(targets, model.v_template.shape[0])
    start = time.perf_counter()
    index, n_subjects = _beta_index(subject_ids, len(targets))
    fit = init if init is not None else fit_registrations(model, targets, config)
    betas = _mean_per_subject(fit.betas.to(targets), index, n_subjects)
    orient, hand_pose, transl = fit.global_orient.clone(), fit.hand_pose.clone(), fit.transl.clone()
    rank = _rank_within_subject(index)
    record: list[dict] = []
    both_only = replace(config, pose_iters=0, shape_iters=0)
    for _ in range(passes):
        for k in range(int(rank.max()) + 1):
            rows = (rank == k).nonzero().flatten()
            subjects = index[rows]
            step = fit_registrations(model, targets[rows], both_only, subject_ids=subjects,
                                     init=HandFit(orient[rows], hand_pose[rows], betas[subjects], transl[rows]))
            orient[rows], hand_pose[rows], transl[rows] = step.global_orient, step.hand_pose, step.transl
            betas[subjects] = step.betas
            record += [{**r, "scan": k} for r in step.record]
    poses_only = replace(config, shape_iters=0, both_iters=0)
    final = fit_registrations(model, targets, poses_only, subject_ids=index,
                              init=HandFit(orient, hand_pose, betas[index], transl), log=log)
    final.record = record + final.record
    final.seconds = time.perf_counter() - start
    return final


def fit_keypoints_2d(model, keypoints: torch.Tensor, certainty: torch.Tensor | None = None,
                     config: FitConfig = FitConfig(), subject_ids: torch.Tensor | None = None,
                     starts: int = 6, log=None, init: HandFit | None = None,
                     silhouettes: Silhouettes | None = None) -> HandFit:
    """Fit 2D keypoints (B, 21, 2) in [-1, 1] (OpenPose order) with certainties (B, 21) through the weak
    perspective camera; with subject_ids (B,) one β per subject. The data term weighs each keypoint by its
    certainty; with `silhouettes` and config.silhouette_weight the projected mesh must also fill each mask.

    init: a start per image (global_orient, hand_pose, cam, betas; a subject's β starts from the mean of its
    images' betas), e.g. a network's prediction; the stages run from there. Without it the global rotation starts
    from `starts` orientations (faces of a cube, each turned in the image plane onto the keypoints); after the
    pose stage the best start of each image is kept."""
    _check_model(model)
    keypoints = torch.as_tensor(keypoints, dtype=model.v_template.dtype)
    B = len(keypoints)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (21, 2):
        raise ValueError(f"keypoints must be (B, 21, 2) in [-1, 1] image coordinates, got {tuple(keypoints.shape)}")
    certainty = keypoints.new_ones(B, 21) if certainty is None else torch.as_tensor(certainty).to(keypoints)
    if certainty.shape != (B, 21):
        raise ValueError(f"certainty must be (B, 21) = ({B}, 21), got {tuple(certainty.shape)}")
    if not torch.isfinite(keypoints).all() or not torch.isfinite(certainty).all():
        raise ValueError("keypoints or certainties contain NaN or inf")
    if (certainty < 0).any() or (certainty.sum(1) <= 0).any():
        raise ValueError("certainties must be >= 0 with at least one > 0 per image")
    if not 1 <= starts <= 6:
        raise ValueError(f"starts must be 1..6, got {starts}")
    if silhouettes is not None:
        _check_silhouettes(silhouettes, B)
        silhouettes = Silhouettes(*(t.to(keypoints) for t in (silhouettes.mask_dist, silhouettes.mask_points)),
                                  silhouettes.has_mask.bool())
    start = time.perf_counter()
    index, n_betas = _beta_index(subject_ids, B)
    # the same keypoints, far fewer vertices: 40, or those the silhouette term needs
    use_masks = silhouettes is not None and config.silhouette_weight > 0
    n_vertices = min(config.silhouette_vertices, len(model.v_template)) if use_masks else _KEYPOINT_MODEL_VERTICES
    small, _ = vertex_subset_model(model, n_vertices)
    silhouettes = silhouettes if use_masks else None
    record: list[dict] = []
    if init is not None:
        local = _initial_local(init, B, keypoints)
        betas = _mean_per_subject(init.betas.to(keypoints), index, n_betas)
    else:
        orient, cam = _camera_starts(model, keypoints, certainty, starts)  # (starts*B, 3), start-major
        # the pose stage for every start at once, then the best start of each image goes on
        many = (index[None] + n_betas * torch.arange(starts)[:, None]).flatten()
        problem = _problem_2d(small, model, keypoints.repeat(starts, 1, 1), certainty.repeat(starts, 1), many,
                              starts * n_betas, config, None if silhouettes is None else silhouettes.repeat(starts))
        local = torch.cat([orient, keypoints.new_zeros(starts * B, 45), cam], 1)
        betas = keypoints.new_zeros(starts * n_betas, model.num_betas)
        local, _ = solver.solve(problem, local, betas, config.pose_iters, _free("pose"), False, config.optimizer,
                                config.lr, config.history_size, config.tolerance, record, "pose", log)
        with torch.no_grad():
            blocks, _ = problem.evaluate(local, betas[many])
            cost = torch.cat(list(blocks.values()), 1).square().sum(1)
        best = cost.reshape(starts, B).argmin(0) * B + torch.arange(B)
        local, betas, config = local[best], betas[:n_betas], replace(config, pose_iters=0)
    problem = _problem_2d(small, model, keypoints, certainty, index, n_betas, config, silhouettes)
    local, betas, more = _stages(problem, local, betas, config, log)
    with torch.no_grad():
        out = model(betas=betas[index], hand_pose=local[:, 3:48], global_orient=local[:, :3])
    return HandFit(local[:, :3], local[:, 3:48], betas[index], keypoints.new_zeros(B, 3), out.vertices, None,
                   record + more, time.perf_counter() - start, cam=_cam(local[:, _RIGID]),
                   keypoints_2d=weak_perspective(out.keypoints, _cam(local[:, _RIGID])))


def _initial_local(init: HandFit, B: int, like: torch.Tensor) -> torch.Tensor:
    """The local parameters (B, 51) of a start given as a HandFit with a camera; raises on a bad one."""
    if init.cam is None:
        raise ValueError("init needs the camera (cam, (B, 3) weak perspective s, tx, ty) of every image")
    parts = {"global_orient": (init.global_orient, 3), "hand_pose": (init.hand_pose, 45), "betas": (init.betas, 10),
             "cam": (init.cam, 3)}
    for name, (value, n) in parts.items():
        if tuple(value.shape) != (B, n):
            raise ValueError(f"init.{name} must be ({B}, {n}) for {B} images, got {tuple(value.shape)}")
        if not torch.isfinite(value).all():
            raise ValueError(f"init.{name} contains NaN or inf")
    cam = init.cam.to(like)
    if (cam[:, 0] <= 0).any():
        raise ValueError(f"init.cam scale must be > 0; images {(cam[:, 0] <= 0).nonzero().flatten().tolist()} "
                         "have a scale <= 0 (a mirrored or failed prediction)")
    return torch.cat([init.global_orient.to(like), init.hand_pose.to(like), cam[:, :1].log(), cam[:, 1:]], 1)


def _check_silhouettes(sil: Silhouettes, B: int) -> None:
    if sil.mask_dist.ndim != 4 or sil.mask_dist.shape[:2] != (B, 1) or sil.mask_points.ndim != 3 \
            or sil.mask_points.shape[0] != B or sil.mask_points.shape[2] != 2 or tuple(sil.has_mask.shape) != (B,):
        raise ValueError(f"silhouettes must be mask_dist (B, 1, m, m), mask_points (B, M, 2), has_mask (B,) with "
                         f"B = {B}, got {tuple(sil.mask_dist.shape)}, {tuple(sil.mask_points.shape)}, "
                         f"{tuple(sil.has_mask.shape)}")


def vertex_subset_model(model, n: int):
    """A model that computes only `n` vertices spread over the mesh (farthest-point sampling from the fingertips)
    with exactly the full model's joints and vertices there: its J_regressor is the least-norm one over the subset
    that reproduces the full J_regressor on the template and on every shape blend shape. -> (model, vertex ids)."""
    params = model.mano_params()
    V = len(params["v_template"])
    K = params["shapedirs"].shape[-1]
    if not 3 + 3 * K <= n <= V:
        raise ValueError(f"vertex_subset must be in [{3 + 3 * K}, {V}], got {n}")
    ids = _farthest_points(params["v_template"], n, list(params["tip_ids"]))
    basis_full = np.concatenate([params["v_template"], params["shapedirs"].reshape(V, 3 * K)], 1)  # (V, 3 + 3K)
    wanted = params["J_regressor"] @ basis_full                                               # (16, 3 + 3K)
    sub = basis_full[ids]                                                                     # (n, 3 + 3K)
    J_sub = np.linalg.lstsq(sub.T, wanted.T, rcond=None)[0].T                                # (16, n)
    if np.abs(J_sub @ sub - wanted).max() > 1e-9:
        raise ValueError(f"the {n} sampled vertices cannot reproduce the joints; use more")
    position = {v: i for i, v in enumerate(ids)}
    reduced = {**params, "v_template": params["v_template"][ids], "shapedirs": params["shapedirs"][ids],
               "posedirs": params["posedirs"][ids], "weights": params["weights"][ids], "J_regressor": J_sub,
               "f": np.array([[0, 1, 2]]), "tip_ids": np.array([position[t] for t in params["tip_ids"]])}
    reduced.pop("vt", None), reduced.pop("ft", None)
    small = type(model)(reduced, side=model.side, flat_hand_mean=model.flat_hand_mean)
    return small.to(model.v_template.dtype), torch.as_tensor(ids)


def _stages(problem: solver.Problem, local, betas, config: FitConfig, log):
    record: list[dict] = []
    for stage, iters in zip(STAGES, (config.pose_iters, config.shape_iters, config.both_iters)):
        local, betas = solver.solve(problem, local, betas, iters, _free(stage), stage != "pose", config.optimizer,
                                    config.lr, config.history_size, config.tolerance, record, stage, log)
    return local, betas, record


def _free(stage: str) -> torch.Tensor:
    """Free local columns per stage: pose frees all; shape only the rigid ones (β is shared, freed apart)."""
    mask = torch.ones(_LOCAL, dtype=torch.bool)
    if stage == "shape":
        mask[:_RIGID.start] = False
    return mask


def _problem_2d(small, model, keypoints, certainty, index, n_betas, config, silhouettes=None) -> solver.Problem:
    """Keypoint (and silhouette) residuals computed by `small` (a vertex subset of `model` with the same
    keypoints). The silhouette block is sqrt(weight · silhouette_loss), one number per image, differentiated in
    reverse mode (torch has no forward mode for grid_sample and cdist)."""
    weights = (certainty / certainty.sum(1, keepdim=True)).sqrt()[..., None]  # (B, 21, 1)

    def residuals(loc, betas_rows):
        out = small(betas=betas_rows, hand_pose=loc[:, 3:48], global_orient=loc[:, :3])
        cam = _cam(loc[:, _RIGID])
        diff = (weak_perspective(out.keypoints, cam) - keypoints) / _KP_UNIT
        blocks = {"data": (diff * weights).flatten(1), **prior_residuals(loc[:, 3:48], betas_rows, model, config)}
        return blocks, {**_parameters(loc, betas_rows), "cam": cam,
                        "error": diff.detach().norm(dim=-1).mean(-1) * _KP_UNIT}

    def silhouette(loc, betas_rows):
        verts = small(betas=betas_rows, hand_pose=loc[:, 3:48], global_orient=loc[:, :3]).vertices
        loss = silhouette_loss(weak_perspective(verts, _cam(loc[:, _RIGID])), silhouettes.mask_dist,
                               silhouettes.mask_points)
        # sqrt has no slope at 0; the loss only reaches 0 where every mask point is a vertex. One residual per image
        # is all the training's loss gives: LM then converges slowly (tests/test_fitting.py measures it); a residual
        # per vertex and mask point would need that loss split into its distances
        return {"silhouette": (config.silhouette_weight * loss * silhouettes.has_mask).clamp_min(1e-12).sqrt()[:, None]}
    return solver.Problem(residuals, index, n_betas, None if silhouettes is None else silhouette)


def _parameters(loc: torch.Tensor, betas_rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"global_orient": loc[:, :3], "hand_pose": loc[:, 3:48], "betas": betas_rows}


def _cam(raw: torch.Tensor) -> torch.Tensor:
    """(log s, tx, ty) -> (s, tx, ty): the scale stays positive."""
    return torch.cat([raw[:, :1].exp(), raw[:, 1:]], dim=1)


def _camera_starts(model, keypoints, certainty, starts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Start rotations and raw cameras (log s, tx, ty): each cube-face orientation turned in the image plane and
    scaled by a weighted 2D Procrustes fit of the mean-pose keypoints; (starts*B, 3) each, start-major."""
    faces = Rotation.from_rotvec(np.array([[0, 0, 0], [math.pi, 0, 0], [math.pi / 2, 0, 0], [-math.pi / 2, 0, 0],
                                           [0, math.pi / 2, 0], [0, -math.pi / 2, 0]])[:starts])
    B = len(keypoints)
    with torch.no_grad():
        out = model(betas=keypoints.new_zeros(1, model.num_betas))
    kp3, wrist = out.keypoints[0].double().numpy(), out.joints[0, 0].double().numpy()
    target, w = keypoints.double().numpy(), certainty.double().numpy()
    w = w / w.sum(1, keepdims=True)
    orients, cams = [], []
    for face in faces:
        src = (face.apply(kp3 - wrist) + wrist)[:, :2]                     # (21, 2) the start, projected
        mu_s, mu_t = w @ src, np.einsum("bn,bnd->bd", w, target)           # (B, 2)
        xs, xt = src[None] - mu_s[:, None], target - mu_t[:, None]
        a = (w * (xs[..., 0] * xt[..., 0] + xs[..., 1] * xt[..., 1])).sum(1)
        b = (w * (xs[..., 0] * xt[..., 1] - xs[..., 1] * xt[..., 0])).sum(1)
        scale = np.hypot(a, b) / (w * (xs ** 2).sum(-1)).sum(1)
        spin = Rotation.from_rotvec(np.stack([np.zeros(B), np.zeros(B), np.arctan2(b, a)], 1))
        orients.append((spin * face).as_rotvec())
        rot2 = spin.as_matrix()[:, :2, :2]
        # the projected model s (R2 (x - wrist) + wrist) + t must equal s R2 x + (mu_t - s R2 mu_s)
        t = mu_t - scale[:, None] * np.einsum("bij,bj->bi", rot2, mu_s)
        t = t - scale[:, None] * (wrist[:2] - np.einsum("bij,j->bi", rot2, wrist[:2]))
        cams.append(np.concatenate([np.log(scale)[:, None], t], 1))
    return (torch.as_tensor(np.concatenate(orients), dtype=keypoints.dtype),
            torch.as_tensor(np.concatenate(cams), dtype=keypoints.dtype))


def _farthest_points(points: np.ndarray, n: int, first: list[int]) -> np.ndarray:
    chosen = list(dict.fromkeys(int(i) for i in first))[:n]
    dist = np.min(np.linalg.norm(points[:, None] - points[chosen][None], axis=-1), axis=1)
    while len(chosen) < n:
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return np.array(chosen)


def _check_model(model) -> None:
    if getattr(model, "use_pca", False):
        raise ValueError("fitting optimises the axis-angle hand_pose: build the model with use_pca=False")


def _beta_index(subject_ids: torch.Tensor | None, B: int) -> tuple[torch.Tensor, int]:
    """The row of β of every sample, and the number of rows."""
    if subject_ids is None:
        return torch.arange(B), B
    ids = torch.as_tensor(subject_ids)
    if ids.shape != (B,):
        raise ValueError(f"subject_ids must have shape ({B},), got {tuple(ids.shape)}")
    _, index = torch.unique(ids, return_inverse=True)
    return index, int(index.max()) + 1


def _mean_per_subject(betas: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    total = betas.new_zeros(n, betas.shape[1]).index_add_(0, index, betas)
    return total / torch.bincount(index, minlength=n).clamp(min=1)[:, None].to(betas)


def _rank_within_subject(index: torch.Tensor) -> torch.Tensor:
    """0 for each subject's first scan, 1 for its second, ..."""
    rank = torch.empty_like(index)
    for s in index.unique():
        rows = (index == s).nonzero().flatten()
        rank[rows] = torch.arange(len(rows))
    return rank


def _apply(rot: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bij,bj->bi", rot, x)
