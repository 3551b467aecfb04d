"""Cameras shared by the renderer, the network and the fitting.

Camera space follows OpenCV: x right, y down, z away from the camera, metres.
Image coordinates are either normalised to [-1, 1] over the image (x right, y down) or pixels, where
pixel (0, 0) is the centre of the top-left pixel.
"""

import torch


def weak_perspective(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """x̂ = s·X_xy + t: points (B, N, 3) in camera space, cam (B, 3) = (s, tx, ty) -> (B, N, 2) in [-1, 1]."""
    return cam[:, None, :1] * points[..., :2] + cam[:, None, 1:]


def perspective(points: torch.Tensor, K: torch.Tensor, R: torch.Tensor | None = None,
                t: torch.Tensor | None = None) -> torch.Tensor:
    """Pinhole projection: points (B, N, 3) world, K (B, 3, 3), R (B, 3, 3), t (B, 3) -> pixels (B, N, 2)."""
    if R is not None:
        points = points @ R.transpose(1, 2)
    if t is not None:
        points = points + t[:, None]
    uvw = points @ K.transpose(1, 2)  # (B, N, 3)
    return uvw[..., :2] / uvw[..., 2:]


def normalized_to_pixels(xy: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[-1, 1] image coordinates -> pixel coordinates (pixel centres at integers)."""
    size = xy.new_tensor([width, height])
    return (xy + 1) * 0.5 * size - 0.5


def pixels_to_normalized(px: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pixel coordinates -> [-1, 1] image coordinates; inverse of `normalized_to_pixels`."""
    size = px.new_tensor([width, height])
    return (px + 0.5) / size * 2 - 1
