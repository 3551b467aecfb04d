"""The personal hand as files game engines and modelling tools load: rigged glTF binary (GLB), OBJ, JSON.

The GLB holds the mesh in its bind (rest) pose with the person's shape, the 16 MANO joints as a node hierarchy
with inverse bind matrices, the top-4 skinning weights per vertex, UVs of the common atlas and a texture. glTF
skinning is plain linear blend skinning, so MANO's pose-corrective blend shapes are not part of the rig; poses go
in the joints' rotations (one animation key per pose when `poses` are given).
We write the glTF JSON and binary buffer ourselves (numpy): trimesh writes GLB but not skins.
"""

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from scipy.spatial.transform import Rotation

from handlib.io import atomic_write_bytes, atomic_write_text
from handlib.joints import MANO_JOINT_NAMES

SKIN_COLOR = [0.87, 0.68, 0.58, 1.0]  # the material's colour when there is no texture
_FLOAT, _UBYTE, _UINT = 5126, 5121, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


@dataclass
class Rig:
    """A skinned mesh in its bind pose: what the exporters write."""
    vertices: np.ndarray  # (V, 3) metres
    faces: np.ndarray     # (F, 3)
    joints: np.ndarray    # (J, 3) joint positions in the bind pose
    parents: np.ndarray   # (J,) parent index, -1 for the root
    weights: np.ndarray   # (V, J) skinning weights
    vt: np.ndarray | None = None  # (T, 2) UVs, OBJ convention (v up)
    ft: np.ndarray | None = None  # (F, 3) UV index per face corner
    names: tuple = tuple(MANO_JOINT_NAMES)

    @classmethod
    def from_model(cls, model, betas=None) -> "Rig":
        """The rest pose of `model` (a HandModel) with shape `betas` (10,): T̄ + B_S(β) and J(β)."""
        def np64(t):
            return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float64)
        verts = np64(model.v_template)
        if betas is not None:
            betas = np64(betas).reshape(-1)
            shapedirs = np64(model.shapedirs)
            verts = verts + shapedirs[..., :len(betas)] @ betas
        joints = np64(model.J_regressor) @ verts
        parents = np64(model.parents).astype(np.int64)
        parents[0] = -1
        vt = None if model.vt is None else np64(model.vt)
        ft = None if model.ft is None else np64(model.ft).astype(np.int64)
        return cls(verts, np64(model.faces).astype(np.int64), joints, parents, np64(model.lbs_weights), vt, ft)

    def unwelded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Vertex ids and faces with vertices split where the UV atlas has seams (one UV per vertex, as glTF
        and most engines need): (source vertex id per new vertex, faces, UV per new vertex or None)."""
        if self.vt is None or self.ft is None:
            return np.arange(len(self.vertices)), self.faces, None
        pairs = np.stack([self.faces.ravel(), self.ft.ravel()], axis=1)
        unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
        return unique[:, 0], inverse.reshape(-1, 3), self.vt[unique[:, 1]]


def full_pose(model, hand_pose, global_orient=None) -> np.ndarray:
    """The rotations (16, 3) a HandModel's joints make for one `hand_pose` (45,) or PCA coefficients and
    `global_orient` (3,): the mean pose is added unless the model is flat_hand_mean, as its forward does."""
    def np64(t):
        return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float64)
    hand_pose = np64(hand_pose).reshape(-1)
    if model.use_pca:
        hand_pose = hand_pose @ np64(model.hands_components)[:len(hand_pose)]
    if not model.flat_hand_mean:
        hand_pose = hand_pose + np64(model.hands_mean)
    orient = np.zeros(3) if global_orient is None else np64(global_orient).reshape(3)
    return np.concatenate([orient, hand_pose]).reshape(16, 3)


def top_weights(weights: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The k largest skinning weights per vertex, renormalised to sum to 1, and their joint ids (V, k) each."""
    ids = np.argsort(-weights, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(weights, ids, axis=1)
    ids = np.where(w > 0, ids, 0)  # glTF: an unused slot has weight 0 and joint 0
    return ids, w / w.sum(axis=1, keepdims=True)


def _quat(rotvec: np.ndarray) -> np.ndarray:
    """Axis-angle (..., 3) -> glTF quaternions (..., 4) in x, y, z, w order."""
    return Rotation.from_rotvec(np.asarray(rotvec, np.float64).reshape(-1, 3)).as_quat()


class _Buffer:
    """The binary chunk of a GLB, built one 4-byte aligned bufferView at a time, and the accessors into it."""

    def __init__(self):
        self.data, self.views, self.accessors = bytearray(), [], []

    def view(self, raw: bytes, target: int | None = None) -> int:
        self.data += b"\0" * (-len(self.data) % 4)
        view = {"buffer": 0, "byteOffset": len(self.data), "byteLength": len(raw)}
        if target is not None:
            view["target"] = target
        self.data += raw
        self.views.append(view)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, kind: str, target: int | None = None, bounds: bool = False) -> int:
        ctype, dtype = {np.dtype(np.float32): (_FLOAT, "<f4"), np.dtype(np.uint8): (_UBYTE, "u1"),
                        np.dtype(np.uint32): (_UINT, "<u4")}[array.dtype]
        acc = {"bufferView": self.view(np.ascontiguousarray(array, dtype).tobytes(), target),
               "componentType": ctype, "count": len(array), "type": kind}
        if bounds:
            flat = array.reshape(len(array), -1)
            acc["min"], acc["max"] = flat.min(axis=0).tolist(), flat.max(axis=0).tolist()
        self.accessors.append(acc)
        return len(self.accessors) - 1


