import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handlib import camera, fitting, personalize
from handlib.keypoints import Detection
from handlib.model import HandModel
from handlib.render import Renderer, WeakPerspective


class FixedDetector:
    """Answers from a dict path -> Detection (None: no hand)."""
    name = "fixed"

    def __init__(self, answers: dict):
        self.answers = answers

    def detect(self, path, side=None):
        return self.answers[str(path)]


def _detection(side="right", size=200):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0.3 * size, 0.7 * size, (21, 2))
    return Detection(np.c_[xy, np.ones(21)], side, 0.97)


def _photo(path, size=200):
    Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(path)
    return path


def test_bad_photos_get_a_message_that_names_them(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not a jpeg at all")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (40, 30)).save(tiny)
    for path, words in [(empty, "the file is empty"), (garbage, "not an image"), (tiny, "40x30 pixels is too small"),
                        (tmp_path / "missing.jpg", "no such file")]:
        with pytest.raises(personalize.PhotoError, match=words) as err:
            personalize.read_photo(path)
        assert str(path) in str(err.value)

    nohand, conflict, small = (_photo(tmp_path / f"{n}.png") for n in ("nohand", "conflict", "small"))
    tiny_hand = _detection()
    tiny_hand.keypoints[:, :2] = 100 + tiny_hand.keypoints[:, :2] / 20
    detector = FixedDetector({str(nohand): None, str(conflict): _detection("right"), str(small): tiny_hand})
    with pytest.raises(personalize.PhotoError, match=f"{nohand}: no hand found"):
        personalize.prepare_photo(nohand, detector)
    with pytest.raises(personalize.PhotoError, match=f"{conflict}: conflicting sides: given 'left'.*right hand"):
        personalize.prepare_photo(conflict, detector, side="left")
    with pytest.raises(personalize.PhotoError, match=f"{small}: the hand is only"):
        personalize.prepare_photo(small, detector)
    with pytest.raises(personalize.PhotoError, match="no photo could be used"):
        personalize.personalize([nohand, small], tmp_path / "out", detector, models={"right": None, "left": None})


def test_left_photos_are_mirrored_into_right_hands(tmp_path):
    path = _photo(tmp_path / "left.png")
    detection = _detection("left")
    photo = personalize.prepare_photo(path, FixedDetector({str(path): detection}))
    assert photo.mirrored and photo.side == "left"
    np.testing.assert_allclose(photo.keypoints[:, 0], 199 - detection.keypoints[:, 0])
    np.testing.assert_array_equal(photo.image, np.asarray(Image.open(path))[:, ::-1])
    again = personalize.with_keypoints(photo, detection.keypoints[:, :2])
    np.testing.assert_allclose(again.keypoints, photo.keypoints)
    np.testing.assert_allclose(again.box, photo.box)


def test_canvas_camera_maps_crop_pixels_to_canvas_pixels():
    box, canvas = np.array([37.0, 12.5, 90.0]), 250
    cam = np.array([3.1, 0.2, -0.4])
    points = torch.as_tensor(np.random.default_rng(0).normal(size=(1, 9, 3)) * 0.1)
    in_crop = camera.normalized_to_pixels(camera.weak_perspective(points, torch.as_tensor(cam[None])),
                                          90, 90) + torch.tensor([37.0, 12.5], dtype=torch.float64)
    in_canvas = camera.normalized_to_pixels(
        camera.weak_perspective(points, torch.as_tensor(personalize.canvas_camera(cam, box, canvas)[None])),
        canvas, canvas)
    torch.testing.assert_close(in_canvas, in_crop)


def sheet_params(n=12) -> dict:
    """A flat square sheet in the z = 0 plane facing the camera (normal -z), UVs = its x, y; every vertex
    skinned to the wrist: enough of a MANO-layout model to test texture projection."""
    g = np.linspace(-0.05, 0.05, n)
    x, y = np.meshgrid(g, g)
    verts = np.c_[x.ravel(), y.ravel(), np.zeros(n * n)]
    quads = [(r * n + c, r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1) for r in range(n - 1)
             for c in range(n - 1)]
    faces = np.array([f for a, b, c, d in quads for f in ((a, c, b), (b, c, d))])
    weights = np.zeros((n * n, 16))
    weights[:, 0] = 1
    return {
        "v_template": verts, "f": faces, "weights": weights, "J_regressor": np.full((16, n * n), 1 / (n * n)),
        "kintree_table": np.stack([np.array([-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]) % 2**32,
                                   np.arange(16)]),
        "shapedirs": np.zeros((n * n, 3, 10)), "posedirs": np.zeros((n * n, 3, 135)),
        "hands_components": np.eye(45), "hands_mean": np.zeros(45), "tip_ids": np.arange(5),
        # v up in the atlas while y points down in the image: the texture shows upright in the photo
        "vt": np.c_[(x.ravel() + 0.05) / 0.1, 1 - (y.ravel() + 0.05) / 0.1], "ft": faces,
    }


def test_projected_texture_recovers_the_texture_the_photo_was_rendered_with():
    model = HandModel(sheet_params()).double()
    rng = np.random.default_rng(0)
    truth = np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 64 x 64 blocks
    verts = model().vertices[0].numpy()
    cam = np.array([7.0, 0.05, -0.1])  # the sheet covers about 70% of the photo, off centre
    renderer = Renderer(model.faces.numpy(), 160, vt=model.vt.numpy(), ft=model.ft.numpy(), samples=1)
    image = renderer.render(verts, WeakPerspective(cam[None]), texture=truth,
                            light=personalize_light())["image"][0]
    renderer.release()
    photo = personalize.Photo(None, image, "right", False, np.zeros((21, 3)), np.array([0, 0, 160.0]), "test")
    texture, seen = personalize.project_texture(model, verts[None], [photo], cam[None], size=64)
    assert seen.mean() > 0.5
    inner = np.zeros_like(seen)
    inner[2:-2, 2:-2] = True
    block_edges = (np.arange(64) % 8 == 0) | (np.arange(64) % 8 == 7)
    inner[block_edges] = False
    inner[:, block_edges] = False
    diff = np.abs(texture.astype(int) - truth)[inner & seen]
    assert np.median(diff) <= 2 and np.percentile(diff, 99) < 30
    # texels nobody saw take a seen neighbour's colour, not black
    assert (texture[~seen] > 0).any(axis=-1).all() if (~seen).any() else True


def personalize_light():
    from handlib.render import Light
    return Light(direction=(0.0, 0.0, 1.0), diffuse=0.0, ambient=1.0)  # unshaded: colours come out as given


class DarkSpotNet(torch.nn.Module):
    """A stand-in network: 21 keypoints spread around the centroid of the dark pixels of its crop."""
    spread = torch.tensor(np.random.default_rng(0).uniform(-0.2, 0.2, (21, 2)))
    spread = spread - spread.mean(0)

    def forward(self, images, side):
        dark = images[0].mean(0) < 0  # (H, W)
        ys, xs = torch.nonzero(dark, as_tuple=True)
        size = images.shape[-1]
        centre = camera.pixels_to_normalized(torch.stack([xs, ys], 1).double().mean(0), size, size)
        return [type("P", (), {"keypoints2d": (centre + self.spread)[None]})]


def test_network_detector_finds_the_hand_through_two_crops(tmp_path):
    image = np.full((300, 400, 3), 255, np.uint8)
    image[180:200, 250:270] = 0  # the "hand": centre (259.5, 189.5) in pixel-centre coordinates
    path = tmp_path / "spot.png"
    Image.fromarray(image).save(path)
    detector = personalize.NetworkDetector(DarkSpotNet(), image_size=64)
    found = detector.detect(path, "left")
    np.testing.assert_allclose(found.keypoints[:, :2].mean(0), [259.5, 189.5], atol=1.5)
    with pytest.raises(ValueError, match="needs the hand's side"):
        detector.detect(path)


def _keypoints_px(model, betas, hand_pose, orient, cam, box):
    """Pixels of a model's keypoints under a weak perspective `cam` over the square `box` (x0, y0, size)."""
    out = model(torch.tensor(betas[None]), torch.tensor(hand_pose[None]), torch.tensor(orient[None]))
    xy = camera.weak_perspective(out.keypoints, torch.tensor(cam[None]))[0]
    return camera.normalized_to_pixels(xy, box[2], box[2]).numpy() + box[:2]


def end_to_end_case(folder, out_name="out", quick=False):
    """Two photos (a right and a left hand of one toy person, keypoints as a detector would give them) and an
    empty file, personalised into folder/out_name; returns (result, models, true keypoints per photo)."""
    from toy_hand import toy_params

    folder = Path(folder)
    models = {s: HandModel(toy_params(side=s), side=s).double() for s in ("right", "left")}
    rng = np.random.default_rng(5)
    betas = rng.normal(size=10) * 0.8
    photos, answers, truth = [], {}, {}
    for name, side in (("a_right", "right"), ("b_left", "left")):
        hand_pose = rng.normal(size=45) * 0.15
        orient = np.array([0.2, -0.3, 0.4])
        box, cam = np.array([20.0, 30.0, 180.0]), np.array([7.0, 0.05, -0.1])
        kp = _keypoints_px(models[side], betas, hand_pose, orient, cam, box)
        path = _photo(folder / f"{name}.png", size=300)
        answers[str(path)] = Detection(np.c_[kp, np.ones(21)], side, 0.9)
        truth[name] = kp
        photos.append(path)
    bad = folder / "c_bad.jpg"
    bad.write_bytes(b"")
    photos.append(bad)
    config = personalize.FIT if not quick else fitting.FitConfig(pose_iters=5, shape_iters=3, both_iters=5)
    result = personalize.personalize(photos, folder / out_name, FixedDetector(answers), models=models,
                                     config=config, log=lambda m: None)
    return result, models, truth


def test_personalize_end_to_end_left_and_right_photos_shared_beta(tmp_path):
    result, models, truth = end_to_end_case(tmp_path)
    out, bad = tmp_path / "out", tmp_path / "c_bad.jpg"
    assert list(result.problems) == [str(bad)] and "the file is empty" in result.problems[str(bad)]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["fit_00_a_right.png", "fit_01_b_left.png", "hand_left.glb", "hand_right.glb",
                     "hand_right.obj", "parameters.json"]  # the toy hand has no UVs: no texture, no MTL
    assert sorted(p.name for p in result.files) == names
    params = json.loads((out / "parameters.json").read_text())
    assert params["left_out"] == {str(bad): result.problems[str(bad)]}
    for entry in params["photos"]:
        # the saved parameters of each photo, through the model of its own side, land on its keypoints
        model = models[entry["side"]]
        cam = entry["camera"]
        kp = _keypoints_px(model, np.array(params["betas"]), np.array(entry["hand_pose"]),
                           np.array(entry["global_orient"]), np.array(cam["weak_perspective"]),
                           np.array(cam["crop_box_px"]))
        true = truth[Path(entry["file"]).stem]
        hand = np.ptp(true, axis=0).max()
        error = np.linalg.norm(kp - true, axis=1).mean()
        assert error < 0.03 * hand, (entry["file"], error, hand)
        assert entry["keypoint_error_px"] == pytest.approx(error, abs=0.05 * hand)


def test_rerunning_on_the_same_photos_gives_the_same_files(tmp_path):
    for name in ("one", "two"):
        end_to_end_case(tmp_path, name, quick=True)
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    assert len(one) == 6 and one == {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir()}


def test_command_names_unusable_photos(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    run = subprocess.run([sys.executable, "-m", "handlib", "personalize", str(empty), str(tmp_path / "gone.png"),
                          "--out", str(tmp_path / "out"), "--detector", f"openpose:{tmp_path}"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode != 0
    assert f"{empty}: the file is empty" in run.stderr and f"{tmp_path / 'gone.png'}: no such file" in run.stderr
    assert not (tmp_path / "out").exists()


class TruthNet(torch.nn.Module):
    """A stand-in network that predicts given parameters, and keeps the crops and sides it was shown."""

    def __init__(self, orient, hand_pose, betas, cam):
        super().__init__()
        from handlib.model import batch_rodrigues
        self.answer = (batch_rodrigues(torch.as_tensor(orient)), torch.as_tensor(hand_pose),
                       torch.as_tensor(betas), torch.as_tensor(cam))
        self.seen = []

    def forward(self, images, side):
        self.seen.append((images, side))
        R, pose, betas, cam = (a[:len(images)] for a in self.answer)
        return [type("P", (), {"global_rotmat": R, "hand_pose": pose, "betas": betas, "cam": cam})]


def test_the_fit_starts_from_the_network_and_uses_masks(tmp_path):
    """Two photos of a toy hand with a mask each: the network's start (here the truth) keeps the fit at the
    truth; the mask of a left photo is mirrored with it; the crops shown to the network are right hands."""
    from toy_hand import toy_params

    model = HandModel(toy_params()).double()
    rng = np.random.default_rng(3)
    betas = rng.normal(size=10) * 0.5
    poses, orients = rng.normal(size=(2, 45)) * 0.1, np.array([[0.2, -0.3, 0.4], [0.1, 0.2, -0.3]])
    box, cam = np.array([20.0, 30.0, 180.0]), np.array([[7.0, 0.05, -0.1], [6.5, -0.05, 0.0]])
    answers, masks, photos = {}, [], []
    for k, side in enumerate(("right", "left")):
        kp = _keypoints_px(model, betas, poses[k], orients[k], cam[k], box)
        if side == "left":  # the photo shows the mirror image of the right hand fitted
            kp[:, 0] = 299 - kp[:, 0]
        path = _photo(tmp_path / f"p{k}.png", size=300)
        mask = np.zeros((300, 300), np.uint8)
        mask[:, :100] = 255  # a mask on the photo's left third
        Image.fromarray(mask).save(tmp_path / f"m{k}.png")
        answers[str(path)] = Detection(np.c_[kp, np.ones(21)], side, 0.9)
        photos.append(personalize.prepare_photo(path, FixedDetector(answers), side, tmp_path / f"m{k}.png"))
    assert photos[0].mask[:, :100].all() and photos[1].mask[:, 200:].all() and photos[1].mask.sum() == 300 * 100
    # the camera over each photo's own crop box (the keypoints were made over `box`)
    ratio = np.array([p.box[2] for p in photos]) / box[2]
    shift = np.stack([(box[:2] - p.box[:2]) / p.box[2] * 2 for p in photos])
    cam = np.c_[cam[:, 0] / ratio, (cam[:, 1:] + 1) / ratio[:, None] + shift - 1]
    net = TruthNet(orients, poses, np.stack([betas, betas]), cam)
    predictor = personalize.NetworkPredictor(net, 32)
    start = predictor.start(photos)
    assert net.seen[0][1].tolist() == [0, 0] and net.seen[0][0].shape == (2, 3, 32, 32)
    torch.testing.assert_close(start.global_orient, torch.as_tensor(orients), atol=1e-6, rtol=0)
    config = fitting.FitConfig(pose_iters=5, shape_iters=3, both_iters=5)
    fit = personalize.fit_photos(model, [dataclasses.replace(p, mask=None) for p in photos], config, start)
    torch.testing.assert_close(fit.betas[0], torch.as_tensor(betas), atol=1e-3, rtol=0)
    torch.testing.assert_close(fit.cam, torch.as_tensor(cam), atol=1e-3, rtol=0)
    variants = personalize.fit_variants(model, photos, dataclasses.replace(config, silhouette_weight=1.0), predictor)
    assert sorted(variants) == ["network alone", "seeded + silhouette", "seeded by the network", "six starts"]
    np.testing.assert_allclose(variants["network alone"], betas, atol=1e-6)
    with pytest.raises(personalize.PhotoError, match=f"{tmp_path / 'p0.png'}: its mask .* 10x10 pixels"):
        Image.new("L", (10, 10)).save(tmp_path / "small.png")
        personalize.prepare_photo(tmp_path / "p0.png", FixedDetector(answers), "right", tmp_path / "small.png")
