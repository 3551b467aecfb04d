import json

import numpy as np
import pygltflib
import pytest
import torch
import trimesh
from PIL import Image
from scipy.spatial.transform import Rotation

from handlib import export
from handlib.model import HandModel

PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]


def tiny_params(seed=0) -> dict:
    """A small MANO-layout hand: a 12-vertex sphere around each of 16 joints, each vertex skinned to its joint,
    the parent and up to two more (4 weights), random shape and pose blend shapes, and a UV seam at every
    face corner."""
    rng = np.random.default_rng(seed)
    joints = np.zeros((16, 3))
    for finger, (j, y) in enumerate(zip(range(1, 16, 3), [0.03, 0.01, -0.03, -0.01, 0.04])):
        for k in range(3):
            joints[j + k] = [0.08 + 0.025 * k - 0.03 * (finger == 4), y, 0.005 * k]
    sphere = trimesh.creation.icosphere(subdivisions=0, radius=0.006)
    verts = np.concatenate([sphere.vertices + j for j in joints])  # (192, 3)
    faces = np.concatenate([sphere.faces + 12 * i for i in range(16)])
    weights = np.zeros((len(verts), 16))
    for i in range(16):
        rows = slice(12 * i, 12 * i + 12)
        others = rng.choice([k for k in range(16) if k not in (i, PARENTS[i])], 2, replace=False)
        weights[rows, i] = 0.6
        weights[rows, max(PARENTS[i], 0) if i else 1] += 0.25
        weights[rows, others[0]] = 0.1
        weights[rows, others[1]] = 0.05
    regressor = np.zeros((16, len(verts)))
    for i in range(16):
        regressor[i, 12 * i:12 * i + 12] = 1 / 12
    return {
        "v_template": verts, "f": faces, "weights": weights, "J_regressor": regressor,
        "kintree_table": np.stack([np.array(PARENTS) % 2**32, np.arange(16)]),
        "shapedirs": rng.normal(size=(len(verts), 3, 10)) * 1e-3,
        "posedirs": rng.normal(size=(len(verts), 3, 135)) * 1e-3,
        "hands_components": np.linalg.qr(rng.normal(size=(45, 45)))[0], "hands_mean": rng.normal(size=45) * 0.1,
        "tip_ids": np.array([12 * 15 + 1, 12 * 3 + 1, 12 * 6 + 1, 12 * 12 + 1, 12 * 9 + 1]),
        "vt": rng.uniform(size=(3 * len(faces), 2)), "ft": np.arange(3 * len(faces)).reshape(-1, 3),
    }


@pytest.fixture
def model():
    return HandModel(tiny_params()).double()


def _accessor(gltf, data: bytes, index: int) -> np.ndarray:
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    dtype = {5126: np.float32, 5121: np.uint8, 5123: np.uint16, 5125: np.uint32}[acc.componentType]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}[acc.type]
    start = view.byteOffset + (acc.byteOffset or 0)
    return np.frombuffer(data, dtype, acc.count * width, start).reshape(acc.count, width)


def _world_matrices(gltf) -> dict[int, np.ndarray]:
    """Each node's world transform from its translation/rotation/scale and the node hierarchy (glTF spec)."""
    parent = {c: i for i, n in enumerate(gltf.nodes) for c in (n.children or [])}

    def local(n):
        m = np.eye(4)
        m[:3, :3] = Rotation.from_quat(n.rotation or [0, 0, 0, 1]).as_matrix() * (n.scale or [1, 1, 1])
        m[:3, 3] = n.translation or [0, 0, 0]
        return m

    def world(i):
        return local(gltf.nodes[i]) if i not in parent else world(parent[i]) @ local(gltf.nodes[i])
    return {i: world(i) for i in range(len(gltf.nodes))}


def _load(path):
    gltf = pygltflib.GLTF2().load(str(path))
    return gltf, gltf.binary_blob()


def test_glb_skeleton_weights_and_inverse_bind_matrices(model, tmp_path):
    betas = torch.linspace(-1, 1, 10, dtype=torch.float64)
    rig = export.Rig.from_model(model, betas)
    texture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    export.write_glb(tmp_path / "hand.glb", rig, texture=texture)
    gltf, data = _load(tmp_path / "hand.glb")
    skin = gltf.skins[0]
    assert len(skin.joints) == 16
    assert [gltf.nodes[j].name for j in skin.joints] == list(export.MANO_JOINT_NAMES)
    prim = gltf.meshes[0].primitives[0]
    positions = _accessor(gltf, data, prim.attributes.POSITION)
    ids, faces, uv = rig.unwelded()
    assert len(positions) == len(ids) == 3 * len(model.faces)  # every corner has its own UV here
    weights = _accessor(gltf, data, prim.attributes.WEIGHTS_0)
    np.testing.assert_allclose(weights.sum(axis=1), 1, atol=1e-6)
    # the bind pose is the shaped rest mesh: T̄ + B_S(β)
    rest = model.v_template + torch.einsum("vck,k->vc", model.shapedirs, betas)
    np.testing.assert_allclose(positions, rest.numpy()[ids], atol=1e-6)
    # inverse bind matrices invert the joints' world transforms in the bind pose
    world = _world_matrices(gltf)
    ibm = _accessor(gltf, data, skin.inverseBindMatrices).reshape(16, 4, 4).transpose(0, 2, 1)
    for k, node in enumerate(skin.joints):
        np.testing.assert_allclose(world[node] @ ibm[k], np.eye(4), atol=1e-6)
    # the texture is embedded and UVs flip v (glTF's origin is top-left)
    np.testing.assert_allclose(_accessor(gltf, data, prim.attributes.TEXCOORD_0)[:, 1], 1 - uv[:, 1], atol=1e-6)
    assert gltf.images[0].mimeType == "image/png"
    loaded = trimesh.load(tmp_path / "hand.glb", force="mesh")
    assert len(loaded.vertices) == len(ids) and len(loaded.faces) == len(model.faces)