def glb_bytes(rig: Rig, pose: np.ndarray | None = None, transl: np.ndarray | None = None,
              texture: Image.Image | None = None, poses: np.ndarray | None = None, name: str = "hand") -> bytes:
    """The rig as a GLB file.

    pose (J, 3): axis-angle rotation of each joint relative to its parent (MANO's full pose, global rotation
    first) shown by the nodes; none is the bind pose. transl (3,): added to the root. poses (P, J, 3): one
    animation key per second, e.g. one per photo.
    """
    n_joints = len(rig.joints)
    ids, faces, uv_split = rig.unwelded()
    normals = trimesh.Trimesh(rig.vertices, rig.faces, process=False).vertex_normals[ids]
    joint_ids, weights = top_weights(rig.weights[ids])
    buf = _Buffer()
    attributes = {
        "POSITION": buf.accessor(rig.vertices[ids].astype(np.float32), "VEC3", _ARRAY_BUFFER, bounds=True),
        "NORMAL": buf.accessor(normals.astype(np.float32), "VEC3", _ARRAY_BUFFER),
        "JOINTS_0": buf.accessor(joint_ids.astype(np.uint8), "VEC4", _ARRAY_BUFFER),
        "WEIGHTS_0": buf.accessor(weights.astype(np.float32), "VEC4", _ARRAY_BUFFER),
    }
    if uv_split is not None:  # glTF's texture origin is the top-left corner: flip v
        uv = np.stack([uv_split[:, 0], 1 - uv_split[:, 1]], axis=1)
        attributes["TEXCOORD_0"] = buf.accessor(uv.astype(np.float32), "VEC2", _ARRAY_BUFFER)
    indices = buf.accessor(faces.astype(np.uint32).ravel(), "SCALAR", _ELEMENT_ARRAY_BUFFER)

    local = rig.joints - np.where(rig.parents[:, None] >= 0, rig.joints[np.maximum(rig.parents, 0)], 0)
    rotations = _quat(np.zeros((n_joints, 3)) if pose is None else pose)
    nodes = [{"name": name, "mesh": 0, "skin": 0}]
    for j in range(n_joints):
        node = {"name": rig.names[j], "translation": local[j].tolist(), "rotation": rotations[j].tolist()}
        children = [1 + c for c in np.flatnonzero(rig.parents == j)]
        if children:
            node["children"] = [int(c) for c in children]
        nodes.append(node)
    if transl is not None:
        nodes[1]["translation"] = (local[0] + np.asarray(transl, np.float64)).tolist()
    roots = [1 + int(j) for j in np.flatnonzero(rig.parents < 0)]

    inverse_bind = np.tile(np.eye(4), (n_joints, 1, 1))
    inverse_bind[:, :3, 3] = -rig.joints
    ibm = buf.accessor(inverse_bind.transpose(0, 2, 1).reshape(n_joints, 16).astype(np.float32), "MAT4")

    material = {"name": "skin", "doubleSided": False,
                "pbrMetallicRoughness": {"baseColorFactor": SKIN_COLOR, "metallicFactor": 0.0,
                                         "roughnessFactor": 0.8}}
    gltf = {
        "asset": {"version": "2.0", "generator": "handlib"},
        "scene": 0,
        "scenes": [{"nodes": [0, *roots]}],
        "nodes": nodes,
        "meshes": [{"name": name, "primitives": [{"attributes": attributes, "indices": indices, "material": 0}]}],
        "skins": [{"name": "mano", "joints": list(range(1, n_joints + 1)), "inverseBindMatrices": ibm,
                   "skeleton": roots[0]}],
        "materials": [material],
    }
    if texture is not None and uv_split is not None:
        png = io.BytesIO()
        texture.convert("RGB").save(png, format="PNG")
        gltf["images"] = [{"bufferView": buf.view(png.getvalue()), "mimeType": "image/png"}]
        gltf["samplers"] = [{"magFilter": 9729, "minFilter": 9729}]
        gltf["textures"] = [{"source": 0, "sampler": 0}]
        material["pbrMetallicRoughness"]["baseColorFactor"] = [1.0, 1.0, 1.0, 1.0]
        material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": 0}
    if poses is not None:
        gltf["animations"] = [_animation(buf, np.asarray(poses, np.float64))]
    gltf["accessors"], gltf["bufferViews"] = buf.accessors, buf.views
    gltf["buffers"] = [{"byteLength": len(buf.data) + (-len(buf.data) % 4)}]
    return _pack(gltf, bytes(buf.data))


