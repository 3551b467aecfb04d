"""TensorBoard log of a fit: every loss term per evaluation, and pictures of the fit as it progresses.

Pass a `FitLog` as `log=` to the functions of handlib.fitting. Registrations: the first `show` registrations
(top row, blue) over the current fits (bottom row, skin), rendered with handlib.render in a view made from each
registration's principal axes. 2D keypoints: the target skeletons (top row) over the current fitted ones (bottom
row), drawn with handlib.draw. Pictures are made from the fit's current parameters through the full model, so
they are right also when the fit itself runs on a vertex subset.
"""

import os

import numpy as np
import torch
from tensorboardX import SummaryWriter

from handlib import draw
from handlib.camera import normalized_to_pixels, weak_perspective

TARGET_COLOR = (0.45, 0.6, 0.9)
SKIN_COLOR = (0.86, 0.67, 0.55)


class FitLog:
    """Scalars every `every` evaluations under `tag/`; a picture every `image_every` evaluations and at the end
    of each stage. Give the registrations (B, V, 3) or the 2D keypoints (B, 21, 2) in [-1, 1] being fitted."""

    def __init__(self, log_dir: str | os.PathLike, model, registrations=None, keypoints=None, every: int = 1,
                 image_every: int = 10, show: int = 6, size: int = 160, tag: str = "fit"):
        if (registrations is None) == (keypoints is None):
            raise ValueError("FitLog shows either registrations= or keypoints=, exactly one of them")
        self.writer = SummaryWriter(str(log_dir))
        self.model, self.every, self.image_every, self.size, self.tag = model, every, image_every, size, tag
        self.steps, self.pictures = 0, 0
        self._params: dict | None = None
        if registrations is not None:
            from handlib.render import Renderer

            self.targets = _numpy(registrations)[:show]
            self.views = [_principal_view(t) for t in self.targets]
            self.renderer = Renderer(model.faces.cpu().numpy(), size)
        else:
            self.targets = _numpy(keypoints)[:show]
            self.renderer = None

    def step(self, entry: dict, params: dict[str, torch.Tensor]) -> None:
        """One cost evaluation: `entry` as in HandFit.record, `params` the batch's current model parameters."""
        self._params = {k: v[:len(self.targets)] for k, v in params.items()}
        if self.steps % self.every == 0:
            for name, value in entry.items():
                if isinstance(value, float):
                    self.writer.add_scalar(f"{self.tag}/{name}", value, self.steps)
        if self.steps % self.image_every == 0:
            self.picture()
        self.steps += 1

    def stage_end(self, stage: str) -> None:
        self.writer.add_text(f"{self.tag}/stages", f"{stage} ended at evaluation {self.steps}", self.steps)
        self.picture()

    def picture(self) -> None:
        if self._params is None:
            return
        p = self._params
        with torch.no_grad():
            out = self.model(betas=p["betas"], hand_pose=p["hand_pose"], global_orient=p["global_orient"],
                             transl=p.get("transl"))
        if self.renderer is not None:
            image = self.mesh_grid(_numpy(out.vertices))
        else:
            image = keypoint_grid(self.targets, _numpy(weak_perspective(out.keypoints, p["cam"])), self.size)
        self.writer.add_image(f"{self.tag}/progress", image, self.steps, dataformats="HWC")
        self.pictures += 1

    def mesh_grid(self, fits: np.ndarray) -> np.ndarray:
        """Registrations above, fits below, each pair in its registration's own view: (H, W, 3) uint8."""
        from handlib.render import WeakPerspective

        n = len(fits)
        both = np.concatenate([self.targets, fits])
        views = self.views + self.views
        placed = np.stack([(v - centre) @ rot.T for v, (centre, rot, _) in zip(both, views)])
        cams = np.array([[scale, 0.0, 0.0] for _, _, scale in views])
        colors = np.array([TARGET_COLOR] * n + [SKIN_COLOR] * n)
        images = self.renderer.render(placed, WeakPerspective(cams), color=colors, background=(1.0, 1.0, 1.0))
        return draw.grid(images["image"], columns=n)

    def close(self) -> None:
        self.writer.close()


def keypoint_grid(targets: np.ndarray, fits: np.ndarray, size: int) -> np.ndarray:
    """Target skeletons above, fitted ones below, keypoints (n, 21, 2) in [-1, 1]: (H, W, 3) uint8."""
    blank = np.full((size, size, 3), 255, np.uint8)
    tiles = [draw.draw_skeleton(blank, normalized_to_pixels(torch.as_tensor(k), size, size).numpy())
             for k in np.concatenate([targets, fits])]
    return draw.grid(np.stack(tiles), columns=len(targets))


def _principal_view(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre, rotation (rows: second principal axis to image x, the longest to image y, the thinnest towards
    the camera) and the weak-perspective scale that fits the points in a tile."""
    centre = points.mean(0)
    _, _, axes = np.linalg.svd(points - centre, full_matrices=False)
    rot = axes[[1, 0, 2]]
    if np.linalg.det(rot) < 0:
        rot[2] *= -1
    extent = np.abs((points - centre) @ rot.T)[:, :2].max()
    return centre, rot, 0.9 / extent


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
