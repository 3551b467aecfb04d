"""An 11K-Hands-style dataset of the built-in hand: the embedded default when the real 11K Hands is absent.

Same layout as the real dataset (HandInfo.csv + Hands/Hand_NNNNNNN.jpg, 1600x1200 JPEGs of a hand laid flat on
white paper, dorsal and palmar, left and right), so the 2D pipeline runs on it unchanged; plus the exact
keypoints (`truth.json`, 11kJoints format, p = 1), which the real dataset lacks, to measure detectors against.
Each subject has a fixed β and a fixed skin texture of one of the four skinColor classes; images vary the pose
a little (flat_pose_angles), the tilt, the in-plane roll, the placement and the light.
"""

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from handlib import anatomy, backgrounds, camera, hands11k, skin, synthetic
from handlib.io import atomic_path, atomic_write_text
from handlib.model import HandModel
from handlib.render import Light, Perspective, Renderer

WIDTH, HEIGHT = hands11k.IMAGE_SIZE
TRUTH_FILE = "truth.json"
SETTINGS_FILE = "generated.json"
FOCAL = 1.2 * WIDTH  # pixels: a normal lens (about 67° across), a phone held above the table


def plan(subjects: int, images_per_subject: int, seed: int = 0) -> list[hands11k.HandImage]:
    """The HandInfo.csv rows: subject k has skin class k mod 4; its images cycle the four aspects."""
    rng = np.random.default_rng([seed, 0])
    rows = []
    for k in range(subjects):
        age, gender = int(rng.integers(18, 76)), str(rng.choice(["male", "female"]))
        for i in range(images_per_subject):
            aspect, side = hands11k.ASPECTS[(i + k) % 4].split()
            name = f"Hand_{len(rows):07d}.jpg"
            rows.append(hands11k.HandImage(f"{k:07d}", age, gender, skin.SKIN_CLASSES[k % 4], 0, 0, aspect, side,
                                           name, 0, Path("Hands") / name, len(rows) + 2))
    return rows


