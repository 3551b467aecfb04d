"""handlib.render against independent computations: a polygon filler (matplotlib), closed-form depth, normals and UVs,
handlib.camera's projections, and the renderer itself one sample at a time."""

import multiprocessing
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import trimesh
from matplotlib.path import Path

from handlib import camera, gl
from handlib.render import (Light, Perspective, Renderer, WeakPerspective, framing_camera, part_labels,
                            vertex_normals)

H, W = 72, 96  # not square, so that a swapped axis shows


def lumpy_sphere(seed=0, subdivisions=3):
    """A non-convex closed mesh (radius 1 +- 0.25), vertices (V, 3) float32 and faces (F, 3)."""
    mesh = trimesh.creation.icosphere(subdivisions)
    v = np.asarray(mesh.vertices)
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(4, 3)) * 2
    bumps = 1 + 0.25 * np.sin(v @ k.T).mean(axis=1)
    return (v * bumps[:, None]).astype(np.float32), np.asarray(mesh.faces)


def rotation(seed):
    return trimesh.transformations.random_rotation_matrix(seed=seed)[:3, :3].astype(np.float32)


def pinhole(fx=110.0, fy=95.0, cx=W / 2 - 3.3, cy=H / 2 + 2.1):
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32)


def project(verts, cam, height=H, width=W):
    """Pixels (B, V, 2) by handlib.camera, the conventions the renderer must follow."""
    v = torch.tensor(np.asarray(verts), dtype=torch.float64)
    if isinstance(cam, WeakPerspective):
        cam_ = torch.tensor(np.asarray(cam.cam), dtype=torch.float64)
        return camera.normalized_to_pixels(camera.weak_perspective(v, cam_), width, height).numpy()
    K, R, t = (None if x is None else torch.tensor(np.asarray(x), dtype=torch.float64) for x in cam)
    return camera.perspective(v, K, R, t).numpy()


