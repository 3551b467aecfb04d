import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from handlib import anatomy, backgrounds, camera, shards, synthetic
from handlib.loader import HandCrops, SyntheticSource
from handlib.model import HandModel
from handlib.render import Renderer, WeakPerspective


def _cloud(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, [0.04, 0.07, 0.015], (300, 3))


@pytest.mark.parametrize("offset", [(0.0, 0.0), (1.0, -1.0), (-0.4, 0.7)])
def test_weak_camera_frames_the_box_as_asked(offset):
    points = _cloud()
    cam = synthetic.weak_camera(points, 0.7, np.array(offset))
    xy = cam[0] * points[:, :2] + cam[1:]
    lo, hi = xy.min(0), xy.max(0)
    assert np.isclose((hi - lo).max(), 2 * 0.7)
    assert lo.min() >= -1 - 1e-9 and hi.max() <= 1 + 1e-9
    np.testing.assert_allclose((lo + hi) / 2, np.array(offset) * (1 - (hi - lo) / 2), atol=1e-9)


@pytest.mark.parametrize("offset,fov", [((0.0, 0.0), 30.0), ((1.0, 1.0), 60.0), ((-1.0, 0.3), 45.0)])
def test_perspective_camera_frames_the_projection_inside_the_image(offset, fov):
    points = Rotation.from_rotvec([0.4, -0.3, 1.0]).apply(_cloud(1))
    size = 128
    K, transl = synthetic.perspective_camera(points, 0.8, np.array(offset), fov, size)
    p = (points + transl) @ K.T
    px = p[:, :2] / p[:, 2:]
    assert (p[:, 2] > 0).all()
    lo, hi = px.min(0), px.max(0)
    assert abs((hi - lo).max() / (0.8 * size) - 1) < 0.01
    assert lo.min() >= -0.5 - 0.5 and hi.max() <= size - 0.5 + 0.5  # inside the image, to half a pixel


def test_global_rotation_turns_the_palm_to_or_from_the_camera():
    radial, up = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    frame = np.stack([radial, up, np.cross(radial, up)])  # a right hand: palm = radial x up
    rng = np.random.default_rng(0)
    R = synthetic.global_rotation(rng, frame, palmar=True, tilt_deg=0, roll_deg=0)
    np.testing.assert_allclose(R @ frame[2], [0, 0, -1], atol=1e-12)  # palm towards the camera (-z)
    np.testing.assert_allclose(R @ up, [0, -1, 0], atol=1e-12)         # fingers up in the image
    np.testing.assert_allclose(R @ radial, [1, 0, 0], atol=1e-12)      # thumb to the right, as seen
    for palmar in (True, False):
        for _ in range(50):
            R = synthetic.global_rotation(rng, frame, palmar, tilt_deg=30, roll_deg=180)
            assert np.isclose(np.linalg.det(R), 1)
            towards = -(R @ frame[2])[2] if palmar else (R @ frame[2])[2]
            assert towards >= np.cos(np.radians(30)) - 1e-9


def test_subjects_are_split_disjointly_and_written_once(tmp_path):
    config = synthetic.SyntheticConfig(samples=100, subjects=30)
    subjects = synthetic.make_subjects(config)
    parts = [set(subjects["subjects"][s]) for s in synthetic.SPLITS]
    assert sum(map(len, parts)) == 30 and set.union(*parts) == set(range(30))
    assert sum(subjects["samples"].values()) == 100 and subjects["samples"]["train"] == 80
    synthetic.write_splits(tmp_path, subjects)
    synthetic.write_splits(tmp_path, synthetic.make_subjects(config))  # the same: fine
    with pytest.raises(ValueError, match="another dataset"):
        synthetic.write_splits(tmp_path, synthetic.make_subjects(synthetic.SyntheticConfig(samples=100, seed=1)))


def test_unknown_setting_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown synthetic dataset settings \\['colour'\\]"):
        synthetic.SyntheticConfig.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="camera"):
        synthetic.SyntheticConfig.from_dict({"camera": "fisheye"})
    with pytest.raises(ValueError, match="needs background_dir"):
        synthetic.SyntheticConfig.from_dict({"backgrounds": {"images": 1.0}})
    with pytest.raises(ValueError, match="fill"):
        synthetic.SyntheticConfig.from_dict({"fill": [0.9, 1.2]})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        synthetic.SyntheticConfig.from_dict({"backgrounds": {"images": 1.0}, "background_dir": "/nowhere"})


