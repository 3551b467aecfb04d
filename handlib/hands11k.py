"""The 11K Hands dataset (HandInfo.csv + Hands/*.jpg) and the 11kJoints dataset files built from it.

11K Hands (Afifi 2017): one row per image in HandInfo.csv, header
`id,age,gender,skinColor,accessories,nailPolish,aspectOfHand,imageName,irregularities`; `id` is the subject,
a zero-padded string. 11kJoints (the thesis's dataset): samples {"filename", "joints": [(x, y, p) x 21]} in
OpenPose order, pixels of the 1600x1200 image. We store them as JSON; the thesis's pickles load through a
restricted unpickler.
"""

import csv
import io
import json
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from handlib.io import atomic_write_text

HEADER = ["id", "age", "gender", "skinColor", "accessories", "nailPolish", "aspectOfHand", "imageName",
          "irregularities"]
ASPECTS = ["dorsal right", "dorsal left", "palmar right", "palmar left"]
SKIN_COLORS = ["very fair", "fair", "medium", "dark"]
IMAGE_SIZE = (1600, 1200)  # width, height
FORMAT = "11kJoints"


@dataclass(frozen=True)
class HandImage:
    """One row of HandInfo.csv."""
    subject: str        # the `id` column, kept as a string ("0000000")
    age: int
    gender: str
    skin_color: str
    accessories: int
    nail_polish: int
    aspect: str         # "dorsal" or "palmar"
    side: str           # "left" or "right"
    image_name: str     # "Hand_0000002.jpg"
    irregularities: int
    path: Path          # root/Hands/image_name
    line: int           # line number in HandInfo.csv (header is line 1)


@dataclass
class Hands11k:
    """A read 11K Hands folder: the usable images, and every problem found, by line."""
    root: Path
    images: list[HandImage]
    problems: list[str] = field(default_factory=list)   # "HandInfo.csv line 7: ..." for rows left out
    missing: list[HandImage] = field(default_factory=list)  # rows whose image file is not there

    def summary(self) -> str:
        subjects = len({im.subject for im in self.images})
        return (f"{self.root}: {len(self.images)} images of {subjects} subjects; "
                f"{len(self.problems)} malformed rows, {len(self.missing)} missing images")


def _parse_row(row: list[str], root: Path, line: int) -> HandImage:
    if len(row) != len(HEADER):
        raise ValueError(f"expected {len(HEADER)} columns, got {len(row)}")
    values = dict(zip(HEADER, (v.strip() for v in row)))
    if not values["id"]:
        raise ValueError("empty id")
    if values["aspectOfHand"] not in ASPECTS:
        raise ValueError(f"aspectOfHand {values['aspectOfHand']!r} is not one of {ASPECTS}")
    name = values["imageName"]
    if not name or Path(name).name != name:
        raise ValueError(f"imageName {name!r} is not a plain file name")
    ints = {}
    for key in ["age", "accessories", "nailPolish", "irregularities"]:
        try:
            ints[key] = int(values[key])
        except ValueError:
            raise ValueError(f"{key} {values[key]!r} is not an integer") from None
    aspect, side = values["aspectOfHand"].split()
    return HandImage(values["id"], ints["age"], values["gender"], values["skinColor"], ints["accessories"],
                     ints["nailPolish"], aspect, side, name, ints["irregularities"], root / "Hands" / name, line)


def read_hand_info(root: str | os.PathLike) -> Hands11k:
    """Read `root/HandInfo.csv`; malformed rows and missing images are reported, never fatal.

    A file that is not HandInfo.csv at all (wrong header) raises ValueError naming it.
    """
    root = Path(root)
    csv_path = root / "HandInfo.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found: an 11K Hands folder holds HandInfo.csv and Hands/")
    result = Hands11k(root, [])
    seen: dict[str, int] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header != HEADER:
            raise ValueError(f"{csv_path}: header {header} is not the 11K Hands header {HEADER}")
        for row in reader:
            line = reader.line_num
            if not any(v.strip() for v in row):
                continue
            try:
                image = _parse_row(row, root, line)
                if image.image_name in seen:
                    raise ValueError(f"imageName {image.image_name} already on line {seen[image.image_name]}")
            except ValueError as err:
                result.problems.append(f"{csv_path.name} line {line}: {err}")
                continue
            seen[image.image_name] = line
            (result.images if image.path.is_file() else result.missing).append(image)
    return result


