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
        mask = np.asarray(Image.open(s["masks"][0]))
        assert mask.shape == (96, 96) and set(np.unique(mask)) == {0, 255}
        # the hand's keypoints lie on its mask (the wrist and knuckles at least; a tip may sit on the rim)
        xy = np.round(truth["samples"][0]["keypoints_2d"]).astype(int)
        assert (mask[xy[:, 1].clip(0, 95), xy[:, 0].clip(0, 95)] > 0).mean() > 0.7
