"""One or more photos of a person's hand -> that person's own hand model: rigged GLB, OBJ, texture, JSON.

Per photo: read it, find the hand's 21 keypoints (a keypoint detector, or our network), settle its side, mirror a
left hand into a right one (one model and one shape β for both hands of a person), crop a square around it.
With a trained network, predict θ, β and the camera on each crop: the fit's start (else it starts from six
orientations). For all photos at once: fit θ per photo and one β shared by all photos to the keypoints, and to
the hand's mask where one is given, with the priors; project the photos into the common UV atlas, and write the
files. A photo that fails is named with its problem and left out; the others still give a result.
The same input gives the same files.
"""

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from handlib import camera, draw, export, fitting
from handlib.io import atomic_path
from handlib.keypoints import Detection, Detector
from handlib.model import HandModel, find_mano
from handlib.render import Renderer, WeakPerspective
from handlib.rotations import matrix_to_axis_angle, mirror_axis_angle

MIN_PHOTO_SIDE = 64   # pixels on the photo's short side
MIN_HAND_SIDE = 32    # pixels: the detected keypoints' box
MIN_KEYPOINTS = 6     # keypoints with certainty > 0 needed to fit
CROP_BORDER = 0.3     # the crop is (1 + border) times the keypoint box's longer side
TEXTURE_SIZE = 512
MASK_SIZE = 64        # pixels of the mask's distance map over the crop
MASK_POINTS = 256     # points of the mask that the fitted mesh must cover
SILHOUETTE_WEIGHT = 100.0  # weight of the silhouette term where a photo has a mask (measured in notebook 06)
FIT = fitting.FitConfig(pose_iters=10, shape_iters=5, both_iters=20, beta_weight=0.5, pose_prior_weight=0.01,
                        joint_limit_weight=10.0, silhouette_weight=SILHOUETTE_WEIGHT)


class PhotoError(ValueError):
    """A photo that cannot be used; the message names it."""


@dataclass
class Photo:
    """A usable photo, in the frame the fit uses: left hands mirrored into right ones."""
    path: Path
    image: np.ndarray      # (H, W, 3) uint8, mirrored when `mirrored`
    side: str              # the hand in the photo as it is: "right" or "left"
    mirrored: bool
    keypoints: np.ndarray  # (21, 3) x, y pixels in `image`, certainty
    box: np.ndarray        # (3,) x0, y0, size: the square crop around the hand, pixels in `image`
    detector: str
    mask: np.ndarray | None = None  # (H, W) bool: the hand's pixels in `image`, when known

    @property
    def keypoints_crop(self) -> np.ndarray:
        """The keypoints in [-1, 1] over the crop (21, 2)."""
        xy = torch.as_tensor(self.keypoints[:, :2] - self.box[:2])
        return camera.pixels_to_normalized(xy, self.box[2], self.box[2]).numpy()


@dataclass
class Result:
    out_dir: Path
    betas: np.ndarray                        # (10,) the person's shape
    photos: list[Photo]
    fit: fitting.HandFit                     # one row per photo, right-hand frame, camera over each crop
    problems: dict[str, str] = field(default_factory=dict)  # photo -> why it was left out
    files: list[Path] = field(default_factory=list)


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """The photo as (H, W, 3) uint8 RGB; a PhotoError naming it when it is missing, empty, unreadable or small."""
    path = Path(path)
    if not path.is_file():
        raise PhotoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise PhotoError(f"{path}: the file is empty")
    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise PhotoError(f"{path}: not an image that can be read ({err})") from None
    if min(image.shape[:2]) < MIN_PHOTO_SIDE:
        raise PhotoError(f"{path}: {image.shape[1]}x{image.shape[0]} pixels is too small; the hand needs a photo "
                         f"of at least {MIN_PHOTO_SIDE} pixels on its short side")
    return image


