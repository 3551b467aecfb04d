import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handlib import hands11k
from handlib.split import split_by_subject, write_11kjoints

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def folder(tmp_path):
    """The 10-row HandInfo.csv fixture (line 7 has age 'abc') with its images, Hand_0000010.jpg missing."""
    shutil.copy(FIXTURES / "hands11k" / "HandInfo.csv", tmp_path / "HandInfo.csv")
    (tmp_path / "Hands").mkdir()
    for n in range(2, 12):
        if n != 10:
            Image.new("RGB", (16, 12), "white").save(tmp_path / "Hands" / f"Hand_{n:07d}.jpg")
    return tmp_path


def test_reader_reports_broken_row_by_line_and_missing_images(folder):
    data = hands11k.read_hand_info(folder)
    assert data.problems == ["HandInfo.csv line 7: age 'abc' is not an integer"]
    assert [im.image_name for im in data.missing] == ["Hand_0000010.jpg"]
    assert len(data.images) == 8
    first = data.images[0]
    assert (first.subject, first.age, first.aspect, first.side, first.line) == ("0000000", 27, "dorsal", "right", 2)
    assert first.path == folder / "Hands" / "Hand_0000002.jpg"
    assert [(im.aspect, im.side) for im in data.images[2:4]] == [("palmar", "left"), ("dorsal", "left")]
    assert data.images[4].skin_color == "medium" and data.images[5].skin_color == "very fair"
    assert "8 images of 4 subjects; 1 malformed rows, 1 missing images" in data.summary()


def test_reader_reports_every_kind_of_bad_row(folder):
    csv = folder / "HandInfo.csv"
    csv.write_text(csv.read_text() + "\n".join([
        "0000004,30,male,fair,0,0,dorsal middle,Hand_0000012.jpg,0",
        "0000004,30,male,fair,0,0,dorsal right",
        "0000004,30,male,fair,0,0,dorsal right,Hand_0000002.jpg,0",
        "0000004,30,male,fair,0,0,dorsal right,../etc/passwd,0",
        ",30,male,fair,0,0,dorsal right,Hand_0000013.jpg,0",
    ]) + "\n")
    problems = hands11k.read_hand_info(folder).problems
    assert [p.split(":")[0] for p in problems] == [f"HandInfo.csv line {n}" for n in (7, 12, 13, 14, 15, 16)]
    assert "dorsal middle" in problems[1] and "got 7" in problems[2] and "already on line 2" in problems[3]
    assert "plain file name" in problems[4] and "empty id" in problems[5]


def test_reader_refuses_a_file_that_is_not_handinfo(tmp_path):
    (tmp_path / "HandInfo.csv").write_text("name,value\na,1\n")
    with pytest.raises(ValueError, match="HandInfo.csv: header"):
        hands11k.read_hand_info(tmp_path)
    with pytest.raises(FileNotFoundError, match="HandInfo.csv"):
        hands11k.read_hand_info(tmp_path / "nowhere")


def test_write_hand_info_round_trips(folder, tmp_path):
    data = hands11k.read_hand_info(folder)
    out = tmp_path / "copy"
    (out / "Hands").mkdir(parents=True)
    hands11k.write_hand_info(out / "HandInfo.csv", data.images)
    lines = (out / "HandInfo.csv").read_text().splitlines()
    original = (folder / "HandInfo.csv").read_text().splitlines()
    assert lines[0] == original[0] and lines[1] == original[1] and lines[-1] == original[-1]


def _joints(seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(0, 1600, (21, 1)), rng.uniform(0, 1200, (21, 1)), rng.uniform(0, 1, (21, 1))],
                          axis=1)


