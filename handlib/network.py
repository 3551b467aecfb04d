"""HMR for hands: an image encoder and an iterative error feedback (IEF) regressor of MANO parameters.

image (B, 3, H, W) in [-1, 1] -> encoder feature -> T times: Θ += MLP([feature, Θ, side]) from the mean Θ
-> the hand model -> 21 keypoints in 3D and, by weak perspective, in 2D ([-1, 1] over the crop).

Θ = global rotation (3 axis-angle, or 6 in the continuous 6D form) + hand pose 45 + shape β 10 + camera 3.
The camera is stored as (s / s0, tx, ty), s0 being the scale at which the mean hand fills the crop, so that all
of Θ is of order one for the regressor. The side (0 right, 1 left) is an input: from one image a left hand's back
looks like a right hand's palm, and the user knows which hand the photo shows.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision
from torch import nn

from handlib.camera import weak_perspective
from handlib.model import batch_rodrigues
from handlib.rotations import matrix_to_axis_angle, matrix_to_rot6d, rot6d_to_matrix

SIDES = ("right", "left")
MODES = ("pretrained", "freeze", "random")
ROTATIONS = {"axis_angle": 3, "6d": 6}
POSE_SPACES = ("axis_angle", "anatomical")


@dataclass(frozen=True)
class EncoderSpec:
    builder: str       # torchvision.models function
    head: str          # attribute replaced by Identity to expose the pooled feature
    features: int      # feature size
    image_size: int    # the size it was trained at on ImageNet


ENCODERS = {
    "resnet18": EncoderSpec("resnet18", "fc", 512, 224),
    "resnet50": EncoderSpec("resnet50", "fc", 2048, 224),
    "densenet121": EncoderSpec("densenet121", "classifier", 1024, 224),
    "inception_v3": EncoderSpec("inception_v3", "fc", 2048, 299),
    "mobilenet_v3_small": EncoderSpec("mobilenet_v3_small", "classifier", 576, 224),
    "mobilenet_v3_large": EncoderSpec("mobilenet_v3_large", "classifier", 960, 224),
}
ENCODERS["mobilenet_v3"] = ENCODERS["mobilenet_v3_small"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HandPrediction(NamedTuple):
    """One IEF iteration's output for a batch of B crops."""
    theta: torch.Tensor          # (B, D) the regressor's state (D = 61, or 64 with 6D rotations)
    global_rotmat: torch.Tensor  # (B, 3, 3) rotation of the hand about its wrist, camera frame
    hand_pose: torch.Tensor      # (B, 45) axis-angle, MANO order, relative to the model's mean pose
    betas: torch.Tensor          # (B, 10)
    cam: torch.Tensor            # (B, 3) weak perspective (s, tx, ty) onto the crop's [-1, 1]
    vertices: torch.Tensor | None  # (B, V, 3) metres, rotated, model origin (not translated); None if not asked
    keypoints3d: torch.Tensor    # (B, 21, 3) metres, OpenPose order, same frame as vertices
    keypoints2d: torch.Tensor    # (B, 21, 2) in [-1, 1] over the crop


