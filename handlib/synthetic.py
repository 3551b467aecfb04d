"""Synthetic hand images with exact labels: the thesis's way out of 2D-only supervision.

Every sample is drawn from its own numpy Generator seeded by (seed, split, index), so a sample never depends on
which shard, batch or run made it: the same configuration gives byte-identical files, and an interrupted run
resumes to the same result. Subjects (β, a skin class and a skin texture shared by both hands) are drawn once
and split into train / val / test, so evaluation is on people never seen in training (`splits.json`, written
once). Samples differ in side, pose (flat as in 11K Hands, or natural from the model's pose PCA, clipped to
handlib.anatomy's limits), view (dorsal or palmar, tilted, rolled), camera, light and background.

A sample: the hand's side and subject; β (10); θ (45, axis-angle hand_pose of a `HandModel` with
flat_hand_mean=False, the model of that side); the global rotation (3, axis-angle about the wrist); the camera
(weak perspective `cam` = (s, tx, ty), or perspective `K` with the hand at `transl` in the camera frame); the 21
keypoints (OpenPose order) in 3D (metres, OpenCV camera frame; for the weak-perspective camera that is the model's
frame, rotated about the wrist, with no translation) and 2D (pixels, handlib.camera conventions);
`visible` (a keypoint not hidden behind another part of the hand: the rendered part at its pixel is its own bone
or its parent's, `keypoint_parts`); the image; the silhouette; the part segmentation
(0 background, 1 + MANO joint index of the segment, handlib.joints.MANO_JOINT_NAMES).
"""

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from handlib import anatomy, backgrounds, camera, paths, shards, skin
from handlib import joints as joint_orders
from handlib.io import atomic_write_text
from handlib.mano_io import load_mano
from handlib.model import HandModel, find_mano
from handlib.render import Light, Perspective, Renderer, WeakPerspective

SIDES = ("right", "left")
POSES = ("flat", "natural")
VIEWS = ("dorsal", "palmar")
SPLITS = ("train", "val", "test")
SPLITS_FILE = "splits.json"
DEFAULT_PCA_STD = 0.5  # radians per PCA component, for a model file without pose coefficients
SKIN_CACHE = 512  # subjects' skin textures kept (a cache: the output does not depend on it)
_TAG_SUBJECTS, _TAG_SPLITS, _TAG_SKIN, _TAG_BACKGROUNDS, _TAG_SAMPLES = 1, 2, 3, 4, 10  # seed streams


@dataclass
class SyntheticConfig:
    """What to generate. Probabilities are dicts of weights (normalised)."""

    samples: int = 48                      # over all splits
    image_size: int = 128
    seed: int = 0
    shard_size: int = 64
    splits: dict = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    subjects: int | str = 24               # how many random subjects, or a .npy file of β (n, 10)
    beta_std: float = 1.0                  # β ~ N(0, beta_std² I)
    skin: dict = field(default_factory=lambda: dict.fromkeys(skin.SKIN_CLASSES, 1.0))
    sides: dict = field(default_factory=lambda: {"right": 1.0, "left": 1.0})
    poses: dict = field(default_factory=lambda: {"flat": 1.0, "natural": 1.0})
    pca_comps: int = 12                    # natural poses: PCA components drawn
    pca_std: float = 1.0                   # ... coefficients ~ N(0, (pca_std · their spread in the model's data)²)
    spread_deg: float = 15.0               # finger MCP spread limit (anatomy.LIMITS_DEG has ±5; real hands ±15-20)
    palmar: float = 0.5                    # probability of a palmar view (else dorsal)
    tilt_deg: float = 35.0                 # largest tilt of the palm out of the image plane
    roll_deg: float = 180.0                # in-plane rotation in ±roll_deg, 0 = fingers up
    camera: str = "weak"                   # "weak" or "perspective"
    fill: tuple = (0.55, 0.9)              # the hand's bounding box spans this fraction of the image side
    fov_deg: tuple = (30.0, 60.0)          # perspective: horizontal field of view
    backgrounds: dict = field(default_factory=lambda: {"white": 1.0, "plain": 1.0, "texture": 2.0})
    background_dir: str | None = None      # a folder of images, for the background kind "images"
    background_pool: int = 256             # procedural textures drawn from a pool of this many (0: one per sample)
    light_ambient: tuple = (0.25, 0.55)
    light_diffuse: tuple = (0.35, 0.85)
    atlas_size: int = 256
    antialias: int = 4
    image_format: str = "jpeg"             # or "png" (lossless)
    jpeg_quality: int = 95
    model: str = "default"                 # "default" (real MANO when present), "builtin" or "mano"

    @classmethod
    def from_dict(cls, values: dict) -> "SyntheticConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown synthetic dataset settings {unknown}; known: {sorted(known)}")
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        if self.camera not in ("weak", "perspective"):
            raise ValueError(f"camera must be 'weak' or 'perspective', got {self.camera!r}")
        for name, keys in (("splits", SPLITS), ("skin", skin.SKIN_CLASSES), ("sides", SIDES), ("poses", POSES),
                           ("backgrounds", backgrounds.KINDS)):
            weights = getattr(self, name)
            if set(weights) - set(keys) or sum(weights.values()) <= 0 or min(weights.values()) < 0:
                raise ValueError(f"{name} must map some of {keys} to non-negative weights, got {weights}")
        if self.backgrounds.get("images", 0) > 0:
            if not self.background_dir:
                raise ValueError("the background kind 'images' needs background_dir, a folder of images")
            backgrounds.image_files(self.background_dir)  # fails now, naming the folder, not mid-run
        if self.background_pool < 0:
            raise ValueError(f"background_pool must be 0 or more, got {self.background_pool}")
        if min(self.samples, self.shard_size, self.image_size, self.atlas_size) < 1:
            raise ValueError("samples, shard_size, image_size and atlas_size must be positive")
        if not 0 < self.fill[0] <= self.fill[1] <= 1:
            raise ValueError(f"fill must be (low, high) with 0 < low <= high <= 1, got {self.fill}")
        if self.model not in ("default", "builtin", "mano"):
            raise ValueError(f"model must be 'default', 'builtin' or 'mano', got {self.model!r}")

    def as_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _choice(rng: np.random.Generator, weights: dict, keys: tuple) -> int:
    """Index into `keys` drawn with `weights` (a dict over some of the keys)."""
    p = np.array([weights.get(k, 0.0) for k in keys], np.float64)
    return int(rng.choice(len(keys), p=p / p.sum()))


