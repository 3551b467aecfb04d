"""Evaluation of trained configurations: the thesis's Table 7.1 (losses per configuration) with the metrics.

`predict` runs a network over a dataset of crops (handlib.loader.HandCrops) and keeps, per sample, every IEF
iteration's 2D keypoints and the final 3D hand, with the ground truth posed through the same hand models.
`evaluate` turns that into the numbers of handlib.metrics; `table` puts runs side by side; `verdict` writes the
paragraph that says which configuration wins, from the numbers.
"""

import os
from pathlib import Path

import numpy as np
import torch

from handlib import metrics, paths
from handlib.network import SIDES, HandNet

PCK_THRESHOLDS = np.linspace(0, 0.2, 41)  # fractions of the hand size (metrics.hand_size)
# name, direction (+1 higher is better), format, description
COLUMNS = [
    ("train_loss", -1, "{:.3g}", "training loss (last logged)"),
    ("val_loss", -1, "{:.3g}", "validation loss (last logged)"),
    ("kp2d_px", -1, "{:.2f}", "2D keypoint error, crop pixels"),
    ("kp2d_rel", -1, "{:.3f}", "2D keypoint error / hand size"),
    ("pck5", 1, "{:.3f}", "PCK at 5% of hand size: share of keypoints that close"),
    ("pck_auc", 1, "{:.3f}", "AUC of PCK over 0-20% of hand size"),
    ("mpjpe_mm", -1, "{:.1f}", "MPJPE (wrist-aligned), mm"),
    ("pa_mpjpe_mm", -1, "{:.1f}", "PA-MPJPE, mm"),
    ("pve_mm", -1, "{:.1f}", "per-vertex error (wrist-aligned), mm"),
    ("pa_pve_mm", -1, "{:.1f}", "PA per-vertex error, mm"),
    ("f5", 1, "{:.3f}", "F-score at 5 mm (aligned vertices)"),
    ("f15", 1, "{:.3f}", "F-score at 15 mm (aligned vertices)"),
    ("beta_err", -1, "{:.3f}", "mean |β − β_true|"),
    ("implausible", -1, "{:.3f}", "share of joint angles beyond the anatomical limits (by > 1°)"),
    ("beyond_10deg", -1, "{:.3f}", "share of joint angles beyond the anatomical limits by > 10°"),
    ("beta_abs_p95", -1, "{:.2f}", "95th percentile of |β|"),
]


