"""Time handlib's HandModel against smplx's MANO on the same model file, side by side in one run.

    python benchmarks/bench_model.py [--reps 15] [--threads N]

Forward and forward+backward, batch 1 and 1024, float32 CPU (CUDA too when available). Both models
load the same MANO-format file: the built-in hand exported with export_mano when handlib.builtin
exists, else a random MANO-sized model (778 vertices, 1538 faces). Repetitions alternate between the
two models; each prints the median time per call and the ratio smplx / ours (> 1: ours is faster), by the
wall clock and by this process's CPU time (the steadier one on a machine shared with other work; on CUDA
only the wall clock counts).
Goal (issue 3): >= 1.5x at batch 1, >= 1x at batch 1024.
"""

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from handlib.model import HandModel  # noqa: E402


def model_file(directory: Path, random: bool) -> tuple[Path, str]:
    path = directory / "MANO_RIGHT.pkl"
    if not random and (REPO / "handlib" / "builtin.py").exists():
        HandModel.builtin("right").export_mano(path)
        return path, "built-in hand"
    from tests.fixtures.mano import random_mano_params, write_plain_pickle

    write_plain_pickle(random_mano_params(778, 1538), path)
    return path, "random MANO-sized model"


def time_calls(fn, calls: int) -> tuple[float, float]:
    """Seconds per call: wall clock, and CPU time of this process (which other programs' load cannot inflate)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def runner(model, inputs: dict, backward: bool, sync):
    def run():
        args = {k: v.detach().requires_grad_(backward) for k, v in inputs.items()}
        out = model(**args)
        if backward:
            (out.vertices.sum() + out.joints.sum()).backward()
        sync()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--random", action="store_true", help="a random MANO-sized model even when the built-in exists")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import smplx

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        path, what = model_file(Path(tmp), args.random)
        with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a warning about 10 betas
            reference = smplx.MANO(model_path=str(path), use_pca=False, flat_hand_mean=False, is_rhand=True)
        ours = HandModel.from_mano(path, use_pca=False, flat_hand_mean=False)
    print(f"model: {what}, {ours.num_verts} vertices, {len(ours.faces)} faces; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; {args.reps} interleaved repetitions, medians")
    print(f"{'':29} {'wall clock':^30} {'process CPU time':^30}")
    print(f"{'device':6} {'batch':>5} {'pass':16} {'ours ms':>9} {'smplx ms':>9} {'smplx/ours':>10} "
          f"{'ours ms':>9} {'smplx ms':>9} {'smplx/ours':>10}")
    for device in devices:
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        models = {"ours": ours.to(device), "smplx": reference.to(device)}
        for batch in (1, 1024):
            gen = torch.Generator().manual_seed(0)
            inputs = {"betas": torch.randn(batch, 10, generator=gen),
                      "hand_pose": 0.5 * torch.randn(batch, 45, generator=gen),
                      "global_orient": torch.randn(batch, 3, generator=gen),
                      "transl": 0.1 * torch.randn(batch, 3, generator=gen)}
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with torch.no_grad():
                gap = (models["ours"](**inputs).vertices - models["smplx"](**inputs).vertices).abs().max()
            assert gap < 1e-5, f"the two models disagree by {gap:.2e} m"
            for backward in (False, True):
                runs = {name: runner(m, inputs, backward, sync) for name, m in models.items()}
                calls = 200 if batch == 1 else (10 if device == "cpu" else 50)
                for run in runs.values():
                    time_calls(run, max(1, calls // 10))  # warm up
                times = {name: [] for name in runs}
                for rep in range(args.reps):
                    order = list(runs) if rep % 2 == 0 else list(runs)[::-1]
                    for name in order:
                        times[name].append(time_calls(runs[name], calls))
                wall = {n: statistics.median(t[0] for t in times[n]) for n in runs}
                cpu = {n: statistics.median(t[1] for t in times[n]) for n in runs}
                label = "forward+backward" if backward else "forward"
                print(f"{device:6} {batch:5d} {label:16} {1e3 * wall['ours']:9.3f} {1e3 * wall['smplx']:9.3f} "
                      f"{wall['smplx'] / wall['ours']:9.2f}x {1e3 * cpu['ours']:9.3f} {1e3 * cpu['smplx']:9.3f} "
                      f"{cpu['smplx'] / cpu['ours']:9.2f}x", flush=True)


if __name__ == "__main__":
    main()
