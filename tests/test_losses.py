import pytest
import torch
from toy_hand import toy_params

from handlib.losses import LossWeights, hand_losses, reprojection_loss, shape_loss, silhouette_loss
from handlib.model import HandModel
from handlib.network import HandNet

ALL_3D = LossWeights(reproj=100, shape=1, pose=1, global_rot=1, betas=1, keypoints3d=10, vertices=10,
                     joint_limits=0, silhouette=1)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    hands = {side: HandModel(toy_params(side=side), side=side) for side in ("right", "left")}
    return HandNet("resnet18", iterations=2, hand_models=hands).double().eval()


def _theta(net, B, seed, betas=True):
    g = torch.Generator().manual_seed(seed)
    theta = net.mean_thetas[torch.arange(B) % 2] + 0.3 * torch.randn(B, net.theta_dim, generator=g, dtype=torch.float64)
    if not betas:
        theta[:, 48:58] = 0
    return theta


def _batch_from(p, side):
    """Labels that a prediction `p` matches exactly."""
    B = len(side)
    return {"keypoints2d": p.keypoints2d.detach(), "certainty": torch.rand(B, 21, dtype=torch.float64),
            "side": side, "has3d": torch.ones(B, dtype=torch.bool), "hand_pose": p.hand_pose.detach(),
            "betas": p.betas.detach(), "global_rotmat": p.global_rotmat.detach(),
            "keypoints3d": p.keypoints3d.detach() + 0.3,  # an offset: the 3D loss is wrist-relative
            "has_mask": torch.zeros(B, dtype=torch.bool), "mask_dist": torch.zeros(B, 1, 8, 8, dtype=torch.float64),
            "mask_points": torch.zeros(B, 4, 2, dtype=torch.float64)}


def test_reprojection_and_shape_by_hand():
    pred, gt, c = torch.zeros(1, 21, 2), torch.zeros(1, 21, 2), torch.ones(1, 21)
    pred[0, 0] = torch.tensor([0.0, 0.0]); gt[0, 0] = torch.tensor([0.5, -0.25])   # |.|_1 = 0.75
    pred[0, 1] = torch.tensor([1.0, 1.0]); gt[0, 1] = torch.tensor([1.0, 0.0]); c[0, 1] = 0.2  # 0.2 * 1
    assert float(reprojection_loss(pred, gt, c)) == pytest.approx(0.95)
    assert float(shape_loss(torch.tensor([[1.0, -2.0, 0.5] + [0.0] * 7]))) == pytest.approx(3.5)
    verts = torch.tensor([[[0.0, 0.0], [0.5, 0.0]]])
    dist = torch.full((1, 1, 4, 4), 0.5)
    points = torch.tensor([[[0.0, 0.0], [0.5, 0.3]]])  # nearest vertices 0 and 0.3 away
    assert float(silhouette_loss(verts, dist, points)) == pytest.approx(0.5 + 0.15)


def test_total_is_weighted_reprojection_plus_shape_mean_over_batch_and_iterations(net):
    side = torch.tensor([0, 1, 0])
    preds = [net.decode(_theta(net, 3, s), side) for s in (1, 2)]
    batch = _batch_from(net.decode(_theta(net, 3, 3), side), side)
    total, parts = hand_losses(preds, batch, LossWeights(reproj=100, shape=1), net)
    expected = sum(100 * reprojection_loss(p.keypoints2d, batch["keypoints2d"], batch["certainty"]).mean()
                   + p.betas.abs().sum(1).mean() for p in preds) / 2
    assert float(total) == pytest.approx(float(expected), rel=1e-12)
    assert set(parts) == {"reproj", "shape"}


def test_loss_is_zero_for_a_perfect_prediction(net):
    side = torch.tensor([0, 1, 1, 0])
    p = net.decode(_theta(net, 4, 4, betas=False), side)
    total, parts = hand_losses([p, p], _batch_from(p, side), ALL_3D, net)
    assert set(parts) == {"reproj", "shape", "pose", "global_rot", "betas", "keypoints3d", "vertices", "silhouette"}
    assert float(total) == pytest.approx(0, abs=1e-12)
    batch = _batch_from(p, side)
    batch["keypoints2d"] = batch["keypoints2d"] + 0.01
    assert float(hand_losses([p], batch, ALL_3D, net)[0]) > 0.1


def test_labels_only_count_where_they_exist(net):
    side = torch.tensor([0, 0])
    p = net.decode(_theta(net, 2, 5, betas=False), side)
    batch = _batch_from(net.decode(_theta(net, 2, 6), side), side)
    batch["keypoints2d"] = p.keypoints2d.detach()
    batch["has3d"] = torch.zeros(2, dtype=torch.bool)
    assert float(hand_losses([p], batch, ALL_3D, net)[0]) == pytest.approx(0, abs=1e-12)


def test_gradient_matches_finite_differences(net):
    side = torch.tensor([0, 1])
    batch = _batch_from(net.decode(_theta(net, 2, 7), side), side)
    batch["has_mask"] = torch.ones(2, dtype=torch.bool)
    batch["mask_dist"] = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    batch["mask_points"] = torch.rand(2, 4, 2, dtype=torch.float64) - 0.5
    theta = _theta(net, 2, 8).requires_grad_()

    def loss(t):
        return hand_losses([net.decode(t, side)], batch, ALL_3D, net)[0]

    assert torch.autograd.gradcheck(loss, (theta,), eps=1e-6, atol=1e-4, rtol=1e-3)


def test_joint_limit_term_uses_each_samples_side_model(net):
    from handlib.anatomy import joint_limit_loss

    side = torch.tensor([1, 0, 1])
    p = net.decode(_theta(net, 3, 9), side)
    _, parts = hand_losses([p], _batch_from(p, side), LossWeights(reproj=0, shape=0, joint_limits=2.0), net)
    per_hand = [joint_limit_loss(p.hand_pose[i:i + 1], net.hand_models[["right", "left"][s]])
                for i, s in enumerate(side.tolist())]
    expected = 2.0 * torch.cat(per_hand).mean()
    assert float(expected) > 0 and float(parts["joint_limits"]) == pytest.approx(float(expected), rel=1e-10)
