"""The full training step against the encoder's forward+backward alone, side by side in one run.

    python benchmarks/train_step.py [--encoder resnet18] [--size 128] [--batch 32] [--steps 8] [--reps 3]

The full step is handlib.train.train's loop (data loading, the IEF regressor, the hand model three times, the
losses, the optimiser, logging) on in-memory synthetic-like samples; the encoder alone is forward and backward
of the same batch shape. Repetitions alternate. Each prints seconds per step as wall time and as this process's
CPU time: on a machine shared with other jobs, wall time swings with their load, CPU time much less. The CPU
figure of the full step is the difference between runs of 2N and N steps (setup cancels), with the data loaded
in this process (workers=0) so that its cost is counted. Goal (issue 8): full step <= 1.15x the encoder alone.
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


def encoder_alone(encoder: str, size: int, batch: int, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds per forward+backward."""
    enc = build_encoder(encoder, "random").train()
    x = torch.rand(batch, 3, size, size)
    enc(x).sum().backward()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        enc.zero_grad(set_to_none=True)
        enc(x).sum().backward()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def full_step(cfg: TrainConfig, data: dict, hands: dict, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds per training step of handlib.train.train."""
    cpu = []
    for n in (steps, 2 * steps):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.process_time()
            result = train(TrainConfig(**{**cfg.__dict__, "run_dir": tmp, "iterations": n + 1}), data, data, hands)
            cpu.append(time.process_time() - start)
    return 1 / result["it_per_s"], (cpu[1] - cpu[0]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="loader processes (0: CPU time counts the data)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hands = {side: HandModel.default(side) for side in ("right", "left")}
    data = {"synthetic": samples(hands)}
    # the demo profile's model and losses (configs/demo/04_train.yaml): the thesis's two and the 3D terms
    cfg = TrainConfig(encoder=args.encoder, image_size=args.size, batch_size=args.batch, iterations=args.steps,
                      workers=args.workers, log_every=10, val_every=10 ** 9, image_every=10 ** 9,
                      checkpoint_every=10 ** 9, val_batch=4, progress=False, render_meshes=False,
                      pose_space="anatomical", losses={"reproj": 100, "shape": 0.1, "pose": 1, "global_rot": 1,
                                                       "betas": 1, "keypoints3d": 100})
    print(f"{args.encoder} {args.size} px, batch {args.batch}, torch threads {torch.get_num_threads()}, "
          f"{args.workers} loader worker(s), {args.steps} timed steps per repetition")
    wall_ratios, cpu_ratios, enc_walls, full_walls = [], [], [], []
    for rep in range(args.reps):
        enc_wall, enc_cpu = encoder_alone(args.encoder, args.size, args.batch, args.steps)
        full_wall, full_cpu = full_step(cfg, data, hands, args.steps)
        wall_ratios.append(full_wall / enc_wall)
        cpu_ratios.append(full_cpu / enc_cpu)
        enc_walls.append(enc_wall)
        full_walls.append(full_wall)
        print(f"rep {rep}: encoder fwd+bwd {enc_wall:.3f} s wall / {enc_cpu:.3f} s CPU per step; full training "
              f"step {full_wall:.3f} s wall / {full_cpu:.3f} s CPU; ratio {wall_ratios[-1]:.2f} wall, "
              f"{cpu_ratios[-1]:.2f} CPU", flush=True)
    print(f"median ratio full / encoder: {statistics.median(wall_ratios):.2f} wall, "
          f"{statistics.median(cpu_ratios):.2f} CPU")
    # Other jobs only ever add time: the fastest repetition of each is the least disturbed (as timeit reports).
    print(f"best of {args.reps}: encoder {min(enc_walls):.3f} s, full step {min(full_walls):.3f} s per step; "
          f"ratio {min(full_walls) / min(enc_walls):.2f} (goal <= 1.15)")


if __name__ == "__main__":
    main()
