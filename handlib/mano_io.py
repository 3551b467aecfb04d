"""Read and write MANO model files without chumpy, and without letting a pickle run code.

The released MANO_RIGHT.pkl / MANO_LEFT.pkl are Python 2 pickles whose `shapedirs` is a chumpy
expression (a `chumpy.reordering.Select` over a `chumpy.ch.Ch`) and whose `J_regressor` is a
scipy.sparse CSC matrix. chumpy no longer installs on current numpy/Python (chumpy #51, #55), so
`_MANOUnpickler` maps every chumpy class to an inert stub and evaluates the two node kinds MANO uses.
It allows only the classes these files need and refuses any other with an error naming the file
and the class. Converted files (.npz, or .pkl of plain arrays) load through the same code.

Left hand: the released MANO_LEFT.pkl carries the right hand's shapedirs, so one β gives different
left and right shapes (smplx #48, dex-ycb-toolkit #28); the fix is `shapedirs[:, 0, :] *= -1`.
smplx 0.1.28 applies no fix (its MANO class loads shapedirs as they are); HaMeR-style code flips the
left layer when its x-column equals the right layer's; dex-ycb-toolkit flips every left model.
`load_mano` decides as follows when not told (`fix_left_shapedirs=None`):
  - a file written by handlib (`save_mano` marks it) is already consistent: no flip;
  - else, with the right-hand file beside the left one, flip exactly when the left x-column equals
    the right's (the bug's signature);
  - else flip: every MANO_LEFT release has the bug. Pass fix_left_shapedirs=False for a converted
    left file that some other tool has fixed already.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

import handlib
from handlib.io import atomic_path
from handlib.model import REQUIRED_KEYS

# What the MANO pickles and their common conversions name, besides chumpy classes (stubbed).
_NUMPY_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}
_BUILTINS_ALLOWED = {"set", "object"}  # chumpy state holds sets; object: copy_reg._reconstructor's base
_SPARSE_MODULES = {"scipy.sparse", "scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr", "scipy.sparse._csr"}
_SPARSE_CLASSES = {"csc_matrix", "csr_matrix"}
HANDLIB_MARK = "handlib_version"  # key save_mano adds: arrays already self-consistent, left fix applied


class _Stub:
    """An inert stand-in for a pickled chumpy or scipy.sparse object: it only keeps its state."""

    kind = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _stub_class(module: str, name: str) -> type:
    return type(name, (_Stub,), {"kind": f"{module}.{name}"})


def _latin1_encode(text: str, encoding: str) -> bytes:
    """Python 3 pickles of bytes at protocol <= 2 store `_codecs.encode(text, 'latin1')`."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _MANOUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            return _stub_class(module, name)
        if module in _SPARSE_MODULES and name in _SPARSE_CLASSES:
            return _stub_class(module, name)
        if (module, name) in _NUMPY_ALLOWED:
            return super().find_class(module.replace("numpy.core.", "numpy._core."), name)
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return super().find_class("copyreg", name)
        if module in ("__builtin__", "builtins") and name in _BUILTINS_ALLOWED:
            return super().find_class("builtins", name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise pickle.UnpicklingError(
            f"{self.path}: refusing to load {module}.{name}: a MANO model file holds only numpy arrays, "
            "scipy.sparse matrices and chumpy arrays, and this pickle names something else (it may run code)")


def _evaluate(value: Any) -> Any:
    """A stub as the value chumpy or scipy would give; anything else unchanged."""
    if not isinstance(value, _Stub):
        return value
    state = value.state
    if value.kind == "chumpy.ch.Ch":
        return np.asarray(_evaluate(state["x"]))
    if value.kind == "chumpy.reordering.Select":  # chumpy's Select.compute_r
        out = np.asarray(_evaluate(state["a"])).ravel()[state["idxs"]]
        return out.reshape(state["preferred_shape"]) if "preferred_shape" in state else out
    if value.kind.endswith(("csc_matrix", "csr_matrix")):
        shape = state.get("_shape", state.get("shape"))
        matrix = scipy.sparse.csc_matrix if value.kind.endswith("csc_matrix") else scipy.sparse.csr_matrix
        return matrix((state["data"], state["indices"], state["indptr"]), shape=tuple(shape))
    raise ValueError(f"it is a {value.kind}, which handlib cannot evaluate without chumpy")


def _read_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            data = _MANOUnpickler(f, path).load()
        except Exception as e:
            if str(e).startswith(str(path)):
                raise
            raise ValueError(f"{path}: not a readable MANO pickle ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a {type(data).__name__}, not a MANO dict")
    params = {}
    for key, value in data.items():
        try:
            params[str(key)] = _evaluate(value)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            if key in REQUIRED_KEYS:  # an unevaluable optional key (a derived chumpy expression) is dropped
                raise ValueError(f"{path}: cannot read key {key!r} ({type(e).__name__}: {e})") from e
    return params


def _read_npz(path: Path) -> dict:
    """An .npz of MANO arrays; an object array inside (a pickled sparse matrix) goes through _MANOUnpickler."""
    params = {}
    try:
        with np.load(path, allow_pickle=False) as archive, zipfile.ZipFile(path) as members:
            for key in archive.files:
                try:
                    value = archive[key]
                except ValueError:  # an object array: its data is a pickle
                    with members.open(f"{key}.npy") as f:
                        version = np.lib.format.read_magic(f)
                        if version != (1, 0):
                            raise ValueError(f"{path}: object array {key!r} in .npy format {version}")
                        np.lib.format.read_array_header_1_0(f)
                        value = _MANOUnpickler(f, path).load()
                if value.dtype.kind in "OU" and value.shape == ():
                    value = value[()]
                params[key] = _evaluate(str(value) if isinstance(value, str) else value)
    except (zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable MANO .npz ({type(e).__name__}: {e})") from e
    return params


def load_mano_file(path: str | os.PathLike) -> dict:
    """The arrays of a MANO model file (.pkl as released or converted, or .npz), chumpy-free."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such MANO model file (download MANO_RIGHT.pkl / MANO_LEFT.pkl "
                                "from https://mano.is.tue.mpg.de and put them under data/mano/)")
    params = _read_npz(path) if zipfile.is_zipfile(path) else _read_pickle(path)
    missing = [k for k in REQUIRED_KEYS if k not in params]
    if missing:
        raise ValueError(f"{path}: not a MANO model file, it lacks {missing}")
    return params


def _sibling_right(path: Path) -> Path | None:
    name = re.sub("left", lambda m: "RIGHT" if m.group().isupper() else "right" if m.group().islower()
                  else "Right", path.name, flags=re.IGNORECASE)
    sibling = path.with_name(name)
    return sibling if sibling != path and sibling.is_file() else None


def _needs_left_fix(params: dict, path: Path) -> bool:
    if HANDLIB_MARK in params:
        return False
    right_path = _sibling_right(path)
    if right_path is not None:
        left_x = np.asarray(params["shapedirs"])[:, 0]
        right_x = np.asarray(load_mano_file(right_path)["shapedirs"])[:, 0]
        if left_x.shape == right_x.shape and np.allclose(left_x, -right_x) and not np.allclose(left_x, 0):
            return False
    return True


def load_mano(path: str | os.PathLike, side: str | None = None,
              fix_left_shapedirs: bool | None = None) -> tuple[dict, str]:
    """A MANO file's arrays and its side, with the left-hand shapedirs fix applied (see the module doc).

    side: 'right' or 'left'; by default the side save_mano recorded, else 'left'/'right' in the file name.
    """
    path = Path(path)
    params = load_mano_file(path)
    if side is None:
        side = str(params.get("side", "")) or next(
            (s for s in ("left", "right") if s in path.name.lower()), None)
    if side not in ("left", "right"):
        raise ValueError(f"{path}: cannot tell which hand this model is; pass side='right' or side='left'")
    if side == "left" and (fix_left_shapedirs if fix_left_shapedirs is not None else _needs_left_fix(params, path)):
        shapedirs = np.array(params["shapedirs"], dtype=np.float64)
        shapedirs[:, 0, :] *= -1
        params["shapedirs"] = shapedirs
    return params, side


def save_mano(params: dict, path: str | os.PathLike, side: str | None = None) -> None:
    """Write MANO-layout `params` atomically: .npz (no pickle; sparse arrays stored dense) or .pkl.

    `params` as load_mano returns them or HandModel.mano_params gives them (left-hand fix applied): the
    file records the handlib version, so that load_mano applies no fix again, and `side` when given;
    other MANO loaders ignore those keys.
    """
    path = Path(path)
    params = dict(params, **{HANDLIB_MARK: handlib.__version__})
    if side is not None:
        params["side"] = side
    if path.suffix == ".npz":
        arrays = {k: v.toarray() if scipy.sparse.issparse(v) else np.asarray(v) for k, v in params.items()}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    elif path.suffix == ".pkl":
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(params, f, protocol=4)
    else:
        raise ValueError(f"{path}: MANO files are written as .pkl or .npz")
