import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from handlib import hands11k
from handlib.camera import normalized_to_pixels
from handlib.loader import (MIRROR, Augment, DrawSampler, Hands11kSource, HandCrops, Mixture, color_jitter,
                            rodrigues)

STRONG = Augment(scale=0.2, rotation=40, translation=0.1, flip=0.5, color=0.0)


def _blob_image(kp: np.ndarray, shape=(160, 200), sigma=3.0) -> np.ndarray:
    """Keypoints 0, 8 and 16 drawn as Gaussian blobs in the red, green and blue channels."""
    ys, xs = np.mgrid[:shape[0], :shape[1]]
    img = np.zeros((*shape, 3))
    for ch, k in enumerate([0, 8, 16]):
        img[..., ch] = np.exp(-((xs - kp[k, 0]) ** 2 + (ys - kp[k, 1]) ** 2) / (2 * sigma ** 2))
    return (img * 255).round().astype(np.uint8)


def _keypoints(rng) -> np.ndarray:
    kp = np.ones((21, 3))
    kp[:, :2] = rng.uniform([40, 30], [160, 130], (21, 2))
    return kp


@pytest.mark.parametrize("draw", range(6))
def test_crop_round_trip_and_image_content_follow_the_keypoints(draw):
    rng = np.random.default_rng(draw)
    kp = _keypoints(rng)
    raw = {"image": _blob_image(kp), "keypoints": kp, "side": "right"}
    sample = HandCrops([raw], image_size=64, augment=STRONG)[(0, draw)]
    crop_px = normalized_to_pixels(sample["keypoints2d"], 64, 64).double().numpy()
    # round trip: crop pixels back through the inverse affine give the original pixels
    A = np.vstack([sample["affine"].double().numpy(), [0, 0, 1]])
    back = (np.linalg.inv(A) @ np.c_[crop_px, np.ones(21)].T).T[:, :2]
    np.testing.assert_allclose(back, kp[:, :2], atol=1e-3)
    # independent check: the blobs' centroids in the crop sit where the keypoints went
    img = (sample["image"].numpy() + 1) / 2  # (3, 64, 64)
    ys, xs = np.mgrid[:64, :64]
    for ch, k in enumerate([0, 8, 16]):
        w = np.clip(img[ch] - 0.2, 0, None)
        if not (4 <= crop_px[k]).all() or not (crop_px[k] <= 59).all():
            continue  # blob cut by the crop border: its centroid moves
        centroid = np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()
        np.testing.assert_allclose(centroid, crop_px[k], atol=0.35)


def test_flip_swaps_the_side_and_no_augmentation_is_deterministic():
    kp = _keypoints(np.random.default_rng(0))
    crops = HandCrops([{"image": _blob_image(kp), "keypoints": kp, "side": "left"}], 32,
                      augment=Augment(0, 0, 0, flip=1.0, color=0))
    assert int(crops[(0, 3)]["side"]) == 0 and int(crops[0]["side"]) == 1
    a, b = crops[0], crops[0]
    assert torch.equal(a["image"], b["image"])
    # a flip mirrors the crop: the flipped sample's keypoints are the unflipped ones mirrored in x
    np.testing.assert_allclose(crops[(0, 3)]["keypoints2d"][:, 0], -a["keypoints2d"][:, 0], atol=1e-5)


@pytest.mark.parametrize("draw", range(4))
def test_3d_labels_turn_and_mirror_with_the_image(draw):
    rng = np.random.default_rng(10 + draw)
    P = rng.normal(0, 0.05, (21, 3))  # hand points in the model frame
    aa = rng.normal(0, 1, 3)
    kp3d = P @ rodrigues(aa).T
    kp = np.ones((21, 3))
    kp[:, :2] = 100 + 800 * kp3d[:, :2]  # an orthographic photo of the 3D points
    raw = {"image": np.zeros((200, 200, 3), np.uint8), "keypoints": kp, "side": "right",
           "hand_pose": rng.normal(0, 0.3, 45), "betas": np.zeros(10), "global_orient": aa, "keypoints3d": kp3d}
    s = HandCrops([raw], 64, augment=Augment(0.2, 40, 0.1, flip=0.5, color=0))[(0, draw)]
    flipped = int(s["side"]) == 1
    # the 2D keypoints stay an orthographic image of the 3D ones: one scale and offset fit all 21 exactly
    xy, X = s["keypoints2d"].double().numpy(), s["keypoints3d"].double().numpy()[:, :2]
    xy0, X0 = xy - xy.mean(0), X - X.mean(0)
    scale = (xy0 * X0).sum() / (X0 * X0).sum()
    np.testing.assert_allclose(xy0, scale * X0, atol=1e-5)
    assert scale > 0
    # and the global rotation still carries the model-frame points onto them (mirrored model when flipped)
    R = s["global_rotmat"].double().numpy()
    P_side = P @ MIRROR if flipped else P
    np.testing.assert_allclose(X, (P_side @ R.T)[:, :2], atol=1e-5)
    expected_pose = raw["hand_pose"].reshape(15, 3) * ([1, -1, -1] if flipped else 1)
    np.testing.assert_allclose(s["hand_pose"].view(15, 3).numpy(), expected_pose, atol=1e-6)


