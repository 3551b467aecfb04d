"""Training HMR for hands: one config, one loop (`train`), TensorBoard logs and resumable checkpoints.

Run under `torchrun --nproc_per_node N` for several processes (DDP, gloo on CPU, NCCL on GPUs): each process
takes its slice of every global batch, so N processes compute the same steps as one with the whole batch.
A run folder holds `config.json`, `checkpoint.pt` (written atomically every `checkpoint_every` iterations and at
the end) and `tb/` (TensorBoard). Starting `train` again on the folder resumes from the checkpoint, with the same
data order and random numbers: the result is bit-identical to an uninterrupted run on the same machine.
"""

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tensorboardX import SummaryWriter
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from handlib import metrics, paths
from handlib.camera import normalized_to_pixels
from handlib.io import atomic_path, atomic_write_text
from handlib.joints import OPENPOSE_PARENTS
from handlib.loader import Augment, DrawSampler, HandCrops, Mixture
from handlib.losses import LossWeights, hand_losses
from handlib.network import ENCODERS, SIDES, HandNet

CHECKPOINT = "checkpoint.pt"
# Settings a run may change when it resumes: they do not change the numbers it computes.
NOT_RESULTS = {"run_dir", "workers", "device", "progress", "log_every", "val_every", "val_batch", "image_every",
               "images", "render_meshes", "checkpoint_every"}


@dataclass
class TrainConfig:
    run_dir: str = "runs/quick/train"
    encoder: str = "resnet18"
    mode: str = "random"                 # pretrained | freeze | random
    weights_file: str | None = None      # ImageNet weights when not in the torch hub cache
    image_size: int | None = None        # None: the encoder's ImageNet size (224, inception 299)
    rotation: str = "axis_angle"         # or "6d" (global rotation)
    pose_space: str = "axis_angle"       # or "anatomical": joint angles kept inside the limits by construction
    ief_iterations: int = 3
    dropout: float = 0.5
    batch_size: int = 32                 # global, over all processes
    iterations: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: int = 0                      # linear warm-up iterations
    schedule: str = "constant"           # or "cosine" (to 0 at the last iteration)
    grad_clip: float | None = None
    losses: dict = field(default_factory=lambda: dataclasses.asdict(LossWeights()))
    mix: dict = field(default_factory=lambda: {"synthetic": 1.0})  # dataset name -> share of the draws
    augment: dict = field(default_factory=lambda: dataclasses.asdict(Augment()))
    border: float = 0.25
    log_every: int = 10
    val_every: int = 500
    val_batch: int = 32
    image_every: int = 500
    images: int = 4                      # validation crops shown per picture
    render_meshes: bool = True           # pictures of the predicted meshes too (headless OpenGL)
    checkpoint_every: int = 500
    workers: int = 2
    seed: int = 0
    device: str = "auto"                 # auto | cpu | cuda
    progress: bool = True

    def __post_init__(self):
        if self.image_size is None:
            self.image_size = ENCODERS[self.encoder].image_size
        self.losses = dataclasses.asdict(LossWeights(**self.losses))
        self.augment = dataclasses.asdict(Augment(**self.augment))


def lr_factor(cfg: TrainConfig, it: int) -> float:
    """Learning-rate multiplier at iteration `it`: linear warm-up, then constant or cosine decay."""
    if it < cfg.warmup:
        return (it + 1) / cfg.warmup
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (it - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)))
    return 1.0


def crops(sources: dict, cfg: TrainConfig, augment: bool) -> dict[str, HandCrops]:
    aug = Augment(**cfg.augment) if augment else Augment.none()
    masks = cfg.losses["silhouette"] > 0
    return {name: HandCrops(src, cfg.image_size, aug, cfg.border, cfg.seed, masks) for name, src in sources.items()}


def train(cfg: TrainConfig, train_sources: dict, val_sources: dict, hand_models: dict | None = None) -> dict:
    """Train (or resume) the run in cfg.run_dir; return the last validation figures and the speed.

    train_sources / val_sources: {dataset name: source} (handlib.loader's source protocol); cfg.mix names the
    share of each in the training draws. hand_models: {"right", "left"} (default: HandModel.default).
    """
    for result in training_steps(cfg, train_sources, val_sources, hand_models):
        pass
    return result


