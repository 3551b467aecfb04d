import json

import pytest

from handlib.review import Review, auto_accept, review_app

IMAGES = [f"Hand_{i:07d}.jpg" for i in range(5)]


def test_two_passes_accept_reject_and_final_set(tmp_path):
    r = Review(IMAGES, tmp_path / "decisions.jsonl")
    assert (r.pass_number, r.current) == (1, IMAGES[0])
    for decide in ["accept", "reject", "accept", "accept", "reject"]:
        getattr(r, decide)()
    assert r.pass_number == 2 and r.queue(2) == [IMAGES[0], IMAGES[2], IMAGES[3]]
    assert r.current == IMAGES[0]
    r.reject()
    r.accept()
    r.accept()
    assert r.done and r.current is None
    assert r.accepted() == [IMAGES[2], IMAGES[3]]
    assert r.counts() == {1: {"todo": 0, "accept": 3, "reject": 2}, 2: {"todo": 0, "accept": 2, "reject": 1}}
    with pytest.raises(RuntimeError, match="complete"):
        r.accept()


def test_skip_comes_back_and_back_changes_a_decision(tmp_path):
    r = Review(IMAGES, tmp_path / "d.jsonl")
    r.skip()
    assert r.current == IMAGES[1]
    r.accept()
    r.back()
    assert r.current == IMAGES[1]
    r.reject()  # changes the decision on IMAGES[1]
    assert r.decisions[1][IMAGES[1]] == "reject"
    assert r.current == IMAGES[2]
    r.accept(), r.accept(), r.accept()
    assert r.current == IMAGES[0]  # the skipped one comes back at the end of the pass
    r.accept()
    assert r.pass_number == 2


def test_undo_restores_previous_decision_and_crosses_passes(tmp_path):
    r = Review(IMAGES[:2], tmp_path / "d.jsonl")
    r.accept()
    r.back()
    r.reject()  # replaces accept
    assert r.undo() == IMAGES[0]
    assert r.decisions[1][IMAGES[0]] == "accept" and r.current == IMAGES[0]  # shown again
    r.skip()
    assert r.current == IMAGES[1]
    r.accept()
    assert r.pass_number == 2
    assert r.undo() == IMAGES[1]  # back into pass 1
    assert r.pass_number == 1 and r.current == IMAGES[1] and IMAGES[1] not in r.decisions[1]
    assert r.undo() == IMAGES[0]
    assert r.decisions[1] == {} and r.current == IMAGES[0]
    assert r.undo() is None


def test_resume_after_restart_replays_the_saved_decisions(tmp_path):
    path = tmp_path / "d.jsonl"
    r = Review(IMAGES, path)
    r.accept(), r.reject(), r.accept(), r.reject()
    r.undo()
    r.accept()
    r.accept()  # pass 1 done
    r.reject()  # pass 2: IMAGES[0]
    before = (r.decisions, r.pass_number, r.current, r.counts())
    del r
    again = Review(IMAGES, path)  # a new kernel: nothing but the file
    assert (again.decisions, again.pass_number, again.current, again.counts()) == before
    assert again.current == IMAGES[2]
    assert again.undo() == IMAGES[0]  # undo reaches decisions of the earlier session
    assert again.current == IMAGES[0] and IMAGES[0] not in again.decisions[2]
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["event"] for e in events].count("undo") == 2 and all("time" in e for e in events)


def test_resume_cuts_a_torn_last_line_and_refuses_foreign_files(tmp_path):
    path = tmp_path / "d.jsonl"
    r = Review(IMAGES, path)
    r.accept()
    with open(path, "a") as f:
        f.write('{"event": "decide", "pass": 1, "ima')  # killed mid-write
    again = Review(IMAGES, path)
    assert again.decisions[1] == {IMAGES[0]: "accept"}
    again.reject()
    assert Review(IMAGES, path).decisions[1] == {IMAGES[0]: "accept", IMAGES[1]: "reject"}
    with pytest.raises(ValueError, match="d.jsonl line 1: image Hand_0000000.jpg is not among"):
        Review(IMAGES[1:], path)


def test_auto_accept_accepts_everything(tmp_path):
    r = Review(IMAGES, tmp_path / "d.jsonl")
    r.reject()
    assert auto_accept(r) == 4 + 4
    assert r.done and r.accepted() == IMAGES[1:]


def test_app_buttons_and_keys_drive_the_review(tmp_path):
    r = Review(IMAGES[:2], tmp_path / "d.jsonl")
    shown = []
    app = review_app(r, lambda name, p: shown.append((name, p)) or b"png")
    status, image, buttons, keys = app.children
    accept, reject, skip, back, undo = buttons.children
    assert shown == [(IMAGES[0], 1)] and "pass 1" in status.value
    accept.click()
    keys.value = "r"  # typed into the key box
    assert keys.value == "" and r.pass_number == 2 and shown[-1] == (IMAGES[0], 2)
    keys.value = "u"
    assert r.pass_number == 1 and r.current == IMAGES[1]
    reject.click()
    accept.click()
    assert r.done and "review complete" in status.value and accept.disabled and not undo.disabled


def test_picture_draws_the_pass_at_scale(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from handlib.draw import OPENPOSE_COLORS
    from handlib.review import WRIST_RING, picture
    Image.new("RGB", (400, 300), "white").save(tmp_path / "a.jpg")
    kp = np.array([[200, 250]] + [[40 + 16 * k, 60] for k in range(20)], float)  # wrist low, joints in a row
    one = np.asarray(Image.open(io.BytesIO(picture(tmp_path / "a.jpg", kp, 1, width=200))))
    two = np.asarray(Image.open(io.BytesIO(picture(tmp_path / "a.jpg", kp, 2, width=200))))
    assert one.shape == (150, 200, 3)
    assert tuple(one[125, 100 - 8]) == WRIST_RING  # the ring round the wrist, radius 8 at this width
    pinky_tip = (30, (40 + 16 * 19) // 2)
    assert tuple(one[pinky_tip]) == (255, 255, 255)  # pass 1 leaves the fingers out
    assert tuple(two[pinky_tip]) == tuple(OPENPOSE_COLORS[20])  # pass 2 draws them


def test_headless_unless_a_jupyter_server_started_the_kernel(monkeypatch):
    from handlib.review import in_jupyter_frontend
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("HANDLIB_HEADLESS", raising=False)
    assert not in_jupyter_frontend()
    monkeypatch.setenv("JPY_SESSION_NAME", "/work/notebooks/01_dataset_2d.ipynb")
    assert in_jupyter_frontend()
    monkeypatch.setenv("HANDLIB_HEADLESS", "1")
    assert not in_jupyter_frontend()
