"""Headless batch renderer: one mesh topology drawn with many vertex arrays, cameras, lights and textures.

A `Renderer` is made once per topology (faces, optional UVs and part labels) and image size. Each call draws a
whole batch into one tiled framebuffer per chunk (one instanced draw call; every sample is clipped to its own
tile), resolves antialiasing on the GL side and reads back once per chunk. The multisampled image is cleared and
resolved only inside a box around each sample's projected mesh (a third of the image on average), since on a CPU
(Mesa llvmpipe) its memory traffic is a large share of the time. Outputs are numpy arrays:

- image   (B, H, W, 3) uint8, shaded, antialiased, composited over the background
- mask    (B, H, W) bool, pixel centres covered by the mesh
- depth   (B, H, W) float32, camera-space z (OpenCV frame, metres) at pixel centres; +inf where empty
- normals (B, H, W, 3) float32, camera-space unit normals of the visible side; 0 where empty
- parts   (B, H, W) int16, part label of the visible face; -1 where empty

mask, depth, normals and parts are sampled once at each pixel centre (no antialiasing), so they agree with each
other exactly. Coordinates follow handlib.camera: OpenCV camera frame, pixel (0, 0) is the centre of the top-left
pixel, weak perspective maps camera-space x, y to [-1, 1] over the image. UVs follow OBJ: v = 0 is the bottom
row of the texture image. Shading is Gouraud (per-vertex Lambert light, interpolated); faces turned away from
the camera are skipped for closed meshes, where they are hidden anyway.

The OpenGL context is the process's shared one (handlib.gl), used from the thread that made it; a process
forked after it was made cannot render (start workers with 'spawn').
"""

import contextlib
import math
import os
from typing import NamedTuple

import moderngl
import numpy as np
import scipy.sparse
import torch

from handlib.gl import get_context

ArrayLike = np.ndarray | torch.Tensor | tuple | list | float

OUTPUTS = ("image", "mask", "depth", "normals", "parts")
SKIN = (0.86, 0.67, 0.55)  # default albedo when there is no texture


class WeakPerspective(NamedTuple):
    """x̂ = s·X_xy + t (handlib.camera.weak_perspective); vertices are already in camera space."""
    cam: ArrayLike  # (B, 3) or (3,) = (s, tx, ty)


class Perspective(NamedTuple):
    """Pinhole camera (handlib.camera.perspective): pixels = K (R X + t), K's last row (0, 0, 1)."""
    K: ArrayLike  # (B, 3, 3) or (3, 3), pixels
    R: ArrayLike | None = None  # (B, 3, 3) world -> camera rotation
    t: ArrayLike | None = None  # (B, 3) metres


class Light(NamedTuple):
    """A directional light plus ambient light, in camera space; each field per sample or shared."""
    direction: ArrayLike = (0.3, 0.5, 1.0)  # (B, 3): where the light travels (OpenCV: +y down, +z away)
    diffuse: ArrayLike = 0.7  # (B,) or (B, 3) colour of the directional light
    ambient: ArrayLike = 0.4  # (B,) or (B, 3)


def framing_camera(vertices: ArrayLike, margin: float = 0.1) -> WeakPerspective:
    """Per-sample weak-perspective cameras that centre each sample's x, y extent in its image and fit its longer
    side into 1 - margin of it (square images: the shorter side keeps its proportion). vertices (B, V, 3)."""
    v = _numpy(vertices)
    lo, hi = v[..., :2].min(axis=1), v[..., :2].max(axis=1)  # (B, 2)
    s = 2 * (1 - margin) / np.maximum((hi - lo).max(axis=1), 1e-12)
    return WeakPerspective(np.concatenate([s[:, None], -s[:, None] * (lo + hi) / 2], axis=1))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals: vertices (B, V, 3), faces (F, 3) -> (B, V, 3); 0 for unused vertices."""
    return _sum_to_vertices(_face_normals(vertices, faces), faces, vertices.shape[1])


def _sum_to_vertices(face_normals: np.ndarray, faces: np.ndarray, V: int) -> np.ndarray:
    """Face normals (B, F, 3) summed over each vertex's faces and normalised -> (B, V, 3)."""
    B, F, _ = face_normals.shape
    incidence = scipy.sparse.csr_matrix(
        (np.ones(3 * F, np.float32), (faces.T.ravel(), np.tile(np.arange(F), 3))), shape=(V, F))
    summed = incidence @ face_normals.transpose(1, 0, 2).reshape(F, B * 3)  # (V, B * 3)
    summed = np.ascontiguousarray(summed.reshape(V, B, 3).transpose(1, 0, 2), dtype=np.float32)
    length = np.linalg.norm(summed, axis=-1, keepdims=True)
    return np.divide(summed, length, out=np.zeros_like(summed), where=length > 0)


def _face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(b - a) x (c - a) per face: (B, F, 3)."""
    a, b, c = (vertices[:, faces[:, k]] for k in range(3))
    u, v = b - a, c - a
    return np.stack([u[..., 1] * v[..., 2] - u[..., 2] * v[..., 1], u[..., 2] * v[..., 0] - u[..., 0] * v[..., 2],
                     u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]], axis=-1)


def _closed(faces: np.ndarray) -> bool:
    """Whether every edge joins exactly two faces that cross it in opposite directions (closed, consistent)."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    forward = np.unique(directed, axis=0)
    backward = np.unique(directed[:, ::-1], axis=0)
    return len(forward) == len(directed) and np.array_equal(forward, backward)


def part_labels(weights: ArrayLike) -> np.ndarray:
    """Per-vertex part labels from skinning weights (V, J): the joint (segment) with the largest weight."""
    return np.asarray(_numpy(weights)).argmax(axis=1)


