"""HandModel against smplx's MANO, closed forms, finite differences and scipy's rotations."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import smplx
import torch
from scipy.spatial.transform import Rotation

from fixtures.mano import random_mano_params, write_plain_pickle
from handlib import joints as joint_orders
from handlib.model import HandModel, batch_rodrigues

REPO = Path(__file__).resolve().parent.parent


def smplx_mano(path, **kw) -> smplx.MANO:
    with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a warning about 10 betas
        return smplx.MANO(model_path=str(path), dtype=torch.float64, **kw)


def random_inputs(batch: int, pose_dim: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    inputs = {"betas": 1.5 * torch.randn(batch, 10, generator=gen, dtype=torch.float64),
              "hand_pose": 0.8 * torch.randn(batch, pose_dim, generator=gen, dtype=torch.float64),
              "global_orient": 1.5 * torch.randn(batch, 3, generator=gen, dtype=torch.float64),
              "transl": 0.1 * torch.randn(batch, 3, generator=gen, dtype=torch.float64)}
    inputs["hand_pose"][0] = 0  # the rest pose, where Rodrigues divides by θ = 0
    inputs["global_orient"][0] = 0
    return inputs


@pytest.mark.parametrize("use_pca", [False, True])
@pytest.mark.parametrize("flat_hand_mean", [False, True])
def test_matches_smplx_mano(tmp_path, use_pca, flat_hand_mean):
    path = tmp_path / "MANO_RIGHT.pkl"
    write_plain_pickle(random_mano_params(200, 300, seed=1), path)
    ncomps = 12 if use_pca else 45
    kw = dict(use_pca=use_pca, num_pca_comps=ncomps, flat_hand_mean=flat_hand_mean)
    reference = smplx_mano(path, is_rhand=True, **kw)
    ours = HandModel.from_mano(path, dtype=torch.float64, **kw)
    inputs = random_inputs(8, ncomps)
    expected, got = reference(**inputs), ours(**inputs)
    assert got.vertices.dtype == torch.float64
    assert (got.vertices - expected.vertices).abs().max() < 1e-6
    assert (got.joints - expected.joints).abs().max() < 1e-6
    # without transl smplx adds none either
    del inputs["transl"]
    assert (ours(**inputs).vertices - reference(**inputs).vertices).abs().max() < 1e-6


def test_rest_pose_is_the_template():
    params = random_mano_params(50, 60)
    out = HandModel(params, flat_hand_mean=True, dtype=torch.float64)()
    assert out.vertices.shape == (1, 50, 3)
    np.testing.assert_allclose(out.vertices[0].numpy(), params["v_template"], atol=1e-12)
    np.testing.assert_allclose(out.joints[0].numpy(), params["J_regressor"] @ params["v_template"], atol=1e-12)


def test_global_rotation_is_about_the_wrist_then_translation():
    params = random_mano_params(50, 60)
    model = HandModel(params, flat_hand_mean=True, dtype=torch.float64)
    rotvec, transl = np.array([0.3, -1.2, 2.0]), np.array([0.05, -0.02, 0.3])
    out = model(global_orient=torch.tensor(rotvec[None]), transl=torch.tensor(transl[None]))
    wrist = params["J_regressor"][0] @ params["v_template"]
    expected = Rotation.from_rotvec(rotvec).apply(params["v_template"] - wrist) + wrist + transl
    np.testing.assert_allclose(out.vertices[0].numpy(), expected, atol=1e-12)


def test_keypoints_in_openpose_order_by_name():
    params = random_mano_params(60, 80)
    out = HandModel(params, dtype=torch.float64)(**random_inputs(3, 45))
    finger_of = {"thumb": "thumb", "index": "index", "middle": "middle", "ring": "ring", "pinky": "pinky"}
    mano_joint = {"wrist": "wrist"}
    for finger in finger_of:
        names = ["cmc", "mcp", "ip"] if finger == "thumb" else ["mcp", "pip", "dip"]
        for level, name in enumerate(names, start=1):
            mano_joint[f"{finger}_{name}"] = f"{finger}{level}"
    assert out.keypoints.shape == (3, 21, 3)
    for k, name in enumerate(joint_orders.OPENPOSE_NAMES):
        if name.endswith("_tip"):
            vertex = params["tip_ids"][joint_orders.TIP_NAMES.index(name)]
            expected = out.vertices[:, vertex]
        else:
            expected = out.joints[:, joint_orders.MANO_JOINT_NAMES.index(mano_joint[name])]
        torch.testing.assert_close(out.keypoints[:, k], expected, rtol=0, atol=0)


def test_rodrigues_matches_scipy_including_zero_and_near_pi():
    rng = np.random.default_rng(0)
    vecs = np.concatenate([rng.normal(size=(50, 3)), np.zeros((1, 3)), 1e-9 * rng.normal(size=(3, 3)),
                           (np.pi - 1e-7) * np.eye(3)])
    got = batch_rodrigues(torch.tensor(vecs)).numpy()
    np.testing.assert_allclose(got, Rotation.from_rotvec(vecs).as_matrix(), atol=1e-14)


@pytest.mark.parametrize("use_pca", [False, True])
def test_gradients_match_finite_differences(use_pca):
    model = HandModel(random_mano_params(12, 10, seed=3), use_pca=use_pca, num_pca_comps=6,
                       dtype=torch.float64)
    inputs = random_inputs(2, 6 if use_pca else 45, seed=4)
    names = list(inputs)

    def outputs(*args):
        out = model(**dict(zip(names, args)))
        return out.vertices, out.joints, out.keypoints

    args = tuple(inputs[n].clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(outputs, args, eps=1e-6, atol=1e-7)


def test_float32_and_float64_agree():
    params = random_mano_params(100, 150)
    inputs = random_inputs(4, 45)
    out64 = HandModel(params, dtype=torch.float64)(**inputs)
    model32 = HandModel(params)
    assert model32.v_template.dtype == torch.float32
    out32 = model32(**{k: v.float() for k, v in inputs.items()})
    assert out32.vertices.dtype == torch.float32
    assert (out32.vertices.double() - out64.vertices).abs().max() < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    model = HandModel(random_mano_params(100, 150))
    inputs = {k: v.float() for k, v in random_inputs(4, 45).items()}
    cpu = model(**inputs).vertices
    gpu = model.cuda()(**{k: v.cuda() for k, v in inputs.items()}).vertices
    assert (gpu.cpu() - cpu).abs().max() < 1e-5


def test_missing_inputs_are_zeros_and_batch_sizes_must_agree():
    model = HandModel(random_mano_params(30, 40), dtype=torch.float64)
    betas = torch.randn(5, 10, dtype=torch.float64)
    zero = torch.zeros(5, 3, dtype=torch.float64)
    torch.testing.assert_close(model(betas=betas).vertices,
                               model(betas=betas, hand_pose=torch.zeros(5, 45, dtype=torch.float64),
                                     global_orient=zero, transl=zero).vertices)
    with pytest.raises(ValueError, match="batch size"):
        model(betas=betas, global_orient=torch.zeros(2, 3, dtype=torch.float64))


def test_bad_parameters_are_named():
    params = random_mano_params(30, 40)
    with pytest.raises(ValueError, match="posedirs"):
        HandModel(dict(params, posedirs=params["posedirs"][:, :, :100]))
    with pytest.raises(ValueError, match="hands_mean"):
        HandModel({k: v for k, v in params.items() if k != "hands_mean"})
    kintree = params["kintree_table"].copy()
    kintree[0, 2] = 0
    with pytest.raises(ValueError, match="kintree_table"):
        HandModel(dict(params, kintree_table=kintree))


def test_builtin_exports_to_smplx(tmp_path):
    if not (REPO / "handlib" / "builtin.py").exists():
        pytest.skip("handlib/builtin.py (issue 3 part 3) has not landed yet")
    for side in ("right", "left"):
        model = HandModel.builtin(side, dtype=torch.float64)
        path = tmp_path / f"MANO_{side.upper()}.pkl"
        model.export_mano(path)
        reference = smplx_mano(path, is_rhand=side == "right", use_pca=False, flat_hand_mean=False)
        inputs = random_inputs(4, 45)
        assert (model(**inputs).vertices - reference(**inputs).vertices).abs().max() < 1e-6


def test_gradients_after_a_first_call_in_inference_mode():
    from handlib.model import _constants

    _constants.cache_clear()  # the cached constants get made inside inference mode
    model = HandModel(random_mano_params(30, 30), dtype=torch.float64)
    with torch.inference_mode():
        model(hand_pose=torch.randn(2, 45, dtype=torch.float64))
    pose = torch.randn(2, 45, dtype=torch.float64, requires_grad=True)
    model(hand_pose=pose).vertices.sum().backward()
    assert pose.grad is not None and pose.grad.abs().sum() > 0


@pytest.mark.parametrize("use_pca", [False, True])
def test_keypoints_only_equal_the_full_models_keypoints_and_gradients(use_pca):
    model = HandModel(random_mano_params(60, 80), use_pca=use_pca, num_pca_comps=12, dtype=torch.float64)
    inputs = {k: v.requires_grad_() for k, v in random_inputs(4, 12 if use_pca else 45, seed=5).items()}
    full, light = model(**inputs), model(**inputs, return_verts=False)
    assert light.vertices is None
    np.testing.assert_allclose(light.keypoints.detach().numpy(), full.keypoints.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(light.joints.detach().numpy(), full.joints.detach().numpy(), atol=1e-12)
    weights = torch.randn_like(full.keypoints)
    grads = [torch.autograd.grad((out.keypoints * weights).sum(), list(inputs.values())) for out in (full, light)]
    for g_full, g_light in zip(*grads):
        np.testing.assert_allclose(g_light.numpy(), g_full.numpy(), atol=1e-10)