def _animation(buf: _Buffer, poses: np.ndarray) -> dict:
    """One key per pose, a second apart, for every joint's rotation (STEP: poses are not meant to blend)."""
    times = buf.accessor(np.arange(len(poses), dtype=np.float32), "SCALAR", bounds=True)
    samplers, channels = [], []
    for j in range(poses.shape[1]):
        quats = buf.accessor(_quat(poses[:, j]).astype(np.float32), "VEC4")
        samplers.append({"input": times, "output": quats, "interpolation": "STEP"})
        channels.append({"sampler": j, "target": {"node": 1 + j, "path": "rotation"}})
    return {"name": "photos", "samplers": samplers, "channels": channels}


def _pack(gltf: dict, binary: bytes) -> bytes:
    """GLB container: 12-byte header, a JSON chunk padded with spaces, a BIN chunk padded with zeros."""
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return (struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(text), b"JSON") + text
            + struct.pack("<I4s", len(binary), b"BIN\0") + binary)


def write_glb(path: str | Path, rig: Rig, **kw) -> None:
    """Write `glb_bytes(rig, **kw)` to `path` atomically."""
    atomic_write_bytes(path, glb_bytes(rig, **kw))


def write_obj(path: str | Path, rig: Rig, vertices: np.ndarray | None = None,
              texture: Image.Image | None = None) -> list[Path]:
    """An OBJ of the rig's mesh (or of `vertices` (V, 3), e.g. a posed hand) with UVs, an MTL file and the
    texture as PNG beside it (when the rig has UVs), all written atomically; returns the paths written."""
    path = Path(path)
    ids, faces, uv = rig.unwelded()
    verts = rig.vertices if vertices is None else np.asarray(vertices, np.float64)
    visual = None
    if uv is not None:
        image = texture.convert("RGB") if texture is not None else Image.new("RGB", (4, 4), _rgb(SKIN_COLOR))
        visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    mesh = trimesh.Trimesh(verts[ids], faces, visual=visual, process=False)
    text, files = trimesh.exchange.obj.export_obj(mesh, return_texture=True, mtl_name=path.stem + ".mtl",
                                                 header=None)
    written = []
    for name, data in sorted(files.items()):
        if name.endswith(".mtl"):  # trimesh names the texture after the material: use ours
            data = data.replace(b"material_0.png", f"{path.stem}.png".encode())
            name = path.stem + ".mtl"
        elif name.endswith(".png"):
            name = path.stem + ".png"
        atomic_write_bytes(path.with_name(name), data)
        written.append(path.with_name(name))
    atomic_write_text(path, text)
    return [path, *written]


def _rgb(color: list[float]) -> tuple[int, int, int]:
    return tuple(int(round(c * 255)) for c in color[:3])


def write_json(path: str | Path, data: dict) -> None:
    """Parameters as JSON, numbers rounded to 6 decimals so that reruns give identical files."""
    def plain(x):
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if isinstance(x, np.ndarray):
            x = x.tolist()
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, (float, np.floating)):
            return round(float(x), 6) + 0.0  # + 0.0 turns -0.0 into 0.0
        if isinstance(x, np.integer):
            return int(x)
        return x
    atomic_write_text(path, json.dumps(plain(data), indent=1) + "\n")

