import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import distance_transform_edt

from handlib.keypoints import OpenPoseJsonDetector, read_openpose_json

FIXTURES = Path(__file__).parent / "fixtures"
SKIN = (224, 172, 140)


def drawn_hand(width=640, height=480):
    """A flat hand drawn with shaded capsules (thumb on the image's left): RGB image, fingertip centres, wrist."""
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    cx = width / 2
    d.polygon([(cx - 70, 0.85 * height), (cx + 70, 0.85 * height), (cx + 85, 0.5 * height), (cx - 85, 0.5 * height)],
              fill=SKIN)
    d.rectangle([cx - 55, 0.85 * height, cx + 55, height], fill=SKIN)
    tips = []
    bases = [(cx - 63, 0.5 * height), (cx - 20, 0.48 * height), (cx + 22, 0.5 * height), (cx + 62, 0.53 * height)]
    for (bx, by), angle, length, radius in zip(bases, np.deg2rad([-7, 0, 7, 15]), [130, 150, 130, 100],
                                               [18, 19, 18, 15]):
        tip = (bx + length * np.sin(angle), by - length * np.cos(angle))
        d.line([(bx, by), tip], fill=SKIN, width=2 * radius)
        d.ellipse([tip[0] - radius, tip[1] - radius, tip[0] + radius, tip[1] + radius], fill=SKIN)
        tips.append(tip)
    thumb = (cx - 160, 0.55 * height)
    d.line([(cx - 70, 0.78 * height), thumb], fill=SKIN, width=40)
    d.ellipse([thumb[0] - 20, thumb[1] - 20, thumb[0] + 20, thumb[1] + 20], fill=SKIN)
    rgb = np.asarray(im).astype(np.float64)
    inside = (rgb != 255).any(axis=-1)
    shade = 0.55 + 0.45 * np.sqrt(np.clip(distance_transform_edt(inside) / 40, 0, 1))  # rounder-looking limbs
    rgb = np.where(inside[..., None], rgb * shade[..., None], rgb)
    image = np.asarray(Image.fromarray(rgb.astype(np.uint8)).filter(ImageFilter.GaussianBlur(1)))
    return image, np.array([thumb, *tips]), np.array([cx, 0.82 * height])


@pytest.fixture(scope="module")
def mediapipe_detector():
    pytest.importorskip("mediapipe", reason="install with: pip install --no-deps -r requirements-mediapipe.txt")
    from handlib.keypoints import MediaPipeDetector
    detector = MediaPipeDetector()
    yield detector
    detector.close()


def test_mediapipe_finds_a_drawn_hand_and_results_are_read(mediapipe_detector):
    image, tips, wrist = drawn_hand()
    det = mediapipe_detector.detect_image(image)
    assert det is not None, "MediaPipe found no hand in the drawn hand"
    assert det.keypoints.shape == (21, 3) and 0.5 < det.score <= 1
    np.testing.assert_allclose(det.keypoints[:, 2], det.score)
    # OpenPose order: tips are 4, 8, 12, 16, 20; the drawn tip centres lie a finger radius inside the tips
    np.testing.assert_allclose(det.keypoints[[4, 8, 12, 16, 20], :2], tips, atol=25)
    assert np.linalg.norm(det.keypoints[0, :2] - wrist) < 40
    assert det.handedness == "right"  # thumb on the left, seen from the back: a right hand (un-mirrored)
    mirrored = mediapipe_detector.detect_image(image[:, ::-1])
    assert mirrored.handedness == "left"
    ends = [0, 4, 8, 12, 16, 20]  # wrist and tips: x mirrors about the image's centre (639 - x)
    np.testing.assert_allclose(639 - mirrored.keypoints[ends, 0], det.keypoints[ends, 0], atol=10)


def test_mediapipe_finds_nothing_in_an_empty_image(mediapipe_detector, tmp_path):
    Image.new("RGB", (320, 240), "white").save(tmp_path / "empty.jpg")
    assert mediapipe_detector.detect(tmp_path / "empty.jpg", "left") is None


def test_openpose_json_file():
    path = FIXTURES / "openpose" / "Hand_0000002_keypoints.json"
    flat = json.loads(path.read_text())["people"][0]["hand_right_keypoints_2d"]
    det = OpenPoseJsonDetector(path.parent).detect(Path("/any/Hands/Hand_0000002.jpg"), "right")
    np.testing.assert_array_equal(det.keypoints, np.reshape(flat, (21, 3)))
    assert det.handedness == "right" and det.score == pytest.approx(np.mean(flat[2::3]))
    assert read_openpose_json(path, None).handedness == "right"  # the left hand is all zeros: not a hand
    assert read_openpose_json(path, "left") is None
    with pytest.raises(FileNotFoundError, match="Hand_0000003_keypoints.json: no OpenPose output"):
        OpenPoseJsonDetector(path.parent).detect(Path("Hand_0000003.jpg"), "right")


def test_openpose_json_picks_the_most_certain_person_and_rejects_bad_files(tmp_path):
    weak, strong = np.full((21, 3), 0.2), np.full((21, 3), 0.7)
    weak[:, :2], strong[:, :2] = 10, 20
    people = [{"hand_left_keypoints_2d": weak.ravel().tolist(), "hand_right_keypoints_2d": []},
              {"hand_left_keypoints_2d": strong.ravel().tolist(), "hand_right_keypoints_2d": []}]
    (tmp_path / "two_keypoints.json").write_text(json.dumps({"version": 1.3, "people": people}))
    det = read_openpose_json(tmp_path / "two_keypoints.json", "left")
    np.testing.assert_array_equal(det.keypoints, strong)
    (tmp_path / "bad_keypoints.json").write_text(json.dumps({"people": [{"hand_left_keypoints_2d": [1, 2]}]}))
    with pytest.raises(ValueError, match="has 2 numbers, expected 63"):
        read_openpose_json(tmp_path / "bad_keypoints.json", "left")
    (tmp_path / "junk_keypoints.json").write_text("{}")
    with pytest.raises(ValueError, match="not an OpenPose JSON file"):
        read_openpose_json(tmp_path / "junk_keypoints.json")
