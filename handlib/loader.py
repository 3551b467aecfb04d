"""Training crops from both kinds of data: 11kJoints-style photos (2D keypoints with certainties) and synthetic
samples (2D plus exact 3D labels), through one preprocessing (the thesis's, reference.md "Data loader").

A source is any sequence of raw samples, dicts with
  image (H, W, 3) uint8, keypoints (21, 3) pixels x, y and certainty, OpenPose order, side "right"/"left";
  optionally 3D labels hand_pose (45,), betas (10,), global_orient (3,) axis-angle in the camera frame,
  keypoints3d (21, 3) metres, camera frame; optionally mask (H, W) bool.
`HandCrops` turns one into a training sample: crop to the keypoints' box plus a border, augmented (scale,
rotation, translation, flip with the side swapped, colour), resized, keypoints and pixels in [-1, 1], CHW.
All randomness comes from (seed, draw number), so any sample of any run can be redrawn exactly (resume, DDP).
"""

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from handlib.camera import pixels_to_normalized
from handlib.losses import mask_targets
from handlib.rotations import mirror_axis_angle

# OpenCV's thread pool does not survive fork: a DataLoader worker forked while the parent's pool is alive can hang
# in its first warp (seen in CI). The crops are small, so OpenCV runs on the calling thread, in every process.
cv2.setNumThreads(0)

THUMB_CMC = 1  # OpenPose index of the thumb's CMC joint
MIRROR = np.diag([-1.0, 1.0, 1.0])


@dataclass
class Augment:
    """Ranges of the random augmentation (all off: `Augment.none()`)."""
    scale: float = 0.15        # crop size times a factor in [1 - scale, 1 + scale]
    rotation: float = 30.0     # degrees, uniform in [-rotation, rotation]
    translation: float = 0.1   # crop centre moved by up to this fraction of the crop size
    flip: float = 0.5          # probability of a horizontal flip (a right hand becomes a left one)
    color: float = 0.3         # brightness, contrast and saturation factors in [1 - color, 1 + color]

    @classmethod
    def none(cls) -> "Augment":
        return cls(0.0, 0.0, 0.0, 0.0, 0.0)


class Hands11kSource:
    """11kJoints samples (handlib.hands11k.Sample) and their images: detected keypoints, no 3D labels.

    The thumb CMC certainty is set to `thumb_cmc_certainty` (the thesis's 0.2): OpenPose's thumb CMC lies
    elsewhere than the model's joint of that name, so it should pull less.
    """

    def __init__(self, samples: Sequence, image_dir: str | Path, thumb_cmc_certainty: float = 0.2,
                 side: str | None = None):
        self.samples, self.image_dir = list(samples), Path(image_dir)
        self.thumb_cmc_certainty, self.side = thumb_cmc_certainty, side
        for s in self.samples:
            if (s.side or side) not in ("right", "left"):
                raise ValueError(f"sample {s.filename!r}: side {s.side!r} unknown; give side= or use samples "
                                 "with a side (hands11k.load_samples keeps it)")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        path = self.image_dir / s.filename
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read image {path} of sample {i}: {err}") from None
        kp = np.array(s.joints, dtype=np.float32)
        kp[THUMB_CMC, 2] = np.where(kp[THUMB_CMC, 2] > 0, self.thumb_cmc_certainty, 0.0)
        return {"image": image, "keypoints": kp, "side": s.side or self.side}


class SyntheticSource:
    """A handlib.synthetic dataset read without a transform (synthetic.load) as a source; synthetic.source gives
    the same samples directly."""

    def __init__(self, dataset: Sequence):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        from handlib.synthetic import loader_sample

        return loader_sample(self.dataset[i])


def in_memory(source: Sequence, progress: bool = False) -> list[dict]:
    """Every raw sample of `source` read and decoded once, as a list (a source too). For datasets that fit in
    memory: a step then pays only for the crop and augmentation, and forked workers share the arrays."""
    from tqdm.auto import tqdm

    return [source[i] for i in tqdm(range(len(source)), desc="loading", disable=not progress)]


