import numpy as np
import pytest
import scipy.optimize
import torch
from scipy.spatial.transform import Rotation

from handlib import anatomy, camera, fitting, solver
from handlib import registrations as regs
from handlib.fitlog import FitLog
from handlib.model import HandModel
from toy_hand import toy_params

# the truth lies inside the joint limits, so the limit prior only keeps the fit out of far-off minima
EXACT = fitting.FitConfig(pose_iters=10, shape_iters=5, both_iters=20, joint_limit_weight=10, vertex_subset=200)


@pytest.fixture(scope="module")
def builtin():
    return HandModel.builtin()


@pytest.fixture(scope="module")
def toy():
    return HandModel(toy_params())


@pytest.fixture(scope="module")
def clean(builtin):
    return regs.synthetic_registrations(builtin, n_subjects=2, scans_per_subject=3, noise_mm=0, smooth_noise_mm=0,
                                        residual_mm=0, seed=11)


def test_noise_free_registrations_are_recovered(builtin, clean):
    fit = fitting.fit_registrations(builtin, torch.as_tensor(clean.vertices), EXACT)
    assert float(fit.vertex_error.max()) < 1e-4  # metres: every vertex of every scan within 0.1 mm
    assert np.abs(fit.betas.numpy() - clean.truth["betas"]).max() < 0.01
    stages = [r["stage"] for r in fit.record]
    assert stages[0] == "pose" and "shape" in stages and stages[-1] == "both"
    assert fit.record[-1]["error"] < 1e-3 * fit.record[0]["error"]


@pytest.mark.parametrize("variant", ["direct", "iterative"])
def test_shared_beta_is_one_per_subject_and_recovered(builtin, clean, variant):
    ids = torch.as_tensor(clean.subject_ids())
    targets = torch.as_tensor(clean.vertices)
    if variant == "direct":
        fit = fitting.fit_registrations(builtin, targets, EXACT, subject_ids=ids)
    else:
        fit = fitting.fit_shared_iterative(builtin, targets, ids, EXACT, passes=1)
    betas = fit.betas.numpy()
    assert np.allclose(betas[:3], betas[0]) and np.allclose(betas[3:], betas[3])
    assert np.abs(betas - clean.truth["betas"]).max() < 0.01
    assert float(fit.vertex_error.max()) < 1e-4


def test_vertex_subset_model_is_the_full_model_on_its_vertices(toy):
    small, ids = fitting.vertex_subset_model(toy, 40)
    g = torch.Generator().manual_seed(3)
    args = dict(betas=torch.randn(5, 10, generator=g), hand_pose=0.4 * torch.randn(5, 45, generator=g),
                global_orient=torch.randn(5, 3, generator=g), transl=torch.randn(5, 3, generator=g))
    full, part = toy(**args), small(**args)
    torch.testing.assert_close(part.vertices, full.vertices[:, ids], atol=1e-6, rtol=0)
    torch.testing.assert_close(part.joints, full.joints, atol=1e-6, rtol=0)
    torch.testing.assert_close(part.keypoints, full.keypoints, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="vertex_subset"):
        fitting.vertex_subset_model(toy, 20)


