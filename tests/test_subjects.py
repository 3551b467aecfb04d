import json

import numpy as np
from PIL import Image

from handlib import subjects


def test_subject_photos_are_files_with_their_truth(tmp_path):
    first = subjects.subject_photos(tmp_path / "a", subjects=2, per_subject=1, image_size=96)
    assert len(first) >= 1
    for s in first:
        (path,) = s["photos"]
        assert Image.open(path).size == (96, 96) and path.stem.endswith(s["sides"][0])
        truth = json.loads((path.parent / "truth.json").read_text())
        np.testing.assert_allclose(truth["betas"], s["betas"])
        assert np.shape(truth["samples"][0]["keypoints_2d"])[0] == 21