def polygon_fill(pixels, faces):
    """Independent rasterisation: the pixel centres (integers) inside each projected triangle, by matplotlib."""
    filled = np.zeros((H, W), bool)
    for tri in pixels[faces]:
        x0, y0 = np.maximum(np.floor(tri.min(0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(tri.max(0)).astype(int), [W - 1, H - 1])
        if x1 < x0 or y1 < y0:
            continue
        gy, gx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        inside = Path(tri).contains_points(np.stack([gx.ravel(), gy.ravel()], 1), radius=1e-9)
        filled[gy.ravel()[inside], gx.ravel()[inside]] = True
    return filled


def cameras(B):
    verts, faces = lumpy_sphere()
    rots = np.stack([rotation(s) for s in range(B)])
    weak = WeakPerspective(np.stack([[0.55, 0.1, -0.05], [0.4, -0.3, 0.2], [0.7, 0.0, 0.0]])[:B])
    persp = Perspective(np.stack([pinhole(), pinhole(90, 90, 40, 30), pinhole(130, 120)])[:B], rots,
                        np.array([[0.1, -0.05, 3.0], [-0.3, 0.2, 3.5], [0.0, 0.0, 2.6]], np.float32)[:B])
    world = np.einsum("bij,vj->bvi", rots, verts)  # posed copies for the weak-perspective camera
    return verts, faces, world, weak, persp


@pytest.mark.parametrize("kind", ["weak", "perspective"])
def test_silhouette_matches_polygon_fill(kind):
    verts, faces, world, weak, persp = cameras(3)
    cam = weak if kind == "weak" else persp
    batch = world if kind == "weak" else np.broadcast_to(verts, (3, *verts.shape))
    mask = Renderer(faces, (H, W), samples=4).render(batch, cam, outputs=("mask",))["mask"]
    for b in range(3):
        truth = polygon_fill(project(batch[b:b + 1], _index(cam, b))[0], faces)
        iou = (mask[b] & truth).sum() / (mask[b] | truth).sum()
        assert truth.sum() > 500 and iou >= 0.98, (b, iou)


@pytest.mark.parametrize("kind", ["weak", "perspective"])
@pytest.mark.parametrize("samples", [1, 8])
def test_image_shows_the_mesh_exactly_where_the_mask_does(kind, samples):
    """The image is resolved only inside a box around each projected mesh: nothing of the mesh may fall outside
    it, also for meshes cut by the image border or reaching behind a perspective camera."""
    verts, faces, world, weak, persp = cameras(3)
    if kind == "weak":
        batch, cam = world, weak._replace(cam=weak.cam.copy())
        cam.cam[0, 1:] = [0.9, -0.8]  # half out of the image, at a corner
    else:
        batch, cam = np.broadcast_to(verts, (3, *verts.shape)).copy(), persp._replace(R=persp.R.copy(),
                                                                                      t=persp.t.copy())
        cam.t[1] = [1.5, 0.0, 3.0]  # cut by the right border
        batch[2] *= np.array([1.0, 0.2, 1.5], np.float32)  # a slab below the camera, reaching behind it
        cam.R[2], cam.t[2] = np.eye(3), [0.0, 0.35, 1.2]
    blue = np.array([0.0, 0.0, 1.0])
    out = Renderer(faces, (H, W), samples=samples).render(batch, cam, background=blue, outputs=("image", "mask"))
    shown = (out["image"] != np.array([0, 0, 255], np.uint8)).any(axis=-1)
    assert out["mask"].any(axis=(1, 2)).all()
    if samples == 1:  # the same pixel centres as the mask
        np.testing.assert_array_equal(shown, out["mask"])
    else:  # antialiased edges reach at most a pixel beyond the centres covered
        assert (shown | ~out["mask"]).all()
        grown = out["mask"].copy()
        for axis in (1, 2):
            grown |= np.roll(out["mask"], 1, axis) | np.roll(out["mask"], -1, axis)
        assert not (shown & ~grown).any()


def _index(cam, b):
    """One sample b (or a slice) of a batch of cameras."""
    pick = b if isinstance(b, slice) else slice(b, b + 1)
    return type(cam)(*(None if x is None else x[pick] for x in cam))


def heightfield(cam):
    """A bumpy surface with one vertex exactly on each pixel centre of a 40 x 30 block, and its camera z."""
    px, py = np.meshgrid(np.arange(20, 60), np.arange(15, 45))
    z = 2.0 + 0.3 * np.sin(px / 5.0) * np.cos(py / 4.0)
    if isinstance(cam, WeakPerspective):
        s, tx, ty = cam.cam[0]
        x = ((px + 0.5) * 2 / W - 1 - tx) / s
        y = ((py + 0.5) * 2 / H - 1 - ty) / s
    else:
        K = cam.K[0]
        x, y = (px - K[0, 2]) * z / K[0, 0], (py - K[1, 2]) * z / K[1, 1]
    verts = np.stack([x, y, z], -1).reshape(-1, 3).astype(np.float32)
    grid = np.arange(px.size).reshape(px.shape)
    a, b, c, d = grid[:-1, :-1], grid[:-1, 1:], grid[1:, :-1], grid[1:, 1:]
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    return verts, faces, px, py, z


@pytest.mark.parametrize("cam", [WeakPerspective(np.array([[0.4, 0.05, -0.1]])), Perspective(pinhole()[None])])
def test_depth_is_camera_z_at_vertex_pixels(cam):
    verts, faces, px, py, z = heightfield(cam)
    out = Renderer(faces, (H, W)).render(verts, cam, outputs=("depth", "mask"))
    depth = out["depth"][0]
    inner = (slice(1, -1), slice(1, -1))  # pixel centres on the mesh border are a tie for the fill rule
    np.testing.assert_allclose(depth[py[inner], px[inner]], z[inner], rtol=1e-5)
    assert np.isinf(depth[~out["mask"][0]]).all() and out["mask"][0].sum() >= z[inner].size


def test_depth_of_occluded_mesh_is_nearest_surface():
    verts, faces, world, weak, persp = cameras(3)
    out = Renderer(faces, (H, W)).render(verts[None].repeat(3, 0), persp, outputs=("depth",))
    cam_verts = np.einsum("bij,vj->bvi", persp.R, verts) + persp.t[:, None]
    normals = np.einsum("bij,vj->bvi", persp.R, vertex_normals(verts[None], faces)[0])
    px = np.rint(project(verts[None].repeat(3, 0), persp)).astype(int)
    for b in range(3):
        z = cam_verts[b, :, 2]
        facing = np.einsum("vi,vi->v", normals[b], -cam_verts[b]) / np.linalg.norm(cam_verts[b], axis=1) > 0.5
        facing &= (px[b] >= 0).all(1) & (px[b] < [W, H]).all(1)
        assert facing.sum() > 50
        depth = out["depth"][b][px[b, facing, 1], px[b, facing, 0]]
        # within 0.71 px of the vertex, a surface at most 60 degrees from the view changes depth by less than
        # tan(60) * 0.71 px * z / f
        slack = np.tan(np.radians(60)) * 0.71 * z[facing] / persp.K[b, 1, 1]
        assert (depth <= z[facing] + slack).all()  # nothing drawn behind a vertex that faces the camera
        visible = np.abs(depth - z[facing]) <= slack
        assert visible.mean() > 0.8  # the bumps hide a few front-facing vertices, behind nearer surface


def octahedra(centres, radius):
    """Small markers: an octahedron (vertices +x, +y, +z, -x, -y, -z) of radius (B, N, 1) at centres (B, N, 3)."""
    offsets = np.concatenate([np.eye(3), -np.eye(3)])
    faces = np.array([[0, 1, 2], [1, 3, 2], [3, 4, 2], [4, 0, 2], [1, 0, 5], [3, 1, 5], [4, 3, 5], [0, 4, 5]])
    B, N, _ = centres.shape
    verts = (centres[:, :, None] + np.broadcast_to(radius, (B, N, 1))[..., None] * offsets).reshape(B, 6 * N, 3)
    return verts.astype(np.float32), (faces[None] + 6 * np.arange(N)[:, None, None]).reshape(-1, 3)


def marker_centres(image, expected, half=4):
    """Coverage-weighted centroid of each marker, in a window centred on its expected pixel."""
    coverage = image.astype(np.float64).mean(axis=-1) / 255
    found = []
    for x, y in np.rint(expected).astype(int):
        win = coverage[y - half:y + half + 1, x - half:x + half + 1]
        gy, gx = np.mgrid[y - half:y + half + 1, x - half:x + half + 1]
        found.append([(win * gx).sum() / win.sum(), (win * gy).sum() / win.sum()])
    return np.array(found)


def keypoints_3d(B, seed=0):
    """21 keypoints per sample spread over the image, at least 9 px apart, and their depths (~3)."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.linspace(10, W - 11, 7), np.linspace(12, H - 13, 3))
    px = np.stack([gx.ravel(), gy.ravel()], -1) + rng.uniform(-1, 1, (B, 21, 2))
    return px, 3.0 + rng.uniform(-0.3, 0.3, (B, 21))


@pytest.mark.parametrize("kind", ["weak", "perspective"])
def test_cameras_agree_with_handlib_projection(kind):
    B = 3
    px, z = keypoints_3d(B)
    K = np.stack([pinhole(), pinhole(90, 100, 50, 33), pinhole(120, 110)])
    R = np.stack([rotation(s) for s in range(B)])
    t = np.array([[0.2, -0.1, 0.3], [-0.1, 0.0, 0.1], [0.0, 0.1, -0.2]], np.float32)
    if kind == "weak":
        cam = WeakPerspective(np.array([[0.3, 0.1, -0.05], [0.25, -0.1, 0.1], [0.35, 0.0, 0.02]]))
        s, tx, ty = cam.cam.T
        xy = ((px + 0.5) * 2 / [W, H] - 1 - np.stack([tx, ty], -1)[:, None]) / s[:, None, None]
        centres = np.concatenate([xy, z[..., None]], -1)
        radius = 2.5 * 2 / W / s[:, None, None]  # 2.5 px
    else:
        cam = Perspective(K, R, t)
        rays = np.einsum("bij,bnj->bni", np.linalg.inv(K), np.concatenate([px, np.ones_like(z)[..., None]], -1))
        cam_points = rays * z[..., None]
        centres = np.einsum("bji,bnj->bni", R, cam_points - t[:, None])  # world = R^T (camera - t)
        radius = 2.5 * z[..., None] / K[:, None, :2, :2].max(axis=(-1, -2))[..., None]  # <= 2.5 px
    verts, faces = octahedra(centres.astype(np.float32), radius)
    expected = project(centres, cam)
    np.testing.assert_allclose(expected, px, atol=1e-4)  # the markers sit where they were meant to
    image = Renderer(faces, (H, W), samples=16).render(
        verts, cam, color=(1, 1, 1), light=Light(diffuse=0.0, ambient=1.0))["image"]
    for b in range(B):
        error = np.linalg.norm(marker_centres(image[b], expected[b]) - expected[b], axis=1)
        assert error.max() < 0.5 and np.median(error) < 0.15, error


def uv_plane(n=8):
    """A unit square in the z = 0 plane, n x n quads, with vt = (x, y) + 1/2 (v up = -y, so negate y)."""
    g = np.linspace(-0.5, 0.5, n + 1)
    x, y = np.meshgrid(g, g)
    verts = np.stack([x, y, np.zeros_like(x)], -1).reshape(-1, 3).astype(np.float32)
    idx = np.arange(verts.shape[0]).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    vt = np.stack([verts[:, 0] + 0.5, 0.5 - verts[:, 1]], -1)  # image y down on the plane = v down
    return verts, faces, vt.astype(np.float32)


def uv_texture(size=256):
    """Texture whose red/green channels are u and v of the texel centre (v up: row 0 is v = 1)."""
    u = (np.arange(size) + 0.5) / size
    tex = np.zeros((size, size, 3), np.float64)
    tex[..., 0] = u[None, :]
    tex[..., 1] = u[::-1, None]
    return np.round(tex * 255).astype(np.uint8)


def test_texture_round_trip_perspective():
    """A UV-coded texture on a tilted plane reads back the UVs of the ray-plane intersection at each pixel."""
    verts, faces, vt = uv_plane()
    R = trimesh.transformations.rotation_matrix(0.6, [1, 0.3, 0])[:3, :3].astype(np.float32)
    t = np.array([0.05, 0.0, 1.2], np.float32)
    K = pinhole()
    out = Renderer(faces, (H, W), vt=vt, ft=faces).render(
        verts, Perspective(K[None], R[None], t[None]), texture=uv_texture(),
        light=Light(diffuse=0.0, ambient=1.0), outputs=("image", "mask"))
    # closed form: the pixel's ray hits the plane n . (X - t) = 0, n = R e_z; plane coordinates = R^T (X - t)
    py, px = np.nonzero(out["mask"][0])
    rays = np.linalg.inv(K) @ np.stack([px, py, np.ones_like(px)]).astype(np.float64)
    normal = R[:, 2]
    hit = rays * (normal @ t / (normal @ rays))
    local = R.T @ (hit - t[:, None])
    uv = np.stack([local[0] + 0.5, 0.5 - local[1]], -1)
    inner = (np.abs(uv - 0.5) < 0.47).all(axis=1)  # away from the edges, where coverage blends
    got = out["image"][0][py, px, :2].astype(np.float64) / 255
    assert inner.sum() > 1000
    np.testing.assert_allclose(got[inner], uv[inner], atol=2.5 / 255)


def test_per_sample_textures_backgrounds_and_chunks():
    """Per-sample textures and background images land on their own sample, across several chunks."""
    verts, faces, vt = uv_plane(2)
    B = 5
    rng = np.random.default_rng(1)
    textures = rng.integers(0, 256, (B, 1, 1, 3)).astype(np.uint8).repeat(4, 1).repeat(4, 2)
    backgrounds = rng.integers(0, 256, (B, H, W, 3)).astype(np.uint8)
    cam = WeakPerspective(np.array([1.0, 0.0, 0.0]))
    small = Renderer(faces, (H, W), vt=vt, ft=faces, samples=4, max_memory=2 * H * W * (8 * 4 + 4 + 20))  # 2 a chunk
    out = small.render(np.broadcast_to(verts, (B, *verts.shape)), cam, texture=textures, background=backgrounds,
                       light=Light(diffuse=0.0, ambient=1.0), outputs=("image", "mask"))
    centre = out["image"][:, H // 2, W // 2]
    np.testing.assert_array_equal(centre, textures[:, 0, 0])
    outside = ~out["mask"]
    np.testing.assert_array_equal(out["image"][outside], backgrounds[outside])


def test_textures_and_backgrounds_of_batches_of_changing_size():
    """Texture arrays are reused across batch sizes: each call shows its own textures and backgrounds."""
    verts, faces, vt = uv_plane(2)
    renderer = Renderer(faces, (H, W), vt=vt, ft=faces, samples=1)
    cam, light = WeakPerspective(np.array([1.0, 0.0, 0.0])), Light(diffuse=0.0, ambient=1.0)
    rng = np.random.default_rng(2)
    for B in (5, 3, 12, 1):
        textures = rng.integers(0, 256, (B, 4, 4, 3)).astype(np.uint8)
        textures[:] = textures[:, :1, :1]  # one colour each
        backgrounds = rng.integers(0, 256, (B, H, W, 3)).astype(np.uint8)
        out = renderer.render(np.broadcast_to(verts, (B, *verts.shape)), cam, texture=textures,
                              background=backgrounds, light=light, outputs=("image", "mask"))
        np.testing.assert_array_equal(out["image"][:, H // 2, W // 2], textures[:, 0, 0])
        np.testing.assert_array_equal(out["image"][~out["mask"]], backgrounds[~out["mask"]])


def test_batch_equals_one_at_a_time_and_no_bleed():
    verts, faces, world, weak, persp = cameras(3)
    world = world.copy()
    world[1] *= 10  # far larger than its image: must be clipped to its own tile
    world[2] += 100  # entirely outside its image
    renderer = Renderer(faces, (H, W), samples=8)
    colours = np.array([[0.2, 0.3, 0.4], [0.0, 0.0, 0.0], [1.0, 0.5, 0.0]])
    outputs = ("image", "mask", "depth", "normals")
    batch = renderer.render(world, weak, background=colours, outputs=outputs)
    for b in range(3):
        one = renderer.render(world[b:b + 1], _index(weak, b), background=colours[b], outputs=outputs)
        np.testing.assert_array_equal(batch["mask"][b], one["mask"][0])
        # the tile's position changes float rounding in the rasteriser, by an ulp or so
        np.testing.assert_allclose(batch["image"][b], one["image"][0], atol=1)
        np.testing.assert_allclose(batch["depth"][b], one["depth"][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(batch["normals"][b], one["normals"][0], atol=2e-3)
    assert batch["mask"][1].all() and not batch["mask"][2].any()
    np.testing.assert_array_equal(batch["image"][2], np.full((H, W, 3), [255, 128, 0]))


@pytest.mark.parametrize("chunk_per_sample", [False, True])
def test_culling_hidden_faces_changes_nothing(chunk_per_sample):
    """A closed mesh skips the faces turned away: outward, inside-out and mirrored samples render as without."""
    verts, faces, world, weak, persp = cameras(3)
    world = world.copy()
    world[1] *= [-1, 1, 1]  # mirrored: its winding now turns inwards
    plain = Renderer(faces, (H, W), cull=False)
    memory = {"max_memory": H * W * (8 * 8 + 4 + 20)} if chunk_per_sample else {}
    culled = Renderer(faces, (H, W), **memory)
    inside_out = Renderer(faces[:, ::-1], (H, W), **memory)
    assert culled.cull and not Renderer(uv_plane()[1], (H, W)).cull
    outputs = ("image", "mask", "depth", "normals")
    want = plain.render(world, weak, outputs=outputs)
    for got in (culled.render(world, weak, outputs=outputs), inside_out.render(world, weak, outputs=outputs)):
        np.testing.assert_array_equal(got["mask"], want["mask"])
        np.testing.assert_allclose(got["image"], want["image"], atol=1)
        np.testing.assert_allclose(got["depth"], want["depth"], atol=1e-4)  # ties on shared edges
        np.testing.assert_allclose(got["normals"], want["normals"], atol=1e-3)


def sphere_pixels(out, b, s, tx, ty, radius=1.0):
    """Closed form for a sphere at the origin under weak perspective: its unit normals at the covered pixels
    well inside the silhouette."""
    py, px = np.nonzero(out["mask"][b])
    x = ((px + 0.5) * 2 / W - 1 - tx) / s
    y = ((py + 0.5) * 2 / H - 1 - ty) / s
    r2 = x ** 2 + y ** 2
    keep = r2 < (0.85 * radius) ** 2
    z = -np.sqrt(radius ** 2 - r2[keep])  # the near side (OpenCV: the camera looks along +z)
    return py[keep], px[keep], np.stack([x[keep], y[keep], z], -1) / radius


@pytest.mark.parametrize("inside_out", [False, True])
def test_normals_and_lighting_on_a_sphere(inside_out):
    mesh = trimesh.creation.icosphere(4)
    faces = np.asarray(mesh.faces)[:, ::-1] if inside_out else np.asarray(mesh.faces)
    verts = np.asarray(mesh.vertices, np.float32)
    cams = np.array([[0.7, 0.0, 0.0], [0.6, 0.1, -0.1]])
    direction = np.array([[0.3, 0.5, 1.0], [-0.6, 0.0, 0.8]])
    light = Light(direction, diffuse=np.array([0.6, 0.8]), ambient=np.array([[0.3, 0.3, 0.3], [0.1, 0.2, 0.3]]))
    albedo = np.array([0.9, 0.7, 0.6])
    out = Renderer(faces, (H, W), samples=4).render(verts[None].repeat(2, 0), WeakPerspective(cams), color=albedo,
                                                    light=light, outputs=("image", "mask", "normals"))
    for b in range(2):
        py, px, n = sphere_pixels(out, b, *cams[b])
        got = out["normals"][b][py, px]
        angle = np.degrees(np.arctan2(np.linalg.norm(np.cross(got, n), axis=-1), (got * n).sum(-1)))
        assert angle.max() < 1.0 and np.abs(np.linalg.norm(got, axis=-1) - 1).max() < 2e-3
        d = direction[b] / np.linalg.norm(direction[b])
        ambient = np.broadcast_to(light.ambient, (2, 3))[b]
        shade = albedo * (ambient + light.diffuse[b] * np.maximum(n @ -d, 0)[:, None])
        np.testing.assert_allclose(out["image"][b][py, px] / 255, shade, atol=0.02)
    assert (out["normals"][~out["mask"]] == 0).all()


def capsule_with_parts():
    """A long ellipsoid along x with synthetic 'skinning weights' over 3 segments along its axis (soft borders)."""
    mesh = trimesh.creation.icosphere(4)
    verts = (np.asarray(mesh.vertices) * [1.4, 0.4, 0.4]).astype(np.float32)
    centres = np.array([-0.9, 0.0, 0.9])
    weights = np.exp(-((verts[:, :1] - centres) / 0.3) ** 2)
    return verts, np.asarray(mesh.faces), weights / weights.sum(1, keepdims=True)


def test_parts_from_skinning_weights():
    verts, faces, weights = capsule_with_parts()
    cam = WeakPerspective(np.array([0.6, 0.0, 0.0]))
    out = Renderer(faces, (H, W), parts=weights).render(verts, cam, outputs=("parts", "mask", "depth", "normals"))
    parts, mask = out["parts"][0], out["mask"][0]
    assert parts.dtype == np.int16
    np.testing.assert_array_equal(parts >= 0, mask)
    np.testing.assert_array_equal(np.isfinite(out["depth"][0]), mask)
    # independent: the label of the nearest segment centre to the pixel's x, away from the segment borders
    x = ((np.arange(W) + 0.5) * 2 / W - 1) / 0.6
    expected = np.abs(x[:, None] - [-0.9, 0.0, 0.9]).argmin(1)
    clear = np.abs(np.abs(x) - 0.45) > 0.1
    py, px = np.nonzero(mask & clear[None, :])
    np.testing.assert_array_equal(parts[py, px], expected[px])
    np.testing.assert_array_equal(part_labels(weights), np.abs(verts[:, :1] - [-0.9, 0.0, 0.9]).argmin(1))


def test_vertex_normals_match_trimesh():
    verts, faces = lumpy_sphere(1)
    batch = np.stack([verts, 2 * verts @ rotation(3).T])
    got = vertex_normals(batch, faces)
    for b in range(2):
        mesh = trimesh.Trimesh(batch[b], faces, process=False)
        face_n = mesh.face_normals * mesh.area_faces[:, None]  # area weighted, the same definition
        ref = np.zeros_like(batch[b], dtype=np.float64)
        for k in range(3):
            np.add.at(ref, faces[:, k], face_n)
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        np.testing.assert_allclose(got[b], ref, atol=1e-5)


def test_framing_camera_centres_and_fits_each_sample():
    verts, faces, world, weak, persp = cameras(3)
    world = world * [[[1.0]], [[0.1]], [[5.0]]] + [[[0, 0, 0]], [[3.0, -2.0, 0.0]], [[0, 0, 0]]]
    cam = framing_camera(world, margin=0.2)
    xy = camera.weak_perspective(torch.from_numpy(world), torch.from_numpy(cam.cam)).numpy()  # [-1, 1]
    lo, hi = xy.min(axis=1), xy.max(axis=1)
    np.testing.assert_allclose(lo + hi, 0, atol=1e-5)  # centred
    np.testing.assert_allclose((hi - lo).max(axis=1), 1.6, rtol=1e-5)  # longer side: 80% of the image
    mask = Renderer(faces, 64).render(world, cam, outputs=("mask",))["mask"]
    assert mask.any(axis=(1, 2)).all() and not mask[:, [0, -1]].any() and not mask[:, :, [0, -1]].any()


def test_torch_input_equals_numpy():
    verts, faces, world, weak, persp = cameras(2)
    renderer = Renderer(faces, (H, W))
    a = renderer.render(world, weak, outputs=("image", "depth"))
    b = renderer.render(torch.from_numpy(world), WeakPerspective(torch.from_numpy(weak.cam)),
                        outputs=("image", "depth"))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["depth"], b["depth"])
    if torch.cuda.is_available():
        c = renderer.render(torch.from_numpy(world).cuda(), weak, outputs=("image",))
        np.testing.assert_array_equal(a["image"], c["image"])


def test_bad_inputs_say_what_is_wrong():
    verts, faces = lumpy_sphere()
    renderer = Renderer(faces, (H, W))
    cam = WeakPerspective(np.array([0.5, 0, 0]))
    with pytest.raises(ValueError, match=r"vertices must have shape \(B, 642, 3\)"):
        renderer.render(verts[:10], cam)
    with pytest.raises(ValueError, match="parts"):
        renderer.render(verts, cam, outputs=("parts",))
    with pytest.raises(ValueError, match="vt= and ft="):
        renderer.render(verts, cam, texture=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown outputs"):
        renderer.render(verts, cam, outputs=("colour",))
    with pytest.raises(ValueError, match="background"):
        renderer.render(verts, cam, background=np.zeros((H + 1, W, 3), np.uint8))
    with pytest.raises(TypeError, match="WeakPerspective or Perspective"):
        renderer.render(verts, np.array([0.5, 0, 0]))
    with pytest.raises(ValueError, match="samples"):
        Renderer(faces, (H, W), samples=3)
    with pytest.raises(ValueError, match="larger than this driver's"):
        Renderer(faces, (8, renderer.ctx.info["GL_MAX_TEXTURE_SIZE"] + 1), samples=1)


def test_missing_system_package_is_named(monkeypatch):
    def no_context(**kwargs):
        raise Exception("libEGL.so not loaded")

    monkeypatch.setattr(gl.moderngl, "create_context", no_context)
    monkeypatch.setattr(gl.ctypes.util, "find_library", lambda name: None if name == "EGL" else f"lib{name}.so")
    with pytest.raises(RuntimeError, match=r"missing system package\(s\): libegl1\. .*apt-get install libegl1$"):
        gl.get_context.__wrapped__()
    assert gl.missing_packages(lambda name: "x", lambda pattern: []) == ["libegl-mesa0", "libgl1-mesa-dri"]
    assert gl.missing_packages(lambda name: "x", lambda pattern: ["found"]) == []


def test_torch_optimizer_after_rendering_does_not_crash():
    """triton's LLVM loaded after llvmpipe's used to segfault the first optimizer step (fresh process: order)."""
    script = textwrap.dedent("""
        import numpy as np, torch, trimesh
        from handlib.render import Renderer, WeakPerspective
        mesh = trimesh.creation.icosphere(1)
        Renderer(mesh.faces, 16).render(np.asarray(mesh.vertices, np.float32), WeakPerspective((0.5, 0, 0)))
        p = torch.nn.Parameter(torch.zeros(3))
        opt = torch.optim.Adam([p])
        p.sum().backward()
        opt.step()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])


