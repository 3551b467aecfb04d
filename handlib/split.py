"""Train/test split by subject: no person in both parts, so test error measures unseen people."""

from collections import Counter
from collections.abc import Sequence

import numpy as np


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
