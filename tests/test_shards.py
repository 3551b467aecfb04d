import json
import time

import numpy as np
import pytest
import torch

from handlib import shards


def _arrays(seed: int, n: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 8, 8, 3)) * 255).astype(np.uint8)
    return {"image": [shards.encode_image(im, "png") for im in images], "x": rng.normal(size=(n, 3)),
            "label": np.arange(n, dtype=np.int64) + 100 * seed, "mask": list(images[..., 0] > 127)}


def _dataset(root, shard_count: int = 3):
    writer = shards.ShardWriter(root, {"encoded": ["image"], "note": "test"})
    for k in range(shard_count):
        writer.write(f"train-{k:05d}.npz", shards.shard_bytes(_arrays(k)), split="train", first=5 * k, count=5)
    writer.write("val-00000.npz", shards.shard_bytes(_arrays(9)), split="val", first=0, count=5)
    return writer


def test_shard_bytes_are_a_function_of_the_arrays_and_round_trip():
    arrays = _arrays(0)
    first = shards.shard_bytes(arrays)
    time.sleep(1.1)  # zip members carry a timestamp unless fixed: a second later must not change a byte
    assert shards.shard_bytes(_arrays(0)) == first
    back = shards.parse_shard(first)
    np.testing.assert_array_equal(back["x"], arrays["x"])
    np.testing.assert_array_equal(np.stack(back["mask"]), np.stack(arrays["mask"]))
    assert [bytes(b) for b in back["image"]] == arrays["image"]
    rng = np.random.default_rng(0)
    expected = (rng.random((5, 8, 8, 3)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(shards.decode_image(back["image"][3]), expected[3])


def test_dataset_reads_samples_of_a_split_in_order(tmp_path):
    _dataset(tmp_path)
    data = shards.ShardDataset(tmp_path, "train")
    assert len(data) == 15 and data.skipped == []
    assert [int(data[i]["label"]) for i in (0, 4, 5, 14)] == [0, 4, 100, 204]
    assert data[7]["image"].shape == (8, 8, 3) and data[7]["image"].dtype == np.uint8
    np.testing.assert_array_equal(data[7]["mask"], data[7]["image"][..., 0] > 127)
    assert len(shards.ShardDataset(tmp_path, "val")) == 5
    np.testing.assert_array_equal(data.column("label"), [int(data[i]["label"]) for i in range(15)])
    with pytest.raises(IndexError):
        data[15]


def test_corrupt_shard_is_named_and_skipped_not_fatal(tmp_path):
    _dataset(tmp_path)
    bad = tmp_path / "train-00001.npz"
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="train-00001.npz"):
        data = shards.ShardDataset(tmp_path, "train")
    assert data.skipped == ["train-00001.npz"]
    assert sorted(int(data[i]["label"]) for i in range(len(data))) == [0, 1, 2, 3, 4, 200, 201, 202, 203, 204]
    manifest = shards.read_manifest(tmp_path)
    with pytest.raises(shards.CorruptShardError, match="train-00001.npz"):
        shards.read_shard(tmp_path, "train-00001.npz", manifest["shards"]["train-00001.npz"])


def test_shard_damaged_during_a_run_is_named_and_replaced_not_fatal(tmp_path):
    _dataset(tmp_path)
    data = shards.ShardDataset(tmp_path, "train")
    path = tmp_path / "train-00001.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # after the dataset checked it
    with pytest.warns(UserWarning, match="train-00001.npz"):
        labels = [int(data[i]["label"]) for i in range(len(data))]
    assert len(labels) == 15 and data.skipped == ["train-00001.npz"]
    assert labels[5:10] == [200, 201, 202, 203, 204] and labels[:5] == [0, 1, 2, 3, 4]


def test_missing_shard_is_named_and_skipped(tmp_path):
    _dataset(tmp_path)
    (tmp_path / "train-00000.npz").unlink()
    with pytest.warns(UserWarning, match="train-00000.npz.*missing"):
        data = shards.ShardDataset(tmp_path, "train")
    assert len(data) == 10


def test_truncated_shard_is_found_by_size_without_checksums(tmp_path):
    _dataset(tmp_path)
    path = tmp_path / "train-00002.npz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.warns(UserWarning, match="train-00002.npz.*truncated"):
        assert len(shards.ShardDataset(tmp_path, "train", verify=False)) == 10


def test_dataloader_workers_read_every_sample_once(tmp_path):
    _dataset(tmp_path, shard_count=4)
    data = shards.ShardDataset(tmp_path, "train", transform=lambda item: int(item["label"]))
    data[0]  # a shard opened in the parent before the workers fork
    loader = torch.utils.data.DataLoader(data, batch_size=3, num_workers=2,
                                         sampler=shards.ShardOrderSampler(data, seed=1))
    labels = sorted(int(x) for batch in loader for x in batch)
    assert labels == [100 * shard + row for shard in range(4) for row in range(5)]


def test_writer_resumes_and_rewrites_corrupt_shards(tmp_path):
    _dataset(tmp_path, shard_count=2)
    (tmp_path / ".train-00002.npz.abc.tmp.npz").write_bytes(b"half")  # left by an interrupted atomic write
    writer = shards.ShardWriter(tmp_path, {"encoded": ["image"], "note": "test"})
    assert not list(tmp_path.glob(".*.tmp*"))
    assert writer.is_done("train-00000.npz") and not writer.is_done("train-00002.npz")
    (tmp_path / "train-00001.npz").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="train-00001.npz"):
        assert not writer.is_done("train-00001.npz")
    assert "train-00001.npz" not in json.loads((tmp_path / shards.MANIFEST).read_text())["shards"]
    with pytest.raises(ValueError, match="other settings \\(note: 'test' -> 'changed'\\)"):
        shards.ShardWriter(tmp_path, {"encoded": ["image"], "note": "changed"})
    (tmp_path / "notes.txt").write_text("the user's")
    fresh = shards.ShardWriter(tmp_path, {"encoded": ["image"], "note": "changed"}, replace=True)
    assert fresh.manifest["shards"] == {} and not (tmp_path / "train-00000.npz").exists()
    assert (tmp_path / "notes.txt").exists()


def test_shard_order_sampler_visits_every_sample_once_shard_by_shard(tmp_path):
    _dataset(tmp_path, shard_count=4)
    data = shards.ShardDataset(tmp_path, "train")
    sampler = shards.ShardOrderSampler(data, shuffle=True, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(20)) and order != list(range(20))
    shard_of = [data.locate(i)[0] for i in order]
    assert sum(a != b for a, b in zip(shard_of, shard_of[1:])) == 3  # each shard one contiguous run
    assert list(sampler) == order
    sampler.set_epoch(1)
    assert list(sampler) != order