def test_11kjoints_fixture_loads_with_thumb_cmc_certainty(tmp_path):
    rng = np.random.default_rng(1)
    samples = []
    for i, side in enumerate(["right", "left", "right"]):
        kp = _keypoints(rng)
        kp[:, 2] = 0.9
        Image.fromarray(_blob_image(kp)).save(tmp_path / f"Hand_{i:07d}.jpg")
        samples.append(hands11k.Sample(f"Hand_{i:07d}.jpg", kp, subject=str(i), side=side, aspect="dorsal"))
    hands11k.save_samples(tmp_path / "joints.json", samples)
    source = Hands11kSource(hands11k.load_samples(tmp_path / "joints.json"), tmp_path)
    crops = HandCrops(source, 48, augment=Augment())
    s = crops[(1, 0)]
    assert s["image"].shape == (3, 48, 48) and s["image"].min() >= -1 and s["image"].max() <= 1
    assert s["certainty"][1] == pytest.approx(0.2) and s["certainty"][0] == pytest.approx(0.9)
    assert not s["has3d"] and not s["has_mask"]
    batch = next(iter(torch.utils.data.DataLoader(
        Mixture([crops]), batch_size=4, sampler=DrawSampler([len(crops)], [1.0], 4), num_workers=0)))
    assert batch["image"].shape == (4, 3, 48, 48) and batch["keypoints2d"].shape == (4, 21, 2)
    (tmp_path / "Hand_0000001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="Hand_0000001.jpg"):
        source[1]


def test_draw_sampler_resumes_and_splits_across_processes():
    def take(n, **kw):
        return list(itertools.islice(iter(DrawSampler([5, 7], [0.3, 0.7], 8, seed=3, **kw)), n))

    whole = take(32)
    assert take(16, start=16) == whole[16:]
    ranks = [take(16, rank=r, world=2) for r in range(2)]
    for b in range(4):  # each global batch of 8 = rank 0's 4 then rank 1's 4
        assert ranks[0][4 * b:4 * b + 4] + ranks[1][4 * b:4 * b + 4] == whole[8 * b:8 * b + 8]
    counts = np.bincount([d for d, _, _ in take(2000)], minlength=2) / 2000
    np.testing.assert_allclose(counts, [0.3, 0.7], atol=0.04)


def test_mask_points_lie_inside_the_mask():
    kp = _keypoints(np.random.default_rng(2))
    ys, xs = np.mgrid[:160, :200]
    mask = (xs - 100) ** 2 + (ys - 80) ** 2 < 30 ** 2
    s = HandCrops([{"image": _blob_image(kp), "keypoints": kp, "side": "right", "mask": mask}], 64,
                  mask_size=32)[0]
    assert s["has_mask"]
    at_points = torch.nn.functional.grid_sample(s["mask_dist"][None], s["mask_points"][None, None],
                                                align_corners=False)
    assert float(at_points.max()) < 0.07  # inside (up to one low-res pixel of interpolation)
    assert float(s["mask_dist"].max()) > 0.3


def test_synthetic_samples_keep_their_3d_labels_and_silhouette():
    from handlib.loader import SyntheticSource

    rng = np.random.default_rng(5)
    kp = _keypoints(rng)
    stored = {"image": _blob_image(kp), "side": np.uint8(1), "silhouette": np.pad(np.ones((60, 100), np.uint8), 50),
              "keypoints_2d": kp[:, :2].astype(np.float32), "theta": rng.normal(0, 0.3, 45).astype(np.float32),
              "beta": rng.normal(0, 1, 10).astype(np.float32), "global_orient": np.float32([0.1, 0.2, 0.3]),
              "keypoints_3d": rng.normal(0, 0.05, (21, 3)).astype(np.float32), "parts": np.zeros((160, 200))}
    s = HandCrops(SyntheticSource([stored]), 48)[0]
    assert s["has3d"] and s["has_mask"] and int(s["side"]) == 1
    assert torch.equal(s["certainty"], torch.ones(21))
    np.testing.assert_allclose(s["betas"].numpy(), stored["beta"])
    np.testing.assert_allclose(s["global_rotmat"].numpy(), rodrigues(stored["global_orient"]), atol=1e-6)
    assert "mask_dist" not in HandCrops(SyntheticSource([stored]), 48, masks=False)[0]


def test_color_jitter_equals_brightness_then_contrast_then_saturation():
    image = np.random.default_rng(3).integers(0, 256, (16, 12, 3), dtype=np.uint8)
    b, c, s = np.random.default_rng(7).uniform(0.7, 1.3, 3)  # what color_jitter draws from the same rng
    x = image / 255 * b  # the three steps one after the other: brightness, contrast about the mean grey, saturation
    x = (x - x.mean(2, keepdims=True).mean()) * c + x.mean(2, keepdims=True).mean()
    grey = x.mean(2, keepdims=True)
    expected = np.clip(grey + (x - grey) * s, 0, 1) * 255
    got = color_jitter(image, np.random.default_rng(7), 0.3)
    assert got.dtype == np.uint8 and got.shape == image.shape
    # whole levels, clipped to 0..255; OpenCV's 8-bit path computes in fixed point: within one level
    np.testing.assert_allclose(got, expected, atol=1.0)
    assert np.abs(expected - image).max() > 10  # the draw does change the image


def test_crops_in_forked_workers_after_the_parent_warped_a_large_image():
    # an OpenCV thread pool alive in the parent can hang the workers the DataLoader forks: handlib.loader keeps
    # OpenCV on the calling thread
    import cv2

    from handlib.loader import warp

    assert cv2.getNumThreads() == 1
    big = np.random.default_rng(1).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    warp(big, np.array([[1.0, 0, 0], [0, 1.0, 0]]), 1024)  # large enough to run on OpenCV's threads, were there any
    kp = _keypoints(np.random.default_rng(2))
    crops = HandCrops([{"image": _blob_image(kp), "keypoints": kp, "side": "right"}] * 4, 48, augment=STRONG)
    keys = [(0, i, i) for i in range(4)]
    loader = torch.utils.data.DataLoader(Mixture([crops]), batch_size=2, sampler=keys, num_workers=2, timeout=60)
    got = torch.cat([b["image"] for b in loader])
    assert torch.equal(got, torch.stack([crops[(i, d)]["image"] for _, i, d in keys]))
