"""The built-in hand (handlib.builtin): a clean closed surface, anatomy and anthropometry, joints and weights,
the shape and pose spaces, 90-degree bends, the UV atlas, the mirrored left hand, the cache and determinism.

The model comes from the cache in data/builtin/ (generated on first use, about 20 s)."""

import numpy as np
import pytest
import scipy.sparse
import torch
import trimesh

from handlib import builtin
from handlib.builtin_shape import hand_dimensions
from handlib.builtin_skeleton import MEAN_SPEC, skeleton
from handlib.model import HandModel, batch_rodrigues

PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
MANO_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f",
             "hands_components", "hands_mean", "hands_coeffs", "J", "bs_style", "bs_type")


@pytest.fixture(scope="module")
def right() -> dict:
    return builtin.builtin_params("right")


@pytest.fixture(scope="module")
def left() -> dict:
    return builtin.builtin_params("left")


def _faces(params: dict) -> np.ndarray:
    return params["f"].astype(np.int64)


def _knuckle_mask(params: dict) -> np.ndarray:
    """Vertices of the palm and the four fingers' first bones (not the thumb)."""
    return np.isin(params["weights"].argmax(axis=1), [0, 1, 4, 7, 10])


def winding_number(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, own=None) -> np.ndarray:
    """Generalised winding number of a closed mesh at points (1 inside, 0 outside): summed solid angles.
    own (P,): a face each point lies on, left out of its sum (the winding number on the surface is then 1/2)."""
    out = []
    index = np.arange(len(points))
    for rows in np.array_split(index, max(1, len(points) // 200)):
        a, b, c = (vertices[faces[:, i]][None] - points[rows, None] for i in range(3))
        la, lb, lc = (np.linalg.norm(x, axis=2) for x in (a, b, c))
        det = np.einsum("pfc,pfc->pf", a, np.cross(b, c))
        div = la * lb * lc + np.einsum("pfc,pfc->pf", a, b) * lc + np.einsum("pfc,pfc->pf", a, c) * lb \
            + np.einsum("pfc,pfc->pf", b, c) * la
        angle = np.arctan2(det, div)
        if own is not None:
            angle[np.arange(len(rows)), own[rows]] = 0.0
        out.append(angle.sum(axis=1) / (2 * np.pi))
    return np.concatenate(out)


def vertex_links_are_cycles(faces: np.ndarray, num_vertices: int) -> bool:
    """2-manifold at every vertex: the edges opposite a vertex in its faces form one closed cycle."""
    incident = [[] for _ in range(num_vertices)]
    for a, b, c in faces:
        incident[a].append((b, c))
        incident[b].append((c, a))
        incident[c].append((a, b))
    for link in incident:
        nxt = dict(link)
        if len(nxt) != len(link) or set(nxt) != set(nxt.values()):
            return False
        start, node, steps = link[0][0], nxt[link[0][0]], 1
        while node != start:
            node, steps = nxt[node], steps + 1
        if steps != len(link):
            return False
    return True


def test_mano_file_layout(right):
    n = len(right["v_template"])
    assert set(MANO_KEYS) <= set(right)
    assert right["v_template"].shape == (n, 3) and right["shapedirs"].shape == (n, 3, 10)
    assert right["posedirs"].shape == (n, 3, 135) and right["weights"].shape == (n, 16)
    assert scipy.sparse.issparse(right["J_regressor"]) and right["J_regressor"].format == "csc"
    assert right["J_regressor"].shape == (16, n)
    assert right["kintree_table"].shape == (2, 16) and np.issubdtype(right["kintree_table"].dtype, np.integer)
    assert right["kintree_table"][0, 0] == 4294967295 and list(right["kintree_table"][0, 1:]) == PARENTS[1:]
    assert right["f"].dtype == np.uint32 and right["f"].max() == n - 1
    assert right["hands_components"].shape == (45, 45) and right["hands_mean"].shape == (45,)
    assert right["hands_coeffs"].ndim == 2 and right["hands_coeffs"].shape[1] == 45
    np.testing.assert_allclose(right["J"], right["J_regressor"] @ right["v_template"], atol=1e-12)
    assert right["bs_style"] == "lbs" and right["bs_type"] == "lrotmin"
    assert right["tip_ids"].shape == (5,) and right["ft"].shape == right["f"].shape


def test_template_is_a_closed_2_manifold_outward_mesh(right):
    verts, faces = right["v_template"], _faces(right)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert 700 <= len(verts) <= 3000
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert mesh.euler_number == 2  # one closed surface of genus 0
    assert vertex_links_are_cycles(faces, len(verts))
    assert len(np.unique(np.sort(faces, axis=1), axis=0)) == len(faces)
    assert mesh.area_faces.min() > 1e-7  # m^2: 0.1 mm^2, no degenerate face
    edges = np.linalg.norm(verts[faces] - verts[np.roll(faces, 1, axis=1)], axis=2)
    assert edges.min() > 5e-4  # 0.5 mm
    # no fold and no face inside another part: on its own surface a closed mesh's winding number is 1/2
    centres = verts[faces].mean(axis=1)
    np.testing.assert_allclose(winding_number(centres, verts, faces, own=np.arange(len(faces))), 0.5, atol=1e-3)
    inside = mesh.vertices[faces[0]].mean(axis=0) - 1e-3 * mesh.face_normals[0]
    assert abs(winding_number(inside[None], verts, faces)[0] - 1) < 1e-3  # and the normals point outward


def test_flat_right_hand_in_manos_frame(right):
    joints, tips = right["J"], right["v_template"][right["tip_ids"]]  # tips: thumb, index, middle, ring, pinky
    assert np.all(winding_number(joints, right["v_template"], _faces(right)) > 0.99)  # joints inside
    assert np.all(tips[1:, 0] < joints[0, 0] - 0.12)  # fingers point along -x
    assert np.all(np.diff(tips[1:, 2]) < 0)  # index, middle, ring, pinky from +z to -z; the thumb on +z
    assert tips[0, 2] > tips[1, 2] + 0.02 and tips[0, 0] < joints[13, 0]
    np.testing.assert_allclose(tips[1:, 1], joints[[3, 6, 12, 9], 1], atol=0.006)  # flat: tips level
    back = right["v_template"][:, 1].max() - joints[4, 1]
    palm = joints[4, 1] - right["v_template"][:, 1].min()
    assert 0.005 < back < palm  # the back of the hand faces +y, flatter than the palm side with the thenar
    for tip, digit in zip(right["tip_ids"], (4, 0, 1, 3, 2)):  # each tip vertex is its digit's farthest point
        last = 3 + 3 * digit
        axis = joints[last] - joints[last - 1]
        own = right["weights"][:, last] > 0.99
        reach = (right["v_template"][own] - joints[last]) @ axis
        assert (right["v_template"][tip] - joints[last]) @ axis >= reach.max() - 1e-9


def test_anthropometry_of_the_mean_hand(right):
    length, breadth = hand_dimensions(right["v_template"][None], right["J"][None], right["tip_ids"][2],
                                      _knuckle_mask(right))
    assert 0.180 < length[0] < 0.190  # reference.md: 177 (women) to 193 (men) mm
    assert 0.080 < breadth[0] < 0.088  # 79 to 89 mm


def test_shape_space_covers_adult_hands_without_degenerate_meshes(right):
    verts, faces = right["v_template"].astype(np.float32), _faces(right)
    rest = trimesh.Trimesh(right["v_template"], faces, process=False)
    dirs = right["shapedirs"].reshape(-1, 10).astype(np.float32)
    betas = np.random.default_rng(0).standard_normal((10000, 10)).astype(np.float32)
    shaped = right["v_template"][..., None] + right["shapedirs"] @ betas.T.astype(np.float64)  # (V, 3, N)
    joints = np.einsum("jv,vcn->njc", right["J_regressor"].toarray(), shaped)
    lengths = hand_dimensions(shaped.transpose(2, 0, 1), joints, right["tip_ids"][2], _knuckle_mask(right))[0]
    worst = np.inf
    scale = (rest.face_normals / (2 * rest.area_faces[:, None])).astype(np.float32)
    for chunk in np.array_split(betas, 20):
        tri = (verts + (chunk @ dirs.T).reshape(len(chunk), -1, 3))[:, faces]
        cross = np.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])
        worst = min(worst, np.einsum("bfc,fc->bf", cross, scale).min())
    assert lengths.min() < 0.160 and lengths.max() > 0.215  # the adult range
    assert 0.009 < lengths.std() < 0.014  # men and women together (reference.md: SD 9 mm each, means 16 apart)
    assert worst > 0.05  # every face of every sample keeps its orientation and at least 5% of its area


