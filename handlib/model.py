"""The MANO hand model as a torch module: M(β, θ) = W(T_P(β, θ), J(β), θ, 𝒲) (reference.md).

`lbs` is the whole formula in one function, as in smplx's lbs.py; `HandModel` holds a model's arrays
(real MANO or the built-in hand) and precomputes what does not depend on the inputs.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

from handlib import joints as joint_orders
from handlib import paths

REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f",
                 "hands_components", "hands_mean")
NUM_JOINTS = len(joint_orders.MANO_JOINT_NAMES)
MANO_PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]  # kintree_table[0]


class HandOutput(NamedTuple):
    vertices: Tensor | None  # (B, V, 3) metres; None when asked for keypoints only
    joints: Tensor  # (B, 16, 3) MANO order (handlib.joints.MANO_JOINT_NAMES)
    keypoints: Tensor  # (B, 21, 3) OpenPose/MediaPipe order: the 16 joints and 5 fingertip vertices


@functools.lru_cache(maxsize=None)
def _constants(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """The 3×3 identity, and the (3, 9) basis with r @ basis = [r]× flattened: [[0, −z, y], [z, 0, −x], [−y, x, 0]]."""
    with torch.inference_mode(False):  # cached: they must serve autograd later even if made in inference mode
        basis = torch.zeros(3, 9, dtype=dtype, device=device)
        basis[2, 1], basis[1, 2], basis[2, 3], basis[0, 5], basis[1, 6], basis[0, 7] = -1, 1, 1, -1, -1, 1
        return torch.eye(3, dtype=dtype, device=device), basis


def batch_rodrigues(rot_vecs: Tensor) -> Tensor:
    """Rotation matrices (N, 3, 3) of axis-angle vectors (N, 3).

    R = cos θ I + (sin θ / θ) [r]× + ((1 − cos θ) / θ²) r rᵀ. θ is taken as sqrt(θ² + 1e-16) in the two
    ratios only, which keeps value and gradient finite at θ = 0 and changes R by < 1e-16 (smplx adds
    1e-8 to r instead, a 1e-8 error).
    """
    outer = rot_vecs[:, :, None] * rot_vecs[:, None, :]  # (N, 3, 3) r rᵀ
    theta2 = outer.diagonal(dim1=1, dim2=2).sum(1)[:, None, None] + 1e-16  # (N, 1, 1)
    theta = theta2.sqrt()
    cos = torch.cos(theta)
    eye, skew_basis = _constants(rot_vecs.dtype, rot_vecs.device)
    skew = (rot_vecs @ skew_basis).view(-1, 3, 3)  # [r]×
    return torch.addcmul(torch.addcmul(cos * eye, torch.sin(theta) / theta, skew), (1 - cos) / theta2, outer)


def forward_kinematics(rot_mats: Tensor, rest_joints: Tensor, bones: Tensor) -> tuple[Tensor, Tensor]:
    """World rotations (B, 16, 3, 3) and positions (B, 16, 3) of MANO's joints.

    G_j = G_parent(j) · [R_j | J_j − J_parent(j)] over MANO's tree: the wrist, then five fingers of
    three joints each (joints 1–3, 4–6, ..., 13–15), so one batched step per finger level.
    rot_mats (B, 16, 3, 3) local rotations; rest_joints (B, 16, 3); bones (B, 15, 3): J_j − J_parent(j), j ≥ 1.
    """
    batch = rot_mats.shape[0]
    root_rot, finger_rots = rot_mats.split([1, 15], 1)
    root_pos = rest_joints[:, :1, :, None]  # (B, 1, 3, 1)
    rot, pos = root_rot, root_pos
    world_rot, world_pos = [], []
    levels = zip(finger_rots.view(batch, 5, 3, 3, 3).unbind(2), bones.view(batch, 5, 3, 3, 1).unbind(2))
    for level_rot, level_bone in levels:  # (B, 5, 3, 3) and (B, 5, 3, 1): one joint of each finger
        pos = pos + rot @ level_bone
        rot = rot @ level_rot
        world_rot.append(rot)
        world_pos.append(pos)
    world_rot = torch.cat([root_rot, torch.stack(world_rot, 2).view(batch, 15, 3, 3)], 1)
    world_pos = torch.cat([root_pos, torch.stack(world_pos, 2).view(batch, 15, 3, 1)], 1).squeeze(-1)
    return world_rot, world_pos


def lbs(betas: Tensor, pose: Tensor, v_template: Tensor, blend_dirs: Tensor, J_template: Tensor,
        J_dirs: Tensor, lbs_weights: Tensor) -> tuple[Tensor, Tensor]:
    """MANO for a batch: posed vertices (B, V, 3) and joints (B, 16, 3).

    betas (B, K); pose (B, 16, 3) axis-angle, joint 0 the global rotation (about the wrist joint).
    v_template (3*V,) T̄ and blend_dirs (K + 135, 3*V), shapedirs then posedirs, flattened coordinate-major
    (x of every vertex, then y, then z), so that T_P = T̄ + B_S(β) + B_P(θ) is one matmul on
    [β, vec(R_k(θ) − I) for k = 1..15].
    J_template (93,), J_dirs (K, 93): the joint regressor applied to T̄ and to the shapedirs, giving the
    rest joints J(β) = J_regressor (T̄ + B_S(β)) and the bones J_j − J_parent(j) in one matmul.
    lbs_weights (V, 16): 𝒲.
    """
    batch = pose.shape[0]
    rot_mats = batch_rodrigues(pose.reshape(-1, 3)).view(batch, 16, 3, 3)
    pose_feature = (rot_mats[:, 1:] - _constants(pose.dtype, pose.device)[0]).view(batch, 135)
    # Vertex arrays are coordinate-major, (B, 3, V), so that skinning's per-vertex products run along V.
    v_posed = torch.addmm(v_template, torch.cat([betas, pose_feature], 1), blend_dirs).view(batch, 3, -1)
    rest_joints, bones = torch.addmm(J_template, betas, J_dirs).view(batch, 31, 3).split([16, 15], 1)

    world_rot, world_pos = forward_kinematics(rot_mats, rest_joints, bones)
    # Skinning transform of joint j: x ↦ G_j (x − J_j), i.e. rotation R_j and translation t_j − R_j J_j.
    skin_transl = world_pos - (world_rot @ rest_joints[..., None]).squeeze(-1)
    transforms = torch.cat([world_rot.view(batch, 16, 9), skin_transl], 2)  # (B, 16, 12)
    rot, transl = (transforms.transpose(1, 2) @ lbs_weights.T).split([9, 3], 1)  # Σ_j w_vj [R_j | t_j]
    vertices = (rot.view(batch, 3, 3, -1) * v_posed[:, None]).sum(2) + transl  # (B, 3, V)
    return vertices.transpose(1, 2).contiguous(), world_pos


def _dense(matrix) -> np.ndarray:
    return np.ascontiguousarray(matrix.toarray() if scipy.sparse.issparse(matrix) else matrix)


def _check_params(params: dict) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in params]
    if missing:
        raise ValueError(f"hand model parameters lack {missing} (MANO layout needs {list(REQUIRED_KEYS)})")
    num_verts = np.shape(params["v_template"])[0]
    expected = {
        "v_template": (num_verts, 3),
        "shapedirs": (num_verts, 3, None),
        "posedirs": (num_verts, 3, 9 * (NUM_JOINTS - 1)),
        "J_regressor": (NUM_JOINTS, num_verts),
        "weights": (num_verts, NUM_JOINTS),
        "kintree_table": (2, NUM_JOINTS),
        "f": (None, 3),
        "hands_components": (None, 3 * (NUM_JOINTS - 1)),
        "hands_mean": (3 * (NUM_JOINTS - 1),),
    }
    for key, shape in expected.items():
        got = np.shape(params[key])
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            want = tuple("*" if s is None else s for s in shape)
            raise ValueError(f"hand model parameter {key!r} has shape {got}, expected {want}")
    parents = [int(p) for p in np.asarray(params["kintree_table"])[0, 1:]]
    if parents != MANO_PARENTS[1:]:
        raise ValueError(f"kintree_table parents {parents} are not MANO's {MANO_PARENTS[1:]} (joints 1..15)")


def find_mano(side: str = "right") -> Path | None:
    """The real MANO file of `side` under data/mano/: MANO_RIGHT.pkl as downloaded, or a converted .npz."""
    path = paths.mano_file(side)
    return next((p for p in (path, path.with_suffix(".npz")) if p.is_file()), None)


class HandModel(torch.nn.Module):
    """A MANO-layout hand model: (β, θ, global rotation, translation) → vertices, joints, keypoints.

    flat_hand_mean=False adds the file's `hands_mean` to the hand pose (smplx's default; manopth and
    manotorch use True). With use_pca, `hand_pose` holds `num_pca_comps` coefficients of
    `hands_components`. The buffers are constants: the derived tensors used by `forward` are built once
    from them here, in float64, then stored in `dtype` (build with dtype=torch.float64 for float64 work:
    `.double()` on a float32 model keeps float32's rounding, ~1e-8 m).
    """

    def __init__(self, params: dict, side: str = "right", flat_hand_mean: bool = False, use_pca: bool = False,
                 num_pca_comps: int = 45, dtype: torch.dtype = torch.float32):
        super().__init__()
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', got {side!r}")
        _check_params(params)
        self.side = side
        self.flat_hand_mean = flat_hand_mean
        self.use_pca = use_pca
        self.num_pca_comps = num_pca_comps

        def buffer(name, value, kind=dtype, persistent=True):
            self.register_buffer(name, torch.as_tensor(np.asarray(value), dtype=kind), persistent=persistent)

        parents = [int(p) for p in np.asarray(params["kintree_table"])[0]]
        parents[0] = -1  # files store 2**32 − 1 or −1 for the root
        buffer("v_template", params["v_template"])
        buffer("shapedirs", params["shapedirs"])
        buffer("posedirs", params["posedirs"])
        buffer("J_regressor", _dense(params["J_regressor"]))
        buffer("lbs_weights", params["weights"])
        buffer("hands_components", params["hands_components"])
        buffer("hands_mean", params["hands_mean"])
        buffer("faces", params["f"], torch.long)
        buffer("tip_ids", params.get("tip_ids", joint_orders.MANO_TIP_VERTEX_IDS), torch.long)
        buffer("parents", parents, torch.long)
        for key in ("vt", "ft"):
            if params.get(key) is None:
                self.register_buffer(key, None)
            else:
                buffer(key, params[key], dtype if key == "vt" else torch.long)
        if not 0 < num_pca_comps <= len(self.hands_components):
            raise ValueError(f"num_pca_comps={num_pca_comps}: the model has {len(self.hands_components)}")
        if int(self.tip_ids.max()) >= len(self.v_template):
            raise ValueError(f"tip_ids {self.tip_ids.tolist()} out of range for {len(self.v_template)} vertices")

        v_template = np.asarray(params["v_template"], np.float64)
        shapedirs = np.asarray(params["shapedirs"], np.float64)
        posedirs = np.asarray(params["posedirs"], np.float64)
        J_regressor = _dense(params["J_regressor"]).astype(np.float64)
        num_verts, num_betas = len(v_template), shapedirs.shape[-1]
        blend_dirs = np.concatenate([shapedirs, posedirs], 2).transpose(2, 1, 0).reshape(num_betas + 135, -1)
        buffer("_v_template_flat", v_template.T.reshape(-1), persistent=False)
        buffer("_blend_dirs", blend_dirs, persistent=False)
        # Rest joints and bones (J_j − J_parent(j), j ≥ 1) are linear in β: precompute both maps.
        J_template = J_regressor @ v_template  # (16, 3)
        J_shapedirs = np.einsum("jv,vck->kjc", J_regressor, shapedirs)  # (K, 16, 3)
        J_template = np.concatenate([J_template, (J_template - J_template[parents])[1:]])
        J_dirs = np.concatenate([J_shapedirs, (J_shapedirs - J_shapedirs[:, parents])[:, 1:]], 1)
        buffer("_J_template", J_template.reshape(-1), persistent=False)
        buffer("_J_dirs", J_dirs.reshape(num_betas, -1), persistent=False)
        pose_mean = np.zeros(45) if flat_hand_mean else np.asarray(params["hands_mean"], np.float64)
        buffer("_pose_mean", pose_mean, persistent=False)
        buffer("_pca_basis", np.asarray(params["hands_components"], np.float64)[:num_pca_comps], persistent=False)
        buffer("_openpose_index", joint_orders.MANO_TO_OPENPOSE, torch.long, persistent=False)
        # The fingertip vertices alone, for keypoints without the mesh (training's reprojection loss).
        tips = np.asarray(self.tip_ids.cpu())
        buffer("_tips_template_flat", v_template[tips].T.reshape(-1), persistent=False)
        buffer("_tips_blend_dirs", blend_dirs.reshape(-1, 3, num_verts)[:, :, tips].reshape(len(blend_dirs), -1),
               persistent=False)
        buffer("_tips_weights", np.asarray(params["weights"])[tips], persistent=False)
        self.num_betas = num_betas
        self.num_verts = num_verts

    @classmethod
    def from_mano(cls, path: str | os.PathLike, side: str | None = None, fix_left_shapedirs: bool | None = None,
                  **kw) -> HandModel:
        """A real MANO pickle (read without chumpy) or a converted .npz/.pkl; see handlib.mano_io.load_mano."""
        from handlib.mano_io import load_mano

        params, side = load_mano(path, side=side, fix_left_shapedirs=fix_left_shapedirs)
        return cls(params, side=side, **kw)

    @classmethod
    def builtin(cls, side: str = "right", **kw) -> HandModel:
        """handlib's own MANO-compatible hand (no license-restricted asset)."""
        from handlib.builtin import builtin_params

        return cls(builtin_params(side), side=side, **kw)

    @classmethod
    def default(cls, side: str = "right", **kw) -> HandModel:
        """The real MANO model when data/mano/ holds it (see `find_mano`), else the built-in hand."""
        path = find_mano(side)
        return cls.builtin(side, **kw) if path is None else cls.from_mano(path, side=side, **kw)

    def forward(self, betas: Tensor | None = None, hand_pose: Tensor | None = None,
                global_orient: Tensor | None = None, transl: Tensor | None = None,
                return_verts: bool = True) -> HandOutput:
        """betas (B, K); hand_pose (B, 45) axis-angle, or (B, num_pca_comps) with use_pca; global_orient (B, 3)
        axis-angle about the wrist; transl (B, 3). Missing inputs are zeros. With return_verts=False only the
        joints and keypoints are computed (skinning just the 5 fingertip vertices) and `vertices` is None."""
        given = [x for x in (betas, hand_pose, global_orient, transl) if x is not None]
        batch = given[0].shape[0] if given else 1
        if any(x.shape[0] != batch for x in given):
            raise ValueError(f"inputs disagree on the batch size: {[tuple(x.shape) for x in given]}")
        zeros = self.v_template.new_zeros
        if betas is None:
            betas = zeros(batch, self.num_betas)
        if global_orient is None:
            global_orient = zeros(batch, 3)
        if hand_pose is None:
            hand_pose = zeros(batch, self.num_pca_comps if self.use_pca else 45)
        if self.use_pca:
            hand_pose = torch.addmm(self._pose_mean, hand_pose, self._pca_basis)
        else:
            hand_pose = hand_pose + self._pose_mean
        pose = torch.cat([global_orient, hand_pose], 1).view(batch, -1, 3)
        if return_verts:
            vertices, joints = lbs(betas, pose, self._v_template_flat, self._blend_dirs, self._J_template,
                                   self._J_dirs, self.lbs_weights)
            tips = vertices[:, self.tip_ids]
        else:
            vertices = None
            tips, joints = lbs(betas, pose, self._tips_template_flat, self._tips_blend_dirs, self._J_template,
                               self._J_dirs, self._tips_weights)
        if transl is not None:
            vertices = None if vertices is None else vertices + transl[:, None]
            joints, tips = joints + transl[:, None], tips + transl[:, None]
        keypoints = torch.cat([joints, tips], 1)[:, self._openpose_index]
        return HandOutput(vertices, joints, keypoints)

    def mano_params(self) -> dict:
        """The model's arrays in the MANO file layout (float64 numpy, J_regressor as scipy.sparse CSC)."""
        def np64(t):
            return t.detach().cpu().double().numpy()

        kintree = np.stack([self.parents.cpu().numpy(), np.arange(NUM_JOINTS)]).astype(np.int64)
        kintree[0, 0] = 2**32 - 1  # as the MANO files store the root's parent
        params = {
            "v_template": np64(self.v_template),
            "shapedirs": np64(self.shapedirs),
            "posedirs": np64(self.posedirs),
            "J_regressor": scipy.sparse.csc_matrix(np64(self.J_regressor)),
            "weights": np64(self.lbs_weights),
            "kintree_table": kintree,
            "f": self.faces.cpu().numpy().astype(np.uint32),
            "hands_components": np64(self.hands_components),
            "hands_mean": np64(self.hands_mean),
            "hands_coeffs": np.zeros((0, self.hands_components.shape[1])),
            "J": np64(self.J_regressor) @ np64(self.v_template),
            "bs_style": "lbs",
            "bs_type": "lrotmin",
            "tip_ids": self.tip_ids.cpu().numpy(),
        }
        if self.vt is not None:
            params["vt"], params["ft"] = np64(self.vt), self.ft.cpu().numpy()
        return params

    def export_mano(self, path: str | os.PathLike) -> None:
        """Write the model as a MANO file (.pkl, or .npz with J_regressor dense) that smplx and manopth load."""
        from handlib.mano_io import save_mano

        save_mano(self.mano_params(), path, side=self.side)