def settle_side(path: Path, given: str | None, detection: Detection) -> str:
    """The side to use: the one given, else the detector's; a PhotoError when they disagree or neither is known."""
    if given is not None and given not in ("right", "left"):
        raise PhotoError(f"{path}: side must be 'right' or 'left', got {given!r}")
    seen = detection.handedness
    if given is not None and seen is not None and seen != given:
        raise PhotoError(f"{path}: conflicting sides: given {given!r}, but the detector sees a {seen} hand "
                         f"(score {detection.score:.2f}); check which hand the photo shows, or give no side "
                         "to use the detector's")
    side = given or seen
    if side is None:
        raise PhotoError(f"{path}: the hand's side is unknown: the detector does not report it, so give it")
    return side


def crop_box(keypoints: np.ndarray, border: float = CROP_BORDER) -> np.ndarray:
    """The square (x0, y0, size) around the certain keypoints' box, `1 + border` times its longer side."""
    xy = keypoints[keypoints[:, 2] > 0, :2]
    lo, hi = xy.min(0), xy.max(0)
    size = float((hi - lo).max()) * (1 + border)
    # pixel centres are integers: the box's edge lies half a pixel before its first pixel x0
    return np.array([*((lo + hi) / 2 - size / 2 + 0.5), size])


def read_mask(path: str | os.PathLike, photo: Path, shape: tuple[int, int]) -> np.ndarray:
    """The hand's mask (H, W) bool from an image file (nonzero on the hand) of the photo's size; a PhotoError
    naming the photo when it cannot be read, is empty or has another size."""
    try:
        mask = read_photo(path)
    except PhotoError as err:
        raise PhotoError(f"{photo}: its mask cannot be used: {err}") from None
    if mask.shape[:2] != shape:
        raise PhotoError(f"{photo}: its mask {path} is {mask.shape[1]}x{mask.shape[0]} pixels, the photo "
                         f"{shape[1]}x{shape[0]}")
    mask = mask.max(axis=2) > 127
    if not mask.any():
        raise PhotoError(f"{photo}: its mask {path} marks no pixel (white on the hand expected)")
    return mask


def prepare_photo(path: str | os.PathLike, detector: Detector, side: str | None = None,
                  mask: str | os.PathLike | None = None) -> Photo:
    """Read, detect, settle the side and mirror one photo (and its mask file, if given); a PhotoError naming it
    when it cannot be used."""
    path = Path(path)
    image = read_photo(path)
    hand = None if mask is None else read_mask(mask, path, image.shape[:2])
    try:
        detection = detector.detect(path, side)
    except (OSError, ValueError) as err:
        raise PhotoError(f"{path}: keypoint detection failed: {err}") from err
    if detection is None:
        raise PhotoError(f"{path}: no hand found (detector: {detector.name})")
    side = settle_side(path, side, detection)
    keypoints = np.array(detection.keypoints, dtype=np.float64)
    certain = keypoints[:, 2] > 0
    if certain.sum() < MIN_KEYPOINTS:
        raise PhotoError(f"{path}: only {certain.sum()} keypoints found, {MIN_KEYPOINTS} needed to fit a hand")
    extent = (keypoints[certain, :2].max(0) - keypoints[certain, :2].min(0)).max()
    if extent < MIN_HAND_SIDE:
        raise PhotoError(f"{path}: the hand is only {extent:.0f} pixels across; at least {MIN_HAND_SIDE} needed "
                         "(take the photo closer)")
    mirrored = side == "left"
    if mirrored:  # a left hand seen in a mirror is a right hand: one model and one β for both hands
        image = np.ascontiguousarray(image[:, ::-1])
        keypoints[:, 0] = image.shape[1] - 1 - keypoints[:, 0]
        hand = None if hand is None else np.ascontiguousarray(hand[:, ::-1])
    return Photo(path, image, side, mirrored, keypoints, crop_box(keypoints), detector.name, hand)


def with_keypoints(photo: Photo, keypoints: np.ndarray) -> Photo:
    """The photo with other keypoints (21, 2 or 3) in pixels of the photo as taken (certainty 1 when not given),
    mirrored like the photo, and the crop box around them (e.g. the true keypoints of a synthetic photo)."""
    kp = np.array(keypoints, dtype=np.float64)
    kp = kp if kp.shape[1] == 3 else np.c_[kp, np.ones(len(kp))]
    if photo.mirrored:
        kp[:, 0] = photo.image.shape[1] - 1 - kp[:, 0]
    return replace(photo, keypoints=kp, box=crop_box(kp))


