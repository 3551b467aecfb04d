"""Fit 1,000 registrations at once, and compare with fitting them one at a time, in one run.

    python benchmarks/fitting.py [--count 1000] [--single 10] [--threads 1] [--vertex-subset 100]

Registrations: the embedded default without noise (synthetic_registrations: the built-in hand, or MANO when
data/mano/ holds it, random plausible poses, β ~ N(0, I), random placement), one subject each, so the fit can
reach the truth and the mean vertex error measures the fit. Both runs use the same FitConfig: batched
Levenberg-Marquardt, stages pose 4 / shape 2 / both 4 iterations, joint-limit prior, the data term on
`--vertex-subset` vertices (errors are measured on all vertices). One-at-a-time fitting is measured on the first
`--single` registrations and extrapolated to `--count`. A warm-up fit first pays torch's one-time cost of its
forward-mode autodiff. Times are the wall clock and this process's CPU time (steadier on a machine shared with
other work).
Goal (issue 7): under 1 mm mean vertex error for 1,000 registrations, under 60 s.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from handlib import fitting  # noqa: E402
from handlib import registrations as regs  # noqa: E402
from handlib.model import HandModel, find_mano  # noqa: E402


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--single", type=int, default=10, help="registrations fitted one at a time")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vertex-subset", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.single <= args.count:
        parser.error("--single must be in 1..--count")
    torch.set_num_threads(args.threads)
    model = HandModel.default("right")
    name = f"MANO ({find_mano('right').name})" if find_mano("right") else "built-in hand"
    made = regs.synthetic_registrations(model, n_subjects=args.count, scans_per_subject=1, noise_mm=0,
                                        smooth_noise_mm=0, residual_mm=0, seed=args.seed)
    targets = torch.as_tensor(made.vertices, dtype=torch.float32)
    config = fitting.FitConfig(pose_iters=4, shape_iters=2, both_iters=4, joint_limit_weight=10,
                               vertex_subset=args.vertex_subset)
    print(f"model: {name}, {model.num_verts} vertices; {args.count} noise-free registrations; "
          f"torch threads {torch.get_num_threads()}")
    print(f"config: {config}")
    fitting.fit_registrations(model, targets[:2], config)  # warm-up

    fit, wall, cpu = timed(lambda: fitting.fit_registrations(model, targets, config))
    per_scan_mm = fit.vertex_error.mean(1) * 1000
    print(f"batched:        {args.count} registrations in {wall:6.1f} s wall, {cpu:6.1f} s CPU; mean vertex error "
          f"{fit.mean_error_mm():.5f} mm (worst registration {float(per_scan_mm.max()):.5f} mm, "
          f"{int((per_scan_mm >= 1).sum())} at 1 mm or more); "
          f"max |β - β_true| {float((fit.betas - torch.as_tensor(made.truth['betas'])).abs().max()):.5f}")

    singles = []

    def one_by_one():
        for i in range(args.single):
            singles.append(fitting.fit_registrations(model, targets[i:i + 1], config))
    _, wall1, cpu1 = timed(one_by_one)
    scale = args.count / args.single
    single_mm = sum(f.mean_error_mm() for f in singles) / len(singles)
    print(f"one at a time:  {args.single} registrations in {wall1:6.1f} s wall, {cpu1:6.1f} s CPU; mean vertex error "
          f"{single_mm:.5f} mm; extrapolated to {args.count}: {wall1 * scale:7.1f} s wall, {cpu1 * scale:7.1f} s CPU "
          f"(measured on {args.single}, times {scale:g})")
    print(f"speed-up of batched over one at a time: {wall1 * scale / wall:.1f}x wall, {cpu1 * scale / cpu:.1f}x CPU")
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    print(f"goal for {args.count} registrations: mean vertex error < 1 mm {met(fit.mean_error_mm() < 1)} "
          f"({fit.mean_error_mm():.5f} mm); under 60 s {met(wall < 60)} by the wall clock ({wall:.1f} s), "
          f"{met(cpu < 60)} by CPU time ({cpu:.1f} s); load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")


if __name__ == "__main__":
    main()