class _Maker:
    """Models, renderers, skin atlases per side; β and textures per subject."""

    def __init__(self, subjects: int, seed: int, model: str):
        self.models, self.frames, self.atlases, self.renderers = {}, {}, {}, {}
        for side in ("right", "left"):
            m = {"builtin": HandModel.builtin, "default": HandModel.default}[model](side).double()
            rest = m(betas=torch.zeros(1, 10, dtype=torch.float64))
            joints = rest.joints[0].numpy()
            self.models[side], self.frames[side] = m, np.stack(skin.palm_frame(joints, side))
            faces, vt, ft = m.faces.numpy(), m.vt.numpy(), m.ft.numpy()
            self.atlases[side] = skin.bake_atlas(rest.vertices[0].numpy(), faces, vt, ft, joints, m.tip_ids.numpy(),
                                                 side, 512)
            self.renderers[side] = Renderer(faces, (HEIGHT, WIDTH), vt=vt, ft=ft, samples=4)
        rng = np.random.default_rng([seed, 1])
        self.betas = rng.normal(0, 0.8, (subjects, 10))
        self.textures = {}
        self.seed = seed

    def fingerprint(self) -> str:
        """A digest of what the images depend on besides the settings: the models and the first skin textures."""
        digest = hashlib.sha256()
        for side, m in self.models.items():
            for array in (m.v_template, m.shapedirs, m.lbs_weights, m.faces, m.vt):
                digest.update(array.numpy().tobytes())
            digest.update(self.texture(0, side).tobytes())
        return digest.hexdigest()[:16]

    def texture(self, subject: int, side: str) -> np.ndarray:
        if (subject, side) not in self.textures:
            rng = np.random.default_rng([self.seed, 2, subject])  # same draws for both sides: one person
            self.textures[subject, side] = skin.skin_texture(self.atlases[side], rng, subject % 4)
        return self.textures[subject, side]

    def make(self, row: hands11k.HandImage, index: int, render: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """The image (H, W, 3) uint8 (None unless `render`) and its exact keypoints (21, 2) in pixels."""
        rng = np.random.default_rng([self.seed, 3, index])
        subject, side, m = int(row.subject), row.side, self.models[row.side]
        angles = torch.from_numpy(synthetic.flat_pose_angles(rng))[None]
        pose = anatomy.pose_from_angles(angles, m)
        rotation = synthetic.global_rotation(rng, self.frames[side], row.aspect == "palmar", tilt_deg=12,
                                             roll_deg=20)
        with torch.no_grad():
            out = m(betas=torch.from_numpy(self.betas[subject])[None], hand_pose=pose)
        wrist = out.joints[0, 0].numpy()
        verts = (out.vertices[0].numpy() - wrist) @ rotation.T  # turned about the wrist, like global_orient
        kp3d = (out.keypoints[0].numpy() - wrist) @ rotation.T
        verts, kp3d = _place(verts, kp3d, rng)
        K = np.array([[FOCAL, 0, (WIDTH - 1) / 2], [0, FOCAL, (HEIGHT - 1) / 2], [0, 0, 1]])
        kp2d = camera.perspective(torch.from_numpy(kp3d)[None], torch.from_numpy(K)[None])[0].numpy()
        if not render:
            return None, kp2d
        paper = backgrounds.white(rng, WIDTH)[(WIDTH - HEIGHT) // 2:][:HEIGHT]
        direction = np.array([rng.normal(0, 0.3), rng.normal(0, 0.3), 1.0])
        light = Light(direction / np.linalg.norm(direction), rng.uniform(0.55, 0.75), rng.uniform(0.35, 0.5))
        image = self.renderers[side].render(verts.astype(np.float32), Perspective(K.astype(np.float32)),
                                            texture=self.texture(subject, side), background=paper,
                                            light=light)["image"][0]
        return image, kp2d


@functools.lru_cache(maxsize=1)
def _maker(subjects: int, seed: int, model: str) -> _Maker:
    """The last maker, kept: building one (models, atlases, renderers) takes seconds."""
    return _Maker(subjects, seed, model)


def _place(verts: np.ndarray, kp3d: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Move the hand in front of the camera: its box spans 65-85% of the image height, somewhat off centre."""
    lo, hi = verts.min(0), verts.max(0)
    depth = FOCAL * (hi - lo)[:2].max() / (rng.uniform(0.65, 0.85) * HEIGHT)
    room = np.array([WIDTH, HEIGHT]) / 2 - FOCAL * (hi - lo)[:2] / depth / 2  # pixels the box may move
    shift = rng.uniform(-0.5, 0.5, 2) * np.maximum(room, 0) * depth / FOCAL
    transl = np.array([shift[0], shift[1], depth]) - (lo + hi) / 2
    return verts + transl, kp3d + transl


def generate(root: str | os.PathLike, subjects: int = 8, images_per_subject: int = 8, seed: int = 0,
             model: str = "builtin", progress: bool = True) -> Path:
    """Write (or finish) the dataset in `root`; returns `root`.

    Images already there are kept when they were made with the same settings, hand model and skin textures
    (`generated.json`); otherwise every image is made again, so images and truth.json always agree.
    model: "builtin" (handlib's hand), or "default" (the real MANO model when data/mano/ holds it).
    """
    if model not in ("builtin", "default"):
        raise ValueError(f"model must be 'builtin' or 'default', got {model!r}")
    root = Path(root)
    rows = plan(subjects, images_per_subject, seed)
    maker, truth = _maker(subjects, seed, model), []
    settings = {"subjects": subjects, "images_per_subject": images_per_subject, "seed": seed, "model": model,
                "fingerprint": maker.fingerprint()}
    settings_path = root / SETTINGS_FILE
    keep = settings_path.exists() and json.loads(settings_path.read_text()) == settings
    if settings_path.exists() and not keep:
        print(f"{root}: made with other settings or another hand model or skin: making every image again")
    settings_path.unlink(missing_ok=True)  # until every image agrees with the settings again
    hands11k.write_hand_info(root / "HandInfo.csv", rows)
    for index, row in enumerate(tqdm(rows, desc="11K-style images", disable=not progress)):
        path = root / "Hands" / row.image_name
        image, kp2d = maker.make(row, index, render=not (keep and path.exists()))
        if image is not None:
            with atomic_path(path) as tmp:
                Image.fromarray(image).save(tmp, format="JPEG", quality=92)
        joints = np.concatenate([kp2d, np.ones((21, 1))], axis=1)
        truth.append(hands11k.Sample(row.image_name, joints, row.subject, row.side, row.aspect))
    hands11k.save_samples(root / TRUTH_FILE, truth)
    atomic_write_text(settings_path, json.dumps(settings))
    return root


def load_truth(root: str | os.PathLike) -> dict[str, np.ndarray]:
    """Image name -> exact keypoints (21, 2) in pixels, of a generated dataset."""
    return {s.filename: s.joints[:, :2] for s in hands11k.load_samples(Path(root) / TRUTH_FILE)}
