import json
from pathlib import Path

import numpy as np
import pytest

from handlib.detect import evaluate, read_log, run_detection
from handlib.hands11k import HandImage
from handlib.keypoints import Detection

IMAGES = [HandImage("0000001", 30, "male", "fair", 0, 0, "dorsal", "right", f"Hand_{i:07d}.jpg", 0,
                    Path(f"/data/Hands/Hand_{i:07d}.jpg"), i + 2) for i in range(6)]


class FakeDetector:
    """Finds a hand in even-numbered images, none in odd ones, cannot read image 3; Ctrl-C after `stop_after`."""
    name = "fake"

    def __init__(self, stop_after=None):
        self.calls, self.stop_after = [], stop_after

    def detect(self, path, side=None):
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt
        self.calls.append(path.name)
        n = int(path.stem[-1])
        if n == 3:
            raise OSError(f"cannot identify image file {path}")
        if n % 2:
            return None
        return Detection(np.full((21, 3), [n, 2 * n, 0.5]), side, 0.9)


def test_detection_resumes_after_interruption_and_records_failures(tmp_path):
    log = tmp_path / "det.jsonl"
    first = FakeDetector(stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        run_detection(first, IMAGES, log, progress=False)
    assert first.calls == [im.image_name for im in IMAGES[:4]]
    assert len(log.read_text().splitlines()) == 4  # every finished image already on disk
    second = FakeDetector()
    records = run_detection(second, IMAGES, log, progress=False)
    assert second.calls == [im.image_name for im in IMAGES[4:]]  # nothing detected twice
    assert [records[im.image_name]["status"] for im in IMAGES] == ["ok", "no_hand", "ok", "error", "ok", "no_hand"]
    assert "cannot identify image file" in records["Hand_0000003.jpg"]["error"]
    assert records["Hand_0000002.jpg"]["keypoints"][0] == [2, 4, 0.5]
    assert records["Hand_0000002.jpg"]["handedness"] == "right"
    third = FakeDetector()
    assert run_detection(third, IMAGES, log, progress=False) == records and third.calls == []


def test_detection_redoes_an_image_whose_line_was_torn(tmp_path):
    log = tmp_path / "det.jsonl"
    run_detection(FakeDetector(), IMAGES[:2], log, progress=False)
    with open(log, "a") as f:
        f.write('{"image": "Hand_0000002.jpg", "sta')  # killed mid-write
    detector = FakeDetector()
    records = run_detection(detector, IMAGES[:3], log, progress=False)
    assert detector.calls == ["Hand_0000002.jpg"] and len(records) == 3
    assert [json.loads(line)["image"] for line in log.read_text().splitlines()] == [
        im.image_name for im in IMAGES[:3]]


def test_a_damaged_log_is_an_error_not_a_silent_restart(tmp_path):
    log = tmp_path / "det.jsonl"
    log.write_text('{"image": "a.jpg", "status": "ok"}\nnot json\n{"image": "b.jpg", "status": "ok"}\n')
    with pytest.raises(ValueError, match="det.jsonl line 2: not JSON"):
        read_log(log)


def test_evaluate_against_ground_truth():
    gt = np.zeros((21, 2))
    gt[:, 0], gt[:, 1] = np.arange(21) * 3.0, np.arange(21) * 4.0  # box 60 x 80: hand size (diagonal) 100
    offsets = np.zeros((21, 2))
    offsets[:10, 0] = 3.0   # within 5 px
    offsets[10:, 1] = 8.0   # beyond
    records = {
        "a.jpg": {"status": "ok", "keypoints": np.concatenate([gt + offsets, np.ones((21, 1))], 1).tolist()},
        "b.jpg": {"status": "no_hand"},
    }
    result = evaluate(records, {"a.jpg": gt, "b.jpg": gt, "c.jpg": gt})
    assert result["detection_rate"] == pytest.approx(1 / 3) and result["detected"] == 1
    assert result["mean_px"] == pytest.approx((10 * 3 + 11 * 8) / 21)
    assert result["pck"] == pytest.approx(10 / 21)
    assert np.isnan(evaluate({}, {"a.jpg": gt})["mean_px"])