def test_joint_regressor_reproduces_the_skeleton(right):
    regressor = right["J_regressor"].toarray()
    assert regressor.min() >= 0 and np.all(regressor.max(axis=1) > 0)
    np.testing.assert_allclose(regressor.sum(axis=1), 1.0, atol=1e-9)
    assert np.all((regressor > 0).sum(axis=1) <= 40)
    skel = skeleton(MEAN_SPEC)["joints"]  # mm, hand coordinates: the anatomical definition
    expected = (skel - skel[4] * [1, 0, 0]) @ builtin.HAND_TO_MANO.T * 1e-3
    np.testing.assert_allclose(regressor @ right["v_template"], expected, atol=5e-4)
    betas = np.random.default_rng(1).standard_normal((4, 10)) * 2.5
    for beta in betas:  # joints follow the shape: still inside it
        shaped = right["v_template"] + right["shapedirs"] @ beta
        assert np.all(winding_number(regressor @ shaped, shaped, _faces(right)) > 0.99)


def test_skinning_weights(right):
    w = right["weights"]
    assert w.min() >= 0 and w.max() <= 1
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)
    assert np.all((w > 0.9).sum(axis=0) >= 5)  # every joint drives a rigid part
    assert np.all(np.argmax(w[right["tip_ids"]], axis=1) == [15, 3, 6, 12, 9])
    blended = ((w > 0.05) & (w < 0.95)).any(axis=1)
    assert 0.15 < blended.mean() < 0.6  # smooth blends at the joints, rigid between them