def test_skinning_the_glb_reproduces_the_model(model, tmp_path):
    """Linear blend skinning of the file's data, at a pose, equals HandModel without pose blend shapes."""
    rng = np.random.default_rng(2)
    betas = torch.tensor(rng.normal(size=(1, 10)))
    hand_pose = torch.tensor(rng.normal(size=(1, 45)) * 0.4)
    orient, transl = torch.tensor([[0.3, -0.5, 1.2]], dtype=torch.float64), torch.tensor([[0.1, 0.2, 0.5]],
                                                                                         dtype=torch.float64)
    rig = export.Rig.from_model(model, betas[0])
    pose = export.full_pose(model, hand_pose[0], orient[0])
    export.write_glb(tmp_path / "posed.glb", rig, pose=pose, transl=transl[0].numpy(),
                     poses=np.stack([pose, np.zeros_like(pose)]))
    gltf, data = _load(tmp_path / "posed.glb")
    prim, skin = gltf.meshes[0].primitives[0], gltf.skins[0]
    positions = _accessor(gltf, data, prim.attributes.POSITION).astype(np.float64)
    joint_ids = _accessor(gltf, data, prim.attributes.JOINTS_0)
    weights = _accessor(gltf, data, prim.attributes.WEIGHTS_0).astype(np.float64)
    world = _world_matrices(gltf)
    ibm = _accessor(gltf, data, skin.inverseBindMatrices).reshape(16, 4, 4).transpose(0, 2, 1)
    joint_mats = np.stack([world[n] @ ibm[k] for k, n in enumerate(skin.joints)])  # (16, 4, 4)
    skinned = np.einsum("vk,vkij,vj->vi", weights, joint_mats[joint_ids], np.c_[positions, np.ones(len(positions))])

    no_correctives = tiny_params()
    no_correctives["posedirs"] = np.zeros_like(no_correctives["posedirs"])
    expected = HandModel(no_correctives).double()(betas, hand_pose, orient, transl).vertices[0].numpy()
    ids = rig.unwelded()[0]
    np.testing.assert_allclose(skinned[:, :3], expected[ids], atol=2e-6)
    # the animation's first key is the pose the nodes show, its second the bind pose
    anim = gltf.animations[0]
    assert len(anim.channels) == 16
    for channel in anim.channels:
        keys = _accessor(gltf, data, anim.samplers[channel.sampler].output)
        np.testing.assert_allclose(keys[0], gltf.nodes[channel.target.node].rotation, atol=1e-6)
        np.testing.assert_allclose(keys[1], [0, 0, 0, 1], atol=1e-7)


def test_top_weights_keep_the_four_largest_renormalised():
    w = np.array([[0.05, 0.1, 0.4, 0.2, 0.25]])
    ids, top = export.top_weights(w)
    assert ids.tolist() == [[2, 4, 3, 1]]
    np.testing.assert_allclose(top, [[0.4, 0.25, 0.2, 0.1]] / np.float64(0.95))
    ids, top = export.top_weights(np.array([[0.0, 0.0, 0.3, 0.0, 0.7]]))  # unused slots: joint 0, weight 0
    assert ids.tolist() == [[4, 2, 0, 0]] and top.tolist() == [[0.7, 0.3, 0.0, 0.0]]


def test_obj_has_uvs_material_and_texture_and_json_is_stable(model, tmp_path):
    rig = export.Rig.from_model(model)
    texture = Image.new("RGB", (8, 8), (200, 100, 50))
    export.write_obj(tmp_path / "hand.obj", rig, texture=texture)
    assert (tmp_path / "hand.mtl").exists() and (tmp_path / "hand.png").exists()
    assert "map_Kd hand.png" in (tmp_path / "hand.mtl").read_text()
    mesh = trimesh.load(tmp_path / "hand.obj", process=False)
    assert len(mesh.faces) == len(model.faces)
    assert mesh.visual.uv.shape == (len(rig.unwelded()[0]), 2)
    assert np.asarray(mesh.visual.material.image).reshape(-1, 3)[0].tolist() == [200, 100, 50]
    export.write_json(tmp_path / "p.json", {"beta": torch.tensor([1e-9, -1e-9, 0.1234567]), "name": "x"})
    first = (tmp_path / "p.json").read_bytes()
    assert json.loads(first) == {"beta": [0.0, 0.0, 0.123457], "name": "x"}
    export.write_json(tmp_path / "p.json", {"beta": torch.tensor([1e-9, -1e-9, 0.1234567]), "name": "x"})
    assert (tmp_path / "p.json").read_bytes() == first


def test_a_model_without_uvs_exports_without_texture_coordinates(tmp_path):
    params = tiny_params()
    del params["vt"], params["ft"]  # as the real MANO files: no UV atlas
    rig = export.Rig.from_model(HandModel(params).double())
    export.write_glb(tmp_path / "plain.glb", rig, texture=Image.new("RGB", (4, 4)))
    gltf, data = _load(tmp_path / "plain.glb")
    attributes = gltf.meshes[0].primitives[0].attributes
    assert attributes.TEXCOORD_0 is None and not gltf.images
    assert len(_accessor(gltf, data, attributes.POSITION)) == len(params["v_template"])  # no seams to split
    written = export.write_obj(tmp_path / "plain.obj", rig)
    assert written == [tmp_path / "plain.obj"]
    assert len(trimesh.load(tmp_path / "plain.obj", process=False).vertices) == len(params["v_template"])