@pytest.mark.parametrize("tie", ["forward", "reverse"])
def test_levenberg_marquardt_with_shared_parameters_matches_scipy(tie):
    """Rows fit y = c·exp(a·x) + d with (a, c) their own and d shared per group; scipy solves the flat problem.
    The tie block is differentiated in forward or in reverse mode."""
    g = torch.Generator().manual_seed(4)
    index = torch.tensor([0, 0, 1, 1, 1, 2])
    x = torch.linspace(0, 1, 9, dtype=torch.float64)
    a, c, d = torch.rand(6, generator=g) + 0.5, torch.rand(6, generator=g) + 1, torch.rand(3, generator=g)
    y = (c[:, None] * torch.exp(a[:, None] * x) + d[index, None]).double()
    y = y + 0.01 * torch.randn(y.shape, generator=g, dtype=torch.float64)  # a real least-squares optimum

    def residuals(local, shared_rows):
        pred = local[:, 1:2] * torch.exp(local[:, :1] * x) + shared_rows
        blocks = {"data": pred - y, **({"tie": 0.1 * local + 0.05 * shared_rows} if tie == "forward" else {})}
        return blocks, {"error": (pred - y).abs().mean(1)}

    def reverse(local, shared_rows):
        return {"tie": 0.1 * local + 0.05 * shared_rows}

    problem = solver.Problem(residuals, index, 3, reverse if tie == "reverse" else None)
    local, shared = solver.solve(problem, torch.ones(6, 2, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64),
                                 50, torch.ones(2, dtype=torch.bool), True, tolerance=1e-14)

    def flat(p):
        loc, sh = torch.as_tensor(p[:12]).view(6, 2), torch.as_tensor(p[12:]).view(3, 1)
        blocks, _ = problem.evaluate(loc, sh[index])
        return torch.cat([b.flatten() for b in blocks.values()]).numpy()
    ref = scipy.optimize.least_squares(flat, np.concatenate([np.ones(12), np.zeros(3)]), xtol=1e-14, ftol=1e-14).x
    np.testing.assert_allclose(local.flatten().numpy(), ref[:12], atol=1e-6)
    np.testing.assert_allclose(shared.flatten().numpy(), ref[12:], atol=1e-6)


def test_exact_2d_keypoints_are_recovered_within_a_pixel(builtin):
    B, width, height = 4, 1600, 1200
    g = torch.Generator().manual_seed(5)
    pose = anatomy.pose_from_angles(anatomy.random_angles(B, g, margin_deg=10), builtin)
    orient = torch.as_tensor(Rotation.random(B, random_state=5).as_rotvec(), dtype=torch.float32)
    betas = torch.randn(B, 10, generator=g)
    cam = torch.tensor([[6.0, 0.1, -0.05]]).repeat(B, 1)
    with torch.no_grad():
        kp = camera.weak_perspective(builtin(betas=betas, hand_pose=pose, global_orient=orient).keypoints, cam)
    config = fitting.FitConfig(pose_iters=15, shape_iters=5, both_iters=30, joint_limit_weight=1.0)
    fit = fitting.fit_keypoints_2d(builtin, kp, torch.ones(B, 21), config)
    px = camera.normalized_to_pixels(fit.keypoints_2d, width, height) - camera.normalized_to_pixels(kp, width, height)
    assert float(px.norm(dim=-1).max()) < 1.0
    # the returned parameters reproduce the returned keypoints through the model
    with torch.no_grad():
        again = camera.weak_perspective(builtin(betas=fit.betas, hand_pose=fit.hand_pose,
                                                global_orient=fit.global_orient).keypoints, fit.cam)
    torch.testing.assert_close(again, fit.keypoints_2d, atol=1e-6, rtol=0)


def test_certainty_zero_keypoints_do_not_pull(toy):
    g = torch.Generator().manual_seed(6)
    pose = anatomy.pose_from_angles(anatomy.random_angles(2, g, margin_deg=10), toy)
    with torch.no_grad():
        kp = camera.weak_perspective(toy(hand_pose=pose).keypoints, torch.tensor([[5.0, 0.0, 0.0]] * 2))
    wrong = kp.clone()
    wrong[:, 8] += 0.5  # the index tip far off, but with certainty 0
    certainty = torch.ones(2, 21)
    certainty[:, 8] = 0
    config = fitting.FitConfig(pose_iters=10, shape_iters=3, both_iters=15)
    fit = fitting.fit_keypoints_2d(toy, wrong, certainty, config)
    others = torch.ones(21, dtype=torch.bool)
    others[8] = False
    assert float((fit.keypoints_2d - kp)[:, others].norm(dim=-1).max()) < 1e-3