def write_hand_info(path: str | os.PathLike, images: Iterable[HandImage]) -> None:
    """Write HandInfo.csv in the real dataset's format."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for im in images:
        writer.writerow([im.subject, im.age, im.gender, im.skin_color, im.accessories, im.nail_polish,
                         f"{im.aspect} {im.side}", im.image_name, im.irregularities])
    atomic_write_text(path, out.getvalue())


@dataclass
class Sample:
    """One 11kJoints sample: an image and its 21 keypoints (x, y, p) in OpenPose order, pixels."""
    filename: str
    joints: np.ndarray  # (21, 3)
    subject: str | None = None
    side: str | None = None
    aspect: str | None = None


def _sample(raw: object, where: str) -> Sample:
    if not isinstance(raw, dict) or "filename" not in raw or "joints" not in raw:
        raise ValueError(f"{where}: a sample must be a dict with 'filename' and 'joints', got {type(raw).__name__}")
    try:
        joints = np.asarray(raw["joints"], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: joints of {raw['filename']!r} are not numbers") from None
    if joints.shape != (21, 3):
        raise ValueError(f"{where}: joints of {raw['filename']!r} have shape {joints.shape}, expected (21, 3)")
    return Sample(str(raw["filename"]), joints, raw.get("subject"), raw.get("side"), raw.get("aspect"))


def save_samples(path: str | os.PathLike, samples: Iterable[Sample]) -> None:
    """Write an 11kJoints dataset file (JSON): the thesis's sample layout plus subject, side and aspect."""
    rows = []
    for s in samples:
        row = {"filename": s.filename, "joints": np.round(s.joints, 3).tolist()}
        row.update({k: v for k, v in [("subject", s.subject), ("side", s.side), ("aspect", s.aspect)] if v})
        rows.append(row)
    doc = {"format": FORMAT, "version": 1, "joint_order": "openpose21", "samples": rows}
    atomic_write_text(path, json.dumps(doc, indent=0))


def load_samples(path: str | os.PathLike) -> list[Sample]:
    """Read an 11kJoints JSON file written by `save_samples`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not an {FORMAT} file (missing \"format\": \"{FORMAT}\")")
    return [_sample(raw, f"{path} sample {i}") for i, raw in enumerate(doc["samples"])]


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only plain containers and numpy arrays; any other global is refused."""
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # protocol 2 stores bytes (an array's data) as a latin1 string to encode
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _Refused(f"global {module}.{name} is not allowed in an 11kJoints pickle")
        return super().find_class(module, name)


def load_thesis_pickle(path: str | os.PathLike) -> list[Sample]:
    """Load the thesis's 11kJoints pickle (a list, or a dict, of {"filename", "joints"}) safely.

    A dict may map keys to samples or to lists of samples (e.g. {"train": [...], "test": [...]}); those are
    concatenated in order. Python 2 pickles are read with latin1 strings.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            data = _RestrictedUnpickler(f, encoding="latin1").load()
        except _Refused as err:
            raise ValueError(f"{path}: refused: {err}") from None
        except (EOFError, pickle.PickleError, ValueError) as err:
            raise ValueError(f"{path}: not a readable pickle ({err})") from None
    items = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(items, list | tuple):
        raise ValueError(f"{path}: expected a list or dict of samples, got {type(data).__name__}")
    flat = [s for item in items for s in (item if isinstance(item, list | tuple) else [item])]
    return [_sample(raw, f"{path} sample {i}") for i, raw in enumerate(flat)]
