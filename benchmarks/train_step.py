"""The full training step against the encoder's forward+backward alone, side by side in one run.

    python benchmarks/train_step.py [--encoder resnet18] [--size 128] [--batch 32] [--steps 8] [--reps 3]

The full step is handlib.train.train's loop (data loading in worker processes, the IEF regressor, the hand model
three times, the losses, the optimiser, logging) on in-memory synthetic-like samples; the encoder alone is
forward and backward of the same batch shape. Repetitions alternate; each prints the median seconds per step
and the ratio. Goal (issue 8): full step <= 1.15x the encoder alone.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from handlib.camera import normalized_to_pixels  # noqa: E402
from handlib.model import HandModel  # noqa: E402
from handlib.network import build_encoder  # noqa: E402
from handlib.train import TrainConfig, train  # noqa: E402


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


def encoder_alone(encoder: str, size: int, batch: int, steps: int) -> float:
    enc = build_encoder(encoder, "random").train()
    x = torch.rand(batch, 3, size, size)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        enc.zero_grad(set_to_none=True)
        enc(x).sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def full_step(cfg: TrainConfig, data: dict, hands: dict) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = train(TrainConfig(**{**cfg.__dict__, "run_dir": tmp}), data, data, hands)
    return 1 / result["it_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    hands = {side: HandModel.default(side) for side in ("right", "left")}
    data = {"synthetic": samples(hands)}
    # the demo profile's losses: the thesis's two and the 3D terms
    cfg = TrainConfig(encoder=args.encoder, image_size=args.size, batch_size=args.batch, iterations=args.steps + 1,
                      workers=args.workers, log_every=10, val_every=10 ** 9, image_every=10 ** 9,
                      checkpoint_every=10 ** 9, val_batch=4, progress=False,
                      losses={"reproj": 100, "shape": 1, "pose": 1, "global_rot": 1, "betas": 0.1,
                              "keypoints3d": 100, "vertices": 0, "joint_limits": 1})
    print(f"{args.encoder} {args.size} px, batch {args.batch}, torch threads {torch.get_num_threads()}, "
          f"{args.workers} loader worker(s), {args.steps} timed steps per repetition")
    ratios = []
    for rep in range(args.reps):
        enc = encoder_alone(args.encoder, args.size, args.batch, args.steps)
        full = full_step(cfg, data, hands)
        ratios.append(full / enc)
        print(f"rep {rep}: encoder fwd+bwd {enc:.3f} s/step, full training step {full:.3f} s/step, "
              f"ratio {full / enc:.2f}", flush=True)
    print(f"median ratio full / encoder: {statistics.median(ratios):.2f} (goal <= 1.15)")


if __name__ == "__main__":
    main()
