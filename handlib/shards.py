"""Sharded sample storage: npz shards written atomically, a manifest with checksums, and a torch Dataset.

A dataset folder holds `manifest.json` and shards `<split>-<number>.npz`. In a shard, small per-sample fields
are stacked along axis 0 (`theta.npy`, read once per shard), large ones are one zip member per sample
(`image/00012.npy`), so a random sample is read without decompressing its neighbours. Encoded fields (JPEG or
PNG bytes) are stored, the rest deflated. Shard bytes are a pure function of their arrays (fixed zip timestamps,
sorted members), so the same samples give the same files. The manifest lists every finished shard with its
SHA-256: a shard that is missing, truncated or altered is found by name. Writing a shard and then the manifest,
each atomically, makes an interrupted run resumable.
"""

import bisect
import hashlib
import io
import json
import os
import warnings
import zipfile
import zlib
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


def shard_bytes(arrays: Mapping[str, np.ndarray | list]) -> bytes:
    """A deterministic npz file of `arrays`: an ndarray (N, ...) is stacked in one member; a list (one array or
    bytes object per sample) becomes one member per sample, `key/00012`; bytes are stored uncompressed."""
    members = {}
    for key, value in arrays.items():
        if isinstance(value, list):
            for row, item in enumerate(value):
                raw = isinstance(item, bytes)
                members[f"{key}/{row:05d}"] = (np.frombuffer(item, np.uint8) if raw else np.asarray(item), raw)
        else:
            members[key] = (np.asarray(value), False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(members):
            array, raw = members[name]
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            zf.writestr(info, npy.getvalue(), compress_type=zipfile.ZIP_STORED if raw else zipfile.ZIP_DEFLATED,
                        compresslevel=None if raw else 1)
    return buf.getvalue()


def parse_shard(data: bytes, name: str = "<bytes>") -> dict[str, np.ndarray | list[np.ndarray]]:
    """Inverse of `shard_bytes`: stacked fields as arrays, per-sample fields as lists (bytes as uint8 arrays)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            raw = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise CorruptShardError(f"shard {name} cannot be read: {err}") from err
    out = {}
    for key in sorted(raw):
        if "/" in key:
            out.setdefault(key.split("/")[0], []).append(raw[key])
        else:
            out[key] = raw[key]
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
    return parse_shard(_verify(path, entry), str(path))


def check_shard(root: str | Path, name: str, entry: Mapping, checksum: bool = True) -> str | None:
    """None when shard `name` matches its manifest entry (its size, and its checksum unless `checksum` is
    False), else the problem in words."""
    try:
        _verify(Path(root) / name, entry, checksum)
    except CorruptShardError as err:
        return str(err)
    return None


def _verify(path: Path, entry: Mapping, checksum: bool = True) -> bytes | None:
    """The shard's bytes when they match the manifest entry (None when only the size is checked)."""
    if not path.exists():
        raise CorruptShardError(f"shard {path} is listed in the manifest but missing")
    if not checksum:
        if path.stat().st_size != entry["bytes"]:
            raise CorruptShardError(f"shard {path} is {path.stat().st_size} bytes, the manifest says "
                                    f"{entry['bytes']}: it is truncated or was replaced")
        return None
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

    def __init__(self, root: str | Path, header: Mapping, replace: bool = False):
        """replace: a folder holding a dataset of another header is emptied of it (its manifest and the shards
        it lists) and started afresh; otherwise that is an error."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        header = json.loads(json.dumps(header))  # normalise (tuples -> lists) to compare with a reloaded one
        for stale in self.root.glob(".*.tmp*"):  # temporary files of an interrupted atomic write
            stale.unlink()
        if (self.root / MANIFEST).exists():
            self.manifest = read_manifest(self.root)
            changed = _differences(self.manifest["header"], header)
            if changed and not replace:
                raise ValueError(f"{self.root} holds a dataset generated with other settings ({'; '.join(changed)})"
                                 ": use a new folder, or delete this one")
            if changed:
                for name in self.manifest["shards"]:
                    (self.root / name).unlink(missing_ok=True)
                (self.root / MANIFEST).unlink()
        if not (self.root / MANIFEST).exists():
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

    def write(self, name: str, data: bytes, **info) -> None:
        """Write shard `name` (`shard_bytes` of its arrays) atomically, then record it (with `info`, e.g. split and
        sample range)."""
        with atomic_path(self.root / name) as tmp:
            tmp.write_bytes(data)
        self.manifest["shards"][name] = {**info, "bytes": len(data), "sha256": sha256(data)}
        self._save()

    def _save(self) -> None:
        shards = dict(sorted(self.manifest["shards"].items()))
        atomic_write_text(self.root / MANIFEST, json.dumps({**self.manifest, "shards": shards}, indent=1))


def _differences(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """'key: old -> new' for every entry that differs, nested mappings followed."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


class ShardDataset(torch.utils.data.Dataset):
    """Samples of one split of a shard folder, as dicts of numpy arrays (encoded images decoded to uint8).

    Every shard is checked against the manifest when the dataset is made (its checksum, or only its size when
    `verify` is False): a corrupt or missing one is reported by name (a warning, and in `skipped`) and left
    out, so training goes on with the rest. A shard found unreadable later (damaged during a run) is reported
    and skipped the same way, its samples replaced by other shards' (the length stays, so samplers go on).
    Reading a sample opens its shard (the last `cache` stay open, per process) and reads that sample's members
    only. `transform`, when given, maps each sample dict.
    """

    def __init__(self, root: str | Path, split: str | None = None, cache: int = 4, verify: bool = True,
                 transform=None):
        self.root, self.transform = Path(root), transform
        manifest = read_manifest(self.root)
        self.header = manifest["header"]
        self.encoded = set(self.header.get("encoded", []))
        self.shards, self.skipped, counts = [], [], []
        for name, entry in manifest["shards"].items():
            if split is not None and entry.get("split") != split:
                continue
            problem = check_shard(self.root, name, entry, checksum=verify)
            if problem:
                warnings.warn(f"skipping {problem}", stacklevel=2)
                self.skipped.append(name)
                continue
            self.shards.append(name)
            counts.append(entry["count"])
        if not self.shards:
            raise ValueError(f"{self.root}: no readable shard for split {split!r} "
                             f"(skipped: {self.skipped or 'none'})")
        self.starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
        self._open: OrderedDict[int, tuple] = OrderedDict()
        self._cache_size, self._pid = cache, os.getpid()

    def __len__(self) -> int:
        return self.starts[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, row) of sample `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        shard = bisect.bisect_right(self.starts, index) - 1
        return shard, index - self.starts[shard]

    def column(self, key: str) -> np.ndarray:
        """A stacked field (e.g. labels) of every sample, in order, without reading the per-sample ones."""
        return np.concatenate([self._shard(k)[1][key] for k in range(len(self.shards))])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        shard, row = self.locate(int(index))
        n = len(self.shards)
        for k in ((shard + j) % n for j in range(n)):  # its own shard, then the next ones
            if self.shards[k] in self.skipped:
                continue
            try:
                item = self._read(k, row % (self.starts[k + 1] - self.starts[k]))
            except CorruptShardError as err:  # damaged since the check: go on with another shard's sample
                warnings.warn(f"skipping {err}; its samples are replaced by other shards'", stacklevel=2)
                self.skipped.append(self.shards[k])
                continue
            return self.transform(item) if self.transform else item
        raise CorruptShardError(f"{self.root}: no readable shard left (skipped: {self.skipped})")

    def _read(self, shard: int, row: int) -> dict[str, np.ndarray]:
        npz, stacked, per_sample = self._shard(shard)
        item = {key: value[row] for key, value in stacked.items()}
        try:
            for key in per_sample:
                value = npz[f"{key}/{row:05d}"]
                item[key] = decode_image(value) if key in self.encoded else value
        except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError) as err:
            raise CorruptShardError(f"shard {self.root / self.shards[shard]} cannot be read: {err}") from err
        return item

    def _shard(self, shard: int) -> tuple:
        if os.getpid() != self._pid:  # a forked DataLoader worker must not share the parent's open files
            self._open.clear()
            self._pid = os.getpid()
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        path = self.root / self.shards[shard]
        try:
            npz = np.load(path, allow_pickle=False)
            stacked = {key: npz[key] for key in npz.files if "/" not in key}
        except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError) as err:
            raise CorruptShardError(f"shard {path} cannot be read: {err}") from err
        per_sample = sorted({key.split("/")[0] for key in npz.files if "/" in key})
        self._open[shard] = (npz, stacked, per_sample)
        while len(self._open) > self._cache_size:
            self._open.popitem(last=False)[1][0].close()
        return self._open[shard]


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
