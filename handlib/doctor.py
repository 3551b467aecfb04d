"""`python -m handlib doctor`: what this machine has, and what the pipeline will use."""

import importlib.metadata
import platform

import torch

from handlib import paths

PACKAGES = ["torch", "torchvision", "numpy", "scipy", "trimesh", "moderngl", "papermill", "tensorboardX"]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def device_line() -> str:
    if torch.cuda.is_available():
        return f"CUDA ({torch.cuda.get_device_name(0)}), {torch.cuda.device_count()} device(s)"
    return "CPU only (no CUDA device): training runs on the CPU, slowly; the demo profile is sized for it"


def opengl_line() -> str:
    from handlib.gl import context_info

    try:
        return "ok: " + context_info()
    except RuntimeError as err:
        return f"NOT AVAILABLE: {err}"


def mano_line(side: str) -> str:
    from handlib.model import find_mano

    found = find_mano(side)
    if found:
        return f"real MANO model: {found}"
    return (f"{paths.mano_file(side)} not found: using handlib's built-in MANO-compatible hand "
            "(download MANO from https://mano.is.tue.mpg.de and put MANO_RIGHT.pkl/MANO_LEFT.pkl there)")


def hands11k_line() -> str:
    csv = paths.HANDS11K_DIR / "HandInfo.csv"
    if csv.exists() and (paths.HANDS11K_DIR / "Hands").is_dir():
        return f"11K Hands: {paths.HANDS11K_DIR}"
    return (f"11K Hands not found under {paths.HANDS11K_DIR} (HandInfo.csv + Hands/): using a generated "
            "11K-style dataset of the built-in hand (get the real one at https://sites.google.com/view/11khands)")


def report() -> str:
    versions = ", ".join(f"{p} {_version(p)}" for p in PACKAGES)
    lines = [
        "handlib doctor",
        f"  python:      {platform.python_version()} ({platform.machine()})",
        f"  packages:    {versions}",
        f"  device:      {device_line()}",
        f"  OpenGL:      {opengl_line()}",
        f"  MANO right:  {mano_line('right')}",
        f"  MANO left:   {mano_line('left')}",
        f"  datasets:    {hands11k_line()}",
        f"  data dir:    {paths.DATA}",
        f"  runs dir:    {paths.RUNS}",
    ]
    return "\n".join(lines)