def read_scalars(run_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar of a run's TensorBoard log (`run_dir/tb`): tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = paths.resolve(run_dir) / "tb"
    if not tb.is_dir():
        raise FileNotFoundError(f"no TensorBoard log at {tb}: train the run first (handlib.train.train)")
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        out[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
    return out


@torch.no_grad()
def predict(net: HandNet, dataset, batch_size: int = 32, keep_images: int = 0) -> dict[str, np.ndarray]:
    """The network's predictions on every sample of `dataset` (HandCrops, unaugmented) with the ground truth.

    Keys: kp2d_iters (N, T, 21, 2) and kp2d_true (N, 21, 2) in [-1, 1] over the crop, certainty, side, has3d,
    cam (N, 3) the final weak perspective onto the crop;
    vertices / joints (N, V, 3) / (N, 21, 3), predicted and `*_true`, in the model frame before translation;
    betas, hand_pose and their `*_true`; images (keep_images, H, W, 3) uint8.
    """
    net.eval()
    parts = []
    for start in range(0, len(dataset), batch_size):
        batch = torch.utils.data.default_collate([dataset[i] for i in range(start, min(start + batch_size,
                                                                                       len(dataset)))])
        preds = net(batch["image"], batch["side"])
        last = preds[-1]
        true_v, true_kp = net.pose(batch["hand_pose"], batch["betas"], batch["global_rotmat"], batch["side"])
        part = {
            "kp2d_iters": torch.stack([p.keypoints2d for p in preds], 1), "kp2d_true": batch["keypoints2d"],
            "certainty": batch["certainty"], "side": batch["side"], "has3d": batch["has3d"],
            "vertices": last.vertices, "joints": last.keypoints3d, "betas": last.betas, "hand_pose": last.hand_pose,
            "cam": last.cam,
            "vertices_true": true_v, "joints_true": true_kp, "betas_true": batch["betas"],
            "hand_pose_true": batch["hand_pose"],
        }
        if start < keep_images:
            part["images"] = ((batch["image"][:keep_images - start].permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255) \
                .round().to(torch.uint8)
        parts.append({k: v.detach().cpu() for k, v in part.items()})
    out = {k: torch.cat([p[k] for p in parts if k in p]).numpy() for k in parts[0]}
    out["image_size"] = np.array(dataset[0]["image"].shape[-1])
    return out


def evaluate(pred: dict[str, np.ndarray], hand_models: dict) -> dict[str, float]:
    """The metrics of one run's predictions (`predict`); 3D figures only over samples with 3D labels."""
    size = float(pred["image_size"])
    kp, true, seen = pred["kp2d_iters"][:, -1], pred["kp2d_true"], pred["certainty"] > 0
    dist = metrics.keypoint_distances(kp, true)
    relative = dist / metrics.hand_size(true, seen)[:, None]
    pck = metrics.pck_curve(relative, PCK_THRESHOLDS, seen)
    out = {"kp2d_px": float(dist[seen].mean() * size / 2), "kp2d_rel": float(relative[seen].mean()),
           "pck5": float(metrics.pck_curve(relative, [0.05], seen)[0]), "pck_auc": metrics.auc(PCK_THRESHOLDS, pck),
           "samples": int(len(kp))}
    has3d = pred["has3d"].astype(bool)
    if has3d.any():
        j, jt = pred["joints"][has3d], pred["joints_true"][has3d]
        v, vt = pred["vertices"][has3d], pred["vertices_true"][has3d]
        aligned = metrics.procrustes_align(v, vt)
        out.update({
            "mpjpe_mm": 1000 * metrics.mpjpe(j, jt),
            "pa_mpjpe_mm": 1000 * metrics.pa_mpjpe(j, jt),
            "pve_mm": 1000 * float(metrics.vertex_errors(v, vt, j[:, 0], jt[:, 0]).mean()),
            "pa_pve_mm": 1000 * float(metrics.keypoint_distances(aligned, vt).mean()),
            "f5": float(metrics.f_score(aligned, vt, 0.005).mean()),
            "f15": float(metrics.f_score(aligned, vt, 0.015).mean()),
            "beta_err": float(metrics.beta_error(pred["betas"][has3d], pred["betas_true"][has3d]).mean()),
            "samples3d": int(has3d.sum()),
        })
    for key, tolerance in (("implausible", 1.0), ("beyond_10deg", 10.0)):
        counted = [(metrics.implausible_share(pred["hand_pose"][pred["side"] == k], hand_models[name], tolerance),
                    (pred["side"] == k).sum()) for k, name in enumerate(SIDES) if (pred["side"] == k).any()]
        out[key] = float(sum(share * n for share, n in counted) / len(pred["side"]))
    mags = metrics.beta_magnitudes(pred["betas"])
    out.update({"beta_abs_mean": mags["mean"], "beta_abs_p95": mags["p95"], "beta_abs_max": mags["max"]})
    return out


def last_value(scalars: dict, tag: str, window: int = 5) -> float:
    """The mean of a logged scalar's last `window` values (NaN when the tag was never logged)."""
    if tag not in scalars:
        return float("nan")
    return float(np.mean(scalars[tag][1][-window:]))


def table(results: dict[str, dict]) -> str:
    """Runs (name -> figures) side by side as an HTML table, the best of each column in bold."""
    cols = [c for c in COLUMNS if any(c[0] in r for r in results.values())]
    head = "".join(f"<th title='{desc}'>{name}</th>" for name, _, _, desc in cols)
    rows = []
    for run, figures in results.items():
        cells = []
        for name, sign, fmt, _ in cols:
            value = figures.get(name, float("nan"))
            best = _best(results, name, sign)
            text = fmt.format(value) if np.isfinite(value) else "–"
            cells.append(f"<td><b>{text}</b></td>" if best == run else f"<td>{text}</td>")
        rows.append(f"<tr><th>{run}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>run</th>{head}</tr>{''.join(rows)}</table>"


def _best(results: dict[str, dict], name: str, sign: int) -> str | None:
    values = {run: r.get(name, float("nan")) for run, r in results.items()}
    values = {run: v for run, v in values.items() if np.isfinite(v)}
    if len(values) < 2:
        return None
    return max(values, key=lambda run: sign * values[run])


def rank(results: dict[str, dict], primary: tuple[str, ...] = ("pa_mpjpe_mm", "kp2d_rel")) -> tuple[list, str]:
    """Run names best first by the first of `primary` that every run has, and that key (None: none has)."""
    key = next((k for k in primary if all(np.isfinite(r.get(k, np.nan)) for r in results.values())), None)
    if key is None:
        return list(results), None
    sign = next(s for n, s, _, _ in COLUMNS if n == key)
    return sorted(results, key=lambda run: -sign * results[run][key]), key


# The demo model's goals (issue 10): metric -> (name, unit, scale to the unit, comparison, bound in the unit).
GOALS = {
    "pa_mpjpe_mm": ("PA-MPJPE", "mm", 1, "<", 10.0),
    "pa_pve_mm": ("PA per-vertex error", "mm", 1, "<", 10.0),
    "pck5": ("PCK@5%", "%", 100, ">", 90.0),
    "beyond_10deg": ("joint angles > 10° beyond the limits", "%", 100, "=", 0.0),
}


def goal_figures(figures: dict) -> dict[str, tuple[float, str, bool]]:
    """For each goal a run's figures have: "name (unit)" -> (value in that unit, the goal as "< 10", met)."""
    out = {}
    for key, (name, unit, scale, comparison, bound) in GOALS.items():
        if key in figures:
            value = scale * figures[key]
            met = {"<": value < bound, ">": value > bound, "=": value == bound}[comparison]
            out[f"{name} ({unit})"] = (round(value, 2), f"{comparison} {bound:g}", bool(met))
    return out


def verdict(results: dict[str, dict], primary: tuple[str, ...] = ("pa_mpjpe_mm", "kp2d_rel")) -> str:
    """A paragraph naming the winning configuration and why, written from the numbers: the first of `primary`
    that every run has decides; the other metrics say where the winner is better or worse (not the losses:
    configurations with different loss terms have losses of different meaning)."""
    ranked, key = rank(results, primary)
    if key is None or len(results) < 2:
        return "Fewer than two runs with comparable figures: no verdict."
    sign, fmt, desc = next((s, f, d) for n, s, f, d in COLUMNS if n == key)
    win, second = ranked[0], ranked[1]
    w, s = results[win], results[second]
    text = (f"**{win}** wins on {desc} ({fmt.format(w[key])} against {fmt.format(s[key])} for {second}, "
            f"{_change(w[key], s[key])}).")
    better, worse = [], []
    for name, sign_c, fmt_c, desc_c in COLUMNS:
        if name in (key, "train_loss", "val_loss"):  # each configuration minimises its own loss: not comparable
            continue
        if not (np.isfinite(w.get(name, np.nan)) and np.isfinite(s.get(name, np.nan))):
            continue
        if fmt_c.format(w[name]) == fmt_c.format(s[name]):  # equal at the precision shown
            continue
        (better if sign_c * (w[name] - s[name]) > 0 else worse).append(
            f"{desc_c} ({fmt_c.format(w[name])} vs {fmt_c.format(s[name])})")
    if better:
        text += f" It is also better on {', '.join(better)}."
    if worse:
        text += f" It is worse on {', '.join(worse)}."
    if "implausible" in w and "implausible" in s:
        text += (f" Its poses break the anatomical limits in {100 * w['implausible']:.1f}% of joint angles "
                 f"against {100 * s['implausible']:.1f}%, and its |β| reaches {w.get('beta_abs_max', np.nan):.2f} "
                 f"at most against {s.get('beta_abs_max', np.nan):.2f}.")
    return text


def _change(a: float, b: float) -> str:
    if b == 0:
        return "no relative change defined"
    return f"{100 * (a - b) / abs(b):+.0f}%"


def run_figures(run_dir: str | os.PathLike, dataset, hand_models: dict, batch_size: int = 32,
                keep_images: int = 0) -> tuple[dict, dict]:
    """Losses from a run's log and metrics of its checkpoint on `dataset`: (figures, predictions)."""
    from handlib.train import load_network

    scalars = read_scalars(run_dir)
    net = load_network(run_dir, hand_models=hand_models)
    pred = predict(net, dataset, batch_size, keep_images)
    figures = {"train_loss": last_value(scalars, "train/loss"), "val_loss": last_value(scalars, "val/loss", 1),
               **evaluate(pred, hand_models)}
    return figures, pred


def config_of(run_dir: str | os.PathLike) -> dict:
    """A run's config.json."""
    import json

    path = Path(paths.resolve(run_dir)) / "config.json"
    return json.loads(path.read_text())


def train_if_missing(run_dir: str | os.PathLike, settings: dict, train_sources: dict, val_sources: dict) -> bool:
    """Train the run with TrainConfig(**settings) unless `run_dir` already holds a finished checkpoint;
    True when it trained (or resumed)."""
    from handlib.train import CHECKPOINT, TrainConfig, train

    run_dir = paths.resolve(run_dir)
    cfg = TrainConfig(run_dir=str(run_dir), **settings)
    if (run_dir / CHECKPOINT).exists():
        done = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)["iteration"]
        if done >= cfg.iterations:
            return False
    train(cfg, train_sources, val_sources)
    return True


def prediction_pictures(pred: dict[str, np.ndarray], hand_models: dict, n: int = 4) -> np.ndarray:
    """One row per sample: the crop with the predicted keypoints of each IEF iteration, then the true ones,
    then the predicted mesh over the crop. (rows · size, columns · size, 3) uint8."""
    from handlib import draw
    from handlib.camera import normalized_to_pixels
    from handlib.render import Renderer, WeakPerspective

    images = pred["images"][:n]
    size = images.shape[1]
    renderers = {}
    rows = []
    for i, image in enumerate(images):
        to_px = lambda xy: normalized_to_pixels(torch.as_tensor(xy), size, size).numpy()  # noqa: E731
        row = [draw.draw_skeleton(image, to_px(kp)) for kp in pred["kp2d_iters"][i]]
        row.append(draw.draw_skeleton(image, np.c_[to_px(pred["kp2d_true"][i]), pred["certainty"][i]]))
        side = SIDES[int(pred["side"][i])]
        if side not in renderers:
            renderers[side] = Renderer(hand_models[side].faces.numpy(), size, samples=4)
        out = renderers[side].render(pred["vertices"][i][None], WeakPerspective(pred["cam"][i][None]),
                                     outputs=("image", "mask"))
        row.append(draw.overlay(image, out["image"][0], out["mask"][0]))
        rows.append(np.concatenate(row, axis=1))
    for r in renderers.values():
        r.release()
    return np.concatenate(rows, axis=0)