_STRUCT = """
struct Sample { mat4 view; mat4 proj; vec4 light_dir; vec4 diffuse; vec4 ambient; vec4 color; };
layout(std430, binding = 4) readonly buffer Samples { Sample samples[]; };
"""
_SAMPLE_FLOATS = 16 + 16 + 4 * 4

_MESH_VS = """#version 450
""" + _STRUCT + """
layout(std430, binding = 0) readonly buffer Positions { float positions[]; };  // (B, V, 3)
layout(std430, binding = 1) readonly buffer Normals { float normals[]; };  // (B, V, 3)
// drawn vertices: one per distinct (vertex, UV) pair, so UV seams split vertices and the rest are shared
layout(std430, binding = 2) readonly buffer DrawnVertex { int drawn_vertex[]; };  // (D,) mesh vertex
layout(std430, binding = 3) readonly buffer DrawnUV { vec2 drawn_uv[]; };  // (D, 2)
uniform int num_vertices;
uniform int columns;
uniform vec2 tile_scale;  // tile size / framebuffer size
// AUX (the aux pass), TEXTURED and SIDES (0: faces of both sides drawn, 1: front faces only, 2: back faces only)
// are defined per program, so that each interpolates only what it uses: llvmpipe's triangle setup grows with
// every value interpolated, and the hand's triangles cover a few pixels each, so setup outweighs shading
#if AUX
out vec3 v_camera;
out vec3 v_normal;
#else
#if TEXTURED
uniform bool texture_per_sample;
uniform int first_sample;  // of this chunk, in the batch
out vec2 v_uv;
flat out int v_layer;  // of the texture
#endif
out vec3 v_front;  // light reaching the side front faces show (times the albedo without a texture)
#if SIDES == 0
out vec3 v_back;  // ... and the other side
#endif
#endif
out float gl_ClipDistance[4];

void main() {
    int s = gl_InstanceID;
    int i = 3 * (s * num_vertices + drawn_vertex[gl_VertexID]);
    vec4 camera = samples[s].view * vec4(positions[i], positions[i + 1], positions[i + 2], 1.0);
    vec3 normal = mat3(samples[s].view) * vec3(normals[i], normals[i + 1], normals[i + 2]);
#if AUX
    v_camera = camera.xyz;
    v_normal = normal;
#else
    // smooth (Gouraud) shading: per-vertex light, interpolated; cheap where fragments dominate the cost
    float lambert = dot(normalize(normal), -normalize(samples[s].light_dir.xyz));
#if TEXTURED
    vec3 albedo = vec3(1.0);  // from the texture, per pixel
    v_uv = drawn_uv[gl_VertexID];
    v_layer = texture_per_sample ? first_sample + s : 0;
#else
    vec3 albedo = samples[s].color.rgb;
#endif
    vec3 front = albedo * (samples[s].ambient.rgb + max(lambert, 0.0) * samples[s].diffuse.rgb);
    vec3 back = albedo * (samples[s].ambient.rgb + max(-lambert, 0.0) * samples[s].diffuse.rgb);
    v_front = SIDES == 2 ? back : front;
#if SIDES == 0
    v_back = back;
#endif
#endif
    vec4 clip = samples[s].proj * camera;
    // keep each sample inside its own image, then move that image to its tile
    gl_ClipDistance[0] = clip.w + clip.x;
    gl_ClipDistance[1] = clip.w - clip.x;
    gl_ClipDistance[2] = clip.w + clip.y;
    gl_ClipDistance[3] = clip.w - clip.y;
    vec2 corner = vec2(s % columns, s / columns) * 2.0 * tile_scale - 1.0;
    gl_Position = vec4(corner * clip.w + (clip.xy + clip.w) * tile_scale, clip.z, clip.w);
}
"""

_COLOR_FS = """#version 450
// TEXTURED and SIDES as in the vertex shader (llvmpipe runs both ways of a branch, so variants are compiled)
#if TEXTURED
uniform sampler2DArray albedo_map;
in vec2 v_uv;
flat in int v_layer;
#endif
in vec3 v_front;
#if SIDES == 0
in vec3 v_back;
#endif
layout(location = 0) out vec4 f_color;

void main() {
#if SIDES == 0  // the winding faces the camera exactly when the face is front facing (front_face = "cw")
    vec3 color = gl_FrontFacing ? v_front : v_back;
#else
    vec3 color = v_front;
#endif
#if TEXTURED  // UVs with v up (OBJ): v = 0 is the bottom row of the texture image
    color *= texture(albedo_map, vec3(v_uv.x, 1.0 - v_uv.y, v_layer)).rgb;
#endif
    f_color = vec4(clamp(color, 0.0, 1.0), 1.0);  // premultiplied by full coverage
}
"""

_AUX_FS = """#version 450
// DEPTH, NORMALS and PARTS are defined (as their attachment's number) for the targets drawn: only those asked
// for, since clearing and reading each costs memory traffic
layout(std430, binding = 5) readonly buffer FacePart { int face_part[]; };
in vec3 v_camera;
in vec3 v_normal;
#ifdef DEPTH
layout(location = DEPTH) out float f_depth;
#endif
#ifdef NORMALS
layout(location = NORMALS) out vec4 f_normal;
#endif
#ifdef PARTS
layout(location = PARTS) out float f_part;
#endif

void main() {
#ifdef DEPTH
    f_depth = v_camera.z;
#endif
#ifdef NORMALS
    f_normal = vec4(normalize(gl_FrontFacing ? v_normal : -v_normal), 0.0);  // the visible side
#endif
#ifdef PARTS
    f_part = float(face_part[gl_PrimitiveID]);
#endif
}
"""
# aux targets: (components, dtype, clear value, bytes per pixel)
_AUX_TARGETS = {"depth": (1, "f4", math.inf, 4), "normals": (4, "f2", 0.0, 8), "parts": (1, "f4", -1.0, 4)}

