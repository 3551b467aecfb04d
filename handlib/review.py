"""Human review of detected keypoints, in the thesis's two passes, and its ipywidgets app.

Pass 1 judges the wrist and the image quality of every image; pass 2 judges the fingers of the images accepted
in pass 1. Every decision and undo is appended to a JSON-lines file at once, so closing the browser or the
kernel loses nothing: a new `Review` on the same file replays it and goes on where it stopped.
"""

import io
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from handlib.draw import draw_skeleton
from handlib.io import recover_jsonl

PASSES = {1: "wrist and image quality", 2: "fingers"}
DECISIONS = ("accept", "reject")
PALM = [0, 1, 5, 9, 13, 17]  # the wrist and each finger's base, OpenPose order
WRIST_RING = (255, 0, 0)


class Review:
    """The review state: decisions per pass, a cursor, undo. Browser-free; the app only calls these methods."""

    def __init__(self, images: Sequence[str], path: str | os.PathLike):
        self.images = list(images)
        if len(set(self.images)) != len(self.images):
            raise ValueError("review images must be unique names")
        self.path = Path(path)
        self.decisions: dict[int, dict[str, str]] = {1: {}, 2: {}}
        self._stack: list[tuple[int, str, str | None]] = []  # (pass, image, decision it replaced) per decision
        self.times: list[float] = []  # when each decision of this session was made, for the speed
        if self.path.exists():
            self._replay()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._index = 0
        self._goto_undecided(0)

    # state
    @property
    def pass_number(self) -> int | None:
        """The pass under way: 1, 2, or None when both are complete."""
        for p in (1, 2):
            if any(im not in self.decisions[p] for im in self.queue(p)):
                return p
        return None

    @property
    def done(self) -> bool:
        return self.pass_number is None

    def queue(self, pass_number: int) -> list[str]:
        """The images pass `pass_number` judges."""
        if pass_number == 1:
            return self.images
        return [im for im in self.images if self.decisions[1].get(im) == "accept"]

    @property
    def current(self) -> str | None:
        """The image to judge now (None when the review is complete)."""
        p = self.pass_number
        return None if p is None else self.queue(p)[self._index]

    def accepted(self) -> list[str]:
        """Images accepted in both passes, in input order."""
        return [im for im in self.queue(2) if self.decisions[2].get(im) == "accept"]

    def counts(self) -> dict:
        out = {}
        for p in (1, 2):
            values = [self.decisions[p].get(im) for im in self.queue(p)]
            out[p] = {"todo": values.count(None), "accept": values.count("accept"), "reject": values.count("reject")}
        return out

    def speed(self) -> float:
        """Decisions per minute in this session (0 before two decisions)."""
        if len(self.times) < 2:
            return 0.0
        return 60 * (len(self.times) - 1) / max(self.times[-1] - self.times[0], 1e-9)

    # actions
    def accept(self) -> None:
        self._decide("accept")

    def reject(self) -> None:
        self._decide("reject")

    def skip(self) -> None:
        """Leave the current image undecided for now; it comes back when the rest of the pass is done."""
        self._require_current()
        self._goto_undecided(self._index + 1)

    def back(self) -> None:
        """Show the previous image of this pass again, to change its decision."""
        self._require_current()
        self._index = max(self._index - 1, 0)

    def undo(self) -> str | None:
        """Take back the last decision (also one of an earlier session) and show its image; None if none."""
        if not self._stack:
            return None
        p, image, _ = self._stack[-1]
        self._append({"event": "undo", "pass": p, "image": image})
        self._apply_undo()
        if self.pass_number == p:
            self._index = self.queue(p).index(image)
        else:  # the undone decision belongs to a pass no longer under way (a later pass's queue changed)
            self._goto_undecided(0)
        return image

    # internals
    def _require_current(self) -> str:
        if self.current is None:
            raise RuntimeError("the review is complete: nothing left to judge")
        return self.current

    def _decide(self, decision: str) -> None:
        image, p = self._require_current(), self.pass_number
        self._append({"event": "decide", "pass": p, "image": image, "decision": decision})
        self._apply_decide(p, image, decision)
        self.times.append(time.monotonic())
        if self.pass_number == p:
            self._goto_undecided(self._index + 1)
        else:
            self._goto_undecided(0)

    def _goto_undecided(self, start: int) -> None:
        """Move to the first undecided image at or after `start` in this pass, wrapping around."""
        p = self.pass_number
        if p is None:
            self._index = 0
            return
        q = self.queue(p)
        for k in range(len(q)):
            i = (start + k) % len(q)
            if q[i] not in self.decisions[p]:
                self._index = i
                return

    def _apply_decide(self, p: int, image: str, decision: str) -> None:
        self._stack.append((p, image, self.decisions[p].get(image)))
        self.decisions[p][image] = decision

    def _apply_undo(self) -> None:
        p, image, previous = self._stack.pop()
        if previous is None:
            del self.decisions[p][image]
        else:
            self.decisions[p][image] = previous

    def _append(self, event: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({**event, "time": time.time()}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _replay(self) -> None:
        known = set(self.images)
        for n, event in enumerate(recover_jsonl(self.path), 1):
            try:
                kind, p, image = event["event"], event["pass"], event["image"]
            except (KeyError, TypeError) as err:
                raise ValueError(f"{self.path} line {n}: not a review event ({err!r})") from None
            if image not in known:
                raise ValueError(f"{self.path} line {n}: image {image} is not among the images under review; "
                                 "use a new decisions file for another set of images")
            if kind == "decide" and event.get("decision") in DECISIONS and p in (1, 2):
                self._apply_decide(p, image, event["decision"])
            elif kind == "undo" and self._stack and self._stack[-1][:2] == (p, image):
                self._apply_undo()
            else:
                raise ValueError(f"{self.path} line {n}: inconsistent review event {event}")


def auto_accept(review: Review) -> int:
    """Accept every remaining image in both passes (headless runs, where no person reviews); return the count."""
    n = 0
    while not review.done:
        review.accept()
        n += 1
    return n


def in_jupyter_frontend() -> bool:
    """True in a kernel started by Jupyter Server (JupyterLab, Notebook), where a person can use widgets.

    papermill and nbval start kernels themselves, without a server session. A headless run started from inside
    a Jupyter kernel inherits the session's variable: HANDLIB_HEADLESS=1 marks it headless.
    """
    return "JPY_SESSION_NAME" in os.environ and os.environ.get("HANDLIB_HEADLESS") != "1"


def picture(path: str | os.PathLike, keypoints, pass_number: int, width: int = 800) -> bytes:
    """PNG bytes of the image scaled to `width`, keypoints (21, 2+) drawn for the pass: pass 1 the palm (wrist to
    each finger's base) with a ring round the wrist, pass 2 the whole skeleton (OpenPose colours)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    scale = width / im.width
    im = im.resize((width, round(im.height * scale)), Image.Resampling.BILINEAR)
    xy = np.asarray(keypoints, np.float64)[:, :2] * scale  # (21, 2)
    shown = np.ones((21, 1)) if pass_number == 2 else np.isin(np.arange(21), PALM)[:, None].astype(float)
    drawn = Image.fromarray(draw_skeleton(np.asarray(im), np.concatenate([xy, shown], axis=1), threshold=0.5))
    if pass_number == 1:
        x, y, r = *xy[0], max(8.0, width / 50)
        ImageDraw.Draw(drawn).ellipse([x - r, y - r, x + r, y + r], outline=WRIST_RING, width=max(2, width // 300))
    out = io.BytesIO()
    drawn.save(out, format="PNG")
    return out.getvalue()


def review_app(review: Review, render: Callable[[str, int], bytes]):
    """The ipywidgets review app. `render(image_name, pass_number)` returns PNG bytes of the image with its
    keypoints drawn. Buttons, or the keys a/r/s/b/u typed in the key box: accept, reject, skip, back, undo."""
    import ipywidgets as w

    image = w.Image(format="png", layout=w.Layout(max_width="800px"))
    status = w.HTML()
    buttons = {name: w.Button(description=f"{name} ({name[0]})", button_style=style)
               for name, style in [("accept", "success"), ("reject", "danger"), ("skip", ""), ("back", ""),
                                   ("undo", "warning")]}
    keys = w.Text(placeholder="click here, then type a / r / s / b / u", continuous_update=True)

    def refresh() -> None:
        c, p = review.counts(), review.pass_number
        lines = [f"pass {q} ({PASSES[q]}): {c[q]['accept']} accepted, {c[q]['reject']} rejected, "
                 f"{c[q]['todo']} to do" for q in (1, 2)]
        if p is None:
            head = f"<b>review complete</b>: {len(review.accepted())} images accepted in both passes"
        else:
            head = f"<b>pass {p}: judge the {PASSES[p]}</b> &mdash; {review.current}"
            image.value = render(review.current, p)
        status.value = "<br>".join([head, *lines, f"{review.speed():.1f} decisions/min; saved to {review.path}"])
        for name, button in buttons.items():
            button.disabled = review.done and name != "undo"

    def act(name: str) -> None:
        if name != "undo" and review.done:
            return
        getattr(review, name)()
        refresh()

    for name, button in buttons.items():
        button.on_click(lambda _, name=name: act(name))

    def on_key(change) -> None:
        typed = change["new"]
        if not typed:
            return
        keys.value = ""
        names = {name[0]: name for name in buttons}
        if typed[-1].lower() in names:
            act(names[typed[-1].lower()])

    keys.observe(on_key, names="value")
    refresh()
    return w.VBox([status, image, w.HBox(list(buttons.values())), keys])
