"""3D views of a hand mesh: a pythreejs widget for interactive notebooks, matplotlib axes for figures.

Both look at the hand in its `hand_frame`: along the palm normal, fingers up, whatever the model's axes.
"""

from __future__ import annotations

import numpy as np

SKIN = "#d9a58a"


def hand_frame(vertices: np.ndarray, wrist: np.ndarray) -> np.ndarray:
    """(3, 3) rotation whose rows are the hand's breadth, length (wrist to fingers) and palm-normal axes.

    From the principal axes of `vertices` (V, 3); the length axis points away from `wrist` (3,).
    """
    centred = vertices - vertices.mean(0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)  # rows: largest to smallest spread
    length, breadth = axes[0], axes[1]
    if length @ (vertices.mean(0) - wrist) < 0:
        length = -length
    return np.stack([breadth, length, np.cross(breadth, length)])


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit normals: the area-weighted sum of the adjacent faces' normals."""
    corners = vertices[faces]  # (F, 3, 3)
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # length: 2 × area
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def skeleton_segments(joints: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """(J − 1, 2, 3): each non-root joint's bone, from its parent to it."""
    children = np.flatnonzero(np.asarray(parents) >= 0)
    return np.stack([joints[np.asarray(parents)[children]], joints[children]], 1)


def mesh_buffers(vertices: np.ndarray, faces: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of a three.js indexed BufferGeometry: position, normal (V, 3) float32, index (3F,) uint32."""
    vertices = np.asarray(vertices, np.float64)
    return {"position": vertices.astype(np.float32),
            "normal": vertex_normals(vertices, faces).astype(np.float32),
            "index": np.asarray(faces, np.uint32).ravel()}


class HandView:
    """A pythreejs view of a hand mesh and its skeleton; `update` moves them in place (for sliders)."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, joints: np.ndarray, parents: np.ndarray,
                 width: int = 480, height: int = 420):
        import pythreejs as p3

        self.faces, self.parents = np.asarray(faces), np.asarray(parents)
        buffers = mesh_buffers(vertices, self.faces)
        self.geometry = p3.BufferGeometry(attributes={k: p3.BufferAttribute(v) for k, v in buffers.items()})
        bones = skeleton_segments(joints, self.parents).reshape(-1, 3).astype(np.float32)
        self.bones = p3.BufferGeometry(attributes={"position": p3.BufferAttribute(bones)})
        mesh = p3.Mesh(self.geometry, p3.MeshStandardMaterial(color=SKIN, roughness=0.8, transparent=True,
                                                               opacity=0.85, side="DoubleSide"))
        skeleton = p3.LineSegments(self.bones, p3.LineBasicMaterial(color="#202020", linewidth=2))
        frame = hand_frame(np.asarray(vertices), np.asarray(joints)[0])
        centre = np.asarray(vertices).mean(0)
        radius = float(np.linalg.norm(np.asarray(vertices) - centre, axis=1).max())
        eye = centre + radius * (2.6 * frame[2] + 0.8 * frame[0])
        camera = p3.PerspectiveCamera(position=eye.tolist(), up=frame[1].tolist(), aspect=width / height, fov=40,
                                      children=[p3.DirectionalLight(color="white", intensity=0.7,
                                                                    position=[0, 1, 1])])
        scene = p3.Scene(children=[mesh, skeleton, camera, p3.AmbientLight(color="white", intensity=0.5)],
                         background="white")
        self.widget = p3.Renderer(camera=camera, scene=scene, width=width, height=height,
                                  controls=[p3.OrbitControls(controlling=camera, target=centre.tolist())])

    def update(self, vertices: np.ndarray, joints: np.ndarray) -> None:
        buffers = mesh_buffers(vertices, self.faces)
        self.geometry.attributes["position"].array = buffers["position"]
        self.geometry.attributes["normal"].array = buffers["normal"]
        bones = skeleton_segments(joints, self.parents).reshape(-1, 3).astype(np.float32)
        self.bones.attributes["position"].array = bones


def draw_hand(ax, vertices: np.ndarray, faces: np.ndarray, frame: np.ndarray, joints: np.ndarray | None = None,
              parents: np.ndarray | None = None, color: str = SKIN, half_size: float | None = None) -> None:
    """Draw a shaded mesh (and its skeleton) on a matplotlib 3D axis, in `frame` (see hand_frame).

    The hand's length is drawn upwards, its breadth left to right, its palm normal towards the viewer.
    half_size (metres): the drawn cube's half side, the same for every panel so that sizes compare;
    by default the mesh fills the axis.
    """
    from matplotlib.colors import to_rgb
    from mpl_toolkits.mplot3d.art3d import Line3DCollection, Poly3DCollection

    to_axes = np.stack([frame[0], -frame[2], frame[1]])  # a rotation; matplotlib's vertical axis is z
    v = np.asarray(vertices) @ to_axes.T
    corners = v[np.asarray(faces)]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    light = np.array([0.3, -0.8, 0.5]) / np.linalg.norm([0.3, -0.8, 0.5])
    shade = 0.35 + 0.65 * np.abs(normals @ light)
    ax.add_collection3d(Poly3DCollection(corners, facecolors=np.clip(shade[:, None] * to_rgb(color), 0, 1),
                                         edgecolor="none", alpha=0.6 if joints is not None else 1.0))
    if joints is not None and parents is not None:
        j = np.asarray(joints) @ to_axes.T
        ax.add_collection3d(Line3DCollection(skeleton_segments(j, parents), colors="black", linewidths=1.5))
        ax.scatter(*j.T, color="crimson", s=8, depthshade=False)
    centre = (v.max(0) + v.min(0)) / 2
    half = (v.max(0) - v.min(0)).max() / 2 if half_size is None else half_size
    ax.set(xlim=(centre[0] - half, centre[0] + half), ylim=(centre[1] - half, centre[1] + half),
           zlim=(centre[2] - half, centre[2] + half))
    ax.set_box_aspect((1, 1, 1), zoom=1.4)
    ax.view_init(elev=15, azim=-75)
    ax.set_axis_off()