# The composite draws one quad per sample twice: over its whole tile the background (RESOLVE 0), then, inside
# its rect (the box around its projected mesh; transparent outside), the resolved colour pass over the background
# (RESOLVE 1). Resolving fetches every sample of every pixel, most of this pass's cost, and the box is a third of
# the image on average; llvmpipe skips no masked-off work in a shader, so the rects are drawn as geometry, and
# per-sample values come as flat varyings (a storage-buffer read per pixel costs as much as four fetches).
_COMPOSITE_VS = """#version 450
struct Tile { ivec4 rect; vec4 background; };  // rect: x0, y0, x1, y1 (exclusive) in the tile's pixels
layout(std430, binding = 6) readonly buffer Tiles { Tile tiles[]; };
uniform ivec2 tile_size;
uniform int columns;
uniform ivec2 target_size;
uniform bool background_per_sample;
uniform int first_sample;  // of this chunk, in the batch
flat out vec3 v_background;
flat out ivec3 v_origin;  // the tile's first pixel, and the layer of its background image

void main() {
    int t = gl_InstanceID;
    ivec2 origin = ivec2(t % columns, t / columns) * tile_size;
#if RESOLVE
    vec4 rect = vec4(tiles[t].rect);
#else
    vec4 rect = vec4(0.0, 0.0, tile_size);
#endif
    vec2 pixel = origin + mix(rect.xy, rect.zw, vec2(gl_VertexID % 2, gl_VertexID / 2));
    gl_Position = vec4(pixel / target_size * 2.0 - 1.0, 0.0, 1.0);
    v_background = tiles[t].background.rgb;
    v_origin = ivec3(origin, background_per_sample ? first_sample + t : 0);
}
"""

_COMPOSITE_FS = """#version 450
// MSAA, SUPERSAMPLE_X and SUPERSAMPLE_Y are defined per renderer: constant loops unroll; RESOLVE and
// BACKGROUND_IMAGE per program
#if MSAA > 1
uniform sampler2DMS coverage;  // the colour pass (supersampled, multisampled), over its background or transparent
#else
uniform sampler2D coverage;  // one sample: a plain texture, rasterised exactly as the other outputs
#endif
uniform sampler2DArray backgrounds;
flat in vec3 v_background;
flat in ivec3 v_origin;
layout(location = 0) out vec4 f_color;

void main() {
    ivec2 pixel = ivec2(gl_FragCoord.xy);
    vec4 color = vec4(0.0);  // the colour pass was cleared transparent: the background is composited here
#if RESOLVE
    for (int y = 0; y < SUPERSAMPLE_Y; ++y)
        for (int x = 0; x < SUPERSAMPLE_X; ++x)
            for (int k = 0; k < MSAA; ++k)
                color += texelFetch(coverage, pixel * ivec2(SUPERSAMPLE_X, SUPERSAMPLE_Y) + ivec2(x, y), k);
    color /= float(SUPERSAMPLE_X * SUPERSAMPLE_Y * MSAA);
#endif
#if BACKGROUND_IMAGE
    vec3 background = texelFetch(backgrounds, ivec3(pixel - v_origin.xy, v_origin.z), 0).rgb;
#else
    vec3 background = v_background;
#endif
    f_color = vec4(color.rgb + (1.0 - color.a) * background, 1.0);  // premultiplied
}
"""


# Clears the colour pass inside the rects only (transparent black, farthest depth): nothing outside them is drawn
# or read, and a full clear of the multisampled buffers is a large share of the pass (memory traffic)
_RECT_CLEAR_FS = """#version 450
layout(location = 0) out vec4 f_color;
void main() {
    f_color = vec4(0.0);
    gl_FragDepth = 1.0;
}
"""


