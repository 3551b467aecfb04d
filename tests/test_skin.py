import numpy as np
import pytest
import torch

from handlib import skin
from handlib.model import HandModel


def _grid(n: int = 6, size: float = 0.1, u0: float = 0.0, u1: float = 1.0):
    """A flat square mesh z = 0 of side `size`, UVs an affine map of x, y onto [u0, u1] x [0, 1]."""
    xs = np.linspace(0, size, n)
    x, y = np.meshgrid(xs, xs)
    vertices = np.stack([x.ravel(), y.ravel(), np.zeros(n * n)], 1)
    vt = np.stack([u0 + (u1 - u0) * vertices[:, 0] / size, vertices[:, 1] / size], 1)
    quads = [(r * n + c, r * n + c + 1, (r + 1) * n + c + 1, (r + 1) * n + c) for r in range(n - 1)
             for c in range(n - 1)]
    faces = np.array([f for a, b, c, d in quads for f in ((a, b, c), (a, c, d))])
    return vertices, faces, vt


def test_baked_positions_invert_an_affine_uv_map():
    vertices, faces, vt = _grid()
    S = 32
    covered, position, normal = skin.bake_surface(vertices, faces, vt, faces, S)
    assert covered.all()
    rows, cols = np.mgrid[0:S, 0:S]
    u, v = (cols + 0.5) / S, 1 - (rows + 0.5) / S  # texel centres; row 0 is v = 1
    np.testing.assert_allclose(position[..., 0], 0.1 * u, atol=1e-12)
    np.testing.assert_allclose(position[..., 1], 0.1 * v, atol=1e-12)
    np.testing.assert_allclose(np.abs(normal[..., 2]), 1.0, atol=1e-9)


def test_texels_between_islands_copy_the_nearest_covered_texel():
    left, faces, vt_left = _grid(u0=0.0, u1=0.4)
    right, _, vt_right = _grid(u0=0.6, u1=1.0)
    right = right + [1.0, 0, 0]  # far away in 3D: any bleeding would show
    vertices = np.concatenate([left, right])
    faces = np.concatenate([faces, faces + len(left)])
    vt = np.concatenate([vt_left, vt_right])
    S = 40
    covered, position, _ = skin.bake_surface(vertices, faces, vt, faces, S)
    assert not covered[:, 17:23].any() and covered[:, :16].all() and covered[:, 24:].all()
    assert (position[:, :20, 0] < 0.2).all() and (position[:, 20:, 0] > 0.9).all()


@pytest.fixture(scope="module")
def hand():
    model = HandModel.builtin("right", dtype=torch.float64)
    vertices = model.v_template.numpy()
    return model, vertices, model.J_regressor.numpy() @ vertices, skin.model_atlas(model, 128)


def test_nails_sit_on_the_back_of_each_fingertip(hand):
    model, vertices, joints, atlas = hand
    _, _, palm = skin.palm_frame(joints, "right")
    nail = (atlas.nail > 0.5) & atlas.covered
    tips = vertices[model.tip_ids.numpy()]
    owner = np.linalg.norm(atlas.position[nail][:, None] - tips[None], axis=-1).argmin(1)
    assert set(owner.tolist()) == set(range(5))  # every finger has a nail
    assert np.linalg.norm(atlas.position[nail] - tips[owner], axis=1).max() < 0.02
    fingers = owner > 0  # the thumb's nail faces sideways at rest; the four fingers' face the back of the hand
    assert (atlas.normal[nail][fingers] @ palm < -0.3).all()


def test_palm_side_is_lighter_than_the_back_and_classes_darken_in_order(hand):
    *_, atlas = hand
    palm, back = (atlas.palm > 0.9) & atlas.covered, (atlas.palm < 0.1) & (atlas.nail == 0) & atlas.covered
    rng = np.random.default_rng(0)
    previous = np.inf
    for skin_class in range(len(skin.SKIN_CLASSES)):
        lum = np.mean([skin.skin_texture(atlas, rng, skin_class).mean(-1) for _ in range(8)], axis=0)
        assert lum[palm].mean() > lum[back].mean() + 2, skin.SKIN_CLASSES[skin_class]
        assert lum[back].mean() < previous
        previous = lum[back].mean()