def test_samples_json_round_trip(tmp_path):
    samples = [hands11k.Sample(f"Hand_{i:07d}.jpg", _joints(i), "0000001", "left", "palmar") for i in range(3)]
    hands11k.save_samples(tmp_path / "train.json", samples)
    loaded = hands11k.load_samples(tmp_path / "train.json")
    assert [s.filename for s in loaded] == [s.filename for s in samples]
    np.testing.assert_allclose(loaded[1].joints, samples[1].joints, atol=1e-3)
    assert (loaded[2].subject, loaded[2].side, loaded[2].aspect) == ("0000001", "left", "palmar")
    bad = {"format": "11kJoints", "samples": [{"filename": "a.jpg", "joints": [[1, 2]]}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad.json sample 0: joints of 'a.jpg' have shape \(1, 2\)"):
        hands11k.load_samples(tmp_path / "bad.json")


def test_thesis_pickle_loads_lists_dicts_tuples_and_arrays(tmp_path):
    as_tuples = [{"filename": "Hand_0010041.jpg", "joints": [tuple(j) for j in _joints(0)]},
                 {"filename": "Hand_0010042.jpg", "joints": _joints(1)}]  # numpy array, as numpy pickles it
    (tmp_path / "list.pkl").write_bytes(pickle.dumps(as_tuples, protocol=2))
    (tmp_path / "dict.pkl").write_bytes(pickle.dumps({"train": as_tuples[:1], "test": as_tuples[1:]}))
    for name in ["list.pkl", "dict.pkl"]:
        loaded = hands11k.load_thesis_pickle(tmp_path / name)
        assert [s.filename for s in loaded] == ["Hand_0010041.jpg", "Hand_0010042.jpg"]
        np.testing.assert_array_equal(loaded[0].joints, _joints(0))
        np.testing.assert_array_equal(loaded[1].joints, _joints(1))


def _python2_pickle(samples) -> bytes:
    """What Python 2's cPickle (protocol 2) writes for a list of {"filename": str, "joints": [(x, y, p)]}."""
    def string(text):  # Python 2 str: SHORT_BINSTRING
        return b"U" + bytes([len(text)]) + text.encode("latin1")
    out = b"\x80\x02]("
    for sample in samples:
        out += b"}(" + string("filename") + string(sample["filename"]) + string("joints") + b"]("
        out += b"".join(b"(" + b"".join(b"G" + struct.pack(">d", v) for v in joint) + b"t"
                        for joint in sample["joints"])
        out += b"eu"  # APPENDS, SETITEMS
    return out + b"e."


def test_thesis_pickle_written_by_python2(tmp_path):
    joints = [tuple(j) for j in _joints(5)]
    path = tmp_path / "py2.pkl"
    path.write_bytes(_python2_pickle([{"filename": "Hand_0010041.jpg", "joints": joints}]))
    (loaded,) = hands11k.load_thesis_pickle(path)
    assert loaded.filename == "Hand_0010041.jpg"
    np.testing.assert_array_equal(loaded.joints, _joints(5))


class _Evil:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-handlib-test",))


def test_thesis_pickle_refuses_other_globals(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([{"filename": "a.jpg", "joints": _Evil()}]))
    with pytest.raises(ValueError, match=r"evil.pkl: refused: global shutil.rmtree is not allowed"):
        hands11k.load_thesis_pickle(path)
    path.write_bytes(pickle.dumps([{"filename": "a.jpg", "joints": [(1, 2, 3)] * 20}]))
    with pytest.raises(ValueError, match=r"have shape \(20, 3\)"):
        hands11k.load_thesis_pickle(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="evil.pkl: not a readable pickle"):
        hands11k.load_thesis_pickle(path)


def test_split_has_no_shared_subject_and_80_20():
    rng = np.random.default_rng(3)
    subjects = [f"{s:07d}" for s in range(190) for _ in range(rng.integers(10, 100))]  # 11K-like counts
    train, test = split_by_subject(subjects, 0.2, seed=0)
    assert sorted(train + test) == list(range(len(subjects)))
    assert not {subjects[i] for i in train} & {subjects[i] for i in test}
    assert abs(len(test) / len(subjects) - 0.2) < 0.01
    assert split_by_subject(subjects, 0.2, seed=0) == (train, test)
    assert split_by_subject(subjects, 0.2, seed=1)[1] != test


def test_split_of_few_subjects_keeps_them_whole():
    subjects = ["a"] * 5 + ["b"] * 5 + ["c"] * 5 + ["d"] * 5 + ["e"] * 5
    train, test = split_by_subject(subjects, 0.2, seed=0)
    assert len(test) == 5 and len({subjects[i] for i in test}) == 1


def test_write_11kjoints_splits_accepted_detections_by_subject(folder, tmp_path):
    images = hands11k.read_hand_info(folder).images
    records = {im.image_name: {"status": "ok", "keypoints": _joints(i).tolist()} for i, im in enumerate(images)}
    records[images[1].image_name] = {"status": "no_hand"}
    accepted = [im.image_name for im in images if im is not images[1]]
    parts = write_11kjoints(images, records, accepted, tmp_path / "out", test_fraction=0.25, seed=0)
    train, test = (hands11k.load_samples(tmp_path / "out" / f"{p}.json") for p in ("train", "test"))
    assert [s.filename for s in train] == [s.filename for s in parts["train"]]
    assert sorted(s.filename for s in train + test) == sorted(accepted)
    assert not {s.subject for s in train} & {s.subject for s in test} and test
    first = next(s for s in train + test if s.filename == images[0].image_name)
    np.testing.assert_allclose(first.joints, _joints(0), atol=1e-3)
    assert (first.subject, first.side, first.aspect) == ("0000000", "right", "dorsal")
    with pytest.raises(ValueError, match="1 accepted images have no detection"):
        write_11kjoints(images, records, [images[1].image_name], tmp_path / "out2")
