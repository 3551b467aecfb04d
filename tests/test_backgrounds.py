import numpy as np
import pytest
from PIL import Image

from handlib import backgrounds


@pytest.mark.parametrize("kind", ["white", "plain", "texture"])
def test_procedural_backgrounds_are_images_fixed_by_the_seed(kind):
    a = backgrounds.background(np.random.default_rng([5, 1]), 48, kind)
    b = backgrounds.background(np.random.default_rng([5, 1]), 48, kind)
    c = backgrounds.background(np.random.default_rng([5, 2]), 48, kind)
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_white_background_is_near_white():
    image = backgrounds.white(np.random.default_rng(0), 64)
    assert image.mean() > 180


def test_folder_backgrounds_crop_the_users_images(tmp_path):
    red = np.zeros((40, 60, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")
    (tmp_path / "notes.txt").write_text("not an image")
    image = backgrounds.background(np.random.default_rng(0), 32, "images", tmp_path)
    assert image.shape == (32, 32, 3)
    assert (image[..., 0] == 255).all() and (image[..., 1:] == 0).all()


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        backgrounds.image_files(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds no image"):
        backgrounds.image_files(tmp_path)
    with pytest.raises(ValueError, match="unknown background kind"):
        backgrounds.background(np.random.default_rng(0), 8, "stars")