def test_priors_against_independent_computations(toy):
    g = torch.Generator().manual_seed(7)
    pose, betas = torch.randn(3, 45, generator=g), torch.randn(3, 10, generator=g)
    comps, mean = toy.hands_components.double().numpy(), toy.hands_mean.double().numpy()
    coeffs = np.linalg.lstsq(comps.T, (pose.double().numpy() + mean - mean).T, rcond=None)[0].T  # c·C = θ - mean
    np.testing.assert_allclose(fitting.pose_prior(pose, toy).numpy(), (coeffs ** 2).sum(1), rtol=1e-4)
    config = fitting.FitConfig(beta_weight=0.5, pose_prior_weight=2.0, joint_limit_weight=3.0)
    blocks = fitting.prior_residuals(pose, betas, toy, config)
    cost = {k: v.square().sum(1) for k, v in blocks.items()}
    torch.testing.assert_close(cost["beta"], 0.5 * betas.square().sum(1))
    torch.testing.assert_close(cost["pose_prior"], 2.0 * fitting.pose_prior(pose, toy))
    torch.testing.assert_close(cost["joint_limits"], 3.0 * anatomy.joint_limit_loss(pose, toy))
    assert fitting.prior_residuals(pose, betas, toy, fitting.FitConfig()) == {}


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_first_order_optimizers_fit_too(toy, optimizer):
    made = regs.synthetic_registrations(toy, n_subjects=3, scans_per_subject=1, noise_mm=0, smooth_noise_mm=0,
                                        residual_mm=0, seed=8)
    config = fitting.FitConfig(pose_iters=20, shape_iters=10, both_iters=60, optimizer=optimizer,
                               lr=0.1 if optimizer == "adam" else 1.0)
    fit = fitting.fit_registrations(toy, torch.as_tensor(made.vertices), config)
    assert fit.record[-1]["error"] < 0.25 * fit.record[0]["error"]
    assert fit.mean_error_mm() == pytest.approx(fit.record[-1]["error"], rel=0.2)


def test_bad_input_is_refused_with_a_reason(toy):
    V = len(toy.v_template)
    with pytest.raises(ValueError, match=rf"\(B, {V}, 3\).*\(2, 100, 3\)"):
        fitting.fit_registrations(toy, torch.zeros(2, 100, 3))
    nan = torch.zeros(3, V, 3)
    nan[1, 4, 0] = float("nan")
    with pytest.raises(ValueError, match=r"registrations \[1\] contain NaN"):
        fitting.fit_registrations(toy, nan)
    with pytest.raises(ValueError, match="subject_ids must have shape"):
        fitting.fit_registrations(toy, torch.zeros(3, V, 3), subject_ids=torch.zeros(2))
    with pytest.raises(ValueError, match="optimizer"):
        fitting.FitConfig(optimizer="sgd")
    with pytest.raises(ValueError, match=r"keypoints must be \(B, 21, 2\)"):
        fitting.fit_keypoints_2d(toy, torch.zeros(2, 16, 2))
    with pytest.raises(ValueError, match="certainties must be >= 0"):
        fitting.fit_keypoints_2d(toy, torch.zeros(2, 21, 2), -torch.ones(2, 21))
    with pytest.raises(ValueError, match="use_pca=False"):
        fitting.fit_registrations(HandModel(toy_params(), use_pca=True), torch.zeros(1, V, 3))


