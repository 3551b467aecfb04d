"""The trained network as ONNX for a phone app (the thesis's planned next step), checked against PyTorch.

The exported graph is one hand side (the app asks the user which hand): crop (1, 3, S, S) in [-1, 1] ->
Θ of the last IEF iteration, the posed vertices and the 21 keypoints in 2D over the crop. The side's hand model
is inside the graph (its blend shapes and skinning are plain tensor algebra).
"""

import os
import time
from pathlib import Path

import numpy as np
import torch

from handlib.camera import weak_perspective
from handlib.io import atomic_path
from handlib.network import SIDES, HandNet

OUTPUTS = ["theta", "vertices", "keypoints2d"]


class OneSide(torch.nn.Module):
    """HandNet for one side with its outputs as plain tensors (what ONNX exports)."""

    def __init__(self, net: HandNet, side: str):
        super().__init__()
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        self.net, self.side = net.eval(), SIDES.index(side)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net = self.net
        feat = net.features(images)
        side = torch.full((len(images), 1), float(self.side), dtype=feat.dtype)
        theta = net.mean_thetas[self.side].expand(len(images), -1)
        for _ in range(net.iterations):
            theta = theta + net.regressor(torch.cat([feat, theta, side], dim=1))
        cam, _, vertices, keypoints3d = net.decode_side(theta, SIDES[self.side])
        return theta, vertices, weak_perspective(keypoints3d, cam)


def export(net: HandNet, path: str | os.PathLike, image_size: int, side: str = "right", opset: int = 18) -> Path:
    """Write the network for `side` as ONNX (atomically) and return the path."""
    path = Path(path)
    model = OneSide(net, side)
    example = torch.zeros(1, 3, image_size, image_size)
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=OUTPUTS,
                          opset_version=opset, dynamo=False)
    return path


def check(net: HandNet, path: str | os.PathLike, image_size: int, side: str = "right", samples: int = 4,
          repeats: int = 20, seed: int = 0) -> dict:
    """Run the ONNX file in onnxruntime (CPU) and PyTorch on the same random crops: the largest difference of
    each output and the mean time of one crop in each (milliseconds)."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"onnxruntime is not installed ({err}): pip install -r requirements.txt") from err
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = OneSide(net, side)
    images = torch.rand(samples, 1, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    out = {f"max_abs_diff_{name}": 0.0 for name in OUTPUTS}
    with torch.no_grad():
        for image in images:
            ours = model(image)
            theirs = session.run(OUTPUTS, {"image": image.numpy()})
            for name, a, b in zip(OUTPUTS, ours, theirs):
                out[f"max_abs_diff_{name}"] = max(out[f"max_abs_diff_{name}"], float(np.abs(a.numpy() - b).max()))
        image = images[0]
        start = time.perf_counter()
        for _ in range(repeats):
            model(image)
        out["torch_ms"] = 1000 * (time.perf_counter() - start) / repeats
    feed = {"image": images[0].numpy()}
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(OUTPUTS, feed)
    out["onnxruntime_ms"] = 1000 * (time.perf_counter() - start) / repeats
    return out