def crop_transform(keypoints: np.ndarray, size: int, border: float, rng: np.random.Generator | None,
                   aug: Augment) -> tuple[np.ndarray, bool, float]:
    """The affine (2, 3) from image pixels to crop pixels, whether it flips, and its rotation (radians).

    The crop is the square around the certain keypoints' box, `1 + border` times its longer side.
    """
    xy = keypoints[keypoints[:, 2] > 0, :2] if (keypoints[:, 2] > 0).sum() >= 2 else keypoints[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    centre, extent = (lo + hi) / 2, max(float((hi - lo).max()), 1.0) * (1 + border)
    angle, flip = 0.0, False
    if rng is not None:
        extent *= 1 + rng.uniform(-aug.scale, aug.scale)
        centre = centre + rng.uniform(-aug.translation, aug.translation, 2) * extent
        angle = math.radians(rng.uniform(-aug.rotation, aug.rotation))
        flip = bool(rng.random() < aug.flip)
    c, s = math.cos(angle), math.sin(angle)
    A = (size / extent) * np.array([[c, -s], [s, c]])
    t = (size - 1) / 2 - A @ centre
    affine = np.concatenate([A, t[:, None]], 1)
    if flip:  # u -> size - 1 - u
        affine = np.array([[-1.0, 0, size - 1], [0, 1, 0]]) @ np.vstack([affine, [0, 0, 1]])
    return affine, flip, angle


def warp(image: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """The (size, size) crop of `image` (H, W[, C]) uint8 under `affine` (image pixels -> crop pixels), bilinear;
    outside the image is black. Pixel centres are at integer coordinates, as in OpenCV (4x faster than PIL's
    transform here, and no copies in and out of a PIL image: it runs for every training sample)."""
    factor = int(1 / np.abs(np.linalg.det(affine[:, :2])) ** 0.5)  # > 1 when shrinking
    if factor >= 2:  # box-filter first: bilinear sampling alone would alias
        h, w = image.shape[:2]  # whole boxes only (the last partial row and column are dropped)
        image = cv2.resize(image[:h - h % factor, :w - w % factor], (w // factor, h // factor),
                           interpolation=cv2.INTER_AREA)
        # pixel centres: x_reduced = (x + 0.5) / factor - 0.5
        to_reduced = np.array([[factor, 0, (factor - 1) / 2], [0, factor, (factor - 1) / 2], [0, 0, 1.0]])
        affine = affine @ to_reduced
    return cv2.warpAffine(image, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def network_image(image: np.ndarray) -> torch.Tensor:
    """An image (H, W, 3) uint8 as the network takes it: (3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().mul_(2 / 255).sub_(1)


def color_jitter(image: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Random brightness b, contrast c and saturation s of an image (H, W, 3) uint8, applied in turn.

    The three steps compose into one affine colour map of the pixel x and its grey g (the channel mean), with m
    the image's mean grey: s·c·b·x + c·b·(1 − s)·g + b·(1 − c)·m. One OpenCV pass (rounded, clipped to 0..255)
    instead of three float passes: it runs per sample.
    """
    b, c, s = rng.uniform(1 - amount, 1 + amount, 3)
    m = sum(cv2.mean(image)[:3]) / 3
    colour = s * c * b * np.eye(3) + c * b * (1 - s) / 3
    return cv2.transform(image, np.c_[colour, np.full(3, b * (1 - c) * m)].astype(np.float32))


def rotation_z(angle: float) -> np.ndarray:
    """The camera-frame rotation about the optical axis that turns the image by `angle` (x right, y down)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def rodrigues(aa: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(aa)
    if angle < 1e-12:
        return np.eye(3)
    k = aa / angle
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


class HandCrops(torch.utils.data.Dataset):
    """Preprocessed, augmented crops of one source. Index with an int (no augmentation: validation) or with
    (index, draw) to augment with the randomness of draw number `draw`. With `masks`, samples carry what the
    silhouette loss needs (has_mask, mask_dist, mask_points)."""

    def __init__(self, source: Sequence, image_size: int = 224, augment: Augment | None = None,
                 border: float = 0.25, seed: int = 0, masks: bool = True, mask_size: int = 32,
                 mask_points: int = 64):
        self.source, self.size, self.border, self.seed = source, image_size, border, seed
        self.augment = augment or Augment.none()
        self.masks, self.mask_size, self.mask_points = masks, mask_size, mask_points

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key) -> dict:
        index, draw = (key, None) if isinstance(key, (int, np.integer)) else key
        raw = self.source[int(index)]
        # The third key word keeps this stream apart from DrawSampler's, which uses (seed, draw).
        rng = None if draw is None else np.random.default_rng([self.seed, int(draw), 1])
        return self.prepare(raw, rng)

    def prepare(self, raw: dict, rng: np.random.Generator | None) -> dict:
        kp = np.asarray(raw["keypoints"], np.float64)  # (21, 3)
        affine, flip, angle = crop_transform(kp, self.size, self.border, rng, self.augment)
        image = warp(np.ascontiguousarray(raw["image"]), affine, self.size)  # (S, S, 3) uint8
        if rng is not None and self.augment.color:
            image = color_jitter(image, rng, self.augment.color)
        crop_xy = kp[:, :2] @ affine[:, :2].T + affine[:, 2]
        side = {"right": 0, "left": 1}[raw["side"]]
        out = {
            "image": network_image(image),
            "keypoints2d": pixels_to_normalized(torch.tensor(crop_xy, dtype=torch.float32), self.size, self.size),
            "certainty": torch.tensor(kp[:, 2], dtype=torch.float32),
            "side": torch.tensor(side ^ int(flip)),
            "affine": torch.tensor(affine, dtype=torch.float32),
        }
        out.update(self._labels3d(raw, flip, angle))
        if self.masks:  # only for the silhouette loss: they cost as much as the rest of a sample
            if raw.get("mask") is not None and np.shape(raw["mask"]) != np.shape(raw["image"])[:2]:
                raise ValueError(f"mask of shape {np.shape(raw['mask'])} for an image of shape "
                                 f"{np.shape(raw['image'])}: they must cover the same pixels")
            out.update(self._mask(raw, affine, rng))
        return out

    def _labels3d(self, raw: dict, flip: bool, angle: float) -> dict:
        """3D labels turned with the image (about the optical axis) and mirrored with it."""
        if raw.get("hand_pose") is None:
            return {"has3d": torch.tensor(False), "hand_pose": torch.zeros(45), "betas": torch.zeros(10),
                    "global_rotmat": torch.eye(3), "keypoints3d": torch.zeros(21, 3)}
        Rz = rotation_z(angle)
        R = Rz @ rodrigues(np.asarray(raw["global_orient"], np.float64))
        kp3d = np.asarray(raw["keypoints3d"], np.float64) @ Rz.T
        pose = torch.tensor(np.asarray(raw["hand_pose"], np.float32))
        if flip:
            R, kp3d = MIRROR @ R @ MIRROR, kp3d @ MIRROR
            pose = mirror_axis_angle(pose.view(15, 3)).reshape(45)
        return {"has3d": torch.tensor(True), "hand_pose": pose,
                "betas": torch.tensor(np.asarray(raw["betas"], np.float32)),
                "global_rotmat": torch.tensor(R, dtype=torch.float32),
                "keypoints3d": torch.tensor(kp3d, dtype=torch.float32)}

    def _mask(self, raw: dict, affine: np.ndarray, rng: np.random.Generator | None) -> dict:
        """A low-resolution distance-to-mask map and points inside the mask, for the silhouette loss."""
        m, n = self.mask_size, self.mask_points
        if raw.get("mask") is None:
            return {"has_mask": torch.tensor(False), "mask_dist": torch.zeros(1, m, m), "mask_points": torch.zeros(n, 2)}
        scale = np.diag([m / self.size, m / self.size, 1.0])
        to_mask = (scale @ np.vstack([affine, [0, 0, 1]]))[:2]
        to_mask[:, 2] += (m / self.size - 1) / 2  # pixel centres: u_m = (u + 0.5) m / size - 0.5
        mask = warp(np.asarray(raw["mask"], np.uint8) * 255, to_mask, m) > 127
        if not mask.any():
            return {"has_mask": torch.tensor(False), "mask_dist": torch.zeros(1, m, m), "mask_points": torch.zeros(n, 2)}
        dist, centres = mask_targets(mask)
        pick = (rng or np.random.default_rng(0)).integers(0, len(centres), n)
        return {"has_mask": torch.tensor(True), "mask_dist": torch.tensor(dist, dtype=torch.float32)[None],
                "mask_points": centres[pick].float()}


class Mixture(torch.utils.data.Dataset):
    """Several `HandCrops` behind one index: key (dataset, index, draw) from `DrawSampler`."""

    def __init__(self, datasets: Sequence[HandCrops]):
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key) -> dict:
        d, index, draw = key
        return self.datasets[d][(index, draw)]


class DrawSampler(torch.utils.data.Sampler):
    """An endless stream of keys (dataset, index, draw): draw k picks its dataset by the mixture `weights` and
    its sample uniformly (with replacement), from the randomness of (seed, k) alone. So the stream can restart at
    any draw (resume) and be split across processes: of each global batch of `batch_size` draws, process `rank`
    of `world` takes the `rank`-th contiguous slice."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, seed: int = 0,
                 start: int = 0, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} does not split over {world} processes")
        w = np.asarray(weights, np.float64) * (np.asarray(sizes) > 0)
        if w.sum() <= 0:
            raise ValueError(f"no data to draw from: sizes {list(sizes)}, weights {list(weights)}")
        self.sizes, self.p = list(sizes), w / w.sum()
        self.batch_size, self.seed, self.start, self.rank, self.world = batch_size, seed, start, rank, world

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        per = self.batch_size // self.world
        k = self.start
        while True:
            if (k % self.batch_size) // per == self.rank:
                rng = np.random.default_rng([self.seed, k])
                d = int(rng.choice(len(self.p), p=self.p))
                yield d, int(rng.integers(self.sizes[d])), k
            k += 1
