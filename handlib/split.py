"""Train/test split by subject: no person in both parts, so test error measures unseen people."""

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from handlib.hands11k import HandImage, Sample, save_samples


def split_by_subject(subjects: Sequence[str], test_fraction: float = 0.2,
                     seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices (train, test) of items whose subject ids are `subjects`; about `test_fraction` of items in test.

    Subjects are visited in a seeded random order and each goes to test while that brings the test count closer
    to the target, so the ratio is as close as whole subjects allow.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    counts = Counter(subjects)
    order = sorted(counts)
    np.random.default_rng(seed).shuffle(order)
    target = test_fraction * len(subjects)
    test_subjects, n_test = set(), 0
    for subject in order:
        if abs(n_test + counts[subject] - target) < abs(n_test - target):
            test_subjects.add(subject)
            n_test += counts[subject]
    train = [i for i, s in enumerate(subjects) if s not in test_subjects]
    test = [i for i, s in enumerate(subjects) if s in test_subjects]
    return train, test


def write_11kjoints(images: Sequence[HandImage], records: dict[str, dict], accepted: Sequence[str],
                    out_dir: str | os.PathLike, test_fraction: float = 0.2, seed: int = 0) -> dict[str, list[Sample]]:
    """The reviewed dataset: accepted images with their detected keypoints, split by subject into
    out_dir/train.json and out_dir/test.json (11kJoints files). Returns {"train": [...], "test": [...]}."""
    by_name = {im.image_name: im for im in images}
    missing = [name for name in accepted if records.get(name, {}).get("status") != "ok" or name not in by_name]
    if missing:
        raise ValueError(f"{len(missing)} accepted images have no detection or no HandInfo row, e.g. {missing[:3]}")
    samples = [Sample(name, np.asarray(records[name]["keypoints"], dtype=np.float64), by_name[name].subject,
                      by_name[name].side, by_name[name].aspect) for name in accepted]
    parts = dict(zip(("train", "test"), split_by_subject([s.subject for s in samples], test_fraction, seed)))
    out = {part: [samples[i] for i in idx] for part, idx in parts.items()}
    for part, part_samples in out.items():
        save_samples(Path(out_dir) / f"{part}.json", part_samples)
    return out