def weights_path(encoder: str) -> Path:
    """Where torchvision keeps the ImageNet weights of `encoder` in the torch hub cache."""
    weights = torchvision.models.get_model_weights(ENCODERS[encoder].builder).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def build_encoder(name: str, mode: str = "random", weights_file: str | os.PathLike | None = None) -> nn.Module:
    """A torchvision backbone whose forward gives the pooled feature (B, ENCODERS[name].features).

    `pretrained` and `freeze` load ImageNet weights from `weights_file`, else from the torch hub cache; nothing
    is downloaded (offline machines): a missing file is an error that names the file and where to get it.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    spec = ENCODERS[name]
    builder = getattr(torchvision.models, spec.builder)
    # Inception's pretrained weights were trained on inputs scaled to [-1, 1]: transform_input converts back.
    kw = {"aux_logits": False, "init_weights": False, "transform_input": mode != "random"} \
        if spec.builder == "inception_v3" else {}
    net = builder(weights=None, **kw)
    if mode != "random":
        net.load_state_dict(_imagenet_state_dict(name, weights_file), strict=False)
    setattr(net, spec.head, nn.Identity())
    return net


def _imagenet_state_dict(name: str, weights_file) -> dict:
    weights = torchvision.models.get_model_weights(ENCODERS[name].builder).DEFAULT
    path = Path(weights_file) if weights_file else weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights for {name} not found at {path}. Download {weights.url} on a machine with internet "
            f"and put it at {weights_path(name)} (the torch hub cache), or pass weights_file=; "
            f"or use mode='random'.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if ENCODERS[name].builder == "densenet121":  # old checkpoints name 'norm.1' what the model calls 'norm1'
        pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                             r"running_var))$")
        state = {(m.group(1) + m.group(2) if (m := pattern.match(k)) else k): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}


class HandNet(nn.Module):
    """Encoder + IEF regressor + hand models (right and left); forward returns all T iterations' predictions."""

    def __init__(self, encoder: str = "resnet18", mode: str = "random", iterations: int = 3,
                 rotation: str = "axis_angle", dropout: float = 0.5, hidden: int = 1024,
                 weights_file: str | os.PathLike | None = None, hand_models: dict | None = None,
                 pose_space: str = "axis_angle"):
        super().__init__()
        if rotation not in ROTATIONS:
            raise ValueError(f"unknown rotation {rotation!r}; choose one of {sorted(ROTATIONS)}")
        if pose_space not in POSE_SPACES:
            raise ValueError(f"unknown pose_space {pose_space!r}; choose one of {POSE_SPACES}")
        self.encoder_name, self.mode, self.iterations, self.rotation = encoder, mode, iterations, rotation
        self.pose_space = pose_space
        self.encoder = build_encoder(encoder, mode, weights_file)
        if mode == "freeze":
            self.encoder.requires_grad_(False)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        if hand_models is None:
            from handlib.model import HandModel
            hand_models = {side: HandModel.default(side) for side in SIDES}
        self.hand_models = nn.ModuleDict(hand_models)
        self.rot_dim = ROTATIONS[rotation]
        self.theta_dim = self.rot_dim + 45 + 10 + 3
        features = ENCODERS[encoder].features
        self.regressor = nn.Sequential(
            nn.Linear(features + self.theta_dim + 1, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, self.theta_dim))
        # HMR's trick: tiny initial updates, so every iteration starts near the mean parameters.
        nn.init.xavier_uniform_(self.regressor[-1].weight, gain=0.01)
        nn.init.zeros_(self.regressor[-1].bias)
        s0, t0, R0 = self._mean_view()
        self.register_buffer("s0", torch.tensor(s0))
        # The left hand's start is the right one's mirror image: rotation M R0 M, camera tx -> -tx.
        M = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
        starts = []
        for R, tx, name in ((R0, t0[0], "right"), (M @ R0 @ M, -t0[0], "left")):
            rot = matrix_to_axis_angle(R) if rotation == "axis_angle" else matrix_to_rot6d(R)
            starts.append(torch.cat([rot, self._mean_pose_code(name), torch.zeros(10),
                                     torch.tensor([1.0, tx, t0[1]])]))
        self.register_buffer("mean_thetas", torch.stack(starts))  # (2, D) per side
        if pose_space == "anatomical":  # constants of the rest skeletons, not rebuilt at every step
            from handlib.anatomy import model_frames
            self.register_buffer("joint_frames", torch.stack([model_frames(self.hand_models[s]) for s in SIDES]),
                                 persistent=False)  # (2, 15, 3, 3)

    @property
    def mean_theta(self) -> torch.Tensor:
        """The right hand's starting Θ (D,) (handlib.onnx_export starts from it)."""
        return self.mean_thetas[0]

    def initial_theta(self, side: torch.Tensor) -> torch.Tensor:
        """The regressor's starting Θ (B, D) for sides (B,) 0 right / 1 left."""
        return self.mean_thetas[side.long()]

    @torch.no_grad()
    def _mean_pose_code(self, side: str) -> torch.Tensor:
        """Θ's pose part (45,) that gives the model's mean pose (hand_pose 0): zeros for axis-angle; in the
        anatomical space the codes of the mean pose's angles (kept 2% inside the limits)."""
        if self.pose_space == "axis_angle":
            return torch.zeros(45)
        from handlib.anatomy import joint_angles, limits

        model = self.hand_models[side]
        lo, hi = limits(model.v_template.dtype)
        angles = joint_angles(model.v_template.new_zeros(1, 45), model)[0]  # (15, 3)
        share = ((angles - lo) / (hi - lo).clamp_min(1e-9)).clamp(0.02, 0.98)
        return torch.logit(share).float().reshape(45)

    def hand_pose_of(self, code: torch.Tensor, side: str) -> torch.Tensor:
        """Θ's pose part (B, 45) -> the hand_pose (B, 45) of model `side`. In the anatomical space each joint's
        (twist, spread, bend) is lo + (hi − lo)·sigmoid(code) inside handlib.anatomy's limits, so no prediction
        can leave them (the thesis's hands twisted freely about their bones)."""
        if self.pose_space == "axis_angle":
            return code
        from handlib.anatomy import limits, pose_from_angles

        lo, hi = limits(code.dtype, code.device)
        angles = lo + (hi - lo) * torch.sigmoid(code.view(-1, 15, 3))
        return pose_from_angles(angles, self.hand_models[side], self.joint_frames[SIDES.index(side)])

    @torch.no_grad()
    def _mean_view(self) -> tuple[float, list[float], torch.Tensor]:
        """The mean right hand as people photograph hands: its back to the camera, fingers up (rotation R0, the
        frame of handlib.skin.palm_frame), and the weak perspective (s0, t0) that puts its keypoints in the
        middle 80% of the crop."""
        from handlib.skin import palm_frame

        rest = self.hand_models["right"]()
        _, up, palm = (torch.as_tensor(v, dtype=torch.float32)
                       for v in palm_frame(rest.joints[0].double().numpy(), "right"))
        target_up, target_palm = torch.tensor([0.0, -1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])  # palm away
        source = torch.stack([up, palm, torch.linalg.cross(up, palm)], 1)
        target = torch.stack([target_up, target_palm, torch.linalg.cross(target_up, target_palm)], 1)
        R0 = target @ source.T
        wrist = rest.joints[0, :1]
        p = (rest.keypoints[0] - wrist) @ R0.T + wrist  # (21, 3)
        lo, hi = p[:, :2].min(0).values, p[:, :2].max(0).values
        s0 = 1.6 / float((hi - lo).max())
        return s0, (-s0 * (lo + hi) / 2).tolist(), R0

    def train(self, mode: bool = True) -> "HandNet":
        super().train(mode)
        if self.mode == "freeze":  # frozen BatchNorm statistics too
            self.encoder.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> (B, F)."""
        x = ((images + 1) / 2 - self.pixel_mean) / self.pixel_std
        return self.encoder(x)

    def forward(self, images: torch.Tensor, side: torch.Tensor | None = None,
                return_verts: bool = True) -> list[HandPrediction]:
        """images (B, 3, H, W) in [-1, 1], side (B,) 0 right / 1 left (default right) -> T predictions.
        return_verts=False leaves the meshes out (vertices None): the keypoints cost a fraction of them."""
        feat = self.features(images)
        side = torch.zeros(len(images), device=images.device) if side is None else side.to(feat.dtype)
        theta = self.initial_theta(side)
        out = []
        for _ in range(self.iterations):
            theta = theta + self.regressor(torch.cat([feat, theta, side[:, None]], dim=1))
            out.append(self.decode(theta, side, return_verts))
        return out

    def decode(self, theta: torch.Tensor, side: torch.Tensor, return_verts: bool = True) -> HandPrediction:
        """Θ (B, D) -> the posed hand and its projection, each sample through its side's hand model."""
        R, code, betas, cam = self.unpack(theta)
        hand_pose, verts, kp3d = _by_side(
            side, lambda idx, name: self._articulate(code[idx], betas[idx], R[idx], name, return_verts))
        return HandPrediction(theta, R, hand_pose, betas, cam, verts, kp3d, weak_perspective(kp3d, cam))

    def unpack(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Θ (B, D) -> global rotation (B, 3, 3), pose code (B, 45), β (B, 10), camera (s, tx, ty) (B, 3)."""
        r = self.rot_dim
        rot, code, betas, c = theta[:, :r], theta[:, r:r + 45], theta[:, r + 45:r + 55], theta[:, r + 55:]
        R = batch_rodrigues(rot) if self.rotation == "axis_angle" else rot6d_to_matrix(rot)
        return R, code, betas, torch.cat([c[:, :1] * self.s0, c[:, 1:]], dim=1)

    def decode_side(self, theta: torch.Tensor, side: str, return_verts: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Θ (B, D) of samples all of one side -> camera (B, 3), hand_pose (B, 45), vertices (B, V, 3) or None,
        keypoints (B, 21, 3); no data-dependent shapes (ONNX exports it)."""
        R, code, betas, cam = self.unpack(theta)
        return (cam, *self._articulate(code, betas, R, side, return_verts))

    def _articulate(self, code: torch.Tensor, betas: torch.Tensor, R: torch.Tensor, side: str,
                    return_verts: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Pose code, β, rotation of samples of one side -> hand_pose, vertices (or None), keypoints."""
        hand_pose = self.hand_pose_of(code, side)
        return (hand_pose, *self.pose_side(hand_pose, betas, R, side, return_verts))

    def pose_side(self, hand_pose: torch.Tensor, betas: torch.Tensor, R: torch.Tensor, side: str,
                  return_verts: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Vertices (B, V, 3) (None without return_verts) and keypoints (B, 21, 3) of model `side`: MANO posed,
        then rotated by R about its wrist (as MANO's global rotation does)."""
        o = self.hand_models[side](betas=betas, hand_pose=hand_pose, return_verts=return_verts)
        wrist = o.joints[:, :1]  # (B, 1, 3)
        turn = R.transpose(1, 2)
        verts = None if o.vertices is None else (o.vertices - wrist) @ turn + wrist
        return verts, (o.keypoints - wrist) @ turn + wrist

    def pose(self, hand_pose: torch.Tensor, betas: torch.Tensor, R: torch.Tensor,
             side: torch.Tensor, return_verts: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """`pose_side` for a batch of both sides (B,) 0 right / 1 left, each sample by the model of its side."""
        return _by_side(
            side, lambda idx, name: self.pose_side(hand_pose[idx], betas[idx], R[idx], name, return_verts))


def _by_side(side: torch.Tensor, run) -> tuple:
    """run(sample ids, side name) -> tensors (or None) for the samples of each side, put back in batch order."""
    parts = [(idx, run(idx, name)) for k, name in enumerate(SIDES) if len(idx := (side == k).nonzero()[:, 0])]
    if len(parts) == 1:
        return parts[0][1]
    order = torch.cat([idx for idx, _ in parts]).argsort()
    return tuple(None if parts[0][1][n] is None else torch.cat([out[n] for _, out in parts])[order]
                 for n in range(len(parts[0][1])))

