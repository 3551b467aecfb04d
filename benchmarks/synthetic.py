"""Synthetic dataset generation and reading speed, on this machine.

    python benchmarks/synthetic.py [--samples 2048] [--size 224] [--camera weak] [--shard-size 64] [--workers 2]

Generates `samples` samples into a temporary folder and prints samples per second written to disk, the share
of time in each stage (sampling parameters, skin textures and backgrounds; the hand model; rendering; image
encoding; writing shards), the bytes per sample, then how fast `handlib.synthetic.load` reads them back
(shard order, as training reads them, and random order). Goal (issue 6): >= 100 samples/s at 224 px on 2 cores.
The total includes each worker's start (Python, torch, the GL context, shaders: about 3 s of CPU each), so it is
measured over a dataset of the demo profile's order of size (4000 samples), where that start is a small share, not
over a few hundred samples, where it would be most of the time.
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from handlib import shards, synthetic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--camera", default="weak", choices=["weak", "perspective"])
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="generating processes")
    args = parser.parse_args()
    config = synthetic.SyntheticConfig(samples=args.samples, image_size=args.size, camera=args.camera,
                                       shard_size=args.shard_size, subjects=max(3, args.samples // 10))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synthetic.SampleMaker(config, synthetic.make_subjects(config))
        setup = time.perf_counter() - start
        start, cpu = time.perf_counter(), _cpu_seconds()
        timing = synthetic.generate(tmp, config, workers=args.workers)
        total, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
        timing.pop("samples")
        size = sum(p.stat().st_size for p in Path(tmp).glob("*.npz"))
        print(f"generation: {args.samples} samples at {args.size} px ({args.camera} camera, {args.workers} "
              f"process(es)), {total:.1f} s = {args.samples / total:.1f} samples/s written to disk "
              f"(one process's setup: models, atlases, renderers {setup:.1f} s, inside the total); load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"CPU time of all generating processes and their threads, setup included: "
              f"{1000 * cpu / args.samples:.1f} ms per sample; on {os.cpu_count()} idle cores that is at best "
              f"{os.cpu_count() * args.samples / cpu:.0f} samples/s")
        staged = sum(timing.values())
        print("share of the generating processes' time per stage:")
        for stage, seconds in timing.items():
            print(f"  {stage:<8} {seconds:7.2f} s  {seconds / staged:6.1%}")
        print(f"dataset size: {size / 1e6:.1f} MB, {size / args.samples / 1e3:.1f} kB per sample")

        data = synthetic.load(tmp, "train")
        for name, order in (("shard order", list(shards.ShardOrderSampler(data, seed=0))),
                            ("random order", np.random.default_rng(0).permutation(len(data)).tolist())):
            fresh = synthetic.load(tmp, "train")
            start = time.perf_counter()
            for i in order:
                fresh[i]
            seconds = time.perf_counter() - start
            print(f"reading ({name}): {len(order) / seconds:.0f} samples/s")


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