def make_subjects(config: SyntheticConfig) -> dict:
    """Subjects (β, skin class) and their split, as written to splits.json."""
    rng = np.random.default_rng([config.seed, _TAG_SUBJECTS])
    if isinstance(config.subjects, str):
        betas = np.load(config.subjects, allow_pickle=False).astype(np.float64)
        if betas.ndim != 2 or betas.shape[1] != 10:
            raise ValueError(f"{config.subjects}: expected β of shape (n, 10), got {betas.shape}")
    else:
        betas = rng.normal(0, config.beta_std, (config.subjects, 10))
    skin_class = [_choice(rng, config.skin, skin.SKIN_CLASSES) for _ in betas]
    order = np.random.default_rng([config.seed, _TAG_SPLITS]).permutation(len(betas))
    fractions = np.array([config.splits.get(s, 0.0) for s in SPLITS]) / sum(config.splits.values())
    used = [s for s, f in zip(SPLITS, fractions) if f > 0]
    if len(betas) < len(used):
        raise ValueError(f"{len(betas)} subjects cannot fill the splits {used} with disjoint subjects")
    cuts = _cuts(len(betas), fractions)
    sample_cuts = _cuts(config.samples, fractions)
    return {
        "betas": betas.tolist(),
        "skin_class": skin_class,
        "subjects": {s: sorted(order[a:b].tolist()) for s, a, b in zip(SPLITS, cuts[:-1], cuts[1:])},
        "samples": {s: int(b - a) for s, a, b in zip(SPLITS, sample_cuts[:-1], sample_cuts[1:])},
    }


def _cuts(n: int, fractions: np.ndarray) -> np.ndarray:
    """Boundaries splitting n items by fractions (largest remainders), each nonzero fraction getting one or more."""
    exact = fractions * n
    counts = np.floor(exact).astype(int)
    counts[(fractions > 0) & (counts == 0)] = 1
    for k in np.argsort(-(exact - np.floor(exact)), kind="stable")[:max(0, n - counts.sum())]:
        counts[k] += 1
    counts[int(np.argmax(counts))] -= counts.sum() - n
    return np.concatenate([[0], np.cumsum(counts)])


