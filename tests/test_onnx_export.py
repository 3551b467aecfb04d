import pytest
import torch
from toy_hand import toy_params

from handlib import onnx_export
from handlib.model import HandModel
from handlib.network import HandNet


@pytest.fixture(scope="module", params=["axis_angle", "anatomical"])
def net(request):
    torch.manual_seed(0)
    models = {s: HandModel(toy_params(side=s), side=s) for s in ("right", "left")}
    return HandNet("resnet18", "random", hand_models=models, pose_space=request.param).eval()


def test_one_side_graph_matches_the_network(net):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for k, side in enumerate(("right", "left")):
        expected = net(images, torch.full((2,), k))[-1]
        theta, vertices, keypoints2d = onnx_export.OneSide(net, side)(images)
        torch.testing.assert_close(theta, expected.theta)
        torch.testing.assert_close(vertices, expected.vertices)
        torch.testing.assert_close(keypoints2d, expected.keypoints2d)
    with pytest.raises(ValueError, match="side must be one of"):
        onnx_export.OneSide(net, "both")


def test_onnx_file_agrees_with_pytorch(net, tmp_path):
    path = onnx_export.export(net, tmp_path / "hand.onnx", 64, "left")
    figures = onnx_export.check(net, path, 64, "left", samples=2, repeats=2)
    print(figures)
    assert figures["max_abs_diff_theta"] < 1e-4
    assert figures["max_abs_diff_vertices"] < 1e-5  # metres
    assert figures["max_abs_diff_keypoints2d"] < 1e-4
    assert figures["onnxruntime_ms"] > 0 and figures["torch_ms"] > 0