def _bend(params: dict, side: str, joint: int, degrees: float) -> tuple[float, float, np.ndarray]:
    """Bend one joint about its flexion axis: (inverted face share, relative volume change, tip offsets)."""
    pose = np.zeros((16, 3))
    pose[joint] = np.radians(degrees) * builtin.builtin_joint_axes(side)[joint - 1, 0]
    return _posed_quality(params, side, pose)


def _posed_quality(params: dict, side: str, pose: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(inverted face share, relative volume change, tip offsets) of the flat-mean model at pose (16, 3)."""
    model = HandModel(params, side=side, flat_hand_mean=True).double()
    verts = model(hand_pose=torch.tensor(pose[1:].reshape(1, 45))).vertices[0].numpy()
    faces = _faces(params)
    rest = trimesh.Trimesh(params["v_template"], faces, process=False)
    posed = trimesh.Trimesh(verts, faces, process=False)
    local = batch_rodrigues(torch.tensor(pose)).numpy()
    world = [local[0]]
    for k in range(1, 16):
        world.append(world[PARENTS[k]] @ local[k])
    blend = np.einsum("fk,kij->fij", params["weights"][faces].mean(axis=1), np.array(world))
    expected = np.einsum("fij,fj->fi", blend, rest.face_normals)  # each face's normal turned by its bones
    inverted = np.mean(np.sum(posed.face_normals * expected, axis=1) <= 0)
    return inverted, posed.volume / rest.volume - 1, verts[params["tip_ids"]] - params["v_template"][params["tip_ids"]]


@pytest.mark.parametrize("joint", range(1, 16))
def test_bending_a_joint_90_degrees_stays_clean(right, joint):
    inverted, volume, tips = _bend(right, "right", joint, 90.0)
    assert inverted < 0.01 and abs(volume) < 0.10
    digit = [1, 2, 4, 3, 0][(joint - 1) // 3]  # index, middle, pinky, ring, thumb -> tip_ids order
    assert tips[digit, 1] < -0.01  # the tip curls toward the palm (-y)
    others = np.delete(np.arange(5), digit)
    assert np.abs(tips[others]).max() < 1e-6  # the other digits stay put (float32 buffers)


def test_mean_pose_is_clean(right):
    """theta = 0 of the default model (flat_hand_mean=False) is the relaxed mean pose."""
    pose = np.concatenate([np.zeros((1, 3)), right["hands_mean"].reshape(15, 3)])
    inverted, volume, _ = _posed_quality(right, "right", pose)
    assert inverted < 0.01 and abs(volume) < 0.10


def test_pose_space(right):
    comps, mean = right["hands_components"], right["hands_mean"]
    np.testing.assert_allclose(comps @ comps.T, np.eye(45), atol=1e-9)
    coeffs = right["hands_coeffs"]
    var = coeffs.var(axis=0)
    assert var[0] > var[5] > var[20] and var[:6].sum() > 0.8 * var.sum()  # components by variance; synergies
    flex = np.einsum("jc,jc->j", mean.reshape(15, 3), builtin.builtin_joint_axes("right")[:, 0])
    assert np.all(flex > np.radians(5)) and np.all(flex < np.radians(70))  # the mean pose: relaxed, curled


def test_uv_atlas_is_one_flat_non_overlapping_layout(right):
    vt, ft = right["vt"], right["ft"]
    assert vt.min() >= 0 and vt.max() <= 1 and ft.max() == len(vt) - 1
    tri = vt[ft]
    area = 0.5 * ((tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1])
                  - (tri[:, 1, 1] - tri[:, 0, 1]) * (tri[:, 2, 0] - tri[:, 0, 0]))
    assert area.min() > 0  # every face keeps its orientation in the atlas: no flips, no degenerate faces
    size = 512  # rasterise: no texel centre may lie inside two triangles
    count = np.zeros((size, size), dtype=int)
    for t in tri * size:
        lo, hi = np.floor(t.min(axis=0)).astype(int), np.ceil(t.max(axis=0)).astype(int)
        x, y = np.meshgrid(np.arange(lo[0], hi[0]) + 0.5, np.arange(lo[1], hi[1]) + 0.5)
        p = np.stack([x.ravel(), y.ravel()], axis=1)
        d = [(t[(i + 1) % 3, 0] - t[i, 0]) * (p[:, 1] - t[i, 1]) - (t[(i + 1) % 3, 1] - t[i, 1]) * (p[:, 0] - t[i, 0])
             for i in range(3)]
        inside = (d[0] > 0) & (d[1] > 0) & (d[2] > 0)
        np.add.at(count, (p[inside, 1].astype(int), p[inside, 0].astype(int)), 1)
    assert count.max() == 1 and (count > 0).mean() > 0.25
    # seams only: every face's corners are its own vertices' corners in the atlas
    assert len(np.unique(np.stack([right["f"].ravel(), ft.ravel()], axis=1), axis=0)) == len(vt)


def test_left_hand_is_the_mirror_image(right, left):
    np.testing.assert_allclose(left["v_template"], right["v_template"] * [-1, 1, 1])
    np.testing.assert_allclose(left["shapedirs"], right["shapedirs"] * np.array([-1, 1, 1])[:, None])
    np.testing.assert_allclose(left["hands_mean"], right["hands_mean"] * np.tile([1, -1, -1], 15))
    mesh = trimesh.Trimesh(left["v_template"], _faces(left), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    right_model = HandModel(right, "right").double()
    left_model = HandModel(left, "left").double()
    betas = torch.tensor(np.random.default_rng(2).standard_normal((3, 10)))
    pose = torch.tensor(np.random.default_rng(3).standard_normal((3, 45)) * 0.3)
    out_r = right_model(betas=betas, hand_pose=pose)
    out_l = left_model(betas=betas, hand_pose=pose * torch.tensor(np.tile([1.0, -1.0, -1.0], 15)))
    np.testing.assert_allclose(out_l.vertices.numpy(), out_r.vertices.numpy() * [-1, 1, 1], atol=1e-9)
    inverted, volume, tips = _bend(left, "left", 4, 90.0)
    assert inverted < 0.01 and abs(volume) < 0.10 and tips[2, 1] < -0.01


def test_cache_is_rebuilt_when_missing_stale_or_broken(tmp_path, monkeypatch):
    path = tmp_path / "builtin" / "hand.npz"
    calls = []

    def fake_generate():
        calls.append(1)
        return {"v_template": np.arange(6.0).reshape(2, 3)}

    monkeypatch.setattr(builtin, "cache_path", lambda: path)
    monkeypatch.setattr(builtin, "generate", fake_generate)
    assert builtin._load_or_generate()["v_template"].shape == (2, 3) and len(calls) == 1
    assert builtin._load_or_generate()["v_template"].shape == (2, 3) and len(calls) == 1  # from the cache
    monkeypatch.setattr(builtin, "GENERATOR_VERSION", builtin.GENERATOR_VERSION + 1)
    builtin._load_or_generate()
    assert len(calls) == 2  # a new generator version rebuilds
    path.write_bytes(b"not a zip file")
    builtin._load_or_generate()
    assert len(calls) == 3 and np.load(path)["v_template"].shape == (2, 3)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    builtin._load_or_generate()
    assert len(calls) == 4 and np.load(path)["v_template"].shape == (2, 3)
    assert [p.name for p in path.parent.iterdir()] == ["hand.npz"]  # no temporary file left behind
    monkeypatch.setattr(builtin, "cache_path", lambda: tmp_path / "a_file" / "hand.npz")
    (tmp_path / "a_file").write_text("")  # the cache's folder cannot be made: a warning, still a hand
    with pytest.warns(UserWarning, match="could not cache"):
        assert builtin._load_or_generate()["v_template"].shape == (2, 3)


def test_generation_is_deterministic(right):
    fresh = builtin.generate()
    cached = builtin._right()
    assert set(fresh) == set(cached)
    for key, value in fresh.items():
        if np.issubdtype(np.asarray(value).dtype, np.integer):
            np.testing.assert_array_equal(value, cached[key], err_msg=key)
        else:
            np.testing.assert_allclose(value, cached[key], rtol=0, atol=1e-9, err_msg=key)