@pytest.mark.parametrize("pool", [1, 0])
def test_texture_backgrounds_come_from_the_pool_in_their_variants(pool):
    """With a pool of one, every texture background is that texture turned, flipped, its channels reordered or
    inverted: its values are the pool texture's or their complement. Without a pool, each is new."""
    config = synthetic.SyntheticConfig(image_size=32, background_pool=pool)
    maker = synthetic.SampleMaker.__new__(synthetic.SampleMaker)  # only the background part of a maker
    maker.config, maker._backgrounds = config, {}
    images = [maker.background(np.random.default_rng(k), "texture") for k in range(12)]
    if pool == 0:
        assert len({image.tobytes() for image in images}) == 12
        return
    base = backgrounds.texture(np.random.default_rng([config.seed, synthetic._TAG_BACKGROUNDS, 0]), 32)
    values = np.sort(base.ravel())
    assert len({image.tobytes() for image in images}) > 6
    for image in images:
        assert image.shape == base.shape
        assert np.array_equal(np.sort(image.ravel()), values) or np.array_equal(np.sort(255 - image.ravel()), values)


# Generated datasets, shared by the tests below: small, but through the whole pipeline.
TINY = dict(samples=16, image_size=64, shard_size=4, subjects=6, atlas_size=64, model="builtin")


@pytest.fixture(scope="module")
def weak(tmp_path_factory):
    root = tmp_path_factory.mktemp("weak")
    synthetic.generate(root, TINY)
    return root


@pytest.fixture(scope="module")
def perspective(tmp_path_factory):
    root = tmp_path_factory.mktemp("perspective")
    synthetic.generate(root, {**TINY, "samples": 8, "camera": "perspective", "seed": 3})
    return root


def _samples(root):
    return [item for split in synthetic.SPLITS for data in [synthetic.load(root, split)] for item in data]


def test_stored_2d_keypoints_are_the_projection_of_the_stored_3d_ones(weak, perspective):
    for item in _samples(weak):
        kp3d, cam = torch.from_numpy(item["keypoints_3d"]).double()[None], torch.from_numpy(item["cam"]).double()[None]
        px = camera.normalized_to_pixels(camera.weak_perspective(kp3d, cam), 64, 64)[0].numpy()
        np.testing.assert_allclose(item["keypoints_2d"], px, atol=1e-3)
    for item in _samples(perspective):
        kp3d, K = torch.from_numpy(item["keypoints_3d"]).double()[None], torch.from_numpy(item["K"]).double()[None]
        np.testing.assert_allclose(item["keypoints_2d"], camera.perspective(kp3d, K)[0].numpy(), atol=1e-3)
        assert (item["keypoints_3d"][:, 2] > 0).all()


def test_keypoints_lie_inside_the_silhouette(weak, perspective):
    for item in _samples(weak) + _samples(perspective):
        # joints lie inside the flesh, fingertips on its surface: allow the silhouette's border
        inside = ndimage.binary_dilation(item["silhouette"] > 0, iterations=2)
        px = np.rint(item["keypoints_2d"]).astype(int)
        assert ((px >= 0) & (px < 64)).all()
        assert inside[px[:, 1], px[:, 0]].all(), item["index"]


def test_stored_parameters_reproduce_the_stored_keypoints(weak, perspective):
    models = {side: HandModel.builtin(side) for side in synthetic.SIDES}
    for item in _samples(weak) + _samples(perspective):
        model = models[synthetic.SIDES[item["side"]]]
        transl = torch.from_numpy(item["transl"])[None] if "transl" in item else None
        out = model(betas=torch.from_numpy(item["beta"])[None], hand_pose=torch.from_numpy(item["theta"])[None],
                    global_orient=torch.from_numpy(item["global_orient"])[None], transl=transl)
        np.testing.assert_allclose(out.keypoints[0].numpy(), item["keypoints_3d"], atol=2e-5)


