import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from toy_hand import toy_params

from handlib.camera import weak_perspective
from handlib.model import HandModel
from handlib.anatomy import LIMITS_DEG
from handlib.network import ENCODERS, HandNet, build_encoder
from handlib.rotations import matrix_to_axis_angle, matrix_to_rot6d, rot6d_to_matrix


@pytest.fixture(scope="module")
def hands():
    return {side: HandModel(toy_params(side=side), side=side) for side in ("right", "left")}


def test_6d_to_matrix_matches_qr_gram_schmidt():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    R = rot6d_to_matrix(torch.tensor(x)).numpy()
    for xi, Ri in zip(x, R):
        q, r = np.linalg.qr(np.stack([xi[:3], xi[3:]], 1))  # Householder QR, independent of Gram-Schmidt
        q = q * np.sign(np.diag(r))
        np.testing.assert_allclose(Ri[:, :2], q, atol=1e-10)
        np.testing.assert_allclose(Ri[:, 2], np.cross(q[:, 0], q[:, 1]), atol=1e-10)
    np.testing.assert_allclose(np.linalg.det(R), 1, atol=1e-10)
    rots = Rotation.random(50, random_state=1).as_matrix()
    back = rot6d_to_matrix(matrix_to_rot6d(torch.tensor(rots)))
    np.testing.assert_allclose(back.numpy(), rots, atol=1e-12)


def test_matrix_to_axis_angle_matches_scipy():
    rots = Rotation.random(200, random_state=2)
    near_pi = Rotation.from_rotvec(np.array([[np.pi - 1e-7, 0, 0], [0, 0, 1e-9], [0.0, 0, 0]]))
    for r in (rots, near_pi):
        aa = matrix_to_axis_angle(torch.tensor(r.as_matrix())).numpy()
        np.testing.assert_allclose(Rotation.from_rotvec(aa).as_matrix(), r.as_matrix(), atol=1e-9)
    np.testing.assert_allclose(matrix_to_axis_angle(torch.tensor(rots.as_matrix())).numpy(), rots.as_rotvec(),
                               atol=1e-9)


