"""Pictures for TensorBoard and notebooks: a hand skeleton on an image, a mesh over its photo, a grid of renders.

Images are (H, W, 3) uint8; keypoints are pixels in OpenPose order with pixel centres at integers
(handlib.camera, handlib.joints).
"""

import math

import numpy as np
from PIL import Image, ImageDraw

from handlib.joints import OPENPOSE_PARENTS

# OpenPose's hand colours (HAND_COLORS_RENDER, RGB): wrist grey, then each finger from base to tip in deepening
# thumb red, index yellow, middle green, ring blue, pinky magenta. A bone takes its child keypoint's colour.
OPENPOSE_COLORS = np.array([
    [100, 100, 100],
    [100, 0, 0], [150, 0, 0], [200, 0, 0], [255, 0, 0],
    [100, 100, 0], [150, 150, 0], [200, 200, 0], [255, 255, 0],
    [0, 100, 50], [0, 150, 75], [0, 200, 100], [0, 255, 125],
    [0, 50, 100], [0, 75, 150], [0, 100, 200], [0, 125, 255],
    [100, 0, 100], [150, 0, 150], [200, 0, 200], [255, 0, 255],
], np.uint8)


def draw_skeleton(image: np.ndarray, keypoints: np.ndarray, radius: float | None = None, width: int | None = None,
                  threshold: float = 0.0) -> np.ndarray:
    """A copy of image with the 21 keypoints (21, 2) or (21, 3) = (x, y, certainty) drawn as OpenPose does:
    bones, then dots. Keypoints with certainty <= threshold (and their bones) are left out."""
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.shape not in ((21, 2), (21, 3)):
        raise ValueError(f"keypoints must be (21, 2) or (21, 3) in OpenPose order, got {keypoints.shape}")
    shown = keypoints[:, 2] > threshold if keypoints.shape[1] == 3 else np.ones(21, bool)
    shown &= np.isfinite(keypoints[:, :2]).all(axis=1)
    size = min(image.shape[:2])
    radius = max(1.5, size / 80) if radius is None else radius
    width = max(1, round(0.75 * radius)) if width is None else width
    picture = Image.fromarray(np.ascontiguousarray(image, np.uint8))
    draw = ImageDraw.Draw(picture)
    xy = keypoints[:, :2]
    for child, parent in enumerate(OPENPOSE_PARENTS):
        if parent >= 0 and shown[child] and shown[parent]:
            draw.line([tuple(xy[parent]), tuple(xy[child])], fill=tuple(OPENPOSE_COLORS[child].tolist()),
                      width=width)
    for k in np.flatnonzero(shown):
        x, y = xy[k]
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=tuple(OPENPOSE_COLORS[k].tolist()))
    return np.asarray(picture)


def overlay(image: np.ndarray, render: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The render blended over its image where mask is set: (..., H, W, 3) uint8 and (..., H, W) bool."""
    blend = alpha * render.astype(np.float32) + (1 - alpha) * image.astype(np.float32)
    return np.where(mask[..., None], np.round(blend).astype(np.uint8), image)


def grid(images: np.ndarray, columns: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Images (B, H, W, 3) side by side in rows of `columns` (default: a square), separated by `pad` pixels."""
    images = np.asarray(images)
    B, H, W, C = images.shape
    columns = math.ceil(math.sqrt(B)) if columns is None else columns
    rows = math.ceil(B / columns)
    out = np.full((rows * (H + pad) + pad, columns * (W + pad) + pad, C), pad_value, images.dtype)
    for k, img in enumerate(images):
        r, c = divmod(k, columns)
        out[pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = img
    return out
