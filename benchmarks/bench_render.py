"""256 renders of the built-in hand at 224 x 224 with 8x antialiasing: handlib.render against pyrender, one run.

    python benchmarks/bench_render.py [--count 256] [--size 224] [--samples 8] [--repeats 3]

Both draw the same posed hands through the same pinhole camera with 8 samples per pixel (pyrender: its fixed
4x MSAA on a twice-as-wide viewport, averaged in pairs; handlib: `Renderer(samples=8)`). pyrender is used as its
users do: one OffscreenRenderer, a new pyrender.Mesh per render. It runs in a child process (its own EGL
context); install it with `pip install pyrender-maintained` (not a handlib dependency): without it, that half is
skipped with a message. Times are the best of --repeats, as wall-clock seconds and as CPU seconds (all threads
of the process, llvmpipe's included): on a shared machine the wall time grows with the others' load, the CPU
time much less; the load average is printed beside them.

Then the floor of this OpenGL driver for the same work (--floor, on by default): the same triangles, already
projected, drawn with an empty fragment shader into framebuffers of the same size and samples, 64 images at a time
(as handlib.render's chunks), faces turned away culled, with and without a full clear, and nothing read back. No
renderer drawing these triangles on this driver at these samples can take less; on llvmpipe it is most of our time.
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import moderngl
import numpy as np
import torch

from handlib.render import Perspective, Renderer


def posed_hands(count: int, size: int, seed: int = 0):
    """Random poses of the built-in hand placed in front of a pinhole camera: vertices (B, V, 3), faces, K."""
    from handlib.model import HandModel

    model = HandModel.builtin()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = model(hand_pose=0.4 * torch.randn(count, 45, generator=g),
                    global_orient=torch.pi * (torch.rand(count, 3, generator=g) - 0.5),
                    betas=torch.randn(count, 10, generator=g))
    verts = out.vertices.numpy()
    verts = verts - verts.mean(axis=1, keepdims=True)
    verts[..., 2] += 0.5  # 0.5 m in front of the camera
    focal = 2.2 * size  # the hand spans about half the image
    K = np.array([[focal, 0, (size - 1) / 2], [0, focal, (size - 1) / 2], [0, 0, 1]], np.float32)
    return verts.astype(np.float32), model.faces.numpy(), K


def time_handlib(verts, faces, K, size, samples, repeats):
    start = time.perf_counter()
    renderer = Renderer(faces, size, samples=samples)
    renderer.render(verts[:2], Perspective(K))  # compiles and allocates
    setup = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        images = renderer.render(verts, Perspective(K))["image"]
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu), setup, images


_FLOOR_VS = """#version 450
in vec3 in_position;
void main() { gl_Position = vec4(in_position, 1.0); }
"""
_FLOOR_FS = """#version 450
layout(location = 0) out vec4 f_color;
void main() { f_color = vec4(1.0); }
"""


def time_floor(verts, faces, K, size, samples, repeats, chunk=64):
    """(best CPU seconds to clear and draw, and to clear only): the triangles projected on the CPU into a tiled
    framebuffer of 4x MSAA with supersampling for the rest, as handlib.render draws them."""
    from handlib.gl import get_context
    from handlib.render import _split_samples

    ctx = get_context()
    msaa, (sx, sy) = _split_samples(samples, ctx.max_samples)
    columns = math.ceil(math.sqrt(chunk))
    rows = math.ceil(chunk / columns)
    p = verts @ K.T.astype(np.float32)  # (B, V, 3) pixels times depth
    z = p[..., 2:]
    pixels = p[..., :2] / z
    near, far = z.min() * 0.99, z.max() * 1.01
    ndc_z = ((far + near) - 2 * far * near / z) / (far - near)
    with ctx:
        shape, multi = (columns * size * sx, rows * size * sy), msaa if msaa > 1 else 0
        fbo = ctx.framebuffer([ctx.texture(shape, 4, samples=multi)], ctx.depth_renderbuffer(shape, samples=multi))
        program = ctx.program(vertex_shader=_FLOOR_VS, fragment_shader=_FLOOR_FS)
        vaos = []
        for start in range(0, len(verts), chunk):
            k = np.arange(min(chunk, len(verts) - start))[:, None, None]
            tile = np.concatenate([k % columns, k // columns], axis=-1) * size  # (n, 1, 2)
            ndc = (pixels[start:start + chunk] + 0.5 + tile) * 2 / np.array([columns * size, rows * size]) - 1
            vbo = ctx.buffer(np.concatenate([ndc, ndc_z[start:start + chunk]], axis=-1).astype(np.float32))
            index = ctx.buffer((faces[None] + k * verts.shape[1]).astype(np.int32))
            vaos.append(ctx.vertex_array(program, [(vbo, "3f", "in_position")], index_buffer=index,
                                         index_element_size=4))
        ctx.front_face = "cw"  # pixel y is down, as in handlib.render
        ctx.cull_face = "back"

        def run(draw: bool) -> float:
            best = math.inf
            for _ in range(repeats):
                ctx.finish()
                start = time.process_time()
                for vao in vaos:
                    fbo.use()
                    fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
                    if draw:
                        ctx.enable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
                        vao.render(moderngl.TRIANGLES)
                    ctx.finish()
                best = min(best, time.process_time() - start)
            return best

        cleared = run(False)
        return run(True), cleared


def pyrender_worker(inp: str, out: str) -> None:
    """Child process: the same renders with pyrender (OpenGL camera: y up, looking down -z)."""
    import pyrender
    import trimesh

    data = np.load(inp)
    verts, faces, K, size, repeats = data["verts"], data["faces"], data["K"], int(data["size"]), int(data["repeats"])
    opengl = verts * np.array([1, -1, -1], np.float32)  # OpenCV camera frame -> OpenGL camera frame
    # 2x1 supersampling on top of pyrender's fixed 4x MSAA: twice the width, twice fx and cx + 0.5 shift
    camera = pyrender.IntrinsicsCamera(2 * K[0, 0], K[1, 1], 2 * K[0, 2] + 0.5, K[1, 2], znear=0.05, zfar=5.0)
    renderer = pyrender.OffscreenRenderer(2 * size, size)
    scene = pyrender.Scene(bg_color=(0, 0, 0, 0), ambient_light=(0.4, 0.4, 0.4))
    scene.add(camera)
    scene.add(pyrender.DirectionalLight(intensity=2.0))
    material = pyrender.MetallicRoughnessMaterial(baseColorFactor=(0.86, 0.67, 0.55, 1.0))
    wall, cpu = [], []
    for _ in range(repeats):
        images = np.empty((len(verts), size, size, 3), np.uint8)
        start, start_cpu = time.perf_counter(), time.process_time()
        for b, v in enumerate(opengl):
            mesh = pyrender.Mesh.from_trimesh(trimesh.Trimesh(v, faces, process=False), material=material)
            node = scene.add(mesh)
            color, _ = renderer.render(scene)
            scene.remove_node(node)
            images[b] = color.reshape(size, size, 2, 3).mean(axis=2).round()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    renderer.delete()
    np.savez(out, wall=min(wall), cpu=min(cpu), images=images)


def time_pyrender(verts, faces, K, size, repeats):
    """(best wall time, best CPU time, images) from a child process, or (None, None, reason) when pyrender is
    absent or fails."""
    try:
        import pyrender  # noqa: F401
    except ImportError:
        return None, None, "pyrender is not installed (pip install pyrender-maintained): skipped"
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(inp, verts=verts, faces=faces, K=K, size=size, repeats=repeats)
        env = dict(os.environ, PYOPENGL_PLATFORM="egl")
        proc = subprocess.run([sys.executable, __file__, "--pyrender-worker", inp, out], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return None, None, f"pyrender failed: {proc.stderr.strip().splitlines()[-1:]}"
        result = np.load(out)
        return float(result["wall"]), float(result["cpu"]), result["images"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip the driver's floor")
    parser.add_argument("--pyrender-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pyrender_worker:
        pyrender_worker(*args.pyrender_worker)
        return

    verts, faces, K = posed_hands(args.count, args.size)
    print(f"{args.count} renders of the built-in hand ({verts.shape[1]} vertices, {len(faces)} faces) at "
          f"{args.size}x{args.size}, {args.samples} samples per pixel; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    ours, ours_cpu, setup, images = time_handlib(verts, faces, K, args.size, args.samples, args.repeats)
    print(f"handlib.render: {ours:.3f} s wall, {ours_cpu:.3f} s CPU ({ours / args.count * 1e3:.2f} ms per render; "
          f"renderer setup {setup:.3f} s, once)")
    if args.floor:
        drawn, cleared = time_floor(verts, faces, K, args.size, args.samples, args.repeats)
        print(f"driver floor:   {drawn:.3f} s CPU to clear and draw the same triangles with an empty fragment shader "
              f"({cleared:.3f} s of it the clears), nothing read back: {100 * drawn / ours_cpu:.0f}% of "
              f"handlib.render's CPU time")
    theirs, theirs_cpu, other = time_pyrender(verts, faces, K, args.size, args.repeats)
    if theirs is None:
        print(other)
        return
    agree = np.mean((images.max(axis=-1) > 0) == (other.max(axis=-1) > 0))
    print(f"pyrender:       {theirs:.3f} s wall, {theirs_cpu:.3f} s CPU ({theirs / args.count * 1e3:.2f} ms per "
          f"render; same silhouettes at {100 * agree:.2f}% of pixels)")
    print(f"ratio: handlib.render is {theirs / ours:.1f}x faster than pyrender in wall time, "
          f"{theirs_cpu / ours_cpu:.1f}x in CPU time (goal >= 20x); {ours:.3f} s for {args.count} renders "
          f"(goal < 1 s); load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