def training_steps(cfg: TrainConfig, train_sources: dict, val_sources: dict,
                   hand_models: dict | None = None) -> Iterator[dict]:
    """`train` one iteration per next(): yields the figures so far after each iteration, then the final ones
    (benchmarks/train_step.py times single iterations of the real loop this way)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    run_dir = paths.resolve(cfg.run_dir)
    main = rank == 0

    torch.manual_seed(cfg.seed)
    net = HandNet(cfg.encoder, cfg.mode, cfg.ief_iterations, cfg.rotation, cfg.dropout,
                  weights_file=cfg.weights_file, hand_models=hand_models, pose_space=cfg.pose_space).to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)  # one kernel per step
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(cfg, it))
    start = 0
    if (run_dir / CHECKPOINT).exists():
        ckpt = torch.load(run_dir / CHECKPOINT, map_location=device, weights_only=False)
        saved = saved_config(ckpt)
        changed = sorted(k for k, v in dataclasses.asdict(cfg).items() if k not in NOT_RESULTS and saved.get(k) != v)
        if changed:
            raise ValueError(f"{run_dir / CHECKPOINT} was written with other settings ({changed}): resume with "
                             "the same settings, or use a new run_dir")
        try:
            net.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise ValueError(f"{run_dir / CHECKPOINT} holds another version of the network: use a new run_dir "
                             f"or delete the old one ({str(err).splitlines()[0]})") from err
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        start = ckpt["iteration"]
    elif main:
        atomic_write_text(run_dir / "config.json", json.dumps(dataclasses.asdict(cfg), indent=1))
    model = net
    if world > 1:
        if device.type == "cuda":  # BatchNorm over the global batch (SyncBatchNorm works on GPUs only)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        model = DistributedDataParallel(model)

    names = list(cfg.mix)
    train_sets = crops({n: train_sources[n] for n in names}, cfg, augment=True)
    sampler = DrawSampler([len(train_sets[n]) for n in names], [cfg.mix[n] for n in names], cfg.batch_size,
                          cfg.seed, start=start * cfg.batch_size, rank=rank, world=world)
    loader = torch.utils.data.DataLoader(
        Mixture([train_sets[n] for n in names]), batch_size=cfg.batch_size // world, sampler=sampler,
        num_workers=cfg.workers, pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed))  # own generator: workers leave the global RNG alone
    val_batch = validation_batch(crops(val_sources, cfg, augment=False), cfg.val_batch)
    weights = LossWeights(**cfg.losses)
    writer = SummaryWriter(str(run_dir / "tb")) if main else None

    result, clock, timed = {}, time.perf_counter(), 0
    bar = tqdm(total=cfg.iterations, initial=start, disable=not (main and cfg.progress), desc="train")
    batches = iter(loader)
    try:
        for it in range(start, cfg.iterations):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            net.train()
            preds = model(batch["image"], batch["side"], return_verts=weights.needs_vertices)
            loss, parts = hand_losses(preds, batch, weights, net)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            timed += 1
            if it == start:  # the speed leaves out the first step (worker start-up, allocations)
                clock, timed = time.perf_counter(), 0
            bar.update()
            done = it + 1
            if main and (done % cfg.log_every == 0 or done == cfg.iterations):
                speed = timed / max(time.perf_counter() - clock, 1e-9)
                writer.add_scalar("train/loss", loss.item(), done)
                for name, value in parts.items():
                    writer.add_scalar(f"train/{name}", value.item(), done)
                writer.add_scalar("train/lr", sched.get_last_lr()[0], done)
                writer.add_scalar("train/it_per_s", speed, done)
                bar.set_postfix(loss=f"{loss.item():.3g}", it_s=f"{speed:.2f}")
                result.update({"it_per_s": speed, "train_loss": loss.item(),
                               **{f"train_{name}": value.item() for name, value in parts.items()}})
            if main and (done % cfg.val_every == 0 or done == cfg.iterations):
                figures = validate(net, val_batch, weights, device)
                for name, value in figures.items():
                    writer.add_scalar(f"val/{name}", value, done)
                result.update(figures)
            if main and (done % cfg.image_every == 0 or done == cfg.iterations):
                writer.add_image("val/keypoints", keypoint_pictures(net, val_batch, cfg.images, device), done,
                                 dataformats="HWC")
                if cfg.render_meshes:
                    writer.add_image("val/meshes", mesh_pictures(net, val_batch, cfg.images, device), done,
                                     dataformats="HWC")
            if main and (done % cfg.checkpoint_every == 0 or done == cfg.iterations):
                save_checkpoint(run_dir / CHECKPOINT, net, opt, sched, done, cfg)
            yield result
        if main and "loss" not in result:  # a finished run, resumed: its figures again, its speed unknown
            result.update({"it_per_s": float("nan"), **validate(net, val_batch, weights, device)})
        yield {**result, "iterations": cfg.iterations, "resumed_from": start}
    finally:  # also when the caller stops early
        bar.close()
        if writer:
            writer.close()
        if world > 1:
            torch.distributed.destroy_process_group()


def saved_config(ckpt: dict) -> dict:
    """A checkpoint's settings; those older checkpoints lack take their defaults."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig)} | ckpt["config"]