def _numpy(x: ArrayLike, dtype=np.float32) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def _per_sample(x: ArrayLike, B: int, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Broadcast a shared or per-sample value to (B, *shape)."""
    x = _numpy(x)
    try:
        return np.ascontiguousarray(np.broadcast_to(x, (B, *shape)))
    except ValueError:
        raise ValueError(f"{name} has shape {x.shape}; expected {shape} or ({B}, {', '.join(map(str, shape))})"
                         ) from None


def _rgb(x: ArrayLike, B: int, name: str) -> np.ndarray:
    """A colour or intensity, shared or per sample: scalar, (3,), (B,), (B, 1) or (B, 3) -> (B, 3)."""
    x = _numpy(x)
    if x.ndim == 1 and x.shape[0] != 3:
        x = x[:, None]
    return _per_sample(x, B, (3,), name)


class Renderer:
    """Draws one mesh topology at one image size; create once, call `render` many times.

    faces (F, 3); image_size H or (H, W); vt (T, 2) / ft (F, 3): UVs (v up) and per-face UV indices for
    textures; parts: per-vertex labels (V,) or skinning weights (V, J), one label per face (the label with the
    largest summed weight over the face's corners); samples: antialiasing samples per pixel (MSAA up to the
    driver's limit, supersampling on top); cull: skip faces turned away from the camera (default: when the mesh
    is closed, where they are always hidden; per chunk, only when all its samples have one orientation);
    max_memory: bytes of framebuffers for one chunk of the batch (the batch is drawn in as few chunks as fit).
    """

    def __init__(self, faces: ArrayLike, image_size: int | tuple[int, int], vt: ArrayLike | None = None,
                 ft: ArrayLike | None = None, parts: ArrayLike | None = None, samples: int = 8,
                 cull: bool | None = None, max_memory: int = 2 ** 28) -> None:
        self.ctx = get_context()
        with self._current():
            self._create(faces, image_size, vt, ft, parts, samples, cull, max_memory)

    @contextlib.contextmanager
    def _current(self):
        """This renderer's context made current, in the process that made it."""
        owner = (self.ctx.extra or {}).get("pid", os.getpid())
        if owner != os.getpid():
            raise RuntimeError(
                f"this OpenGL context was made in process {owner}, and this process ({os.getpid()}) was forked "
                "from it: a forked child cannot render with it. Start workers with the 'spawn' method "
                "(multiprocessing.get_context('spawn'), torch DataLoader(multiprocessing_context='spawn')) or "
                "render only after the fork")
        with self.ctx:
            yield

    def _create(self, faces, image_size, vt, ft, parts, samples, cull, max_memory) -> None:
        self.faces = _numpy(faces, np.int32)  # (F, 3)
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"faces must have shape (F, 3), got {self.faces.shape}")
        self.num_vertices = int(self.faces.max()) + 1
        self.height, self.width = (image_size, image_size) if np.isscalar(image_size) else image_size
        self.msaa, self.supersample = _split_samples(samples, self.ctx.max_samples)
        limit = self.ctx.info["GL_MAX_TEXTURE_SIZE"]
        if max(self.width * self.supersample[0], self.height * self.supersample[1]) > limit:
            raise ValueError(f"{self.height}x{self.width} with {samples} samples needs a framebuffer larger than "
                             f"this driver's {limit} pixels: use fewer samples or a smaller image")
        self.textured = vt is not None
        if (vt is None) != (ft is None):
            raise ValueError("vt and ft come together: give both or neither")
        uv_index = np.zeros((3 * len(self.faces), 1), np.int64) if vt is None else _numpy(ft, np.int64).reshape(-1, 1)
        pairs, drawn_index = np.unique(np.concatenate([self.faces.reshape(-1, 1), uv_index], axis=1), axis=0,
                                       return_inverse=True)  # (D, 2) distinct (vertex, UV index), (3 F,)
        drawn_uv = np.zeros((len(pairs), 2), np.float32) if vt is None else _numpy(vt)[pairs[:, 1]]
        self.cull = _closed(self.faces) if cull is None else cull
        self.face_part = None if parts is None else self._face_parts(parts)
        self.max_memory = max_memory

        ctx = self.ctx
        defines = (f"#define MSAA {self.msaa}\n#define SUPERSAMPLE_X {self.supersample[0]}\n"
                   f"#define SUPERSAMPLE_Y {self.supersample[1]}\n")
        self._composite = {}  # (resolve, background image): program
        for resolve in (0, 1):
            for image in (0, 1):
                flags = f"#define RESOLVE {resolve}\n#define BACKGROUND_IMAGE {image}\n"
                self._composite[resolve, image] = ctx.program(
                    vertex_shader=_COMPOSITE_VS.replace("\n", "\n" + flags, 1),
                    fragment_shader=_COMPOSITE_FS.replace("\n", "\n" + defines + flags, 1))
        self._drawn_index = ctx.buffer(drawn_index.astype(np.int32))
        self._vaos = {}
        self._mesh_programs: dict[tuple, moderngl.Program] = {}
        self._rect_clear = ctx.program(vertex_shader=_COMPOSITE_VS.replace(
            "\n", "\n#define RESOLVE 1\n#define BACKGROUND_IMAGE 0\n", 1), fragment_shader=_RECT_CLEAR_FS)
        self._vaos.update({program: ctx.vertex_array(program, [])
                           for program in (*self._composite.values(), self._rect_clear)})
        self._drawn_vertex = ctx.buffer(pairs[:, 0].astype(np.int32))
        self._drawn_uv = ctx.buffer(drawn_uv)
        self._face_part_buffer = ctx.buffer(
            np.zeros(len(self.faces), np.int32) if self.face_part is None else self.face_part.astype(np.int32))
        self._buffers: dict[str, moderngl.Buffer] = {}
        self._textures: dict[str, moderngl.Texture] = {}
        self._layers: dict[str, int] = {}  # of each texture array, in use
        self._framebuffers: dict[tuple, dict] = {}  # least recently used first
        self._framebuffer_bytes: dict[tuple, int] = {}

    def _face_parts(self, parts: ArrayLike) -> np.ndarray:
        parts = _numpy(parts)
        if parts.ndim == 1:
            parts = np.eye(int(parts.max()) + 1, dtype=np.float32)[parts.astype(np.int64)]
        if parts.shape[0] != self.num_vertices:
            raise ValueError(f"parts has {parts.shape[0]} rows, the mesh has {self.num_vertices} vertices")
        face_part = parts[self.faces].sum(axis=1).argmax(axis=1)  # (F,)
        if face_part.max() > np.iinfo(np.int16).max:
            raise ValueError(f"at most {np.iinfo(np.int16).max + 1} part labels (int16 output)")
        return face_part

    def render(self, vertices: ArrayLike, camera: WeakPerspective | Perspective, texture: ArrayLike | None = None,
               color: ArrayLike = SKIN, background: ArrayLike = (0.0, 0.0, 0.0), light: Light | None = None,
               outputs: tuple[str, ...] = ("image",)) -> dict[str, np.ndarray]:
        """Render vertices (B, V, 3) (numpy or torch, any device) -> {output name: (B, H, W, ...) array}.

        camera: WeakPerspective or Perspective, per sample or shared. texture: (Ht, Wt, 3) or (B, Ht, Wt, 3)
        uint8 through the UVs; color: albedo without texture, (3,) or (B, 3) in [0, 1]; background: a colour
        (3,) / (B, 3) in [0, 1] or an image (H, W, 3) / (B, H, W, 3) uint8; light: Light (default Light()).
        """
        with self._current():
            return self._render(vertices, camera, texture, color, background, light, outputs)

    def _render(self, vertices, camera, texture, color, background, light, outputs) -> dict[str, np.ndarray]:
        unknown = set(outputs) - set(OUTPUTS)
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}; choose from {OUTPUTS}")
        if "parts" in outputs and self.face_part is None:
            raise ValueError("'parts' needs a Renderer made with parts= (labels or skinning weights)")
        if texture is not None and not self.textured:
            raise ValueError("a texture needs a Renderer made with vt= and ft=")
        verts = _numpy(vertices)
        if verts.ndim == 2:
            verts = verts[None]
        if verts.ndim != 3 or verts.shape[1:] != (self.num_vertices, 3):
            raise ValueError(f"vertices must have shape (B, {self.num_vertices}, 3), got {tuple(verts.shape)}")
        B = len(verts)
        view, proj = self._camera_matrices(camera, verts)
        rects = self._pixel_rects(view, proj, verts) if "image" in outputs else None
        block = _sample_block(view, proj, Light() if light is None else light, color)
        face_normals = _face_normals(verts, self.faces)  # (B, F, 3)
        normals = _sum_to_vertices(face_normals, self.faces, self.num_vertices)
        # +1 where the winding turns outwards as seen by the camera, -1 inwards (mirrored), 0 flat: the sign of
        # the enclosed volume, sum over faces of a . (b x c) = a . ((b - a) x (c - a))
        orientation = np.zeros(B)
        if self.cull:
            volume = np.einsum("bfi,bfi->b", verts[:, self.faces[:, 0]], face_normals)
            orientation = np.sign(volume * np.linalg.det(view[:, :3, :3]))
        if np.ndim(background) >= 3:
            background = _images(background, B, (self.height, self.width), "background")  # (1 or B, H, W, 3)
            self._upload_images("background", background, mipmaps=False)
        else:
            background = _rgb(background, B, "background")  # (B, 3)
        if texture is not None:
            self._upload_images("albedo", _images(texture, B, None, "texture"), mipmaps=True)

        H, W = self.height, self.width
        result = {"image": np.empty((B, H, W, 3), np.uint8)} if "image" in outputs else {}
        aux = _aux_targets(outputs)
        for name in aux:
            result[name] = np.empty((B, H, W, 3) if name == "normals" else (B, H, W),
                                    np.int16 if name == "parts" else np.float32)

        # bytes per sample: multisampled RGBA8 + depth and the RGBA8 result; the aux targets + depth
        tile_bytes = H * W * ((8 * self.msaa * self.supersample[0] * self.supersample[1] + 4) * ("image" in outputs)
                              + (4 + sum(_AUX_TARGETS[name][3] for name in aux)) * bool(aux))
        most = max(1, min(self.max_memory // tile_bytes, self._max_tiles()))
        chunk = min(B, most)
        chunks = math.ceil(B / chunk)
        chunk = math.ceil(B / chunks)  # balanced chunks share one framebuffer
        # tilings for a multiple of 8 samples: batches of varying size (as the synthetic data's per side) reuse
        # a few framebuffers rather than make new ones (about three clears' time each)
        tiles = min(most, -(-chunk // 8) * 8) if chunk > 8 else chunk
        columns = math.ceil(math.sqrt(tiles))
        rows = math.ceil(tiles / columns)
        for start in range(0, B, chunk):
            stop = min(start + chunk, B)
            # a closed mesh hides the faces turned away from the camera: skip them when all agree which they are
            turn = orientation[start:stop]
            cull = "back" if (turn > 0).all() else "front" if (turn < 0).all() else None
            part = _Chunk(start, stop, rows, columns, cull)
            self._upload_chunk(verts[start:stop], normals[start:stop], block[start:stop], rows * columns)
            if "image" in outputs:
                self._draw_color(part, texture, background if background.ndim == 4 else background[start:stop],
                                 rects[start:stop], result["image"])
            if aux:
                self._draw_aux(part, aux, result)
        if "mask" in outputs:
            result["mask"] = np.isfinite(result["depth"]) if "depth" in aux else result["parts"] >= 0
        if "depth" not in outputs:
            result.pop("depth", None)
        return result

    def _camera_matrices(self, camera: WeakPerspective | Perspective, verts: np.ndarray):
        """Per-sample world -> camera (B, 4, 4) and camera -> clip (B, 4, 4) matrices (clip y down, like pixels)."""
        B = len(verts)
        view = np.tile(np.eye(4, dtype=np.float32), (B, 1, 1))
        if isinstance(camera, Perspective):
            if camera.R is not None:
                view[:, :3, :3] = _per_sample(camera.R, B, (3, 3), "camera.R")
            if camera.t is not None:
                view[:, :3, 3] = _per_sample(camera.t, B, (3,), "camera.t")
        elif not isinstance(camera, WeakPerspective):
            raise TypeError(f"camera must be WeakPerspective or Perspective, got {type(camera).__name__}")
        z = np.einsum("bj,bvj->bv", view[:, 2, :3], verts) + view[:, 2, 3, None]  # camera-space z (B, V)
        z_min, z_max = z.min(axis=1), z.max(axis=1)
        proj = np.zeros((B, 4, 4), np.float32)
        if isinstance(camera, WeakPerspective):
            s, tx, ty = _per_sample(camera.cam, B, (3,), "camera.cam").T
            pad = 0.01 * (z_max - z_min) + 1e-4
            near, far = z_min - pad, z_max + pad
            proj[:, 0, 0], proj[:, 0, 3] = s, tx
            proj[:, 1, 1], proj[:, 1, 3] = s, ty
            proj[:, 2, 2], proj[:, 2, 3] = 2 / (far - near), -(far + near) / (far - near)
            proj[:, 3, 3] = 1
        else:
            K = _per_sample(camera.K, B, (3, 3), "camera.K")
            if not np.allclose(K[:, 2], [0, 0, 1]):
                raise ValueError("camera.K must have last row (0, 0, 1)")
            far = np.maximum(z_max * 1.01, 1e-3)
            near = np.where(z_min > 0, z_min * 0.99, far * 1e-3)
            # pixels -> [-1, 1] as handlib.camera.pixels_to_normalized: x_n = (x_px + 0.5) * 2 / W - 1
            size = np.array([self.width, self.height], np.float32)
            proj[:, :2, :3] = 2 / size[None, :, None] * (K[:, :2] + 0.5 * K[:, 2:3]) - K[:, 2:3]
            proj[:, 2, 2], proj[:, 2, 3] = (far + near) / (far - near), -2 * far * near / (far - near)
            proj[:, 3, 2] = 1
        return view, proj

    def _pixel_rects(self, view: np.ndarray, proj: np.ndarray, verts: np.ndarray) -> np.ndarray:
        """(B, 4) int32 pixel boxes x0, y0, x1, y1 (exclusive) that hold each sample's projected mesh, with a
        pixel to spare (rounding on the GL side); the whole image where a vertex lies behind the camera."""
        m = (proj @ view)[:, [0, 1, 3], :, None]  # clip x, y, w rows, (B, 3, 4, 1)
        # elementwise on (B, V) arrays: several times faster than batched 3x3 matmuls and middle-axis reductions
        x, y, z = (np.ascontiguousarray(verts[..., k]) for k in range(3))
        cx, cy, w = (m[:, i, 0] * x + m[:, i, 1] * y + m[:, i, 2] * z + m[:, i, 3] for i in range(3))
        behind = (w <= 1e-12).any(axis=1)
        w = np.where(w > 1e-12, w, 1.0)
        lo, hi = [], []
        for c, size in ((cx, self.width), (cy, self.height)):
            pixels = (c / w + 1) * (size / 2)  # pixel edges
            lo.append(np.clip(np.floor(pixels.min(axis=1)) - 1, 0, size))
            hi.append(np.clip(np.ceil(pixels.max(axis=1)) + 1, 0, size))
        lo, hi = np.stack(lo, axis=1), np.stack(hi, axis=1)
        lo[behind], hi[behind] = 0, (self.width, self.height)
        return np.concatenate([lo, hi], axis=1).astype(np.int32)

    def _max_tiles(self) -> int:
        limit = self.ctx.info["GL_MAX_TEXTURE_SIZE"]
        sx, sy = self.supersample
        return max(1, limit // (self.width * sx)) * max(1, limit // (self.height * sy))

    def _buffer(self, name: str, data: np.ndarray) -> moderngl.Buffer:
        """A reused buffer holding data (grown when too small)."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < data.nbytes:
            if buffer is not None:
                buffer.release()
            buffer = self._buffers[name] = self.ctx.buffer(reserve=max(data.nbytes, 16))
        buffer.write(np.ascontiguousarray(data))
        return buffer

    def _upload_chunk(self, verts: np.ndarray, normals: np.ndarray, block: np.ndarray, tiles: int) -> None:
        padded = np.zeros((tiles, _SAMPLE_FLOATS), np.float32)  # tiles left empty read zeros
        padded[:len(block)] = block
        self._buffer("positions", verts).bind_to_storage_buffer(0)
        self._buffer("normals", normals).bind_to_storage_buffer(1)
        self._drawn_vertex.bind_to_storage_buffer(2)
        self._drawn_uv.bind_to_storage_buffer(3)
        self._buffer("samples", padded).bind_to_storage_buffer(4)
        self._face_part_buffer.bind_to_storage_buffer(5)

    def _upload_images(self, name: str, images: np.ndarray, mipmaps: bool) -> None:
        """Upload (L, H, W, 3) uint8 images into the first L layers of a reused texture array (made for a multiple
        of 8 layers: batches of varying size, as the synthetic data's per side, reuse it rather than make one
        each time)."""
        L, h, w, _ = images.shape
        texture = self._textures.get(name)
        if texture is None or texture.size[:2] != (w, h) or not L <= texture.size[2] <= 2 * L + 8:
            if texture is not None:
                texture.release()
            texture = self._textures[name] = self.ctx.texture_array((w, h, -(-L // 8) * 8 if L > 1 else 1), 3)
        texture.write(images, viewport=(0, 0, 0, w, h, L))
        self._layers[name] = L
        if mipmaps:
            texture.build_mipmaps()
            texture.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
        texture.repeat_x = texture.repeat_y = False

    def _framebuffer(self, kind: str | tuple[str, ...], rows: int, columns: int) -> dict:
        """Reused framebuffers and their textures for a (rows x columns) tiling, by name; kind "color" or a tuple
        of aux targets. The few most recently used of a kind are kept."""
        key = (kind, rows, columns)
        if key in self._framebuffers:
            self._framebuffers[key] = self._framebuffers.pop(key)  # most recently used
            return self._framebuffers[key]
        ctx, W, H = self.ctx, columns * self.width, rows * self.height
        if kind == "color":
            sx, sy = self.supersample
            samples = self.msaa if self.msaa > 1 else 0
            coverage = ctx.texture((W * sx, H * sy), 4, samples=samples)
            depth = ctx.depth_renderbuffer((W * sx, H * sy), samples=samples)
            out = ctx.texture((W, H), 4)  # read back as RGBA: several times faster than RGB on llvmpipe
            objects = {"fbo": ctx.framebuffer([coverage], depth), "out_fbo": ctx.framebuffer([out]),
                       "coverage": coverage, "depth": depth, "out": out}
            nbytes = W * H * (8 * samples * sx * sy + 4)
        else:
            targets = {name: ctx.texture((W, H), _AUX_TARGETS[name][0], dtype=_AUX_TARGETS[name][1])
                       for name in kind}  # parts as floats: exact integers up to 2^24
            depth = ctx.depth_renderbuffer((W, H))
            objects = {"fbo": ctx.framebuffer(list(targets.values()), depth), "depth": depth, **targets,
                       **{name + "_fbo": ctx.framebuffer([texture], depth if k == 0 else None)
                          for k, (name, texture) in enumerate(targets.items())}}
            nbytes = W * H * (4 + sum(_AUX_TARGETS[name][3] for name in kind))
        self._framebuffers[key], self._framebuffer_bytes[key] = objects, nbytes
        same = [k for k in self._framebuffers if k[0] == kind]
        while len(same) > 1 and (len(same) > 3 or sum(self._framebuffer_bytes[k] for k in same) > 2 * self.max_memory):
            old = same.pop(0)
            for obj in self._framebuffers.pop(old).values():
                obj.release()
            del self._framebuffer_bytes[old]
        return objects

    def _draw_mesh(self, program: moderngl.Program, part: "_Chunk") -> None:
        program["num_vertices"] = self.num_vertices
        program["columns"] = part.columns
        program["tile_scale"] = (1 / part.columns, 1 / part.rows)
        ctx = self.ctx
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.disable(moderngl.BLEND)
        ctx.front_face = "cw"  # clip y is down (as in the image), which mirrors the winding
        if part.cull:
            ctx.enable(moderngl.CULL_FACE)
            ctx.cull_face = part.cull
        else:
            ctx.disable(moderngl.CULL_FACE)
        for k in range(4):
            ctx.enable_direct(0x3000 + k)  # GL_CLIP_DISTANCE0 + k
        self._vaos[program].render(moderngl.TRIANGLES, vertices=3 * len(self.faces), instances=part.stop - part.start)
        ctx.disable(moderngl.CULL_FACE)

    def _draw_color(self, part: "_Chunk", texture, background: np.ndarray, rects: np.ndarray,
                    out: np.ndarray) -> None:
        """The image pass: the mesh over transparent black, resolved and composited over the background (colours
        (n, 3) or images) inside rects (n, 4), the boxes that hold each sample's mesh."""
        start, stop, rows, columns, _ = part
        framebuffer = self._framebuffer("color", rows, columns)
        msaa_fbo, out_fbo, coverage = framebuffer["fbo"], framebuffer["out_fbo"], framebuffer["coverage"]
        program = self._mesh_program(textured=texture is not None, sides={None: 0, "back": 1, "front": 2}[part.cull])
        msaa_fbo.use()
        image = background.ndim == 4
        tiles = np.zeros((rows * columns, 8), np.float32)  # struct Tile; tiles left empty: no rect, black
        tiles[:stop - start].view(np.int32)[:, :4] = rects
        if not image:
            tiles[:stop - start, 4:7] = background
        self._buffer("tiles", tiles).bind_to_storage_buffer(6)
        clear = self._rect_clear
        clear["tile_size"], clear["columns"] = (self.width, self.height), columns
        clear["target_size"] = (columns * self.width, rows * self.height)
        self.ctx.enable(moderngl.DEPTH_TEST)
        self.ctx.depth_func = "1"  # always: the depth is set, not tested
        self._vaos[clear].render(moderngl.TRIANGLE_STRIP, vertices=4, instances=stop - start)
        self.ctx.depth_func = "<"
        if texture is not None:
            program["texture_per_sample"] = self._layers["albedo"] > 1
            program["first_sample"] = start
            program["albedo_map"] = 0
            self._textures["albedo"].use(0)
        self._draw_mesh(program, part)

        out_fbo.use()
        self.ctx.disable(moderngl.DEPTH_TEST)
        coverage.use(1)
        if image:
            self._textures["background"].use(2)
        uniforms = {"coverage": 1, "tile_size": (self.width, self.height), "columns": columns,
                    "target_size": (columns * self.width, rows * self.height),
                    "background_per_sample": image and self._layers["background"] > 1,
                    "first_sample": start, "backgrounds": 2}
        for resolve in (0, 1):
            program = self._composite[resolve, int(image)]
            for name, value in uniforms.items():
                if name in program:  # the compiler drops those a program does not use
                    program[name] = value
            self._vaos[program].render(moderngl.TRIANGLE_STRIP, vertices=4, instances=stop - start)
        atlas = np.empty((rows * self.height, columns * self.width, 4), np.uint8)
        out_fbo.read_into(atlas, components=4)
        out[start:stop] = _untile(atlas, rows, columns, stop - start)[..., :3]

    def _draw_aux(self, part: "_Chunk", aux: tuple[str, ...], result: dict) -> None:
        start, stop, rows, columns, _ = part
        framebuffer = self._framebuffer(aux, rows, columns)
        for name in aux:  # the first target's framebuffer holds the depth buffer too
            framebuffer[name + "_fbo"].clear(_AUX_TARGETS[name][2], 0.0, 0.0, 0.0, depth=1.0)
        framebuffer["fbo"].use()
        self._draw_mesh(self._mesh_program(aux=aux), part)
        H, W = rows * self.height, columns * self.width
        for name in aux:
            components, dtype = (3, np.float16) if name == "normals" else (1, np.float32)
            data = np.empty((H, W, components), dtype)
            framebuffer[name + "_fbo"].read_into(data, components=components, dtype=_AUX_TARGETS[name][1])
            tiles = _untile(data, rows, columns, stop - start)
            result[name][start:stop] = tiles if name == "normals" else tiles[..., 0]

    def _mesh_program(self, aux: tuple[str, ...] = (), textured: bool = False, sides: int = 0) -> moderngl.Program:
        """The mesh program of the aux pass drawing targets `aux`, or of the colour pass (compiled on first use)."""
        key = (aux, textured, sides)
        if key not in self._mesh_programs:
            flags = f"#define AUX {int(bool(aux))}\n#define TEXTURED {int(textured)}\n#define SIDES {sides}\n"
            targets = "".join(f"#define {name.upper()} {k}\n" for k, name in enumerate(aux))
            program = self.ctx.program(vertex_shader=_MESH_VS.replace("\n", "\n" + flags, 1),
                                       fragment_shader=(_AUX_FS if aux else _COLOR_FS).replace(
                                           "\n", "\n" + flags + targets, 1))
            self._vaos[program] = self.ctx.vertex_array(program, [], index_buffer=self._drawn_index,
                                                        index_element_size=4)
            self._mesh_programs[key] = program
        return self._mesh_programs[key]

    def release(self) -> None:
        """Free this renderer's GL objects now (they are otherwise freed with the context)."""
        with self._current():
            self._release()

    def _release(self) -> None:
        objects = [*self._mesh_programs.values(), *self._composite.values(), self._rect_clear, *self._vaos.values(),
                   self._drawn_index, self._drawn_vertex, self._drawn_uv, self._face_part_buffer,
                   *self._buffers.values(),
                   *self._textures.values()]
        for fbo_objects in self._framebuffers.values():
            objects.extend(fbo_objects.values())
        for obj in objects:
            obj.release()
        self._buffers, self._textures, self._framebuffers, self._framebuffer_bytes = {}, {}, {}, {}
        self._mesh_programs = {}


class _Chunk(NamedTuple):
    """Samples start:stop of a batch, drawn together in a rows x columns tiling."""
    start: int
    stop: int
    rows: int
    columns: int
    cull: str | None  # "back", "front" or None


def _sample_block(view: np.ndarray, proj: np.ndarray, light: Light, color: ArrayLike) -> np.ndarray:
    """The per-sample storage block of the shaders (struct Sample), (B, _SAMPLE_FLOATS) float32."""
    B = len(view)
    block = np.zeros((B, _SAMPLE_FLOATS), np.float32)
    block[:, 0:16] = view.transpose(0, 2, 1).reshape(B, 16)  # GLSL matrices are column major
    block[:, 16:32] = proj.transpose(0, 2, 1).reshape(B, 16)
    for k, value in enumerate((_per_sample(light.direction, B, (3,), "light.direction"),
                               _rgb(light.diffuse, B, "light.diffuse"), _rgb(light.ambient, B, "light.ambient"),
                               _rgb(color, B, "color"))):
        block[:, 32 + 4 * k: 35 + 4 * k] = value
    return block


def _aux_targets(outputs: tuple[str, ...]) -> tuple[str, ...]:
    """The aux targets drawn for `outputs`: those asked for, and for a mask alone the depth."""
    targets = [name for name in _AUX_TARGETS if name in outputs]
    if "mask" in outputs and "depth" not in targets and "parts" not in targets:
        targets.insert(0, "depth")
    return tuple(targets)


def _split_samples(samples: int, max_msaa: int) -> tuple[int, tuple[int, int]]:
    """Samples per pixel -> (MSAA samples, (supersample x, supersample y)); supersampling covers the rest."""
    msaa = min(samples, max(max_msaa, 1))
    if samples < 1 or samples & (samples - 1) or samples > 4 * msaa:
        raise ValueError(f"samples must be a power of two from 1 to {4 * msaa} here, got {samples}")
    rest = samples // msaa  # 1, 2 or 4 supersamples, which one bilinear fetch averages
    return msaa, (min(rest, 2), rest // 2 if rest == 4 else 1)


def _images(x: ArrayLike, B: int, size: tuple[int, int] | None, name: str) -> np.ndarray:
    """(h, w, 3) or (B, h, w, 3) uint8 -> (L, h, w, 3) with L = 1 (shared) or B."""
    x = _numpy(x, np.uint8)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] not in (1, B):
        raise ValueError(f"{name} must be (h, w, 3) or ({B}, h, w, 3) uint8, got {x.shape}")
    if size is not None and x.shape[1:3] != size:
        raise ValueError(f"{name} images are {x.shape[1:3]}, the renderer draws {size} (H, W)")
    return x


def _untile(atlas: np.ndarray, rows: int, columns: int, n: int) -> np.ndarray:
    """(rows * H, columns * W, C) -> (n, H, W, C), tiles in row-major order."""
    H, W, C = atlas.shape[0] // rows, atlas.shape[1] // columns, atlas.shape[2]
    return atlas.reshape(rows, H, columns, W, C).transpose(0, 2, 1, 3, 4).reshape(rows * columns, H, W, C)[:n]
