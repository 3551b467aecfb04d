import dataclasses
import os
import socket

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from toy_hand import toy_params

from handlib import train as training
from handlib.camera import normalized_to_pixels
from handlib.loader import HandCrops
from handlib.losses import LossWeights, hand_losses
from handlib.model import HandModel
from handlib.network import HandNet
from handlib.train import CHECKPOINT, TrainConfig, load_network, train

SIZE = 48


def _hands():
    return {side: HandModel(toy_params(side=side), side=side) for side in ("right", "left")}


def _source(n: int, seed: int) -> list[dict]:
    """Noise images whose keypoints a toy hand can reach exactly (posed, projected into a 96 px photo)."""
    rng = np.random.default_rng(seed)
    hands = _hands()
    out = []
    for i in range(n):
        side = ["right", "left"][i % 2]
        g = torch.Generator().manual_seed(seed * 100 + i)
        # as hands are photographed (the network's start): fingers up (the toy's +y turned to image -y),
        # palm away from the camera, then turned by up to about 30 degrees
        turn = Rotation.from_rotvec([0, 0, np.pi]) * Rotation.from_rotvec(0.5 * torch.randn(3, generator=g).numpy())
        with torch.no_grad():
            o = hands[side](hand_pose=0.3 * torch.randn(1, 45, generator=g),
                            global_orient=torch.tensor(turn.as_rotvec()[None], dtype=torch.float32))
        kp3d = o.keypoints[0]
        xy = kp3d[:, :2] - kp3d[:, :2].mean(0)
        px = normalized_to_pixels(xy * (1.2 / xy.abs().max()), 96, 96).numpy()
        out.append({"image": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), "side": side,
                    "keypoints": np.c_[px, np.ones(21)]})
    return out


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(run_dir=str(tmp_path / "run"), encoder="resnet18", image_size=SIZE, batch_size=4, iterations=6,
                lr=1e-3, dropout=0.0, mix={"toy": 1.0}, augment={"flip": 0.5, "color": 0.2, "rotation": 20},
                log_every=2, val_every=3, image_every=3, checkpoint_every=2, workers=0, val_batch=4,
                progress=False, losses={"reproj": 100, "shape": 1})
    return TrainConfig(**{**base, **kw})


def test_overfit_one_batch_drives_the_reprojection_error_near_zero():
    torch.manual_seed(0)
    crops = HandCrops(_source(8, 0), 32)
    batch = torch.utils.data.default_collate([crops[i] for i in range(8)])
    net = HandNet("mobilenet_v3_small", dropout=0.0, hand_models=_hands()).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    weights = LossWeights(reproj=100, shape=0)
    errors = []
    for _ in range(200):
        preds = net(batch["image"], batch["side"])
        loss, _ = hand_losses(preds, batch, weights, net)
        opt.zero_grad()
        loss.backward()
        opt.step()
        errors.append(float((preds[-1].keypoints2d.detach() - batch["keypoints2d"]).norm(dim=-1).mean()))
    # [-1, 1] units: 0.03 is 1.5% of the crop's width (0.5 px at 32 px), from about 0.4 at the start
    assert errors[0] > 0.3 and errors[-1] < 0.03, errors[::20]


def test_a_killed_run_resumes_to_bit_identical_parameters(tmp_path, monkeypatch):
    data, val = {"toy": _source(6, 1)}, {"toy": _source(2, 2)}
    whole = _cfg(tmp_path, run_dir=str(tmp_path / "whole"), workers=1)
    train(whole, data, val, _hands())

    killed = _cfg(tmp_path, run_dir=str(tmp_path / "killed"), workers=1)
    real_losses, calls = training.hand_losses, []

    def dies_in_step_5(*args):
        calls.append(1)
        if len(calls) == 5 + 1:  # 4 training steps, 1 validation, then the 5th step
            raise KeyboardInterrupt("killed")
        return real_losses(*args)

    monkeypatch.setattr(training, "hand_losses", dies_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(killed, data, val, _hands())
    monkeypatch.setattr(training, "hand_losses", real_losses)
    assert torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=False)["iteration"] == 4
    assert train(killed, data, val, _hands())["resumed_from"] == 4

    a = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    net = load_network(tmp_path / "whole", _hands())
    assert torch.equal(net.regressor[0].weight, a["model"]["regressor.0.weight"])
    with pytest.raises(ValueError, match="other settings.*lr"):
        train(dataclasses.replace(killed, lr=0.5), data, val, _hands())


