"""Sharded sample storage: npz shards written atomically, a manifest with checksums, and a torch Dataset.

A dataset folder holds `manifest.json` and shards `<split>-<number>.npz`. Each shard stacks the arrays of its
samples along axis 0; images are stored encoded (JPEG or PNG bytes, concatenated, with offsets). Shard bytes are
a pure function of their arrays (fixed zip timestamps, sorted members), so the same samples give the same files.
The manifest lists every finished shard with its SHA-256: a shard that is missing, truncated or altered is found
by name. Writing a shard and then the manifest, each atomically, makes an interrupted run resumable.
"""

import bisect
import hashlib
import io
import json
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from handlib.io import atomic_path, atomic_write_text

MANIFEST = "manifest.json"
FORMAT = "handlib-shards-1"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_BYTES, _OFFSETS = "{}.bytes", "{}.offsets"


class CorruptShardError(RuntimeError):
    """A shard whose bytes differ from the manifest's checksum, or that cannot be read."""


def encode_image(image: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """(H, W, 3) or (H, W) uint8 -> JPEG or PNG bytes."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"image format must be 'jpeg' or 'png', got {fmt!r}")
    return buf.getvalue()


def decode_image(data: bytes | np.ndarray) -> np.ndarray:
    """JPEG or PNG bytes -> uint8 array."""
    return np.asarray(Image.open(io.BytesIO(bytes(data))))


def shard_bytes(arrays: Mapping[str, np.ndarray | list[bytes]]) -> bytes:
    """A deterministic npz file holding `arrays`; a list of bytes is stored as `key.bytes` + `key.offsets`."""
    members = {}
    for key, value in arrays.items():
        if isinstance(value, list):
            members[_BYTES.format(key)] = np.frombuffer(b"".join(value), dtype=np.uint8)
            members[_OFFSETS.format(key)] = np.cumsum([0] + [len(v) for v in value], dtype=np.int64)
        else:
            members[key] = np.ascontiguousarray(value)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for key in sorted(members):
            npy = io.BytesIO()
            np.lib.format.write_array(npy, members[key], allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            zf.writestr(info, npy.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    return buf.getvalue()


def parse_shard(data: bytes, name: str = "<bytes>") -> dict[str, np.ndarray | list[np.ndarray]]:
    """Inverse of `shard_bytes`: arrays by key; encoded fields come back as lists of uint8 buffers."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            raw = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise CorruptShardError(f"shard {name} cannot be read: {err}") from err
    out = {}
    for key, value in raw.items():
        if key.endswith(".bytes"):
            base = key[: -len(".bytes")]
            offsets = raw[_OFFSETS.format(base)]
            out[base] = [value[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        elif not key.endswith(".offsets"):
            out[key] = value
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(root: str | Path) -> dict:
    """The manifest of the dataset folder `root`, with a clear error when it is absent or not ours."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {root} is not a generated dataset folder (or not finished "
                                "its first shard yet)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def read_shard(root: str | Path, name: str, entry: Mapping) -> dict:
    """Read shard `name` of `root`, checking its size and checksum against its manifest `entry`."""
    path = Path(root) / name
    return parse_shard(_verified_bytes(path, entry), str(path))


def check_shard(root: str | Path, name: str, entry: Mapping) -> str | None:
    """None when shard `name` matches its manifest entry, else the problem in words."""
    try:
        _verified_bytes(Path(root) / name, entry)
    except CorruptShardError as err:
        return str(err)
    return None


def _verified_bytes(path: Path, entry: Mapping) -> bytes:
    if not path.exists():
        raise CorruptShardError(f"shard {path} is listed in the manifest but missing")
    data = path.read_bytes()
    if len(data) != entry["bytes"] or sha256(data) != entry["sha256"]:
        raise CorruptShardError(f"shard {path} is corrupt: its checksum differs from the manifest's "
                                f"({len(data)} bytes, expected {entry['bytes']}); run the generator on this "
                                "folder again to rewrite it")
    return data


class ShardWriter:
    """Writes shards into `root` and keeps the manifest; reopening a folder resumes it.

    `header` (a JSON-able dict: the generator's configuration, splits, field descriptions) is written with the
    first manifest and must be identical on resume, so a folder never mixes two configurations.
    """

    def __init__(self, root: str | Path, header: Mapping):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        header = json.loads(json.dumps(header))  # normalise (tuples -> lists) to compare with a reloaded one
        for stale in self.root.glob(".*.tmp*"):  # temporary files of an interrupted atomic write
            stale.unlink()
        if (self.root / MANIFEST).exists():
            self.manifest = read_manifest(self.root)
            if self.manifest["header"] != header:
                raise ValueError(f"{self.root} holds a dataset generated with other settings; use a new folder "
                                 "or delete this one")
        else:
            self.manifest = {"format": FORMAT, "header": header, "shards": {}}
            self._save()

    def is_done(self, name: str) -> bool:
        """Whether shard `name` is finished and intact; a corrupt one is dropped (to be rewritten) with a warning."""
        entry = self.manifest["shards"].get(name)
        if entry is None:
            return False
        problem = check_shard(self.root, name, entry)
        if problem:
            warnings.warn(f"{problem}; it will be generated again", stacklevel=2)
            del self.manifest["shards"][name]
            self._save()
        return problem is None

    def write(self, name: str, arrays: Mapping, **info) -> None:
        """Write shard `name` atomically, then record it (with `info`, e.g. split and sample range)."""
        data = shard_bytes(arrays)
        with atomic_path(self.root / name) as tmp:
            tmp.write_bytes(data)
        self.manifest["shards"][name] = {**info, "bytes": len(data), "sha256": sha256(data)}
        self._save()

    def _save(self) -> None:
        shards = dict(sorted(self.manifest["shards"].items()))
        atomic_write_text(self.root / MANIFEST, json.dumps({**self.manifest, "shards": shards}, indent=1))


class ShardDataset(torch.utils.data.Dataset):
    """Samples of one split of a shard folder, as dicts of numpy arrays (images decoded to uint8).

    Every shard is checked against its checksum when the dataset is made: a corrupt or missing one is reported
    by name (a warning, and in `skipped`) and left out, so training goes on with the rest. Shards are loaded whole
    and the last `cache` kept; read in `ShardOrderSampler` order, each is read once per epoch.
    """

    def __init__(self, root: str | Path, split: str | None = None, cache: int = 2):
        self.root = Path(root)
        manifest = read_manifest(self.root)
        self.header = manifest["header"]
        self.encoded = set(self.header.get("encoded", []))
        self.shards, self.skipped, counts = [], [], []
        for name, entry in manifest["shards"].items():
            if split is not None and entry.get("split") != split:
                continue
            problem = check_shard(self.root, name, entry)
            if problem:
                warnings.warn(f"skipping {problem}", stacklevel=2)
                self.skipped.append(name)
                continue
            self.shards.append((name, entry))
            counts.append(entry["count"])
        if not self.shards:
            raise ValueError(f"{self.root}: no readable shard for split {split!r} "
                             f"(skipped: {self.skipped or 'none'})")
        self.starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._cache_size = cache

    def __len__(self) -> int:
        return self.starts[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, row) of sample `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        shard = bisect.bisect_right(self.starts, index) - 1
        return shard, index - self.starts[shard]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        shard, row = self.locate(int(index))
        arrays = self._load(shard)
        return {key: decode_image(value[row]) if key in self.encoded else value[row]
                for key, value in arrays.items()}

    def _load(self, shard: int) -> dict:
        if shard in self._cache:
            self._cache.move_to_end(shard)
            return self._cache[shard]
        name, entry = self.shards[shard]
        arrays = read_shard(self.root, name, entry)
        self._cache[shard] = arrays
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return arrays


class ShardOrderSampler(torch.utils.data.Sampler):
    """Indices shard by shard (shards and rows shuffled when `shuffle`), so each shard is loaded once per epoch.

    Call `set_epoch` before each epoch for a new order; the order is a function of (seed, epoch).
    """

    def __init__(self, dataset: ShardDataset, shuffle: bool = True, seed: int = 0):
        self.starts, self.shuffle, self.seed, self.epoch = dataset.starts, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.starts[-1]

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.starts) - 1
        for shard in rng.permutation(n) if self.shuffle else range(n):
            rows = np.arange(self.starts[shard], self.starts[shard + 1])
            yield from (rng.permutation(rows) if self.shuffle else rows).tolist()
