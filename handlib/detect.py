"""Keypoint detection over a whole dataset, resumable, and its accuracy against ground truth.

Results are appended to a JSON-lines log, one line per image, flushed at once: after a crash or Ctrl-C the
next run skips what is logged and goes on. Failures are logged too: status "no_hand" (the detector found
none) or "error" (the image or its detector output could not be read, with the message).
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from handlib import metrics
from handlib.hands11k import HandImage
from handlib.io import recover_jsonl
from handlib.keypoints import Detector


def read_log(path: str | os.PathLike) -> dict[str, dict]:
    """Image name -> its logged record (the last one when an image was logged twice)."""
    return {r["image"]: r for r in recover_jsonl(path)}


def run_detection(detector: Detector, images: Sequence[HandImage], log_path: str | os.PathLike,
                  progress: bool = True) -> dict[str, dict]:
    """Detect every image not yet in `log_path`, appending one record per image; return all records.

    A torn last line (the process killed mid-write) is cut off and that image detected again.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    done = set(read_log(log_path))
    todo = [im for im in images if im.image_name not in done]
    with open(log_path, "a") as log:
        for im in tqdm(todo, desc=f"{detector.name} ({len(done)} done before)", disable=not progress):
            record = {"image": im.image_name, "detector": detector.name}
            try:
                det = detector.detect(im.path, im.side)
            except (OSError, ValueError) as err:
                record.update(status="error", error=f"{type(err).__name__}: {err}")
            else:
                if det is None:
                    record.update(status="no_hand")
                else:
                    record.update(status="ok", keypoints=np.round(det.keypoints, 3).tolist(),
                                  handedness=det.handedness, score=round(det.score, 4))
            log.write(json.dumps(record) + "\n")
            log.flush()
    return read_log(log_path)


def evaluate(records: dict[str, dict], truth: dict[str, np.ndarray], pck_fraction: float = 0.05) -> dict:
    """Detection accuracy against exact keypoints `truth` (image name -> (21, 2+) pixels).

    mean_px: mean keypoint distance in pixels over the detected images; pck: the share of their keypoints within
    `pck_fraction` of the hand's size (metrics.hand_size: the diagonal of the true keypoints' box);
    detection_rate: detected images over all images in `truth` (one missing from the log counts as missed).
    """
    names = [n for n in truth if records.get(n, {}).get("status") == "ok"]
    result = {"images": len(truth), "detected": len(names), "detection_rate": len(names) / max(len(truth), 1)}
    if not names:
        return {**result, "mean_px": float("nan"), "pck": float("nan"), "per_keypoint_px": None}
    pred = np.array([records[n]["keypoints"] for n in names])[..., :2]  # (N, 21, 2)
    gt = np.array([truth[n] for n in names])[..., :2]
    dist = metrics.keypoint_distances(pred, gt)  # (N, 21)
    pck = metrics.pck_curve(dist / metrics.hand_size(gt)[:, None], [pck_fraction])[0]
    return {**result, "mean_px": float(dist.mean()), "pck": float(pck), "per_keypoint_px": dist.mean(axis=0).tolist()}