def test_renderers_of_two_contexts_each_draw_in_their_own(monkeypatch):
    verts, faces, world, weak, persp = cameras(2)
    first = Renderer(faces, (H, W))
    want = first.render(world, weak, outputs=("image", "depth"))
    gl.get_context.cache_clear()  # as a test of the doctor does: the next renderer gets a new context
    try:
        second = Renderer(faces[:, ::-1], (H, W), samples=1)
        other = second.render(world[::-1], _index(weak, slice(None, None, -1)), outputs=("image",))
        again = first.render(world, weak, outputs=("image", "depth"))
        assert second.ctx is not first.ctx
        np.testing.assert_array_equal(again["image"], want["image"])
        np.testing.assert_array_equal(again["depth"], want["depth"])
        np.testing.assert_allclose(second.render(world[::-1], _index(weak, slice(None, None, -1)))["image"],
                                   other["image"])
        second.release()
    finally:
        gl.get_context.cache_clear()


_inherited = {}  # what a forked child finds already made


def _render_in_child(_):
    verts, faces = lumpy_sphere()
    return _inherited["renderer"].render(verts, WeakPerspective((0.5, 0.0, 0.0)))["image"].sum()


def test_forked_child_gets_a_clear_error_not_a_hang():
    verts, faces = lumpy_sphere()
    _inherited["renderer"] = Renderer(faces, (H, W))
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            with pytest.raises(RuntimeError, match="forked.*spawn"):
                pool.apply_async(_render_in_child, (0,)).get(timeout=120)
    finally:
        _inherited.clear()


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def test_memory_flat_over_10000_renders():
    verts, faces, vt = uv_plane(4)
    renderer = Renderer(faces, 24, vt=vt, ft=faces, parts=np.arange(len(verts)) % 3, samples=8)
    B = 50
    rng = np.random.default_rng(0)
    batch = np.broadcast_to(verts, (B, *verts.shape))
    textures = rng.integers(0, 256, (B, 8, 8, 3)).astype(np.uint8)
    backgrounds = rng.integers(0, 256, (B, 24, 24, 3)).astype(np.uint8)
    cam = WeakPerspective(np.array([1.2, 0.0, 0.0]))

    def step():
        return renderer.render(batch, cam, texture=textures, background=backgrounds,
                               outputs=("image", "mask", "depth", "normals", "parts"))

    for _ in range(20):
        step()
    before = rss_mb()
    for _ in range(180):
        step()
    grown = rss_mb() - before
    assert grown < 8, f"resident memory grew {grown:.1f} MB over {180 * B} renders"