def flat_pose_angles(rng: np.random.Generator) -> np.ndarray:
    """(twist, spread, bend) radians (15, 3) of a hand laid flat as in 11K Hands: fingers straight or nearly,
    fanned out by a random amount, the thumb relaxed."""
    deg = np.zeros((15, 3))
    fan = rng.uniform(0, 1)
    for first, spread in ((0, 12.0), (3, 2.0), (6, -14.0), (9, -6.0)):  # index, middle, pinky, ring MCP
        deg[first, 1] = fan * spread + rng.normal(0, 2)
        deg[first:first + 3, 2] = rng.uniform(0, [10, 10, 8])
    deg[12] = [rng.normal(0, 5), rng.uniform(-5, 35), rng.uniform(0, 15)]  # thumb CMC
    deg[13, 2], deg[14, 2] = rng.uniform(0, 15), rng.uniform(0, 15)
    return np.radians(deg)


def clip_angles(angles: np.ndarray, spread_deg: float) -> np.ndarray:
    """Angles (..., 15, 3) clipped to anatomy.LIMITS_DEG, with the finger MCP spread widened to ±spread_deg."""
    limits = anatomy.LIMITS_DEG.copy()
    limits[[0, 3, 6, 9], 1] = [-spread_deg, spread_deg]
    limits = np.radians(limits)
    return np.clip(angles, limits[..., 0], limits[..., 1])


def global_rotation(rng: np.random.Generator, rest_frame: np.ndarray, palmar: bool, tilt_deg: float,
                    roll_deg: float) -> np.ndarray:
    """Rotation matrix (3, 3) that turns the rest hand to face the camera (palm towards it when `palmar`),
    fingers up, then tilts it by up to tilt_deg about a random axis in the image plane and rolls it in-plane.

    rest_frame (3, 3): rows (radial, up, palm) of the model at rest (skin.palm_frame).
    """
    _, up, palm = rest_frame
    target_palm = np.array([0.0, 0.0, -1.0 if palmar else 1.0])  # OpenCV: -z points at the camera
    target_up = np.array([0.0, -1.0, 0.0])                       # image y points down
    source = np.stack([up, palm, np.cross(up, palm)], axis=1)
    target = np.stack([target_up, target_palm, np.cross(target_up, target_palm)], axis=1)
    align = target @ source.T
    axis_angle = rng.uniform(0, 2 * np.pi)
    tilt = Rotation.from_rotvec(np.radians(tilt_deg) * np.sqrt(rng.uniform()) *
                                np.array([np.cos(axis_angle), np.sin(axis_angle), 0.0]))
    roll = Rotation.from_rotvec([0.0, 0.0, np.radians(rng.uniform(-roll_deg, roll_deg))])
    return (roll * tilt).as_matrix() @ align


def weak_camera(vertices: np.ndarray, fill: float, offset: np.ndarray) -> np.ndarray:
    """(s, tx, ty) framing vertices (V, 3) so their xy bounding box spans `fill` of the image side, its centre
    at `offset` (2,) in [-1, 1] of the room left."""
    lo, hi = vertices[:, :2].min(0), vertices[:, :2].max(0)
    s = 2 * fill / (hi - lo).max()
    room = 1 - s * (hi - lo) / 2
    return np.array([s, *(offset * room - s * (hi + lo) / 2)])


def perspective_camera(vertices: np.ndarray, fill: float, offset: np.ndarray, fov_deg: float,
                       size: int) -> tuple[np.ndarray, np.ndarray]:
    """(K (3, 3), transl (3,)) framing vertices (V, 3) like `weak_camera`, with a pinhole of `fov_deg`: the hand
    is moved to the depth where its projection spans `fill`, then sideways, correcting for perspective."""
    f = size / 2 / np.tan(np.radians(fov_deg) / 2)
    K = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1.0]])
    lo, hi = vertices.min(0), vertices.max(0)
    centre, front = (lo + hi) / 2, (hi[2] - lo[2]) / 2  # the nearest point lies `front` before the centre

    def box(transl):  # the projected bounding box, pixels relative to the principal point
        p = vertices + transl
        uv = p[:, :2] / p[:, 2:] * f
        return uv.min(0), uv.max(0)

    near = f * (hi - lo)[:2].max() / (fill * size)  # depth of the nearest point; size scales about as 1 / depth
    for _ in range(4):
        lo2, hi2 = box(np.array([0, 0, near + front]) - centre)
        near *= (hi2 - lo2).max() / (fill * size)
    transl = np.array([0, 0, near + front]) - centre
    lo2, hi2 = box(transl)
    target = offset * (size / 2 - (hi2 - lo2) / 2)
    for _ in range(3):  # moving sideways shifts near points more than far ones: iterate on the box centre
        transl[:2] += (target - (lo2 + hi2) / 2) * transl[2] / f
        lo2, hi2 = box(transl)
    return K, transl