def test_training_steps_yields_each_iteration_and_a_stopped_run_resumes(tmp_path):
    data, val = {"toy": _source(6, 5)}, {"toy": _source(2, 6)}
    cfg = _cfg(tmp_path, iterations=4)
    steps = training.training_steps(cfg, data, val, _hands())
    for _ in range(2):
        next(steps)
    steps.close()  # as a benchmark stops: the checkpoint of iteration 2 stays
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["iteration"] == 2
    yields = list(training.training_steps(cfg, data, val, _hands()))
    assert len(yields) == 2 + 1 and yields[-1]["resumed_from"] == 2 and yields[-1]["iterations"] == 4
    assert "train_loss" in yields[-2] and "pa_mpjpe_mm" not in yields[-2]  # the toy data have no 3D labels


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg, data, val, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train(cfg, data, val, _hands())


def test_ddp_with_two_cpu_processes_matches_one_process(tmp_path):
    # BatchNorm statistics are per process on CPUs (SyncBatchNorm needs GPUs): compare with a frozen encoder.
    from handlib.network import build_encoder

    torch.save(build_encoder("resnet18").state_dict(), tmp_path / "r18.pth")
    data, val = {"toy": _source(6, 3)}, {"toy": _source(2, 4)}
    cfg = _cfg(tmp_path, mode="freeze", weights_file=str(tmp_path / "r18.pth"), iterations=3, val_every=3,
               image_every=3, checkpoint_every=3)
    one = dataclasses.replace(cfg, run_dir=str(tmp_path / "one"))
    two = dataclasses.replace(cfg, run_dir=str(tmp_path / "two"))
    train(one, data, val, _hands())
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), two, data, val, None), nprocs=2)
    a = torch.load(tmp_path / "one" / CHECKPOINT, weights_only=False)["model"]
    b = torch.load(tmp_path / "two" / CHECKPOINT, weights_only=False)["model"]
    # Summation order differs between one batch and two halves; Adam turns float noise in near-zero gradients
    # into up to a few 1e-6 (1% of one step, lr 1e-3). A process that saw other samples would differ by ~lr.
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=1e-4, msg=lambda m: f"{key}: {m}")
    torch.manual_seed(cfg.seed)  # train's own start: the same initial network
    start = HandNet(cfg.encoder, cfg.mode, dropout=0.0, weights_file=cfg.weights_file, hand_models=_hands())
    assert (a["regressor.0.weight"] - start.regressor[0].weight).abs().max() > 1e-4  # it trained
    assert torch.equal(a["encoder.conv1.weight"], start.encoder.conv1.weight)  # frozen


def test_every_profile_of_notebook_04_names_known_parameters_and_valid_settings():
    import ast
    import json

    import yaml

    from handlib import paths

    nb = json.loads((paths.REPO / "notebooks" / "04_train.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    defaults = {}
    exec(compile(ast.parse("".join(cell["source"])), "parameters", "exec"), {}, defaults)
    profiles = sorted((paths.REPO / "configs").glob("*/04_train.yaml"))
    assert {p.parent.name for p in profiles} >= {"demo", "full", "thesis-resnet50-pretrained"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for path in profiles:
        params = {**defaults, **yaml.safe_load(path.read_text())}
        assert set(params) <= set(defaults), (path, set(params) - set(defaults))
        TrainConfig(**{k: v for k, v in params.items() if k in fields})  # loss and augment names are checked