def save_checkpoint(path: Path, net: HandNet, opt, sched, iteration: int, cfg: TrainConfig) -> None:
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "rng": torch.get_rng_state(), "iteration": iteration, "config": dataclasses.asdict(cfg)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_network(run_dir: str | os.PathLike, hand_models: dict | None = None,
                 device: str | torch.device = "cpu") -> HandNet:
    """The trained network of a run folder (its checkpoint), in eval mode."""
    path = paths.resolve(run_dir) / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: train first (handlib.train.train)")
    ckpt = torch.load(path, map_location=device, weights_only=False)
    cfg = saved_config(ckpt)
    # The ImageNet weights are in the checkpoint: build the encoder empty.
    net = HandNet(cfg["encoder"], "random", cfg["ief_iterations"], cfg["rotation"], cfg["dropout"],
                  hand_models=hand_models, pose_space=cfg["pose_space"])
    net.load_state_dict(ckpt["model"])
    return net.to(device).eval()


def validation_batch(sets: dict[str, HandCrops], size: int) -> dict:
    """A fixed batch of `size` unaugmented crops, shared evenly between the validation sets."""
    names = [n for n, s in sets.items() if len(s)]
    if not names:
        raise ValueError("no validation samples: give at least one non-empty validation source")
    share = [size // len(names) + (k < size % len(names)) for k in range(len(names))]
    samples = [sets[n][int(i)] for n, k in zip(names, share)
               for i in np.linspace(0, len(sets[n]) - 1, min(k, len(sets[n]))).round()]
    return torch.utils.data.default_collate(samples)


@torch.no_grad()
def validate(net: HandNet, batch: dict, weights: LossWeights, device) -> dict:
    """Validation loss and figures of the final IEF iteration: 2D error and PCK@5% (of the hand's box
    diagonal, metrics.hand_size), and on samples with 3D labels MPJPE (wrist-aligned) and PA-MPJPE in mm."""
    net.eval()
    batch = {k: v.to(device) for k, v in batch.items()}
    preds = net(batch["image"], batch["side"], return_verts=weights.needs_vertices)
    loss, _ = hand_losses(preds, batch, weights, net)
    p = preds[-1]
    seen = batch["certainty"] > 0
    dist = metrics.keypoint_distances(p.keypoints2d, batch["keypoints2d"])
    relative = dist / metrics.hand_size(batch["keypoints2d"], seen)[:, None]
    out = {"loss": loss.item(), "pck5": float(metrics.pck_curve(relative, [0.05], seen)[0]),
           "kp2d_error": float(dist[metrics.to_numpy(seen) > 0].mean())}
    has3d = batch["has3d"]
    if has3d.any():
        pred3d, gt3d = p.keypoints3d[has3d], batch["keypoints3d"][has3d]
        out["mpjpe_mm"] = 1000 * metrics.mpjpe(pred3d, gt3d)
        out["pa_mpjpe_mm"] = 1000 * metrics.pa_mpjpe(pred3d, gt3d)
    return out


@torch.no_grad()
def keypoint_pictures(net: HandNet, batch: dict, n: int, device) -> np.ndarray:
    """A grid (HWC uint8): one row per validation crop, one column per IEF iteration; true keypoints green,
    predicted red."""
    from PIL import Image, ImageDraw

    net.eval()
    images = batch["image"][:n].to(device)
    preds = net(images, batch["side"][:n].to(device))
    size = images.shape[-1]
    rows = []
    for i in range(len(images)):
        crop = ((images[i].permute(1, 2, 0).cpu().numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        row = []
        for p in preds:
            pic = Image.fromarray(crop)
            draw = ImageDraw.Draw(pic)
            for kps, colour in ((batch["keypoints2d"][i], (0, 220, 0)), (p.keypoints2d[i].cpu(), (255, 40, 40))):
                px = normalized_to_pixels(kps, size, size).tolist()
                for k, parent in enumerate(OPENPOSE_PARENTS):
                    if parent >= 0:
                        draw.line([tuple(px[parent]), tuple(px[k])], fill=colour, width=1)
            row.append(np.asarray(pic))
        rows.append(np.concatenate(row, 1))
    return np.concatenate(rows, 0)


@torch.no_grad()
def mesh_pictures(net: HandNet, batch: dict, n: int, device) -> np.ndarray:
    """The final predicted meshes drawn over their validation crops, side by side (HWC uint8)."""
    from handlib.render import Renderer, WeakPerspective

    net.eval()
    images, side = batch["image"][:n].to(device), batch["side"][:n].to(device)
    p = net(images, side)[-1]
    crops = ((images.permute(0, 2, 3, 1).cpu().numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    out = crops.copy()
    for k, name in enumerate(SIDES):
        idx = (side == k).nonzero()[:, 0].cpu().numpy()
        if len(idx):
            renderer = Renderer(net.hand_models[name].faces.cpu().numpy(), images.shape[-1], samples=4)
            out[idx] = renderer.render(p.vertices[idx].cpu(), WeakPerspective(p.cam[idx].cpu()),
                                       background=crops[idx])["image"]
    return np.concatenate(list(out), 1)
