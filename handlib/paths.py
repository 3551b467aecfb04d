"""Where handlib looks for inputs and writes outputs."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HANDLIB_DATA", REPO / "data"))
RUNS = Path(os.environ.get("HANDLIB_RUNS", REPO / "runs"))

MANO_DIR = DATA / "mano"
HANDS11K_DIR = DATA / "11k"


def mano_file(side: str = "right") -> Path:
    """The path where the real MANO pickle of `side` is expected."""
    return MANO_DIR / f"MANO_{side.upper()}.pkl"


def resolve(path: str | os.PathLike) -> Path:
    """A path relative to the repository root (notebooks run with other working directories)."""
    path = Path(path)
    return path if path.is_absolute() else REPO / path
