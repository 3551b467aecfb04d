"""Hand keypoint detectors behind one interface: 21 keypoints (OpenPose order) with a certainty each.

Backends: MediaPipe Hands 0.10.14 (bundled models, offline) and OpenPose's JSON output (`--write_json`).
A detector maps an image file (and the hand's side from HandInfo.csv, when known) to a `Detection`, or None
when it finds no hand. Pixel coordinates put pixel (0, 0)'s centre at (0, 0), as handlib.camera does.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

MEDIAPIPE_INSTALL = "pip install --no-deps -r requirements-mediapipe.txt"


@dataclass
class Detection:
    keypoints: np.ndarray   # (21, 3): x, y in pixels, certainty p in [0, 1]; OpenPose order
    handedness: str | None  # "left" or "right": the hand as the detector saw it (None: not reported)
    score: float            # the detector's confidence in the hand as a whole


class Detector(Protocol):
    name: str

    def detect(self, path: Path, side: str | None = None) -> Detection | None: ...


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _protobuf_compat() -> None:
    """Let mediapipe 0.10.14 (written for protobuf 4) run on protobuf 6/7, which tensorboard needs.

    It reads `FieldDescriptor.label` (gone in protobuf 7) when setting its thresholds, and calls
    `GetPrototype` (gone since protobuf 5) on the message factory and symbol database to read results.
    Both are added back with their documented replacements; nothing is touched when they exist.
    """
    from google.protobuf import descriptor, descriptor_pb2, message_factory, symbol_database

    field_type = type(descriptor_pb2.FileDescriptorProto.DESCRIPTOR.fields_by_name["name"])
    if not hasattr(field_type, "label"):
        repeated, optional = descriptor.FieldDescriptor.LABEL_REPEATED, descriptor.FieldDescriptor.LABEL_OPTIONAL
        field_type.label = property(lambda f: repeated if f.is_repeated else optional)
    for cls in (message_factory.MessageFactory, symbol_database.SymbolDatabase):
        if not hasattr(cls, "GetPrototype"):
            cls.GetPrototype = lambda self, desc: message_factory.GetMessageClass(desc)


class MediaPipeDetector:
    """MediaPipe Hands (static images). It reports no per-keypoint certainty: every p is the hand's score.

    MediaPipe labels handedness as if the photo were mirrored (a selfie); we report the hand as it is in the
    photo. With `side` given, the detected hand of that side is preferred; if only the other side was found it
    is still returned (11K images show one hand), and its `handedness` tells the reviewer.
    """
    name = "mediapipe"

    def __init__(self, model_complexity: int = 1, min_detection_confidence: float = 0.5, max_num_hands: int = 2):
        _protobuf_compat()
        try:
            import mediapipe as mp
        except ImportError as err:
            raise ImportError(f"MediaPipe is not installed ({err}); install it with: {MEDIAPIPE_INSTALL}") from err
        self._hands = mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=max_num_hands,
                                               model_complexity=model_complexity,
                                               min_detection_confidence=min_detection_confidence)

    def detect(self, path: Path, side: str | None = None) -> Detection | None:
        return self.detect_image(load_rgb(path), side)

    def detect_image(self, image: np.ndarray, side: str | None = None) -> Detection | None:
        """Detect in an (H, W, 3) uint8 RGB image."""
        result = self._hands.process(np.ascontiguousarray(image))
        if not result.multi_hand_landmarks:
            return None
        height, width = image.shape[:2]
        found = []
        for landmarks, handedness in zip(result.multi_hand_landmarks, result.multi_handedness):
            label = handedness.classification[0]
            xy = np.array([(lm.x * width - 0.5, lm.y * height - 0.5) for lm in landmarks.landmark])  # (21, 2)
            keypoints = np.concatenate([xy, np.full((21, 1), label.score)], axis=1)
            seen_side = {"Left": "right", "Right": "left"}[label.label]  # un-mirror
            found.append(Detection(keypoints, seen_side, float(label.score)))
        return max(found, key=lambda d: (d.handedness == side, d.score))

    def close(self) -> None:
        self._hands.close()


class OpenPoseJsonDetector:
    """Reads OpenPose's `--write_json` output: `<image stem>_keypoints.json` in `json_dir`.

    The hand of `side` is taken (hand_left/right_keypoints_2d, as the thesis used HandInfo.csv's side); without a
    side, the more certain one. Of several people, the most certain hand wins. All-zero certainty means no hand.
    """
    name = "openpose"

    def __init__(self, json_dir: str | os.PathLike):
        self.json_dir = Path(json_dir)

    def detect(self, path: Path, side: str | None = None) -> Detection | None:
        json_path = self.json_dir / f"{Path(path).stem}_keypoints.json"
        return read_openpose_json(json_path, side)


def read_openpose_json(json_path: str | os.PathLike, side: str | None = None) -> Detection | None:
    """The hand of `side` ("left"/"right", or None for either) in one OpenPose JSON file, or None."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path}: no OpenPose output for this image")
    try:
        people = json.loads(json_path.read_text())["people"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{json_path}: not an OpenPose JSON file ({err!r})") from None
    sides = [side] if side else ["left", "right"]
    found = []
    for person in people:
        for s in sides:
            flat = person.get(f"hand_{s}_keypoints_2d") or []
            if len(flat) != 63:
                if flat:
                    raise ValueError(f"{json_path}: hand_{s}_keypoints_2d has {len(flat)} numbers, expected 63")
                continue
            keypoints = np.asarray(flat, dtype=np.float64).reshape(21, 3)
            if keypoints[:, 2].max() > 0:
                found.append(Detection(keypoints, s, float(keypoints[:, 2].mean())))
    return max(found, key=lambda d: d.score) if found else None


DETECTORS = ("mediapipe", "openpose")


def make_detector(name: str, openpose_json_dir: str | os.PathLike | None = None) -> Detector:
    """A detector by name: "mediapipe", or "openpose" (reading OpenPose's JSON files in `openpose_json_dir`)."""
    if name == "mediapipe":
        return MediaPipeDetector()
    if name == "openpose":
        if openpose_json_dir is None:
            raise ValueError("the openpose detector reads OpenPose's --write_json output: give openpose_json_dir")
        return OpenPoseJsonDetector(openpose_json_dir)
    raise ValueError(f"unknown detector {name!r}; choose from {DETECTORS}")