def test_part_labels_cover_exactly_the_silhouette(weak):
    labels = set()
    for item in _samples(weak):
        np.testing.assert_array_equal(item["parts"] > 0, item["silhouette"] > 0)
        labels |= set(np.unique(item["parts"]).tolist())
    assert labels <= set(range(17)) and len(labels) > 10


def test_splits_share_no_subject(weak):
    written = json.loads((weak / synthetic.SPLITS_FILE).read_text())
    splits = written["subjects"]
    seen = {}
    for split in synthetic.SPLITS:
        for item in synthetic.load(weak, split):
            assert int(item["subject"]) in splits[split]
            seen.setdefault(split, set()).add(int(item["subject"]))
    assert all(not (seen[a] & seen[b]) for a in seen for b in seen if a < b)
    assert [len(synthetic.load(weak, s)) for s in synthetic.SPLITS] == [13, 2, 1]
    assert [written["samples"][s] for s in synthetic.SPLITS] == [13, 2, 1]


def _files(root):
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_same_seed_gives_identical_files_and_interrupted_runs_resume_to_them(weak, tmp_path, monkeypatch):
    write, calls = shards.ShardWriter.write, []

    def crash_on_third(self, *args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write(self, *args, **kw)

    monkeypatch.setattr(shards.ShardWriter, "write", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path, TINY)
    monkeypatch.setattr(shards.ShardWriter, "write", write)
    assert len(shards.read_manifest(tmp_path)["shards"]) == 2
    (tmp_path / "train-00001.npz").write_bytes(b"damaged after it was recorded")  # rewritten on resume
    with pytest.warns(UserWarning, match="train-00001.npz"):
        timing = synthetic.generate(tmp_path, TINY, workers=2)  # resumed by two processes: the same files
    assert timing["samples"] == 16 - 4
    assert _files(tmp_path) == _files(weak)


def test_samples_do_not_depend_on_the_sharding(weak, tmp_path):
    synthetic.generate(tmp_path, {**TINY, "shard_size": 5})
    a, b = _samples(weak), _samples(tmp_path)
    assert len(a) == len(b) == 16
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x.keys() - {"image"}:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
        # the renderer's rounding depends a little on where a sample's tile lies in the batch's framebuffer
        # (±1 at a few pixels, which JPEG spreads a little)
        diff = np.abs(x["image"].astype(int) - y["image"])
        assert diff.max() <= 12 and diff.mean() < 0.2


def test_another_seed_gives_other_samples_and_never_mixes_with_them(weak, tmp_path):
    for name, data in _files(weak).items():
        (tmp_path / name).write_bytes(data)
    other = {**TINY, "samples": 4, "seed": 1}
    with pytest.raises(ValueError, match="seed: 0 -> 1"):
        synthetic.generate(tmp_path, other)
    synthetic.generate(tmp_path, other, replace=True)
    a, b = synthetic.load(weak, "train")[0], synthetic.load(tmp_path, "train")[0]
    assert not np.array_equal(a["theta"], b["theta"]) and not np.array_equal(a["image"], b["image"])
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["test-00000.npz", "train-00000.npz", "val-00000.npz"]


def test_a_corrupt_shard_is_reported_by_name_and_skipped(weak, tmp_path):
    for name, data in _files(weak).items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "train-00002.npz").write_bytes(b"\0" * 100)
    with pytest.warns(UserWarning, match="train-00002.npz"):
        data = synthetic.load(tmp_path, "train")
    assert len(data) == 13 - 4 and data.skipped == ["train-00002.npz"]
    assert all(item["image"].shape == (64, 64, 3) for item in data)


def test_views_and_poses_are_drawn_as_configured(weak):
    table = synthetic.describe(synthetic.load(weak, "train"))
    towards = table["palm normal to the camera (deg)"]
    palmar = table["view"] == "palmar"
    assert palmar.any() and (~palmar).any()
    tilt = synthetic.SyntheticConfig.tilt_deg
    assert (towards[palmar] <= tilt + 1e-3).all() and (towards[~palmar] >= 180 - tilt - 1e-3).all()
    bends = table["finger joints' bend (deg)"]
    assert bends.min() >= -1e-3 and bends.max() <= 90 + 1e-3  # within handlib.anatomy's limits
    assert np.abs(table["finger MCP spread (deg)"]).max() <= synthetic.SyntheticConfig.spread_deg + 1e-3
    assert set(table["pose"]) == {"flat", "natural"} and len(table["β, all 10 components"]) == 13 * 10


