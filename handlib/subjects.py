"""Photos of synthetic people nobody trained on, written as image files, to personalise and to score the result.

Their shapes are drawn with a seed of their own (not the training data's), every subject in the test split, so
the network and the priors never saw them. Each subject gets `per_subject` photos of the open hand, fingers up,
back or palm, as one would photograph one's hands for this (random side, view, light), saved as PNG files as a
user would give them, with the truth (β, side, θ, keypoints) and the hand's mask (`photo_K_side_mask.png`, white
on the hand) kept beside.
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from handlib import synthetic
from handlib.io import atomic_path, atomic_write_text
from handlib.shards import decode_image

SEED = 906  # apart from the training sets' seeds


def subject_photos(root: str | os.PathLike, subjects: int = 3, per_subject: int = 3, image_size: int = 384,
                   seed: int = SEED) -> list[dict]:
    """Make the photos (the same ones every time); one entry per subject: {"subject", "betas", "photos": [path],
    "masks": [path], "sides", "truth": [sample dict without the image]}. A subject with fewer than `per_subject`
    photos drawn is skipped."""
    root = Path(root)
    config = synthetic.SyntheticConfig(samples=3 * subjects * per_subject, image_size=image_size, seed=seed,
                                       subjects=subjects, splits={"test": 1.0}, image_format="png",
                                       backgrounds={"white": 2.0, "plain": 1.0}, poses={"flat": 1.0},
                                       tilt_deg=20.0, roll_deg=30.0, fill=(0.6, 0.85))
    with tempfile.TemporaryDirectory(dir=root.parent if root.parent.exists() else None) as scratch:
        synthetic.generate(scratch, config)  # made afresh: a kept dataset would refuse a changed generator
        return _write_subjects(root, synthetic.load(scratch, "test"), per_subject)


def _write_subjects(root: Path, data, per_subject: int) -> list[dict]:
    by_subject: dict[int, list[int]] = {}
    for i in range(len(data)):
        by_subject.setdefault(int(data[i]["subject"]), []).append(i)
    out = []
    for subject, rows in sorted(by_subject.items()):
        if len(rows) < per_subject:
            continue
        folder = root / f"subject_{subject:03d}"
        paths, masks, sides, truth = [], [], [], []
        for k, i in enumerate(rows[:per_subject]):
            sample = data[i]
            side = synthetic.SIDES[int(sample["side"])]
            path = folder / f"photo_{k}_{side}.png"
            image = sample["image"] if np.ndim(sample["image"]) == 3 else decode_image(sample["image"])
            with atomic_path(path) as tmp:
                Image.fromarray(image).save(tmp, format="PNG")
            mask = sample["silhouette"] if np.ndim(sample["silhouette"]) == 2 else decode_image(sample["silhouette"])
            masks.append(folder / f"photo_{k}_{side}_mask.png")
            with atomic_path(masks[-1]) as tmp:
                Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8)).save(tmp, format="PNG")
            paths.append(path)
            sides.append(side)
            truth.append({k: np.asarray(v).tolist() for k, v in sample.items() if k not in ("image", "parts",
                                                                                            "silhouette")})
        betas = np.asarray(truth[0]["beta"], np.float64)
        atomic_write_text(folder / "truth.json", json.dumps({"betas": betas.tolist(), "samples": truth}))
        out.append({"subject": subject, "betas": betas, "photos": paths, "masks": masks, "sides": sides,
                    "truth": truth})
    return out
