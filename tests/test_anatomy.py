import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from handlib import anatomy
from handlib.model import HandModel
from toy_hand import toy_params


@pytest.fixture(scope="module")
def toy():
    return HandModel(toy_params(), side="right")


def random_frames(n: int, seed: int) -> torch.Tensor:
    rows = Rotation.random(n, random_state=seed).as_matrix().transpose(0, 2, 1)  # orthonormal rows
    return torch.as_tensor(rows)


def test_compose_then_decompose_returns_the_angles():
    g = torch.Generator().manual_seed(0)
    frames = random_frames(15, 1)
    angles = (torch.rand(200, 15, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([5.0, 2.0, 2.0],
                                                                                             dtype=torch.float64)
    back = anatomy.decompose(anatomy.compose(angles, frames), frames)
    torch.testing.assert_close(back, angles, atol=1e-9, rtol=0)


def test_decompose_matches_an_independent_swing_twist_split():
    """Swing = the shortest rotation taking the bone axis t to R t; twist = what is left, about t."""
    frames = random_frames(15, 2)
    rots = Rotation.random(15 * 50, random_state=3)
    aa = torch.as_tensor(rots.as_rotvec()).reshape(50, 15, 3)
    got = anatomy.decompose(aa, frames).numpy()
    R = rots.as_matrix().reshape(50, 15, 3, 3)
    t, s, b = (frames[:, i].numpy() for i in range(3))
    Rt = np.einsum("nkij,kj->nki", R, t)
    axis = np.cross(t, Rt)
    angle = np.arccos(np.clip((Rt * t).sum(-1), -1, 1))
    swing_vec = axis / np.linalg.norm(axis, axis=-1, keepdims=True) * angle[..., None]
    np.testing.assert_allclose(got[..., 1], (swing_vec * s).sum(-1), atol=1e-9)
    np.testing.assert_allclose(got[..., 2], (swing_vec * b).sum(-1), atol=1e-9)
    swing = Rotation.from_rotvec(swing_vec.reshape(-1, 3))
    twist = (swing.inv() * rots).as_rotvec().reshape(50, 15, 3)
    np.testing.assert_allclose(twist, got[..., :1] * t, atol=1e-9)


def test_single_axis_rotations_land_on_their_own_angle():
    frames = random_frames(15, 4)
    for axis in range(3):
        aa = 0.7 * frames[:, axis][None]  # (1, 15, 3)
        expected = torch.zeros(1, 15, 3, dtype=torch.float64)
        expected[..., axis] = 0.7
        torch.testing.assert_close(anatomy.decompose(aa, frames), expected, atol=1e-12, rtol=0)


def test_joint_limit_loss_gradient_matches_finite_differences(toy):
    toy = toy.double()
    g = torch.Generator().manual_seed(5)
    pose = (torch.rand(3, 45, generator=g, dtype=torch.float64) - 0.5) * 2.5  # many joints out of range
    pose.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: anatomy.joint_limit_loss(p, toy), (pose,), eps=1e-6, atol=1e-6)
    zero = torch.zeros(1, 45, dtype=torch.float64, requires_grad=True)  # the identity: smooth, no NaN
    anatomy.joint_limit_loss(zero, toy).sum().backward()
    assert torch.isfinite(zero.grad).all()
    toy.float()


def test_frames_bend_towards_the_palm_and_spread_towards_the_thumb():
    """Toy right hand: palm faces +z, thumb at +x. Its mirror (left) keeps the palm at +z, thumb at -x."""
    for side, radial in (("right", 1.0), ("left", -1.0)):
        model = HandModel(toy_params(side=side), side=side, flat_hand_mean=True)
        rest = model().vertices[0, model.tip_ids[1]]  # index tip
        for axis, direction in ((2, torch.tensor([0.0, 0.0, 1.0])), (1, torch.tensor([radial, 0.0, 0.0]))):
            angles = torch.zeros(1, 15, 3)
            angles[0, 0, axis] = 0.3  # index MCP
            moved = model(hand_pose=anatomy.pose_from_angles(angles, model)).vertices[0, model.tip_ids[1]]
            assert float((moved - rest) @ direction) > 0.01, (side, axis)


def test_violations_and_loss_are_zero_inside_and_measured_outside(toy):
    inside = anatomy.pose_from_angles(anatomy.random_angles(64, torch.Generator().manual_seed(6), margin_deg=1),
                                      toy)
    assert float(anatomy.joint_limit_loss(inside, toy).max()) < 1e-10
    assert float(anatomy.angle_violations(inside, toy).max()) < 1e-4
    angles = torch.zeros(1, 15, 3)
    angles[0, 1, 2] = math.radians(-10)  # index PIP bent backwards
    angles[0, 12, 1] = math.radians(55)  # thumb CMC spread beyond +45
    pose = anatomy.pose_from_angles(angles, toy)
    viol = anatomy.angle_violations(pose, toy)
    assert viol[0, 1, 2] == pytest.approx(10, abs=1e-3)
    assert viol[0, 12, 1] == pytest.approx(10, abs=1e-3)
    assert float(viol.sum()) == pytest.approx(20, abs=1e-2)
    assert float(anatomy.joint_limit_loss(pose, toy)[0]) == pytest.approx(2 * math.radians(10) ** 2, rel=1e-4)


def test_the_mean_pose_counts_unless_the_model_is_flat():
    params = toy_params()
    curled = HandModel(params, flat_hand_mean=False)
    flat = HandModel(params, flat_hand_mean=True)
    zero = torch.zeros(1, 45)
    # the toy's mean pose is a 0.2 rad curl about +x, the fingers' bend axis
    assert torch.allclose(anatomy.joint_angles(zero, curled)[0, :12, 2], torch.full((12,), 0.2), atol=1e-6)
    assert float(anatomy.joint_angles(zero, flat).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="use_pca"):
        anatomy.joint_limit_loss(zero, HandModel(params, use_pca=True))


def test_the_builtin_hands_natural_mean_pose_bends_inwards_within_the_limits():
    """The built-in hand's mean pose is a relaxed curl: every joint flexes towards the palm (the thumb's about
    its rolled axis), within a few degrees of the limits."""
    for side in ("right", "left"):
        model = HandModel.builtin(side)
        zero = torch.zeros(1, 45)
        assert float(anatomy.joint_angles(zero, model)[0, :, 2].min()) > math.radians(5)
        assert float(anatomy.angle_violations(zero, model).max()) < 3.0