@pytest.fixture(scope="module")
def hand():
    """The built-in hand in a few random poses (metres, about 0.2 m long)."""
    from handlib.model import HandModel

    model = HandModel.builtin()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = model(hand_pose=0.5 * torch.randn(3, 45, generator=g), global_orient=torch.randn(3, 3, generator=g))
    verts = out.vertices.numpy()
    return model, verts - verts.mean(axis=1, keepdims=True)


def test_hand_silhouette_and_parts(hand):
    model, verts = hand
    faces = model.faces.numpy()
    cam = Perspective(np.stack([pinhole(400, 400)] * 3), t=np.array([[0.0, 0.0, 0.45]] * 3, np.float32))
    out = Renderer(faces, (H, W), parts=model.lbs_weights.numpy()).render(verts, cam, outputs=("mask", "parts"))
    for b in range(3):
        truth = polygon_fill(project(verts[b:b + 1], _index(cam, b))[0], faces)
        iou = (out["mask"][b] & truth).sum() / (out["mask"][b] | truth).sum()
        assert truth.sum() > 800 and iou >= 0.98, (b, iou)
    assert set(np.unique(out["parts"])) <= set(range(-1, 16)) and len(np.unique(out["parts"])) > 8


def test_hand_texture_round_trip(hand):
    """A UV-coded texture through the hand's own atlas reads back, at every covered pixel centre, the UVs of the
    face seen there (faces identified by per-face part labels) interpolated at that centre."""
    model, verts = hand
    faces, vt, ft = model.faces.numpy(), model.vt.numpy(), model.ft.numpy()
    F, V = len(faces), len(verts[0])
    face_ids = np.zeros((V, F), np.float32)
    face_ids[faces.T.ravel(), np.tile(np.arange(F), 3)] = 1  # a face's corners sum to 3 only for its own label
    cam = WeakPerspective(np.array([[7.0, 0.0, 0.0]] * 3))
    renderer = Renderer(faces, 160, vt=vt, ft=ft, parts=face_ids, samples=1)  # one sample: the pixel centre
    out = renderer.render(verts, cam, texture=uv_texture(1024), light=Light(diffuse=0.0, ambient=1.0),
                          outputs=("image", "parts"))
    for b in range(3):
        ids = out["parts"][b].astype(np.int64)
        a, c, d = (verts[b][faces[:, k]] for k in range(3))
        n = np.cross(c - a, d - a)
        facing = np.abs(n[:, 2]) > 0.3 * np.linalg.norm(n, axis=1)  # at grazing angles mipmaps blur the ramp
        py, px = np.nonzero((ids >= 0) & facing[ids])
        tri = project(verts[b:b + 1], _index(cam, b), 160, 160)[0][faces[ids[py, px]]]  # (N, 3, 2) pixels
        # barycentric coordinates of the pixel centre (weak perspective keeps them affine)
        e1, e2, p = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], np.stack([px, py], -1) - tri[:, 0]
        det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
        l1 = (p[:, 0] * e2[:, 1] - p[:, 1] * e2[:, 0]) / det
        l2 = (e1[:, 0] * p[:, 1] - e1[:, 1] * p[:, 0]) / det
        uv = np.einsum("nk,nkj->nj", np.stack([1 - l1 - l2, l1, l2], -1), vt[ft[ids[py, px]]])
        got = out["image"][b][py, px, :2] / 255
        assert len(py) > 2000
        np.testing.assert_allclose(got, uv, atol=4 / 255)