def crop_affine(box: np.ndarray, size: int) -> np.ndarray:
    """The affine (2, 3) from photo pixels to the pixels of a (size, size) crop of `box`, so that crop and box
    share the [-1, 1] frame: u = (x - x0 + 0.5) · size / box_size - 0.5."""
    scale = size / box[2]
    return np.array([[scale, 0, (0.5 - box[0]) * scale - 0.5], [0, scale, (0.5 - box[1]) * scale - 0.5]])


def crop_mask(photo: Photo, size: int = MASK_SIZE) -> np.ndarray | None:
    """The photo's mask over its crop box (size, size) bool, None when it has no mask (beyond the photo: not hand)."""
    from handlib.loader import warp

    if photo.mask is None:
        return None
    return warp(photo.mask.astype(np.uint8) * 255, crop_affine(photo.box, size), size) > 127


def fit_photos(model: HandModel, photos: list[Photo], config: fitting.FitConfig = FIT,
               start: fitting.HandFit | None = None) -> fitting.HandFit:
    """Fit all photos' keypoints (and masks, where given) at once with one β shared by all of them (right-hand
    model, mirrored frame), from `start` (one row per photo, e.g. `NetworkPredictor.start`) or six orientations."""
    dtype = model.v_template.dtype
    keypoints = torch.as_tensor(np.stack([p.keypoints_crop for p in photos])).to(dtype)
    certainty = torch.as_tensor(np.stack([p.keypoints[:, 2] for p in photos])).to(dtype)
    shared = torch.zeros(len(photos), dtype=torch.long)
    masks = [crop_mask(p) for p in photos]
    silhouettes = fitting.Silhouettes.from_masks(masks, MASK_POINTS) if any(m is not None for m in masks) else None
    return fitting.fit_keypoints_2d(model, keypoints, certainty, config, subject_ids=shared, init=start,
                                    silhouettes=silhouettes)


def fit_variants(model: HandModel, photos: list[Photo], config: fitting.FitConfig = FIT,
                 network: "NetworkPredictor | None" = None) -> dict[str, np.ndarray]:
    """The shared β (10,) of one person's photos by each way of getting it, to compare them: the network alone
    (the mean of its per-photo β), the keypoint fit from six orientations, from the network's prediction, and
    from it with the silhouette term too (photos with masks). Variants that need what is missing are left out."""
    no_masks = [replace(p, mask=None) for p in photos]
    keypoints_only = replace(config, silhouette_weight=0.0)
    out = {"six starts": fit_photos(model, no_masks, keypoints_only).betas[0]}
    if network is not None:
        start = network.start(photos)
        out["network alone"] = start.betas.mean(0)
        out["seeded by the network"] = fit_photos(model, no_masks, keypoints_only, start).betas[0]
        if any(p.mask is not None for p in photos) and config.silhouette_weight > 0:
            out["seeded + silhouette"] = fit_photos(model, photos, config, start).betas[0]
    return {k: v.detach().double().numpy() for k, v in out.items()}


def canvas_camera(cam: np.ndarray, box: np.ndarray, canvas: int) -> np.ndarray:
    """A weak perspective (s, tx, ty) onto a crop `box` (x0, y0, size) -> the same onto the square canvas of side
    `canvas` pixels whose top-left pixel is the photo's: crop pixel u = (x + 1) / 2 · size - 0.5 + x0."""
    ratio = box[2] / canvas
    offset = (box[2] + 2 * box[:2]) / canvas - 1
    return np.array([cam[0] * ratio, cam[1] * ratio + offset[0], cam[2] * ratio + offset[1]])


def _canvas(photo: Photo) -> int:
    return max(photo.image.shape[:2])


