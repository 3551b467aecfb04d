"""How well β is recovered, measured against a known truth.

- `registration_table`: the thesis's comparison on registrations: β fitted per scan, shared per subject over the
  sum of its scans ("direct", Eq. 5.2), and shared but refined scan by scan ("iterative").
- `keypoint_views` + `views_table`: β from 2D keypoints alone, one view (dorsal or palmar) against both views of
  the same subject sharing one β, photographed as in 11K Hands (hand laid flat, seen from above).
"""

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from handlib import anatomy, fitting, metrics, skin, synthetic
from handlib.camera import normalized_to_pixels, weak_perspective
from handlib.registrations import Registrations


def registration_table(model, registrations: Registrations, config: fitting.FitConfig, passes: int = 2,
                       log=None) -> tuple[list[dict], dict[str, fitting.HandFit]]:
    """Per-scan, shared-direct and shared-iterative fits of synthetic registrations (with `truth`): one row per
    method with the mean absolute β error, the mean vertex distance to the registrations and to the noise-free
    surface (the registration before noise: what a perfect fit would reach), and seconds."""
    if registrations.truth is None:
        raise ValueError("registration_table needs registrations with a known truth (synthetic_registrations)")
    targets = torch.as_tensor(registrations.vertices, dtype=model.v_template.dtype)
    ids = torch.as_tensor(registrations.subject_ids())
    fits = {"per scan": fitting.fit_registrations(model, targets, config, log=log)}
    fits["shared β, direct"] = fitting.fit_registrations(model, targets, config, subject_ids=ids,
                                                         init=fits["per scan"])
    fits["shared β, iterative"] = fitting.fit_shared_iterative(model, targets, ids, config, passes=passes,
                                                              init=fits["per scan"])
    fits["shared β, direct"].seconds += fits["per scan"].seconds  # both shared fits start from the per-scan one
    fits["shared β, iterative"].seconds += fits["per scan"].seconds
    truth = registrations.truth
    rows = [{"method": name, "beta_error": float(metrics.beta_error(fit.betas, truth["betas"]).mean()),
             "vertex_error_mm": fit.mean_error_mm(),
             "surface_error_mm": 1000 * float(metrics.vertex_errors(fit.vertices, truth["surface"]).mean()),
             "seconds": fit.seconds} for name, fit in fits.items()]
    return rows, fits


def keypoint_views(model, n_subjects: int, views: tuple[str, ...] = ("dorsal", "palmar"), tilt_deg: float = 15,
                   roll_deg: float = 20, fill: float = 0.7, beta_std: float = 1.0, seed: int = 0) -> dict:
    """Exact 2D keypoints of `n_subjects` synthetic people, one image per view each, hands laid flat as in
    11K Hands (synthetic.flat_pose_angles) and seen from the dorsal or palmar side, tilted and rolled a little.
    -> keypoints (N, 21, 2) in [-1, 1], subject_ids (N,), view (N,) names, betas (N, 10) truth, hand_pose,
    global_orient, cam; images are subject-major."""
    rng = np.random.default_rng(seed)
    rest = model(betas=model.v_template.new_zeros(1, model.num_betas))
    frame = np.stack(skin.palm_frame(rest.joints[0].double().numpy(), model.side))
    betas = rng.normal(0, beta_std, (n_subjects, model.num_betas)).repeat(len(views), 0)
    angles = np.stack([synthetic.flat_pose_angles(rng) for _ in range(len(betas))])
    rotations = np.stack([synthetic.global_rotation(rng, frame, view == "palmar", tilt_deg, roll_deg)
                          for _ in range(n_subjects) for view in views])
    as_t = lambda x: torch.as_tensor(x, dtype=model.v_template.dtype)  # noqa: E731
    with torch.no_grad():
        hand_pose = anatomy.pose_from_angles(as_t(angles), model)
        orient = as_t(Rotation.from_matrix(rotations).as_rotvec())
        out = model(betas=as_t(betas), hand_pose=hand_pose, global_orient=orient)
        cam = as_t(np.stack([synthetic.weak_camera(v, fill, np.zeros(2)) for v in out.vertices.double().numpy()]))
        keypoints = weak_perspective(out.keypoints, cam)
    return {"keypoints": keypoints, "subject_ids": torch.arange(n_subjects).repeat_interleave(len(views)),
            "view": [v for _ in range(n_subjects) for v in views], "betas": betas, "hand_pose": hand_pose,
            "global_orient": orient, "cam": cam}


def views_table(model, data: dict, config: fitting.FitConfig, image_size: tuple[int, int] = (1600, 1200),
                starts: int = 6, log=None) -> tuple[list[dict], dict[str, fitting.HandFit]]:
    """β from 2D alone: each view fitted on its own, and all views of a subject sharing one β (logged to `log`).
    One row per way with the mean absolute β error, the error per β component, and the largest keypoint error in
    pixels of an image of `image_size`. The row "mean hand (β = 0)" is what knowing nothing gives."""
    views = np.asarray(data["view"])
    kp, ids = data["keypoints"], data["subject_ids"]
    fits, rows = {}, []
    for view in dict.fromkeys(views):
        rows_of = np.flatnonzero(views == view)
        fits[f"one view ({view})"] = (rows_of, fitting.fit_keypoints_2d(model, kp[rows_of], None, config,
                                                                        starts=starts))
    everything = np.arange(len(views))
    fits[" + ".join(dict.fromkeys(views)) + ", shared β"] = (
        everything, fitting.fit_keypoints_2d(model, kp, None, config, subject_ids=ids, starts=starts, log=log))
    width, height = image_size
    for name, (rows_of, fit) in fits.items():
        truth = data["betas"][rows_of]
        px = (normalized_to_pixels(fit.keypoints_2d, width, height) -
              normalized_to_pixels(kp[rows_of], width, height)).norm(dim=-1)
        rows.append({"way": name, "beta_error": float(metrics.beta_error(fit.betas, truth).mean()),
                     "beta_error_per_component": np.abs(fit.betas.double().numpy() - truth).mean(0),
                     "max_keypoint_error_px": float(px.max()), "seconds": fit.seconds})
    rows.append({"way": "mean hand (β = 0)", "beta_error": float(np.abs(data["betas"]).mean()),
                 "beta_error_per_component": np.abs(data["betas"]).mean(0), "max_keypoint_error_px": float("nan"),
                 "seconds": 0.0})
    return rows, {name: fit for name, (_, fit) in fits.items()}