def test_the_log_holds_losses_and_progress_pictures(toy, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    made = regs.synthetic_registrations(toy, n_subjects=2, scans_per_subject=1, seed=9)
    log = FitLog(tmp_path, toy, registrations=made.vertices, image_every=5, show=2, size=64)
    fitting.fit_registrations(toy, torch.as_tensor(made.vertices),
                              fitting.FitConfig(pose_iters=3, shape_iters=2, both_iters=3, vertex_subset=40), log=log)
    log.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    assert {"fit/loss", "fit/data", "fit/error"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("fit/loss")) == log.steps
    images = events.Images("fit/progress")
    assert len(images) == log.pictures >= 3  # one per stage end at least
    assert (images[0].height, images[0].width) == (2 * 64 + 6, 2 * 64 + 6)  # 2 x 2 tiles, draw.grid padding


def _views_of_one_hand(model, B=4, seed=5):
    """Noise-free keypoints of one subject (one β) in B views, and the truth as a HandFit."""
    g = torch.Generator().manual_seed(seed)
    pose = anatomy.pose_from_angles(anatomy.random_angles(B, g, margin_deg=10), model)
    orient = torch.as_tensor(Rotation.random(B, random_state=seed).as_rotvec(), dtype=torch.float32)
    betas = torch.randn(1, 10, generator=g).repeat(B, 1)
    cam = torch.tensor([[6.0, 0.1, -0.05]]).repeat(B, 1)
    with torch.no_grad():
        kp = camera.weak_perspective(model(betas=betas, hand_pose=pose, global_orient=orient).keypoints, cam)
    return kp, fitting.HandFit(orient, pose, betas, torch.zeros(B, 3), cam=cam), g


SEEDED = fitting.FitConfig(pose_iters=10, shape_iters=5, both_iters=20, joint_limit_weight=1.0)


def test_a_fit_started_at_the_truth_stays_there(builtin):
    kp, truth, _ = _views_of_one_hand(builtin)
    fit = fitting.fit_keypoints_2d(builtin, kp, None, SEEDED, torch.zeros(4, dtype=torch.long), init=truth)
    torch.testing.assert_close(fit.betas, truth.betas, atol=1e-4, rtol=0)
    torch.testing.assert_close(fit.hand_pose, truth.hand_pose, atol=1e-4, rtol=0)
    torch.testing.assert_close(fit.cam, truth.cam, atol=1e-5, rtol=0)
    assert float((fit.keypoints_2d - kp).abs().max()) < 1e-5
    assert [r["stage"] for r in fit.record][0] == "pose"  # no multi-start: the stages ran from the start given


def test_a_fit_started_near_the_truth_beats_the_six_starts(builtin):
    kp, truth, g = _views_of_one_hand(builtin)
    B = len(kp)
    near = fitting.HandFit(truth.global_orient + 0.2 * torch.randn(B, 3, generator=g),
                           truth.hand_pose + 0.15 * torch.randn(B, 45, generator=g),
                           truth.betas + torch.randn(B, 10, generator=g), truth.transl,
                           cam=truth.cam * torch.tensor([1.2, 1.0, 1.0]) + torch.tensor([0.0, 0.05, -0.05]))
    ids = torch.zeros(B, dtype=torch.long)
    seeded = fitting.fit_keypoints_2d(builtin, kp, None, SEEDED, ids, init=near)
    multi = fitting.fit_keypoints_2d(builtin, kp, None, SEEDED, ids)

    def errors(fit):
        return float((fit.keypoints_2d - kp).norm(dim=-1).mean()), float((fit.betas - truth.betas).abs().mean())
    (kp_seeded, beta_seeded), (kp_multi, beta_multi) = errors(seeded), errors(multi)
    start_beta = float((near.betas - truth.betas).abs().mean())
    assert kp_seeded <= kp_multi + 1e-6 and kp_seeded < 1e-4
    assert beta_seeded <= beta_multi + 1e-6 and beta_seeded < 0.1 * start_beta


def test_a_bad_start_is_refused_with_a_reason(toy):
    kp = torch.zeros(2, 21, 2)
    good = dict(global_orient=torch.zeros(2, 3), hand_pose=torch.zeros(2, 45), betas=torch.zeros(2, 10),
                transl=torch.zeros(2, 3), cam=torch.tensor([[5.0, 0, 0]] * 2))
    for change, words in [({"cam": None}, "init needs the camera"),
                          ({"hand_pose": torch.zeros(3, 45)}, r"init.hand_pose must be \(2, 45\).*\(3, 45\)"),
                          ({"betas": torch.zeros(2, 9)}, r"init.betas must be \(2, 10\)"),
                          ({"global_orient": torch.full((2, 3), float("nan"))}, "init.global_orient contains NaN"),
                          ({"cam": torch.tensor([[5.0, 0, 0], [-1.0, 0, 0]])}, r"scale must be > 0; images \[1\]")]:
        with pytest.raises(ValueError, match=words):
            fitting.fit_keypoints_2d(toy, kp, init=fitting.HandFit(**{**good, **change}))


def test_silhouettes_from_masks_against_a_disk():
    m = 64
    u = np.arange(m)
    # a disk of radius 0.5 (in [-1, 1] units) about the centre, in pixel-centre coordinates
    xy = (u + 0.5) / m * 2 - 1
    disk = xy[None, :] ** 2 + xy[:, None] ** 2 <= 0.25
    sil = fitting.Silhouettes.from_masks([disk, None], points=50)
    assert sil.has_mask.tolist() == [True, False] and sil.mask_dist.shape == (2, 1, m, m)
    dist = sil.mask_dist[0, 0].numpy()
    analytic = np.clip(np.hypot(xy[None, :], xy[:, None]) - 0.5, 0, None)
    outside = ~disk
    assert np.abs(dist[outside] - analytic[outside]).max() < 2.5 / m  # the transform measures to pixel centres
    assert (dist[disk] == 0).all()
    assert (sil.mask_points[0].norm(dim=-1) <= 0.5 + 1e-9).all() and len(sil.mask_points[0].unique(dim=0)) == 50
    with pytest.raises(ValueError, match="square and of one size"):
        fitting.Silhouettes.from_masks([disk, disk[:10]])


def _render_masks(model, fit, size=64):
    from handlib.render import Renderer, WeakPerspective

    renderer = Renderer(model.faces.numpy(), size, samples=1)
    masks = renderer.render(fit.vertices.double().numpy(), WeakPerspective(fit.cam.double().numpy()),
                            outputs=("mask",))["mask"]
    renderer.release()
    return list(masks)


def test_the_silhouette_term_pulls_the_mesh_towards_the_mask(builtin):
    """The keypoints say the hand is 20% smaller than its masks show, which is where the fit starts: the
    silhouette term must pull the scale towards the masks' (only part way: one residual per image converges
    slowly under LM, see fitting.py), and without it the fit stays."""
    _, truth, _ = _views_of_one_hand(builtin, B=2)
    with torch.no_grad():
        truth.vertices = builtin(betas=truth.betas, hand_pose=truth.hand_pose,
                                 global_orient=truth.global_orient).vertices
    truth.cam = truth.cam * torch.tensor([0.2, 1.0, 1.0])  # the hand fills ~a third of the 64 px masks
    sil = fitting.Silhouettes.from_masks(_render_masks(builtin, truth), points=128)
    start = fitting.HandFit(truth.global_orient, truth.hand_pose, truth.betas, truth.transl,
                            cam=truth.cam * torch.tensor([0.8, 1.0, 1.0]))
    with torch.no_grad():
        kp = camera.weak_perspective(builtin(betas=truth.betas, hand_pose=truth.hand_pose,
                                             global_orient=truth.global_orient).keypoints, start.cam)
    config = fitting.FitConfig(pose_iters=0, shape_iters=40, both_iters=0, beta_weight=1.0, silhouette_weight=1e4)
    fit = fitting.fit_keypoints_2d(builtin, kp, None, config, init=start, silhouettes=sil)
    without = fitting.fit_keypoints_2d(builtin, kp, None, config, init=start)
    scale = fit.cam[:, 0] / truth.cam[:, 0]
    assert fit.record[-1]["silhouette"] < 0.7 * fit.record[0]["silhouette"]
    assert (scale > 0.85).all(), scale  # from 0.8
    assert ((without.cam[:, 0] / truth.cam[:, 0] - 0.8).abs() < 0.03).all()  # β's prior moves it a little