@pytest.mark.parametrize("kind", ["weak", "perspective"])
def test_hand_keypoints_land_where_handlib_projects_them(hand, kind):
    """Small markers at the posed hand's 21 keypoints, rendered, are found within half a pixel of
    handlib.camera's projection (keypoints closer than 10 px to another are left out: markers would touch)."""
    model, _ = hand
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = model(hand_pose=0.2 * torch.randn(3, 45, generator=g), global_orient=torch.randn(3, 3, generator=g))
    kp = (out.keypoints - out.keypoints.mean(dim=1, keepdim=True)).numpy()  # (3, 21, 3)
    size = 224
    if kind == "weak":
        cam = WeakPerspective(np.array([[8.0, 0.0, 0.0], [9.0, 0.05, -0.1], [7.5, -0.1, 0.05]]))
        radius = 2.5 * 2 / size / cam.cam[:, :1, None]
    else:
        K = np.array([[900.0, 0, 110.3], [0, 880.0, 114.6], [0, 0, 1]], np.float32)
        cam = Perspective(np.stack([K] * 3), np.stack([rotation(s) for s in range(3)]),
                          np.array([[0.0, 0.0, 0.5], [0.01, -0.02, 0.55], [-0.01, 0.0, 0.45]], np.float32))
        radius = 2.5 * 0.45 / 900 * np.ones((3, 21, 1))
    expected = project(kp, cam, size, size)
    verts, faces = octahedra(kp.astype(np.float32), radius)
    image = Renderer(faces, size, samples=16).render(verts, cam, color=(1, 1, 1),
                                                      light=Light(diffuse=0.0, ambient=1.0))["image"]
    for b in range(3):
        gaps = np.linalg.norm(expected[b, :, None] - expected[b, None], axis=-1) + 1e9 * np.eye(21)
        alone = (gaps.min(axis=1) >= 10) & ((expected[b] > 6) & (expected[b] < size - 7)).all(axis=1)
        assert alone.sum() >= 8
        error = np.linalg.norm(marker_centres(image[b], expected[b, alone]) - expected[b, alone], axis=1)
        assert error.max() < 0.5, error