@pytest.mark.parametrize("rotation", ["axis_angle", "6d"])
def test_all_iterations_have_the_right_shapes_and_match_the_hand_model(hands, rotation):
    torch.manual_seed(0)
    net = HandNet("resnet18", iterations=3, rotation=rotation, hand_models=hands).eval()
    side = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        out = net(torch.rand(4, 3, 64, 64) * 2 - 1, side)
    D = 61 if rotation == "axis_angle" else 64
    V = hands["right"].num_verts
    assert len(out) == 3
    for p in out:
        assert p.theta.shape == (4, D) and p.global_rotmat.shape == (4, 3, 3) and p.hand_pose.shape == (4, 45)
        assert p.betas.shape == (4, 10) and p.cam.shape == (4, 3) and p.vertices.shape == (4, V, 3)
        assert p.keypoints3d.shape == (4, 21, 3) and p.keypoints2d.shape == (4, 21, 2)
    assert not torch.equal(out[0].theta, out[2].theta)  # each iteration refines
    # decode == the hand model with MANO's own global rotation, each sample through its side's model
    p = out[-1]
    aa = matrix_to_axis_angle(p.global_rotmat)
    for i, s in enumerate(side.tolist()):
        ref = hands[["right", "left"][s]](betas=p.betas[i:i + 1], hand_pose=p.hand_pose[i:i + 1],
                                          global_orient=aa[i:i + 1])
        torch.testing.assert_close(p.keypoints3d[i], ref.keypoints[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(p.vertices[i], ref.vertices[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(p.keypoints2d, weak_perspective(p.keypoints3d, p.cam))
    # without the meshes: the same keypoints, each sample in its place
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        light, full = net(images, side, return_verts=False)[-1], net(images, side)[-1]
    assert light.vertices is None
    torch.testing.assert_close(light.keypoints3d, full.keypoints3d, atol=1e-6, rtol=0)
    torch.testing.assert_close(light.keypoints2d, full.keypoints2d, atol=1e-6, rtol=0)
    # the start: the mean hand fills the crop's middle, fingers up; the left one is its mirror image
    sides = torch.tensor([0, 1])
    start = net.decode(net.initial_theta(sides), sides)
    kp = start.keypoints2d
    np.testing.assert_allclose((kp[0].amax(0) - kp[0].amin(0)).max().item(), 1.6, atol=1e-4)
    np.testing.assert_allclose(((kp[0].amax(0) + kp[0].amin(0)) / 2).numpy(), 0, atol=1e-4)
    assert float(kp[0, 12, 1] - kp[0, 0, 1]) < -0.8  # middle fingertip well above the wrist
    # the toy left hand is the right one mirrored up to its random blend shapes
    torch.testing.assert_close(kp[1], kp[0] * torch.tensor([-1.0, 1.0]), atol=0.02, rtol=0)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoders_give_their_feature_size(name):
    enc = build_encoder(name, "random").eval()
    size = 80 if name == "inception_v3" else 48
    with torch.no_grad():
        assert enc(torch.zeros(1, 3, size, size)).shape == (1, ENCODERS[name].features)


def test_pretrained_weights_missing_file_is_named_and_given_file_loads(tmp_path, monkeypatch, hands):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth.*download\.pytorch\.org"):
        build_encoder("resnet18", "pretrained")
    reference = build_encoder("resnet18", "random")
    torch.save({**reference.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)},
               tmp_path / "r18.pth")
    net = HandNet("resnet18", "freeze", weights_file=tmp_path / "r18.pth", hand_models=hands)
    for key, value in reference.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[key], value), key
    net.train()
    assert not net.encoder.training and net.regressor.training
    assert not any(p.requires_grad for p in net.encoder.parameters())
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    assert torch.equal(build_encoder("resnet18", "pretrained").conv1.weight, reference.conv1.weight)


def test_anatomical_pose_space_stays_inside_the_limits_and_starts_at_the_mean_pose(hands):
    from handlib.anatomy import angle_violations, joint_angles

    torch.manual_seed(0)
    net = HandNet("resnet18", iterations=2, hand_models=hands, pose_space="anatomical").eval()
    side = torch.tensor([0, 1, 1, 0, 0, 1])
    theta = net.initial_theta(side) + 3 * torch.randn(6, net.theta_dim)  # far from the start, saturating
    theta.requires_grad_()
    p = net.decode(theta, side)
    for k, name in enumerate(("right", "left")):
        assert float(angle_violations(p.hand_pose[side == k].detach(), hands[name]).max()) < 1e-3
    # each sample went through its own side's model: the same Θ decoded as one side alone agrees
    cam, pose_left, _, kp_left = net.decode_side(theta[side == 1], "left")
    torch.testing.assert_close(p.hand_pose[side == 1], pose_left)
    torch.testing.assert_close(p.keypoints3d[side == 1], kp_left)
    p.keypoints2d.sum().backward()
    assert torch.isfinite(theta.grad).all() and theta.grad[:, 3:48].abs().sum() > 0
    # the start is the model's mean pose (hand_pose 0), up to the angles the limits clip
    start = net.decode(net.initial_theta(torch.tensor([0, 1])), torch.tensor([0, 1]))
    for k, name in enumerate(("right", "left")):
        mean = joint_angles(torch.zeros(1, 45), hands[name])
        got = joint_angles(start.hand_pose[k:k + 1], hands[name])
        lo, hi = (torch.deg2rad(torch.as_tensor(b, dtype=torch.float32)) for b in np.moveaxis(LIMITS_DEG, -1, 0))
        inside = (mean > lo + 0.02 * (hi - lo)) & (mean < hi - 0.02 * (hi - lo))
        torch.testing.assert_close(got[inside], mean[inside], atol=1e-4, rtol=0)
