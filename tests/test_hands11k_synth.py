import json

import numpy as np
import pytest

from handlib import hands11k, hands11k_synth, skin
from handlib.keypoints import load_rgb


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("11k")
    return hands11k_synth.generate(root, subjects=2, images_per_subject=4, seed=3, progress=False)


def test_generated_set_reads_as_11k_hands(generated):
    data = hands11k.read_hand_info(generated)
    assert data.problems == [] and data.missing == [] and len(data.images) == 8
    header = (generated / "HandInfo.csv").read_text().splitlines()[0]
    assert header == "id,age,gender,skinColor,accessories,nailPolish,aspectOfHand,imageName,irregularities"
    assert {im.subject for im in data.images} == {"0000000", "0000001"}
    assert {f"{im.aspect} {im.side}" for im in data.images} == set(hands11k.ASPECTS)
    assert [im.skin_color for im in data.images[::4]] == list(skin.SKIN_CLASSES[:2])
    assert load_rgb(data.images[0].path).shape == (1200, 1600, 3)


def test_truth_lies_on_the_rendered_hand(generated):
    tips = [4, 8, 12, 16, 20]  # fingertip vertices sit on the outline: within 3 px of hand pixels
    for name, kp in hands11k_synth.load_truth(generated).items():
        image = load_rgb(generated / "Hands" / name).astype(int)
        hand = np.abs(image - np.median(image[:40].reshape(-1, 3), axis=0)).sum(axis=-1) > 40  # (H, W) off paper
        px = np.rint(kp).astype(int)
        assert (px >= 3).all() and (px < [1600 - 3, 1200 - 3]).all(), name
        joints = np.delete(px, tips, axis=0)
        assert hand[joints[:, 1], joints[:, 0]].all(), f"{name}: joints off the hand"
        near = [hand[y - 3:y + 4, x - 3:x + 4].any() for x, y in px[tips]]
        assert all(near), f"{name}: fingertips {np.flatnonzero(~np.array(near))} off the hand"
        size = np.ptp(kp, axis=0).max()
        assert 0.45 * 1200 < size < 0.95 * 1200  # the hand fills most of the photo's height


def test_generation_resumes_and_remakes_everything_for_other_settings(generated):
    first = (generated / "Hands" / "Hand_0000005.jpg").read_bytes()
    (generated / "Hands" / "Hand_0000005.jpg").unlink()
    stamp = (generated / "Hands" / "Hand_0000000.jpg").stat().st_mtime_ns
    hands11k_synth.generate(generated, subjects=2, images_per_subject=4, seed=3, progress=False)
    assert (generated / "Hands" / "Hand_0000005.jpg").read_bytes() == first  # the same image again
    assert (generated / "Hands" / "Hand_0000000.jpg").stat().st_mtime_ns == stamp  # kept, not made again
    settings = json.loads((generated / hands11k_synth.SETTINGS_FILE).read_text())
    (generated / hands11k_synth.SETTINGS_FILE).write_text(json.dumps({**settings, "fingerprint": "another hand"}))
    hands11k_synth.generate(generated, subjects=2, images_per_subject=4, seed=3, progress=False)
    assert (generated / "Hands" / "Hand_0000000.jpg").stat().st_mtime_ns != stamp
    assert json.loads((generated / hands11k_synth.SETTINGS_FILE).read_text()) == settings


def test_mediapipe_finds_the_generated_hands_with_the_right_side(generated, tmp_path):
    pytest.importorskip("mediapipe", reason="install with: pip install --no-deps -r requirements-mediapipe.txt")
    from handlib import detect
    from handlib.keypoints import MediaPipeDetector

    images = hands11k.read_hand_info(generated).images
    records = detect.run_detection(MediaPipeDetector(), images, tmp_path / "det.jsonl", progress=False)
    result = detect.evaluate(records, hands11k_synth.load_truth(generated))
    assert result["detected"] >= 6, result
    assert all(records[im.image_name]["handedness"] == im.side for im in images
               if records[im.image_name]["status"] == "ok")
    assert result["pck"] > 0.8 and result["mean_px"] < 40, result
