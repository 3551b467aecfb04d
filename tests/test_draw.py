"""handlib.draw: skeleton colours and geometry, overlay blending, grid layout."""

import numpy as np
import pytest

from handlib.draw import OPENPOSE_COLORS, draw_skeleton, grid, overlay
from handlib.joints import OPENPOSE_PARENTS


def spread_hand():
    """21 keypoints of a flat hand drawn large: wrist at the bottom, five fingers fanned upwards."""
    kp = np.zeros((21, 2))
    kp[0] = [100, 180]
    for finger, angle in enumerate(np.radians([-60, -25, 0, 25, 50])):
        for joint in range(4):
            r = 30 + 20 * joint
            kp[1 + 4 * finger + joint] = kp[0] + r * np.array([np.sin(angle), -np.cos(angle)])
    return kp


def test_skeleton_has_openpose_colours_at_keypoints_and_bones():
    image = np.zeros((200, 200, 3), np.uint8)
    kp = spread_hand()
    drawn = draw_skeleton(image, kp, radius=3, width=3)
    assert not image.any()  # the input is left alone
    px = np.rint(kp).astype(int)
    np.testing.assert_array_equal(drawn[px[:, 1], px[:, 0]], OPENPOSE_COLORS)
    for child, parent in enumerate(OPENPOSE_PARENTS):
        if parent >= 0:
            mid = np.rint((kp[child] + kp[parent]) / 2).astype(int)
            np.testing.assert_array_equal(drawn[mid[1], mid[0]], OPENPOSE_COLORS[child])
    assert OPENPOSE_COLORS[4].tolist() == [255, 0, 0] and OPENPOSE_COLORS[20].tolist() == [255, 0, 255]


def test_skeleton_leaves_out_uncertain_keypoints():
    kp = np.concatenate([spread_hand(), np.ones((21, 1))], axis=1)
    kp[8, 2] = 0.1  # index tip
    drawn = draw_skeleton(np.zeros((200, 200, 3), np.uint8), kp, radius=3, threshold=0.2)
    tip, dip = np.rint(kp[8, :2]).astype(int), kp[7, :2]
    assert not drawn[tip[1], tip[0]].any()
    mid = np.rint((kp[8, :2] + dip) / 2).astype(int)
    assert not drawn[mid[1], mid[0]].any()
    with pytest.raises(ValueError, match="OpenPose order"):
        draw_skeleton(np.zeros((10, 10, 3), np.uint8), np.zeros((16, 2)))


def test_overlay_blends_inside_the_mask_only():
    rng = np.random.default_rng(0)
    image, render = rng.integers(0, 256, (2, 3, 8, 9, 3)).astype(np.uint8)
    mask = rng.random((3, 8, 9)) > 0.5
    out = overlay(image, render, mask, alpha=0.25)
    np.testing.assert_array_equal(out[~mask], image[~mask])
    expected = np.round(0.25 * render[mask].astype(float) + 0.75 * image[mask])
    np.testing.assert_allclose(out[mask], expected, atol=1)


def test_grid_places_each_image_in_its_cell():
    images = np.arange(5)[:, None, None, None] * np.ones((5, 4, 6, 3), np.uint8) * 40
    out = grid(images, pad=1, pad_value=7)
    assert out.shape == (2 * 5 + 1, 3 * 7 + 1, 3)  # 5 images -> 3 columns, 2 rows
    for k in range(5):
        r, c = divmod(k, 3)
        np.testing.assert_array_equal(out[1 + 5 * r:5 + 5 * r, 1 + 7 * c:7 + 7 * c], images[k])
    assert (out[0] == 7).all() and (out[:, 0] == 7).all() and (out[6:, 15:] == 7).all()
    assert grid(images[:4], columns=4, pad=0).shape == (4, 24, 3)