def random_light(rng: np.random.Generator, config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(direction (3,), diffuse rgb (3,), ambient rgb (3,)): light from the camera's side, varied colour."""
    direction = np.array([rng.normal(0, 0.6), rng.normal(0, 0.6), 1.0])
    warmth = rng.uniform(-0.08, 0.08)
    tint = np.array([1 + warmth, 1.0, 1 - warmth])
    diffuse = rng.uniform(*config.light_diffuse) * tint
    ambient = rng.uniform(*config.light_ambient) * tint
    return direction / np.linalg.norm(direction), diffuse, ambient


def model_atlases(config: SyntheticConfig) -> dict[str, skin.SkinAtlas | None]:
    """The skin atlas of each side's model (None without UVs). A side whose UVs are the right hand's shares its
    atlas, so a person's two hands wear one skin texture (mirrored, as skin is), made once per person."""
    atlases, uvs = {}, {}
    for side in SIDES:
        model = load_model(config.model, side)[0]
        uvs[side] = None if model.vt is None else (model.vt.numpy(), model.ft.numpy())
        right = uvs[SIDES[0]]
        if side != SIDES[0] and uvs[side] is not None and right is not None and all(
                a.shape == b.shape and np.array_equal(a, b) for a, b in zip(uvs[side], right)):
            atlases[side] = atlases[SIDES[0]]
        else:
            atlases[side] = skin.model_atlas(model, config.atlas_size)
    return atlases


class SampleMaker:
    """Everything fixed for a dataset: models, rest frames, skin atlases and renderers per side, subjects.
    atlases: `model_atlases(config)`, made here when not given (worker processes get the parent's)."""

    def __init__(self, config: SyntheticConfig, subjects: dict, atlases: dict | None = None):
        self.config, self.subjects = config, subjects
        self.betas = np.asarray(subjects["betas"])
        self._skins: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()  # (subject, id(atlas))
        self._backgrounds: dict[int, np.ndarray] = {}  # the pool's textures made so far
        self.keypoint_parts = {}
        self.models, self.frames, self.joint_frames, self.renderers, self.pca_std = {}, {}, {}, {}, {}
        self.atlases = model_atlases(config) if atlases is None else atlases
        for side in SIDES:
            model, params, _ = load_model(config.model, side)
            self.models[side] = model
            self.joint_frames[side] = anatomy.model_frames(model)
            coeffs = np.asarray(params.get("hands_coeffs", np.zeros((0, 45))), np.float64)
            # natural poses scale each PCA component by its spread in the model's pose data when it has some
            self.pca_std[side] = coeffs.std(0) if len(coeffs) > 1 else np.full(45, DEFAULT_PCA_STD)
            self.frames[side] = rest_frame(model)
            self.keypoint_parts[side] = keypoint_parts(model.parents.numpy())
            uv = {} if model.vt is None else {"vt": model.vt.numpy(), "ft": model.ft.numpy()}
            self.renderers[side] = Renderer(model.faces.numpy(), config.image_size, parts=model.lbs_weights.numpy(),
                                            samples=config.antialias, **uv)

    def skin(self, subject: int, side: str) -> np.ndarray:
        """A subject's skin on one hand: a texture (S, S, 3) uint8, or a colour (3,) without an atlas. Drawn from
        (seed, subject) alone, so both hands of a person share tone, creases and nails in every image; made once
        per person and atlas (the sides share one where their UVs agree), then reused (a few ms each)."""
        atlas = self.atlases[side]
        key = (subject, id(atlas))
        if key in self._skins:
            self._skins.move_to_end(key)
            return self._skins[key]
        rng = np.random.default_rng([self.config.seed, _TAG_SKIN, subject])
        skin_class = self.subjects["skin_class"][subject]
        texture = skin.skin_texture(atlas, rng, skin_class) if atlas else skin.skin_colour(rng, skin_class)
        self._skins[key] = texture
        while len(self._skins) > SKIN_CACHE:
            self._skins.popitem(last=False)
        return texture

    def background(self, rng: np.random.Generator, kind: str) -> np.ndarray:
        """A background of `kind` (size, size, 3) uint8. Procedural textures, the costly kind (about 2 ms each, a
        fifth of a sample's time), come from a pool of config.background_pool made from (seed, number) alone and
        cached, each shown in one of 96 variants: 8 flips and quarter turns, 6 channel orders, inverted or not
        (about 25,000 distinct backgrounds from the default pool)."""
        c = self.config
        if kind != "texture" or c.background_pool == 0:
            return backgrounds.background(rng, c.image_size, kind, c.background_dir)
        number, variant = int(rng.integers(c.background_pool)), int(rng.integers(96))
        if number not in self._backgrounds:
            self._backgrounds[number] = backgrounds.texture(
                np.random.default_rng([c.seed, _TAG_BACKGROUNDS, number]), c.image_size)
        image = np.rot90(self._backgrounds[number], variant % 4)
        if variant // 4 % 2:
            image = image[::-1]
        image = image[..., _CHANNEL_ORDERS[variant // 8 % 6]]
        return 255 - image if variant // 48 else np.ascontiguousarray(image)

    def draw(self, split: str, index: int) -> dict:
        """The random choices of sample `index` of `split` (all but the camera, which needs the posed mesh)."""
        c = self.config
        rng = np.random.default_rng([c.seed, _TAG_SAMPLES + SPLITS.index(split), index])
        subject = int(rng.choice(self.subjects["subjects"][split]))
        side = _choice(rng, c.sides, SIDES)
        model = self.models[SIDES[side]]
        pose_kind = _choice(rng, c.poses, POSES)
        if POSES[pose_kind] == "flat":
            pose = flat_pose_angles(rng)  # (15, 3) joint angles
        else:  # (45,) axis-angle articulation, turned into clipped joint angles with the others in `_poses`
            coeffs = rng.normal(0, c.pca_std, c.pca_comps) * self.pca_std[SIDES[side]][:c.pca_comps]
            pose = model.hands_mean.numpy() + coeffs @ model.hands_components[:c.pca_comps].numpy()
        palmar = bool(rng.random() < c.palmar)
        rotation = global_rotation(rng, self.frames[SIDES[side]], palmar, c.tilt_deg, c.roll_deg)
        fill, offset = rng.uniform(*c.fill), rng.uniform(-1, 1, 2)
        fov = rng.uniform(*c.fov_deg)
        light = random_light(rng, c)
        skin_class = self.subjects["skin_class"][subject]
        texture = self.skin(subject, SIDES[side])
        kind = backgrounds.KINDS[_choice(rng, c.backgrounds, backgrounds.KINDS)]
        image_bg = self.background(rng, kind)
        return {"index": index, "subject": subject, "side": side, "pose_kind": pose_kind, "view": int(palmar),
                "skin_class": skin_class, "beta": self.betas[subject], "pose": pose,
                "global_orient": Rotation.from_matrix(rotation).as_rotvec(), "fill": fill, "offset": offset,
                "fov": fov, "light": light, "texture": texture, "background": image_bg}

    def make(self, split: str, indices: range, timing: dict | None = None) -> dict:
        """The stored arrays of samples `indices` of `split`, stacked (images encoded)."""
        timing = {} if timing is None else timing
        clock = time.perf_counter()
        draws = [self.draw(split, i) for i in indices]
        clock = _tick(timing, "sample", clock)
        out = {key: [None] * len(draws) for key in _FIELDS}
        for side in (0, 1):
            rows = [k for k, d in enumerate(draws) if d["side"] == side]
            if rows:
                self._make_side([draws[k] for k in rows], SIDES[side], rows, out, timing)
        clock = time.perf_counter()
        c = self.config
        arrays = {"image": [shards.encode_image(im, c.image_format, c.jpeg_quality) for im in out.pop("image")]}
        _tick(timing, "encode", clock)
        for key in ("index", "subject", "side", "pose_kind", "view", "skin_class"):
            out[key] = [d[key] for d in draws]
        for key, value in out.items():
            if key in _PER_SAMPLE:
                arrays[key] = [v.astype(_FIELDS[key]) for v in value]
            elif value[0] is not None:
                arrays[key] = np.stack(value).astype(_FIELDS[key])
        return arrays

    def _poses(self, draws: list[dict], side: str) -> np.ndarray:
        """θ (B, 45) of one side's draws: every pose as joint angles, clipped to the limits, back to axis-angle."""
        model, frames = self.models[side], self.joint_frames[side]
        natural = [k for k, d in enumerate(draws) if POSES[d["pose_kind"]] == "natural"]
        angles = np.stack([d["pose"] if d["pose"].shape == (15, 3) else np.zeros((15, 3)) for d in draws])
        if natural:
            articulation = torch.from_numpy(np.stack([draws[k]["pose"] for k in natural])).view(-1, 15, 3)
            angles[natural] = anatomy.decompose(articulation, frames).numpy()
        articulation = anatomy.compose(torch.from_numpy(clip_angles(angles, self.config.spread_deg)), frames)
        return (articulation.reshape(-1, 45) - model.hands_mean).numpy()

    def _make_side(self, draws: list[dict], side: str, rows: list[int], out: dict, timing: dict) -> None:
        c, model = self.config, self.models[side]
        clock = time.perf_counter()
        stack = lambda key: np.stack([d[key] for d in draws])  # noqa: E731
        beta, rot = stack("beta").astype(np.float32), stack("global_orient").astype(np.float32)
        theta = self._poses(draws, side).astype(np.float32)
        with torch.no_grad():
            hand = model(betas=torch.from_numpy(beta).double(), hand_pose=torch.from_numpy(theta).double(),
                         global_orient=torch.from_numpy(rot).double())
        verts, kp3d = hand.vertices.numpy(), hand.keypoints.numpy()
        fields = {"beta": beta, "theta": theta, "global_orient": rot}
        if c.camera == "weak":
            cam = np.stack([weak_camera(v, d["fill"], d["offset"]) for v, d in zip(verts, draws)]).astype(np.float32)
            kp3d = kp3d.astype(np.float32)
            kp2d = camera.normalized_to_pixels(camera.weak_perspective(torch.from_numpy(kp3d).double(),
                                                                       torch.from_numpy(cam).double()),
                                               c.image_size, c.image_size).numpy()
            projection = WeakPerspective(cam)
            fields["cam"] = cam
        else:
            framed = [perspective_camera(v, d["fill"], d["offset"], d["fov"], c.image_size)
                      for v, d in zip(verts, draws)]
            K = np.stack([k for k, _ in framed]).astype(np.float32)
            transl = np.stack([t for _, t in framed])
            verts = verts + transl[:, None]
            kp3d = (kp3d + transl[:, None]).astype(np.float32)
            kp2d = camera.perspective(torch.from_numpy(kp3d).double(), torch.from_numpy(K).double()).numpy()
            projection = Perspective(K)
            fields.update(K=K, transl=transl.astype(np.float32))
        clock = _tick(timing, "model", clock)
        light = Light(*(np.stack([d["light"][k] for d in draws]) for k in range(3)))
        albedo = {"texture": stack("texture")} if self.atlases[side] else {"color": stack("texture")}
        result = self.renderers[side].render(verts.astype(np.float32), projection, background=stack("background"),
                                             light=light, outputs=("image", "mask", "parts"), **albedo)
        _tick(timing, "render", clock)
        fields.update(keypoints_3d=kp3d, keypoints_2d=kp2d.astype(np.float32),
                      visible=_visible(kp2d, result["parts"], self.keypoint_parts[side]), image=result["image"],
                      silhouette=result["mask"], parts=result["parts"] + 1)
        for key, value in fields.items():
            for row, v in zip(rows, value):
                out[key][row] = v


_CHANNEL_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

_FIELDS = {  # stored arrays and their dtypes
    "image": np.uint8, "silhouette": np.uint8, "parts": np.uint8, "theta": np.float32, "beta": np.float32,
    "global_orient": np.float32, "cam": np.float32, "K": np.float32, "transl": np.float32,
    "keypoints_2d": np.float32, "keypoints_3d": np.float32, "visible": bool, "index": np.int64,
    "subject": np.int32, "side": np.uint8, "pose_kind": np.uint8, "view": np.uint8, "skin_class": np.uint8,
}


_PER_SAMPLE = ("silhouette", "parts")  # besides the image: one zip member per sample (see handlib.shards)


def keypoint_parts(parents: np.ndarray) -> np.ndarray:
    """(21, 16) bool: the part labels (MANO joint numbers) whose surface may show each OpenPose keypoint: a
    joint's own bone and its parent's (it sits where they meet), a fingertip's last bone."""
    last = {16 + tip: joint for tip, joint in enumerate((15, 3, 6, 12, 9))}  # tips: thumb, index, middle, ring, pinky
    allowed = np.zeros((21, 16), bool)
    for k, source in enumerate(joint_orders.MANO_TO_OPENPOSE):
        joint = last.get(source, source)
        allowed[k, joint] = True
        if source < 16 and parents[joint] >= 0:
            allowed[k, parents[joint]] = True
    return allowed


def _visible(kp2d: np.ndarray, parts: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(B, 21) bool: a pixel within one of each keypoint's pixel shows one of its parts (`keypoint_parts`),
    so no other part of the hand hides it. parts (B, H, W): labels, -1 for the background."""
    B, H, W = parts.shape
    px = np.rint(kp2d).astype(int)  # (B, 21, 2)
    seen = np.zeros(px.shape[:2], bool)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            x, y = np.clip(px[..., 0] + dx, 0, W - 1), np.clip(px[..., 1] + dy, 0, H - 1)
            label = parts[np.arange(B)[:, None], y, x]  # (B, 21)
            seen |= (label >= 0) & allowed[np.arange(21), np.maximum(label, 0)]
    return seen


def _tick(timing: dict, name: str, clock: float) -> float:
    now = time.perf_counter()
    timing[name] = timing.get(name, 0.0) + now - clock
    return now


def rest_frame(model: HandModel) -> np.ndarray:
    """Rows (radial, up, palm) (3, 3) of the model's template (zero articulation, whatever the mean pose)."""
    vertices = model.v_template.detach().cpu().double().numpy()
    return np.stack(skin.palm_frame(model.J_regressor.detach().cpu().double().numpy() @ vertices, model.side))


def describe(data: shards.ShardDataset) -> dict[str, np.ndarray]:
    """The parameters drawn for a generated split, by name, for histograms: numbers in degrees, metres or
    camera units; categories as strings. Read from the stored labels (no image is read)."""
    config = data.header["config"]
    column = {key: data.column(key) for key in ("beta", "theta", "global_orient", "side", "view", "pose_kind",
                                                "skin_class")}
    side = np.array(SIDES)[column["side"]]
    angles, palm, up = np.zeros((len(side), 15, 3)), np.zeros((len(side), 3)), np.zeros((len(side), 3))
    for name in SIDES:
        rows = side == name
        if rows.any():
            model = load_model(config["model"], name)[0]
            theta = torch.from_numpy(column["theta"][rows]).double()
            angles[rows] = np.degrees(anatomy.joint_angles(theta, model).numpy())
            rotation = Rotation.from_rotvec(column["global_orient"][rows].astype(np.float64))
            _, up[rows], palm[rows] = (rotation.apply(axis) for axis in rest_frame(model))
    table = {
        "β, all 10 components": column["beta"].ravel(),
        "finger joints' bend (deg)": angles[:, :12, 2].ravel(),
        "finger MCP spread (deg)": angles[:, [0, 3, 6, 9], 1].ravel(),
        "thumb CMC spread (deg)": angles[:, 12, 1],
        "palm normal to the camera (deg)": np.degrees(np.arccos(np.clip(-palm[:, 2], -1, 1))),
        "roll: fingers from image-up (deg)": np.degrees(np.arctan2(up[:, 0], -up[:, 1])),
    }
    if config["camera"] == "weak":
        table["weak-perspective scale s"] = data.column("cam")[:, 0]
    else:
        table["hand depth (m)"] = data.column("transl")[:, 2]
    table.update({"side": side, "view": np.array(VIEWS)[column["view"]], "pose": np.array(POSES)[column["pose_kind"]],
                  "skin class": np.array(skin.SKIN_CLASSES)[column["skin_class"]]})
    return table


def load_model(kind: str, side: str) -> tuple[HandModel, dict, str]:
    """(model in float64, its MANO-layout params, a name) of the hand a dataset is made with (flat_hand_mean=False,
    as θ is stored): kind "builtin", "mano" (data/mano/), or "default" (MANO when present, else the built-in)."""
    path = find_mano(side)
    if kind == "builtin" or (kind == "default" and path is None):
        from handlib.builtin import builtin_params  # builds (once, then cached) the built-in hand
        params, name = builtin_params(side), "builtin"
    elif path is None:
        raise FileNotFoundError(f"model 'mano' needs {paths.mano_file(side)} (see README: using the real MANO "
                                "model), or use model 'builtin'")
    else:
        params, name = load_mano(path, side=side)[0], str(path)
    return HandModel(params, side=side, dtype=torch.float64), params, name


def _model_fingerprint(config: SyntheticConfig) -> dict:
    digest, names = hashlib.sha256(), {}
    for side in SIDES:
        model, _, names[side] = load_model(config.model, side)
        digest.update(model.v_template.numpy().tobytes())
        digest.update(model.shapedirs.numpy().tobytes())
    return {"files": names, "vertices": int(model.num_verts), "sha256": digest.hexdigest()[:16]}


def write_splits(root: Path, subjects: dict) -> None:
    """Write splits.json once; on a later run it must be the same (else the folder belongs to other settings)."""
    path = root / SPLITS_FILE
    text = json.dumps(subjects, indent=1)
    if path.exists():
        if json.loads(path.read_text()) != json.loads(text):
            raise ValueError(f"{path} differs from the subjects these settings draw: the folder holds another "
                             "dataset; use a new folder or delete it")
        return
    atomic_write_text(path, text)


def generate(root: str | Path, config: SyntheticConfig | dict, progress: bool = False, workers: int = 1,
             replace: bool = False) -> dict:
    """Generate (or resume) the dataset of `config` in folder `root`, with `workers` processes; return the
    seconds spent per stage (summed over workers) and `samples`, how many samples this call generated.

    Shards already finished and intact are kept; a corrupt one is regenerated with a warning. Each shard is a
    function of the configuration alone, so the files do not depend on `workers` or on interruptions. A folder
    holding a dataset of other settings (or another model) is an error, or with `replace` is made afresh.
    """
    config = config if isinstance(config, SyntheticConfig) else SyntheticConfig.from_dict(config)
    config.check()
    root = Path(root)
    subjects = make_subjects(config)
    header = {"generator": "handlib.synthetic", "config": config.as_json(), "model": _model_fingerprint(config),
              "encoded": ["image"], "splits_file": SPLITS_FILE, "flat_hand_mean": False}
    writer = shards.ShardWriter(root, header, replace=replace)
    if replace and writer.manifest["shards"] == {}:
        (root / SPLITS_FILE).unlink(missing_ok=True)  # the folder's own, from the settings replaced
    write_splits(root, subjects)
    jobs = [(f"{split}-{start // config.shard_size:05d}.npz", split, start, min(start + config.shard_size, n))
            for split in SPLITS for n in [subjects["samples"][split]] for start in range(0, n, config.shard_size)]
    todo = [job for job in jobs if not writer.is_done(job[0])]
    timing = {"samples": 0}
    if not todo:
        return timing
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(todo) > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
                min(workers, len(todo)), _start_worker, (config, subjects, model_atlases(config))))
            results = pool.imap(_worker_shard, todo)
        else:
            maker = SampleMaker(config, subjects)
            results = (_shard(maker, job) for job in todo)
        if progress:
            from tqdm.auto import tqdm
            results = tqdm(results, total=len(todo), desc="shards")
        for (name, split, start, stop), (data, seconds) in zip(todo, results):
            clock = time.perf_counter()
            writer.write(name, data, split=split, first=start, count=stop - start)
            _tick(timing, "write", clock)
            for stage, value in seconds.items():
                timing[stage] = timing.get(stage, 0.0) + value
            timing["samples"] += stop - start
    return timing


def _shard(maker: SampleMaker, job: tuple) -> tuple[bytes, dict]:
    """The bytes of one shard and the seconds spent per stage."""
    _, split, start, stop = job
    timing = {}
    arrays = maker.make(split, range(start, stop), timing)
    clock = time.perf_counter()
    data = shards.shard_bytes(arrays)
    _tick(timing, "encode", clock)
    return data, timing


_WORKER_MAKER: SampleMaker | None = None


def _start_worker(config: SyntheticConfig, subjects: dict, atlases: dict) -> None:
    global _WORKER_MAKER
    _WORKER_MAKER = SampleMaker(config, subjects, atlases)


def _worker_shard(job: tuple) -> tuple[bytes, dict]:
    return _shard(_WORKER_MAKER, job)


def load(root: str | Path, split: str | None = "train", cache: int = 4, verify: bool = True) -> shards.ShardDataset:
    """The samples of `split` of a generated dataset, as stored (corrupt shards reported by name and skipped);
    `cache` shards stay open."""
    return shards.ShardDataset(root, split, cache=cache, verify=verify)


def loader_sample(item: dict) -> dict:
    """A stored sample in the raw form handlib.loader takes; exact keypoints get certainty 1, hidden or not."""
    return {"image": item["image"], "side": SIDES[int(item["side"])], "mask": item["silhouette"] > 0,
            "keypoints": np.concatenate([item["keypoints_2d"], np.ones((21, 1), np.float32)], 1),
            "hand_pose": item["theta"], "betas": item["beta"], "global_orient": item["global_orient"],
            "keypoints3d": item["keypoints_3d"]}


def source(root: str | Path, split: str = "train", cache: int = 4, verify: bool = True) -> shards.ShardDataset:
    """The samples of `split` in the raw form handlib.loader.HandCrops takes (`loader_sample`)."""
    return shards.ShardDataset(root, split, cache=cache, verify=verify, transform=loader_sample)
