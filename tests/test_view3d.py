"""The 3D view helpers: buffer shapes and normals (against trimesh), the pythreejs view, the matplotlib drawing."""

import matplotlib.pyplot as plt
import numpy as np
import trimesh

from fixtures.mano import MANO_PARENTS
from handlib.view3d import HandView, draw_hand, hand_frame, mesh_buffers, skeleton_segments



def test_mesh_buffers_shapes_and_normals_match_trimesh():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    buffers = mesh_buffers(sphere.vertices, sphere.faces)
    assert buffers["position"].shape == (len(sphere.vertices), 3) and buffers["position"].dtype == np.float32
    assert buffers["normal"].shape == (len(sphere.vertices), 3) and buffers["normal"].dtype == np.float32
    assert buffers["index"].shape == (3 * len(sphere.faces),) and buffers["index"].dtype == np.uint32
    np.testing.assert_array_equal(buffers["index"].reshape(-1, 3), sphere.faces)
    area_weighted = trimesh.geometry.mean_vertex_normals(len(sphere.vertices), sphere.faces,
                                                         sphere.face_normals * sphere.area_faces[:, None])
    area_weighted /= np.linalg.norm(area_weighted, axis=1, keepdims=True)
    np.testing.assert_allclose(buffers["normal"], area_weighted, atol=1e-6)
    np.testing.assert_allclose(buffers["normal"], sphere.vertices, atol=0.05)  # outward on a unit sphere


def test_hand_frame_is_a_rotation_with_length_away_from_the_wrist():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(500, 3)) * [0.02, 0.09, 0.005]  # breadth, length, thickness
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    points = points @ rotation.T
    wrist = rotation @ np.array([0, -0.1, 0])
    frame = hand_frame(points, wrist)
    np.testing.assert_allclose(frame @ frame.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(frame) > 0
    np.testing.assert_allclose(frame[1], rotation[:, 1], atol=0.05)  # the length axis, pointing away from the wrist


def test_skeleton_segments_join_parents_to_children():
    joints = np.arange(48, dtype=float).reshape(16, 3)
    segments = skeleton_segments(joints, np.array(MANO_PARENTS))
    assert segments.shape == (15, 2, 3)
    np.testing.assert_array_equal(segments[2], [joints[2], joints[3]])  # index2 -> index3
    np.testing.assert_array_equal(segments[3], [joints[0], joints[4]])  # wrist -> middle1


def test_hand_view_and_drawing():
    sphere = trimesh.creation.icosphere(subdivisions=1)
    joints = sphere.vertices[:16] * 0.5
    view = HandView(sphere.vertices, sphere.faces, joints, np.array(MANO_PARENTS), width=200, height=150)
    assert view.geometry.attributes["index"].array.shape == (3 * len(sphere.faces),)
    view.update(sphere.vertices * 2, joints * 2)
    np.testing.assert_allclose(view.geometry.attributes["position"].array, sphere.vertices * 2, rtol=1e-6)
    assert view.bones.attributes["position"].array.shape == (30, 3)

    fig = plt.figure()
    ax = fig.add_subplot(projection="3d")
    draw_hand(ax, sphere.vertices, sphere.faces, hand_frame(sphere.vertices, joints[0]), joints,
              np.array(MANO_PARENTS))
    assert len(ax.collections) == 3  # mesh, bones, joints
    plt.close(fig)
