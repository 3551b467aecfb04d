"""The full training step against the encoder's forward+backward alone, measured in pairs, side by side.

    python benchmarks/train_step.py [--encoder resnet18] [--size 128] [--batch 32] [--pairs 40]

The full step is one iteration of handlib.train's loop (`training_steps`: data loading, the IEF regressor, the
hand model three times, the losses, the optimiser, logging every 10 iterations) on in-memory synthetic-like
samples, with the demo profile's pose space and losses; the encoder alone is forward and backward of the same
batch shape. The two alternate, one step each, so that both see the same machine: this VM's speed drifts by
±20% over seconds, more than the margin measured. Each pair gives a ratio, as wall time and as this process's CPU
time; the median of the pairs is the figure. The data are loaded in this process (workers=0), so their cost
counts. Goal (issue 8): full step <= 1.15x the encoder alone.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from handlib.camera import normalized_to_pixels  # noqa: E402
from handlib.model import HandModel  # noqa: E402
from handlib.network import build_encoder  # noqa: E402
from handlib.train import TrainConfig, training_steps  # noqa: E402


def samples(hands: dict, n: int = 64, photo: int = 160) -> list[dict]:
    """Random-pixel photos with the keypoints and 3D labels of random hands (what the loader gets)."""
    rng, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        side = ("right", "left")[i % 2]
        pose, rot, betas = 0.3 * torch.randn(1, 45, generator=g), torch.randn(1, 3, generator=g), torch.zeros(1, 10)
        with torch.no_grad():
            kp3d = hands[side](betas=betas, hand_pose=pose, global_orient=rot).keypoints[0]
        xy = kp3d[:, :2] - kp3d[:, :2].mean(0)
        px = normalized_to_pixels(xy * (1.4 / xy.abs().max()), photo, photo).numpy()
        out.append({"image": rng.integers(0, 256, (photo, photo, 3), dtype=np.uint8), "side": side,
                    "keypoints": np.c_[px, np.ones(21)], "hand_pose": pose[0].numpy(), "betas": betas[0].numpy(),
                    "global_orient": rot[0].numpy(), "keypoints3d": kp3d.numpy(), "mask": None})
    return out


def timed(step) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=40, help="timed (encoder step, full step) pairs")
    parser.add_argument("--warmup", type=int, default=3, help="untimed pairs first (allocations, first step)")
    parser.add_argument("--workers", type=int, default=0, help="loader processes (0: the data count in full)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    demo = yaml.safe_load((REPO / "configs" / "demo" / "04_train.yaml").read_text())
    hands = {side: HandModel.default(side) for side in ("right", "left")}
    data = {"synthetic": samples(hands)}
    encoder = build_encoder(args.encoder, "random").train()
    x = torch.rand(args.batch, 3, args.size, args.size)

    def encoder_step():
        encoder.zero_grad(set_to_none=True)
        encoder(x).sum().backward()

    print(f"{args.encoder} {args.size} px, batch {args.batch}, torch threads {torch.get_num_threads()}, "
          f"{args.workers} loader worker(s), {args.pairs} timed pairs after {args.warmup}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        # the demo profile's pose space and losses; the last iteration (validation, pictures, checkpoint) is never
        # reached
        cfg = TrainConfig(run_dir=tmp, encoder=args.encoder, image_size=args.size, batch_size=args.batch,
                          iterations=args.warmup + args.pairs + 1, workers=args.workers, log_every=10,
                          val_every=10 ** 9, image_every=10 ** 9, checkpoint_every=10 ** 9, val_batch=4,
                          progress=False, render_meshes=False, pose_space=demo["pose_space"], losses=demo["losses"])
        steps = training_steps(cfg, data, data, hands)
        enc, full = [], []
        for k in range(args.warmup + args.pairs):
            e, f = timed(encoder_step), timed(lambda: next(steps))
            if k >= args.warmup:
                enc.append(e)
                full.append(f)
                if len(enc) % 10 == 0:
                    print(f"{len(enc)} pairs: median ratio {median_ratio(full, enc, 0):.3f} wall, "
                          f"{median_ratio(full, enc, 1):.3f} CPU", flush=True)
        steps.close()
    for clock, name in ((0, "wall"), (1, "CPU")):
        e, f = (statistics.median(t[clock] for t in times) for times in (enc, full))
        print(f"{name}: encoder fwd+bwd {e:.3f} s, full training step {f:.3f} s (medians); ratio of the pairs: "
              f"median {median_ratio(full, enc, clock):.3f}, quartiles {quartiles(full, enc, clock)}")
    print(f"full step / encoder alone: {median_ratio(full, enc, 0):.2f} wall, {median_ratio(full, enc, 1):.2f} "
          f"CPU (median of {args.pairs} pairs; goal <= 1.15)")


def ratios(full: list, enc: list, clock: int) -> list[float]:
    return [f[clock] / e[clock] for f, e in zip(full, enc)]


def median_ratio(full: list, enc: list, clock: int) -> float:
    return statistics.median(ratios(full, enc, clock))


def quartiles(full: list, enc: list, clock: int) -> str:
    q = statistics.quantiles(ratios(full, enc, clock), n=4)
    return f"{q[0]:.3f}-{q[2]:.3f}"


if __name__ == "__main__":
    main()