def _face_incidence(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """(V, F) one-hot vertex-face incidence: as the renderer's part labels it makes each pixel's label the index
    of the face drawn there (a face's own label sums to 3 over its corners, a neighbour's to at most 2)."""
    incidence = np.zeros((n_vertices, len(faces)), np.float32)
    incidence[faces, np.arange(len(faces))[:, None]] = 1
    return incidence


def project_texture(model: HandModel, vertices: np.ndarray, photos: list[Photo], cams: np.ndarray,
                    size: int = TEXTURE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Scatter the photos' pixels into the common UV atlas.

    For each photo the fitted mesh is drawn with a face id per pixel; the pixel's barycentric coordinates in
    that face give its UV, and the pixel's colour lands in that texel, weighted by how squarely the surface faces
    the camera. Texels no photo sees take the colour of the nearest seen texel near it (across seams), else the
    median seen colour.
    vertices (B, V, 3); cams (B, 3) weak perspective onto each photo's canvas -> (texture (size, size, 3) uint8,
    coverage (size, size) bool: texels seen in some photo).
    """
    if model.vt is None:
        raise ValueError("the hand model has no UV atlas (vt/ft): real MANO files carry none")
    faces = model.faces.numpy()
    vt, ft = model.vt.double().numpy(), model.ft.numpy()
    total = np.zeros((size * size, 3))
    weight = np.zeros(size * size)
    for verts, photo, cam in zip(vertices, photos, cams):
        side = _canvas(photo)
        renderer = Renderer(faces, side, parts=_face_incidence(faces, len(verts)), samples=1)
        out = renderer.render(verts[None], WeakPerspective(cam[None]), outputs=("mask", "normals", "parts"))
        renderer.release()
        # facing the camera (OpenCV: +z away), and off the silhouette's rim, where the fit may cover background
        mask = out["mask"][0] & (out["normals"][0][..., 2] < -0.3)
        mask = ndimage.binary_erosion(mask, iterations=max(1, side // 128))
        h, w = photo.image.shape[:2]
        mask[h:], mask[:, w:] = False, False
        ys, xs = np.nonzero(mask)
        face = out["parts"][0][ys, xs].astype(np.int64)
        px = camera.normalized_to_pixels(torch.as_tensor(cam[None, None, :1] * verts[None, :, :2]
                                                         + cam[None, None, 1:]), side, side)[0].numpy()
        bary = _barycentric(px[faces[face]], np.stack([xs, ys], 1).astype(np.float64))
        uv = np.einsum("nk,nkd->nd", bary, vt[ft[face]])
        col = np.clip(np.round(uv[:, 0] * size - 0.5), 0, size - 1).astype(np.int64)
        row = np.clip(np.round((1 - uv[:, 1]) * size - 0.5), 0, size - 1).astype(np.int64)
        facing = -out["normals"][0][ys, xs, 2].astype(np.float64)
        texel = row * size + col
        np.add.at(total, texel, facing[:, None] ** 2 * photo.image[ys, xs])
        np.add.at(weight, texel, facing ** 2)
    seen = weight > 0
    texture = np.zeros((size * size, 3))
    if seen.any():
        texture[seen] = total[seen] / weight[seen, None]
        distance, nearest = ndimage.distance_transform_edt(~seen.reshape(size, size), return_indices=True)
        texture = texture.reshape(size, size, 3)[nearest[0], nearest[1]]
        far = distance > size / 64  # beyond a seam's width: the typical seen colour, not a smear of the nearest
        texture[far] = np.median(total[seen] / weight[seen, None], axis=0)
    else:
        texture[:] = np.array(export.SKIN_COLOR[:3]) * 255
    return np.round(texture).astype(np.uint8).reshape(size, size, 3), seen.reshape(size, size)


def _barycentric(tri: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (N, 3) of points p (N, 2) in triangles tri (N, 3, 2)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, p - a
    det = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    l1 = (v2[:, 0] * v1[:, 1] - v2[:, 1] * v1[:, 0]) / det
    l2 = (v0[:, 0] * v2[:, 1] - v0[:, 1] * v2[:, 0]) / det
    bary = np.clip(np.stack([1 - l1 - l2, l1, l2], 1), 0, 1)
    return bary / bary.sum(1, keepdims=True)


def fit_picture(model: HandModel, vertices: np.ndarray, photo: Photo, cam: np.ndarray,
                fitted_px: np.ndarray, texture: np.ndarray | None = None) -> Image.Image:
    """The photo with the fitted mesh blended over it, the detected skeleton (OpenPose colours) and the fitted
    keypoints (white rings), shown the way the photo was taken (mirrored back for a left hand)."""
    side = _canvas(photo)
    h, w = photo.image.shape[:2]
    background = np.zeros((side, side, 3), np.uint8)
    background[:h, :w] = photo.image
    textured = texture is not None and model.vt is not None
    renderer = Renderer(model.faces.numpy(), side, vt=model.vt.numpy() if textured else None,
                        ft=model.ft.numpy() if textured else None, samples=4)
    out = renderer.render(vertices[None], WeakPerspective(cam[None]), texture=texture if textured else None,
                          outputs=("image", "mask"))
    renderer.release()
    blend = draw.overlay(background, out["image"][0], out["mask"][0], alpha=0.65)[:h, :w]
    picture = Image.fromarray(draw.draw_skeleton(blend, photo.keypoints, threshold=0.0))
    pen = ImageDraw.Draw(picture)
    radius = max(2.0, max(h, w) / 150)
    for x, y in fitted_px:
        pen.ellipse([x - radius, y - radius, x + radius, y + radius], outline=(255, 255, 255), width=2)
    if photo.mirrored:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return picture


def _save_png(path: Path, image: Image.Image) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def model_name(side: str = "right") -> str:
    """Which hand model `HandModel.default` uses: the real MANO file's name, or handlib's built-in hand."""
    path = find_mano(side)
    return f"MANO ({path.name})" if path else "handlib builtin"


def personalize(photos: list[str | os.PathLike], out_dir: str | os.PathLike, detector: Detector,
                sides: list[str | None] | None = None, models: dict[str, HandModel] | None = None,
                config: fitting.FitConfig = FIT, texture_size: int = TEXTURE_SIZE, log=print,
                network: "NetworkPredictor | None" = None, masks: list | None = None) -> Result:
    """Photos of one person's hand (any sides, any sizes) -> the person's hand model in `out_dir`.

    sides: per photo "right", "left" or None (the detector decides). models: {"right", "left"} HandModels
    (default `HandModel.default`, in float64). network: its prediction on each crop starts the fit (else six
    orientations). masks: per photo an image file, white on the hand (or None), for the silhouette term.
    Files: hand_right.glb / hand_left.glb (skeleton, skin weights, texture, one animation key per photo),
    hand_right.obj (+ .mtl, .png), texture.png, parameters.json and fit_NN_<photo>.png per photo.
    Raises PhotoError when no photo can be used.
    """
    out_dir = Path(out_dir)
    sides = [None] * len(photos) if sides is None else list(sides)
    masks = [None] * len(photos) if masks is None else list(masks)
    if len(sides) != len(photos) or len(masks) != len(photos):
        raise ValueError(f"{len(photos)} photos but {len(sides)} sides and {len(masks)} masks")
    usable, problems = [], {}
    for path, side, mask in zip(photos, sides, masks):
        try:
            usable.append(prepare_photo(path, detector, side, mask))
        except PhotoError as err:
            problems[str(path)] = str(err)
            log(f"left out: {err}")
    if not usable:
        raise PhotoError("no photo could be used:\n" + "\n".join(problems.values()))
    if models is None:
        models = {s: HandModel.default(s).double() for s in ("right", "left")}
    model = models["right"]

    fit = fit_photos(model, usable, config, None if network is None else network.start(usable))
    betas = fit.betas[0].detach().double().numpy()
    vertices = fit.vertices.detach().double().numpy()
    cams = np.stack([canvas_camera(c, p.box, _canvas(p)) for c, p in zip(fit.cam.double().numpy(), usable)])
    texture = None
    files = []
    if model.vt is not None:
        texture, _ = project_texture(model, vertices, usable, cams, texture_size)
        _save_png(out_dir / "texture.png", Image.fromarray(texture))
        files.append(out_dir / "texture.png")

    poses = np.stack([export.full_pose(model, hp, go) for hp, go in
                      zip(fit.hand_pose.double().numpy(), fit.global_orient.double().numpy())])  # (B, 16, 3)
    tex_image = None if texture is None else Image.fromarray(texture)
    for side, side_model in models.items():
        rig = export.Rig.from_model(side_model, betas)
        side_poses = poses if side == "right" else mirror_axis_angle(torch.as_tensor(poses)).numpy()
        export.write_glb(out_dir / f"hand_{side}.glb", rig, texture=tex_image, poses=side_poses)
        files.append(out_dir / f"hand_{side}.glb")
    files += export.write_obj(out_dir / "hand_right.obj", export.Rig.from_model(model, betas), texture=tex_image)

    fitted_px = []
    for i, (photo, cam) in enumerate(zip(usable, cams)):
        kp = fit.keypoints_2d[i].detach().double()
        px = camera.normalized_to_pixels(kp, photo.box[2], photo.box[2]).numpy() + photo.box[:2]
        fitted_px.append(px)
        picture = fit_picture(model, vertices[i], photo, cam, px, texture)
        name = out_dir / f"fit_{i:02d}_{photo.path.stem}.png"
        _save_png(name, picture)
        files.append(name)

    start = "network prediction" if network is not None else "six orientations"
    export.write_json(out_dir / "parameters.json", _parameters(model, usable, fit, fitted_px, betas, problems, start))
    files.append(out_dir / "parameters.json")
    return Result(out_dir, betas, usable, fit, problems, files)


def _parameters(model, photos, fit, fitted_px, betas, problems, start) -> dict:
    entries = []
    for i, (photo, px) in enumerate(zip(photos, fitted_px)):
        orient = fit.global_orient[i].detach().double()
        hand_pose = fit.hand_pose[i].detach().double()
        if photo.mirrored:  # back from the mirrored frame to the left hand's own model
            orient, hand_pose = mirror_axis_angle(orient), mirror_axis_angle(hand_pose.view(15, 3)).view(45)
        certain = photo.keypoints[:, 2] > 0
        error = np.linalg.norm(px - photo.keypoints[:, :2], axis=1)[certain].mean()
        h, w = photo.image.shape[:2]
        box, cam = photo.box.copy(), fit.cam[i].detach().double().numpy().copy()
        if photo.mirrored:  # the crop and camera in the photo as taken, for the left model
            box[0] = w - box[0] - box[2]
            cam[1] = -cam[1]
        entries.append({
            "file": photo.path.name, "side": photo.side, "detector": photo.detector,
            "global_orient": orient, "hand_pose": hand_pose,
            "camera": {"weak_perspective": cam, "crop_box_px": box, "image_size": [w, h]},
            "keypoint_error_px": float(error), "mask": photo.mask is not None,
        })
    return {
        "model": model_name(), "flat_hand_mean": model.flat_hand_mean,
        "pose_convention": "axis-angle; hand_pose is relative to the model's mean pose unless flat_hand_mean; "
                           "weak perspective (s, tx, ty) maps the posed model to [-1, 1] over the crop box",
        "betas": betas, "fit_start": start, "photos": entries, "left_out": problems,
    }


class NetworkPredictor:
    """Our trained network on square crops of photos: θ, β and the camera over each crop."""

    def __init__(self, net, image_size: int):
        self.net, self.size = net.eval(), image_size

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "NetworkPredictor":
        """The network of a training run folder (handlib.train), at the image size it was trained at."""
        from handlib.evaluate import config_of
        from handlib.train import load_network
        return cls(load_network(run_dir), config_of(run_dir)["image_size"])

    def crop(self, image: np.ndarray, box: np.ndarray) -> torch.Tensor:
        """The network's input (3, size, size) in [-1, 1]: the crop `box` of `image` (H, W, 3) uint8."""
        from handlib.loader import network_image, warp

        h, w = image.shape[:2]
        # a box beyond the photo gets the photo's edge colours (the warp alone would fill it black)
        pad = int(np.ceil(max(0.0, -box[0], -box[1], box[0] + box[2] - w, box[1] + box[2] - h))) + 1
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        crop = warp(image, crop_affine(np.array([box[0] + pad, box[1] + pad, box[2]]), self.size), self.size)
        return network_image(crop)

    @torch.no_grad()
    def predict(self, images: list[np.ndarray], boxes: list[np.ndarray], sides: list[str]):
        """The last IEF iteration's handlib.network.HandPrediction for each image's crop, in one batch."""
        crops = torch.stack([self.crop(im, box) for im, box in zip(images, boxes)])
        return self.net(crops, torch.tensor([("right", "left").index(s) for s in sides]))[-1]

    def start(self, photos: list[Photo]) -> fitting.HandFit:
        """The fit's start on each photo's crop (float64): photos are right hands (left ones mirrored), so the
        network sees them as right hands."""
        pred = self.predict([p.image for p in photos], [p.box for p in photos], ["right"] * len(photos))
        cam = pred.cam.double()
        # the scale must stay positive for the fit (it is optimised as log s): a flipped prediction keeps its size
        cam = torch.cat([cam[:, :1].abs().clamp_min(1e-3), cam[:, 1:]], 1)
        return fitting.HandFit(matrix_to_axis_angle(pred.global_rotmat).double(), pred.hand_pose.double(),
                               pred.betas.double(), cam.new_zeros(len(photos), 3), cam=cam)


class NetworkDetector:
    """Our network as the keypoint detector: a first pass on the whole photo (squared), a second on the crop
    around the first pass's keypoints. It needs the side: the network takes it as an input."""
    name = "network"

    def __init__(self, net, image_size: int, border: float = CROP_BORDER):
        self.predictor, self.border = NetworkPredictor(net, image_size), border

    def detect(self, path: Path, side: str | None = None) -> Detection | None:
        if side is None:
            raise ValueError("the network detector needs the hand's side: give it (right or left)")
        image = read_photo(path)
        h, w = image.shape[:2]
        box = np.array([(w - max(h, w)) / 2, (h - max(h, w)) / 2, max(h, w)])
        for _ in range(2):
            xy = self.predict(image, box, side)
            box = crop_box(np.c_[xy, np.ones(21)], self.border)
        return Detection(np.c_[xy, np.ones(21)], None, 1.0)

    def predict(self, image: np.ndarray, box: np.ndarray, side: str) -> np.ndarray:
        """Keypoints (21, 2) in photo pixels predicted from the crop `box` of `image`."""
        pred = self.predictor.predict([image], [box], [side])
        xy = camera.normalized_to_pixels(pred.keypoints2d[0].double(), box[2], box[2]).numpy()
        return xy + box[:2]


def make_detector(spec: str) -> Detector:
    """'mediapipe', 'openpose:<folder of OpenPose --write_json output>' or 'network:<training run folder>'."""
    from handlib import keypoints

    name, _, arg = spec.partition(":")
    if name == "network":
        predictor = NetworkPredictor.load(arg)
        return NetworkDetector(predictor.net, predictor.size)
    return keypoints.make_detector(name, arg or None)


def add_arguments(parser) -> None:
    parser.add_argument("photos", nargs="+", help="photos of the same person's hands (any size, either side)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--sides", help="comma-separated side per photo: right, left or auto (the detector's); "
                                        "one value applies to all photos")
    parser.add_argument("--detector", default="mediapipe",
                        help="mediapipe, openpose:<json folder>, or network:<training run folder>")
    parser.add_argument("--network", help="training run folder: its prediction on each crop starts the fit")
    parser.add_argument("--masks", help="comma-separated mask image per photo (white on the hand; empty: none), "
                                        "for the silhouette term")
    parser.add_argument("--texture-size", type=int, default=TEXTURE_SIZE)


def main(args) -> None:
    sides = [None] * len(args.photos)
    if args.sides:
        given = [None if s.strip() == "auto" else s.strip() for s in args.sides.split(",")]
        sides = given * len(args.photos) if len(given) == 1 else given
    masks = [m.strip() or None for m in args.masks.split(",")] if args.masks else None
    torch.manual_seed(0)
    try:
        network = NetworkPredictor.load(args.network) if args.network else None
        result = personalize(args.photos, args.out, make_detector(args.detector), sides,
                             texture_size=args.texture_size, network=network, masks=masks)
    except (PhotoError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"personalize: {err}") from None
    print(f"shape β = {np.array2string(result.betas, precision=2)} from {len(result.photos)} photo(s)")
    for path in result.files:
        print(f"  wrote {path}")
    if result.problems:
        print(f"{len(result.problems)} photo(s) left out:")
        for message in result.problems.values():
            print(f"  {message}")
