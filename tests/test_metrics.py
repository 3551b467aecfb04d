import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.spatial.transform import Rotation

from handlib import metrics


def test_keypoint_errors_in_pixels_and_fraction_of_hand_size():
    gt = np.array([[[0, 0], [30, 0], [30, 40]]], dtype=float)  # bounding box 30 x 40: diagonal 50
    pred = gt + np.array([[[3, 4], [0, 0], [0, -10]]])  # errors 5, 0, 10
    assert metrics.mean_keypoint_error(pred, gt) == pytest.approx(5.0)
    assert metrics.hand_size(gt) == pytest.approx([50.0])
    assert metrics.relative_keypoint_error(pred, gt) == pytest.approx(0.1)
    # an invisible keypoint counts neither in the error nor in the hand size (box 30 x 0)
    visible = np.array([[1.0, 0.9, 0.0]])
    assert metrics.mean_keypoint_error(pred, gt, visible) == pytest.approx(2.5)
    assert metrics.hand_size(gt, visible) == pytest.approx([30.0])
    assert metrics.relative_keypoint_error(torch.tensor(pred), torch.tensor(gt), visible) == pytest.approx(2.5 / 30)


def test_pck_curve_and_auc_by_hand():
    dist = np.array([[1.0, 2.0, 3.0, 4.0]])
    pck = metrics.pck_curve(dist, [0.0, 2.5, 5.0])
    assert pck == pytest.approx([0.0, 0.5, 1.0])
    # trapezoids: (0 + .5) / 2 * 2.5 + (.5 + 1) / 2 * 2.5 = 2.5 over a range of 5
    assert metrics.auc([0.0, 2.5, 5.0], pck) == pytest.approx(0.5)
    assert metrics.pck_curve(dist, [2.0], visible=np.array([[0, 1, 1, 0]])) == pytest.approx([0.5])


def _points(n=21, seed=0):
    return np.random.default_rng(seed).normal(size=(1, n, 3)) * 0.05


def test_procrustes_recovers_a_known_similarity():
    x = _points()
    rot = Rotation.from_rotvec([0.3, -1.1, 0.7]).as_matrix()
    s, t = 1.7, np.array([0.1, -0.2, 0.5])
    y = s * x @ rot.T + t
    s_est, r_est, t_est = metrics.procrustes(x, y)
    assert s_est[0] == pytest.approx(s)
    np.testing.assert_allclose(r_est[0], rot, atol=1e-10)
    np.testing.assert_allclose(t_est[0], t, atol=1e-10)
    assert metrics.pa_mpjpe(x, y) == pytest.approx(0.0, abs=1e-12)
    assert metrics.mpjpe(x, y) > 0.01


def test_procrustes_is_the_optimum_under_noise_and_excludes_reflections():
    x, y = _points(seed=1), _points(seed=2)
    y[..., 2] *= -1  # unrelated sets: the unconstrained optimum may want a reflection

    def cost(p):
        r = Rotation.from_rotvec(p[:3]).as_matrix()
        return ((p[3] * x[0] @ r.T + p[4:] - y[0]) ** 2).sum()

    best = min((minimize(cost, np.r_[rv, 1.0, 0, 0, 0], method="BFGS", options={"gtol": 1e-12})
                for rv in np.random.default_rng(3).normal(size=(8, 3))), key=lambda r: r.fun)
    aligned = metrics.procrustes_align(x, y)
    assert ((aligned - y) ** 2).sum() == pytest.approx(best.fun, rel=1e-6)
    assert np.linalg.det(metrics.procrustes(x, y)[1][0]) == pytest.approx(1.0)


def test_mpjpe_root_relative_by_hand():
    gt = np.zeros((1, 3, 3))
    gt[0, 1] = [0.01, 0, 0]
    gt[0, 2] = [0, 0.02, 0]
    pred = gt + [0.5, 0, 0]  # a pure translation: zero after root alignment
    pred[0, 2, 2] += 0.003
    assert metrics.mpjpe(pred, gt) == pytest.approx(0.001)
    assert metrics.mpjpe(pred, gt, root=None) == pytest.approx((0.5 + 0.5 + np.hypot(0.5, 0.003)) / 3)


def test_vertex_errors_plain_rooted_and_aligned():
    gt = _points(50)
    rot = Rotation.from_rotvec([0, 0, 0.5]).as_matrix()
    pred = 0.9 * gt @ rot.T + 0.2
    assert metrics.aligned_vertex_errors(pred, gt).max() < 1e-12
    np.testing.assert_allclose(metrics.vertex_errors(gt + 0.2, gt, pred_root=np.full((1, 3), 0.2)), 0, atol=1e-15)
    assert metrics.vertex_errors(pred, gt).shape == (1, 50)


def test_f_score_on_a_tiny_point_set_by_hand():
    gt = np.array([[[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]]], dtype=float)
    # two predictions near gt[0], gt[1]; one far away. Nearest distances: pred -> gt 0.1, 0.3, 10;
    # gt -> pred 0.1, 0.3, 1.3, 2.3.
    pred = np.array([[[0.1, 0, 0], [1.3, 0, 0], [0, 10, 0]]], dtype=float)
    p, r = metrics.precision_recall(pred, gt, 0.5)
    assert (p[0], r[0]) == pytest.approx((2 / 3, 2 / 4))
    assert metrics.f_score(pred, gt, 0.5)[0] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert metrics.f_score(pred, gt, 0.05)[0] == 0.0
    assert metrics.f_score(pred, gt, 20)[0] == pytest.approx(1.0)


def test_beta_error_and_magnitudes():
    pred = np.array([[1.0, -2.0, 0.0, 4.0]])
    gt = np.array([[0.0, 0.0, 0.0, 0.0]])
    assert metrics.beta_error(pred, gt) == pytest.approx([7 / 4])
    mags = metrics.beta_magnitudes(pred)
    assert mags["mean"] == pytest.approx(7 / 4)
    assert mags["max"] == 4.0
    assert mags["share_over_3"] == pytest.approx(0.25)


def test_implausible_share_counts_angles_outside_the_limits():
    from handlib.anatomy import pose_from_angles
    from handlib.model import HandModel
    from toy_hand import toy_params

    model = HandModel(toy_params()).double()
    angles = torch.zeros(2, 15, 3, dtype=torch.float64)
    angles[:, :, 2] = np.deg2rad(30)       # every joint bent 30°: inside all limits
    angles[0, 1, 2] = np.deg2rad(100)      # index PIP bent 100° (limit 90)
    angles[1, 0, 1] = np.deg2rad(-8)       # index MCP spread -8° (limit ±5)
    angles[1, 4, 0] = np.deg2rad(0.5)      # middle PIP twisted 0.5°: within the 1° tolerance
    pose = pose_from_angles(angles, model)
    assert metrics.implausible_share(pose, model) == pytest.approx(2 / (2 * 45))
    assert metrics.implausible_share(pose, model, tolerance_deg=0.1) == pytest.approx(3 / (2 * 45))