def test_visibility_sees_a_flat_hand_whole_and_hides_a_fists_fingertips_from_behind():
    model = HandModel.builtin("right", dtype=torch.float64)
    frame = synthetic.rest_frame(model)
    angles = torch.zeros(1, 15, 3, dtype=torch.float64)
    fist = angles.clone()
    fist[0, :12, 2] = np.radians(85)  # every finger joint bent
    renderer = Renderer(model.faces.numpy(), 96, parts=model.lbs_weights.numpy())
    allowed = synthetic.keypoint_parts(model.parents.numpy())
    for pose, palmar, expect_tips in ((angles, True, True), (angles, False, True), (fist, False, False)):
        rotation = synthetic.global_rotation(np.random.default_rng(0), frame, palmar, 0, 0)
        out = model(hand_pose=anatomy.pose_from_angles(pose, model),
                    global_orient=torch.from_numpy(Rotation.from_matrix(rotation).as_rotvec())[None])
        verts, kp3d = out.vertices[0].numpy(), out.keypoints[0].numpy()
        cam = synthetic.weak_camera(verts, 0.8, np.zeros(2))
        parts = renderer.render(verts[None], WeakPerspective(cam[None]), outputs=("parts",))["parts"]
        kp2d = camera.normalized_to_pixels(torch.from_numpy(cam[0] * kp3d[None, :, :2] + cam[1:]), 96, 96).numpy()
        visible = synthetic._visible(kp2d, parts, allowed)[0]
        tips = [8, 12, 16, 20]  # the four fingers' (the fist leaves the thumb straight)
        assert visible[tips].all() == expect_tips and visible[tips].any() == expect_tips and visible[4]
        if expect_tips:
            assert visible.all()


def test_real_mano_files_without_an_atlas_give_plain_skin(tmp_path, monkeypatch):
    from handlib.builtin import builtin_params
    from tests.fixtures.mano import write_chumpy_pickle

    files = {}
    for side in synthetic.SIDES:  # the built-in hand written as the released MANO pickles are: no UV atlas
        params = {k: v for k, v in builtin_params(side).items() if k not in ("vt", "ft")}
        params["J_regressor"] = params["J_regressor"].toarray()
        files[side] = tmp_path / f"MANO_{side.upper()}.pkl"
        write_chumpy_pickle(params, files[side])
    monkeypatch.setattr(synthetic, "find_mano", lambda side: files[side])
    root = tmp_path / "data"
    synthetic.generate(root, {**TINY, "samples": 4, "model": "mano", "splits": {"train": 1.0}})
    assert shards.read_manifest(root)["header"]["model"]["files"] == {side: str(files[side]) for side in files}
    for item in synthetic.load(root, "train"):
        model = HandModel.from_mano(files[synthetic.SIDES[item["side"]]])
        out = model(betas=torch.from_numpy(item["beta"])[None], hand_pose=torch.from_numpy(item["theta"])[None],
                    global_orient=torch.from_numpy(item["global_orient"])[None])
        np.testing.assert_allclose(out.keypoints[0].numpy(), item["keypoints_3d"], atol=2e-5)
        hand = item["image"][item["silhouette"] > 0].astype(float)
        assert hand.std(0).max() < 40  # one albedo, only shading varies


def test_samples_feed_the_training_loader(weak):
    crops = HandCrops(SyntheticSource(synthetic.load(weak, "train")), image_size=32)
    direct = HandCrops(synthetic.source(weak, "train"), image_size=32)
    sample = crops[0]
    assert sample["has3d"] and sample["has_mask"] and sample["image"].shape == (3, 32, 32)
    assert sample["keypoints2d"].abs().max() <= 1.0
    torch.testing.assert_close(sample["keypoints3d"], direct[0]["keypoints3d"])
