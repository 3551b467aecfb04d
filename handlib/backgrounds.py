"""Backgrounds for synthetic images: near-white paper (as in 11K Hands), plain colours, procedural textures,
or random crops of a folder of the user's own images. Each is a function of a numpy Generator, so a sample's
background is fixed by its seed."""

import functools
from pathlib import Path

import numpy as np
from PIL import Image

KINDS = ("white", "plain", "texture", "images")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def white(rng: np.random.Generator, size: int) -> np.ndarray:
    """Near-white paper under uneven light: a faint gradient and vignette, (size, size, 3) uint8."""
    y, x = _grid(32, -1, 1)  # smooth: drawn small, then resized
    gx, gy = rng.normal(0, 0.04, 2)
    level = rng.uniform(0.85, 1.0) + gx * x + gy * y - rng.uniform(0, 0.08) * (x * x + y * y)
    tint = 1 + rng.normal(0, 0.015, 3)
    return _resized(level[..., None] * tint, size)


def plain(rng: np.random.Generator, size: int) -> np.ndarray:
    """One random colour, (size, size, 3) uint8."""
    return np.broadcast_to(_to_uint8(rng.uniform(0, 1, 3)), (size, size, 3)).copy()


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A procedural texture between two random colours: a gradient, smooth noise, or soft stripes/checks;
    drawn at half size and resized (backgrounds are a large share of the generation's time)."""
    half = max(size // 2, 8)
    y, x = _grid(half, 0, 1)
    kind = rng.integers(3)
    if kind == 0:
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * x + np.sin(angle) * y
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
    elif kind == 1:
        cells = int(rng.integers(3, 17))
        grid = Image.fromarray(rng.random((cells, cells)).astype(np.float32), mode="F")
        t = np.clip(np.asarray(grid.resize((half, half), Image.BICUBIC)), 0, 1)
    else:
        freq = rng.uniform(3, 20)
        angle = rng.uniform(0, np.pi)
        sharp = rng.uniform(2, 12)  # soft to crisp edges
        t = np.tanh(sharp * np.sin(2 * np.pi * freq * (np.cos(angle) * x + np.sin(angle) * y)))
        if rng.random() < 0.5:
            t = t * np.tanh(sharp * np.sin(2 * np.pi * freq * (-np.sin(angle) * x + np.cos(angle) * y)))
        t = 0.5 + 0.5 * t
    a, b = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    return _resized(a + t[..., None] * (b - a), size)


def _grid(n: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates (n, n) from lo to hi."""
    return np.mgrid[lo:hi:n * 1j, lo:hi:n * 1j].astype(np.float32)


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    """A float image (n, n, 3) in [0, 1] as uint8 (size, size, 3), bilinearly resized."""
    return np.asarray(Image.fromarray(_to_uint8(image)).resize((size, size), Image.BILINEAR))


def from_folder(rng: np.random.Generator, size: int, folder: str | Path) -> np.ndarray:
    """A random square crop (a third to all of the shorter side) of a random image of `folder`, resized."""
    files = image_files(folder)
    image = _load(files[rng.integers(len(files))])
    h, w = image.shape[:2]
    side = int(min(h, w) * rng.uniform(0.33, 1.0))
    top, left = rng.integers(h - side + 1), rng.integers(w - side + 1)
    crop = Image.fromarray(image[top:top + side, left:left + side])
    out = np.asarray(crop.resize((size, size), Image.BILINEAR))
    return out[:, ::-1].copy() if rng.random() < 0.5 else out


@functools.cache
def image_files(folder: str | Path) -> tuple[Path, ...]:
    """The images of `folder` (sorted, so a seed picks the same ones); a clear error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"background folder {folder} does not exist")
    files = tuple(sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"background folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


@functools.lru_cache(maxsize=64)
def _load(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as err:
        raise ValueError(f"background image {path} cannot be read: {err}") from err


def background(rng: np.random.Generator, size: int, kind: str, folder: str | Path | None = None) -> np.ndarray:
    """A background of `kind` (one of KINDS), (size, size, 3) uint8."""
    if kind == "images":
        if folder is None:
            raise ValueError("background kind 'images' needs a folder of images (background_dir)")
        return from_folder(rng, size, folder)
    makers = {"white": white, "plain": plain, "texture": texture}
    if kind not in makers:
        raise ValueError(f"unknown background kind {kind!r}; choose from {KINDS}")
    return makers[kind](rng, size)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
