import numpy as np
import pytest
import torch
from tensorboardX import SummaryWriter

from handlib import evaluate
from handlib.model import HandModel
from toy_hand import toy_params


def test_read_scalars_and_last_value(tmp_path):
    writer = SummaryWriter(str(tmp_path / "tb"))
    for step, value in [(10, 4.0), (20, 3.0), (30, 1.0)]:
        writer.add_scalar("train/loss", value, step)
    writer.close()
    scalars = evaluate.read_scalars(tmp_path)
    steps, values = scalars["train/loss"]
    assert steps.tolist() == [10, 20, 30] and values.tolist() == [4.0, 3.0, 1.0]
    assert evaluate.last_value(scalars, "train/loss", window=2) == pytest.approx(2.0)
    assert np.isnan(evaluate.last_value(scalars, "val/loss"))
    with pytest.raises(FileNotFoundError, match="no TensorBoard log"):
        evaluate.read_scalars(tmp_path / "nothing")


def _predictions(models, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    n = 6
    side = np.array([0, 1, 0, 1, 0, 0])
    hand_pose = rng.normal(size=(n, 45)) * 0.2
    betas = rng.normal(size=(n, 10))
    verts, joints = [], []
    for i in range(n):
        out = models[("right", "left")[side[i]]](torch.tensor(betas[i:i + 1]), torch.tensor(hand_pose[i:i + 1]))
        verts.append(out.vertices[0].numpy())
        joints.append(out.keypoints[0].numpy())
    verts, joints = np.stack(verts), np.stack(joints)
    kp = rng.uniform(-0.8, 0.8, (n, 21, 2))
    shift = noise * np.array([1.0, 0.0])
    return {
        "kp2d_iters": np.stack([kp + 3 * shift, kp + shift], 1), "kp2d_true": kp, "certainty": np.ones((n, 21)),
        "side": side, "has3d": np.ones(n, bool), "vertices": verts + noise * 0.1, "joints": joints + noise * 0.1,
        "betas": betas + noise, "hand_pose": hand_pose, "vertices_true": verts, "joints_true": joints,
        "betas_true": betas, "hand_pose_true": hand_pose, "image_size": np.array(100),
        "cam": np.tile([5.0, 0.0, 0.0], (n, 1)), "images": np.full((n, 100, 100, 3), 255, np.uint8),
    }


def test_evaluate_is_perfect_on_the_truth_and_measures_a_known_offset():
    models = {s: HandModel(toy_params(side=s), side=s).double() for s in ("right", "left")}
    perfect = evaluate.evaluate(_predictions(models), models)
    assert perfect["kp2d_px"] == 0 and perfect["pck_auc"] == pytest.approx(1.0)  # 0 <= every threshold
    assert perfect["mpjpe_mm"] == pytest.approx(0, abs=1e-9) and perfect["f5"] == 1.0 and perfect["beta_err"] == 0
    # a shift of 0.02 in [-1, 1] over a 100-pixel crop is 1 pixel; a 3D translation vanishes once wrist-aligned
    off = evaluate.evaluate(_predictions(models, noise=0.02), models)
    assert off["kp2d_px"] == pytest.approx(1.0)
    assert off["mpjpe_mm"] == pytest.approx(0, abs=1e-9) and off["pa_pve_mm"] == pytest.approx(0, abs=1e-9)
    assert off["beta_err"] == pytest.approx(0.02)


def test_table_and_verdict_come_from_the_numbers():
    results = {
        "thesis": {"train_loss": 2.0, "val_loss": 3.0, "kp2d_rel": 0.08, "pa_mpjpe_mm": 20.0, "implausible": 0.30,
                   "beta_abs_max": 5.1},
        "ours": {"train_loss": 2.5, "val_loss": 2.0, "kp2d_rel": 0.09, "pa_mpjpe_mm": 10.0, "implausible": 0.05,
                 "beta_abs_max": 1.2},
    }
    html = evaluate.table(results)
    assert "<td><b>10.0</b></td>" in html and "<td><b>2</b></td>" in html  # best PA-MPJPE and train loss
    text = evaluate.verdict(results)
    assert text.startswith("**ours** wins on PA-MPJPE, mm (10.0 against 20.0 for thesis, -50%).")
    assert "worse on 2D keypoint error / hand size (0.090 vs 0.080)" in text and "5.0%" in text
    assert "loss" not in text  # losses of different configurations are not compared
    results["ours"]["pa_mpjpe_mm"] = 30.0
    assert evaluate.verdict(results).startswith("**thesis** wins")
    del results["ours"]["pa_mpjpe_mm"]  # not every run has 3D figures: the 2D error decides
    assert evaluate.verdict(results).startswith("**thesis** wins on 2D keypoint error / hand size")


def test_prediction_pictures_show_every_iteration_the_truth_and_the_mesh():
    models = {s: HandModel(toy_params(side=s), side=s).double() for s in ("right", "left")}
    pred = _predictions(models)
    grid = evaluate.prediction_pictures(pred, models, n=2)
    assert grid.shape == (200, 100 * (2 + 1 + 1), 3)
    assert (grid[:, :300] != 255).any(axis=-1).sum() > 0  # keypoints drawn
    assert (grid[:, 300:] != 255).any()  # the mesh drawn over the crop


def test_rank_orders_by_the_first_shared_primary_metric():
    results = {"a": {"pa_mpjpe_mm": 12.0, "kp2d_rel": 0.1}, "b": {"pa_mpjpe_mm": 9.0, "kp2d_rel": 0.2},
               "c": {"kp2d_rel": 0.05}}
    assert evaluate.rank(results) == (["c", "a", "b"], "kp2d_rel")  # c has no 3D figures: 2D decides
    del results["c"]
    assert evaluate.rank(results) == (["b", "a"], "pa_mpjpe_mm")
    assert evaluate.rank({"a": {}}) == (["a"], None)


def test_pck5_and_the_shares_of_angles_beyond_the_limits():
    from handlib.anatomy import joint_angles, pose_from_angles

    models = {s: HandModel(toy_params(side=s), side=s).double() for s in ("right", "left")}
    pred = _predictions(models, noise=0.0)
    pred["kp2d_iters"][:3, -1, 0, 0] += 10.0  # 3 of the 6 x 21 keypoints far off
    angles = torch.zeros(6, 15, 3, dtype=torch.float64)
    angles[:, :, 2] = 0.5  # bends inside every joint's limits
    angles[0, 1, 0] = np.radians(20)  # index PIP twisted 20° (its limit is 0): beyond by more than 10°
    angles[1, 4, 1] = np.radians(5)   # middle PIP spread 5°: beyond, but by less than 10°
    pred["hand_pose"] = np.concatenate([pose_from_angles(angles[i:i + 1], models[("right", "left")[s]]).numpy()
                                        for i, s in enumerate(pred["side"])])
    for i, s in enumerate(pred["side"]):  # the poses make the angles asked for
        got = joint_angles(torch.tensor(pred["hand_pose"][i:i + 1]), models[("right", "left")[s]])
        np.testing.assert_allclose(got.numpy(), angles[i:i + 1].numpy(), atol=1e-9)
    figures = evaluate.evaluate(pred, models)
    assert figures["pck5"] == pytest.approx(1 - 3 / (6 * 21))
    assert figures["implausible"] == pytest.approx(2 / (6 * 45))
    assert figures["beyond_10deg"] == pytest.approx(1 / (6 * 45))


def test_goal_figures_say_which_goals_are_met():
    goals = evaluate.goal_figures({"pa_mpjpe_mm": 9.5, "pa_pve_mm": 12.0, "pck5": 0.91, "beyond_10deg": 0.0,
                                   "kp2d_px": 3.0})
    assert goals == {"PA-MPJPE (mm)": (9.5, "< 10", True), "PA per-vertex error (mm)": (12.0, "< 10", False),
                     "PCK@5% (%)": (91.0, "> 90", True), "joint angles > 10° beyond the limits (%)": (0.0, "= 0", True)}
    assert evaluate.goal_figures({"beyond_10deg": 0.001})["joint angles > 10° beyond the limits (%)"][2] is False
    assert evaluate.goal_figures({"pck5": 0.9})["PCK@5% (%)"][2] is False  # "over 90%"
