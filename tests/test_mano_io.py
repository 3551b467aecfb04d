"""Reading MANO files without chumpy, refusing pickles that name anything else, the left-hand fix, export."""

import importlib.util
import os
import pickle
import pickletools
import sys

import numpy as np
import pytest
import scipy.sparse
import torch

from fixtures.mano import random_mano_params, write_chumpy_pickle, write_plain_pickle
from handlib.mano_io import load_mano, load_mano_file, save_mano
from handlib.model import HandModel
from test_model import random_inputs, smplx_mano


def dense(x):
    return x.toarray() if scipy.sparse.issparse(x) else np.asarray(x)


def test_chumpy_style_pickle_loads_without_chumpy(tmp_path):
    assert importlib.util.find_spec("chumpy") is None, "these tests mean to run without chumpy"
    params = random_mano_params(778, 1538)  # MANO's size: the released files carry no fingertip ids
    path = tmp_path / "MANO_RIGHT.pkl"
    write_chumpy_pickle(params, path)
    # The fixture is what the released files are: a protocol-2 pickle naming chumpy and scipy.sparse.csc.
    ops = list(pickletools.genops(path.read_bytes()))
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    globals_named = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert {"chumpy.ch Ch", "chumpy.reordering Select", "scipy.sparse.csc csc_matrix",
            "numpy.core.multiarray _reconstruct"} <= globals_named
    with pytest.raises(ModuleNotFoundError, match="chumpy"):
        with open(path, "rb") as f:
            pickle.load(f, encoding="latin1")

    loaded = load_mano_file(path)
    assert "chumpy" not in sys.modules
    for key in params:
        if key != "tip_ids":
            np.testing.assert_array_equal(dense(loaded[key]), params[key], err_msg=key)
    assert scipy.sparse.issparse(loaded["J_regressor"])
    assert loaded["bs_style"] == "lbs"
    model = HandModel.from_mano(path, dtype=torch.float64)
    reference = HandModel(params, dtype=torch.float64)
    torch.testing.assert_close(model.shapedirs, reference.shapedirs, rtol=0, atol=0)


def test_chumpy_style_model_matches_smplx_on_the_plain_file(tmp_path):
    params = random_mano_params(778, 1538, seed=2)
    params.pop("tip_ids")
    write_chumpy_pickle(params, tmp_path / "chumpy_MANO_RIGHT.pkl")
    write_plain_pickle(params, tmp_path / "MANO_RIGHT.pkl")
    inputs = random_inputs(3, 45)
    reference = smplx_mano(tmp_path / "MANO_RIGHT.pkl", use_pca=False)
    ours = HandModel.from_mano(tmp_path / "chumpy_MANO_RIGHT.pkl", dtype=torch.float64)
    assert (ours(**inputs).vertices - reference(**inputs).vertices).abs().max() < 1e-6


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_running_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    params = dict(random_mano_params(20, 20), bs_style=_RunsCode(marker))
    path = tmp_path / "MANO_RIGHT.pkl"
    with open(path, "wb") as f:
        pickle.dump(params, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"MANO_RIGHT\.pkl.*refusing to load posix\.system"):
        load_mano_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("__builtin__", "getattr"),
                                         ("subprocess", "Popen"), ("numpy", "load"),
                                         ("copyreg", "__newobj__"), ("scipy.sparse", "load_npz")])
def test_any_other_global_is_refused(tmp_path, module, name):
    path = tmp_path / "model.pkl"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")  # GLOBAL, (), REDUCE
    with pytest.raises(pickle.UnpicklingError, match=rf"model\.pkl.*refusing to load {module}\.{name}"):
        load_mano_file(path)


def test_only_latin1_codecs_encode_is_allowed(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(ValueError, match="zlib"):
        load_mano_file(path)


def test_object_array_in_npz_goes_through_the_restricted_unpickler(tmp_path):
    params = random_mano_params(20, 20)
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    np.savez(good, **dict(params, J_regressor=np.array(scipy.sparse.csc_matrix(params["J_regressor"]))))
    np.testing.assert_array_equal(dense(load_mano_file(good)["J_regressor"]), params["J_regressor"])
    np.savez(bad, **dict(params, hands_mean=np.array(_RunsCode(tmp_path / "pwned"))))
    with pytest.raises(pickle.UnpicklingError, match="bad.npz.*posix.system"):
        load_mano_file(bad)
    assert not (tmp_path / "pwned").exists()


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pkl"):
        load_mano_file(tmp_path / "nothere.pkl")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="garbage.pkl"):
        load_mano_file(garbage)
    incomplete = tmp_path / "incomplete.pkl"
    write_plain_pickle({k: v for k, v in random_mano_params(20, 20).items() if k != "weights"}, incomplete)
    with pytest.raises(ValueError, match=r"incomplete\.pkl.*weights"):
        load_mano_file(incomplete)
    unnamed = tmp_path / "model.pkl"
    write_plain_pickle(random_mano_params(20, 20), unnamed)
    with pytest.raises(ValueError, match="side="):
        load_mano(unnamed)
    assert load_mano(unnamed, side="left")[1] == "left"


def left_x(path, **kw):
    return load_mano(path, **kw)[0]["shapedirs"][:, 0]


def test_left_shapedirs_fix(tmp_path):
    right = random_mano_params(30, 30, seed=5)
    left = dict(right, v_template=right["v_template"] * [-1, 1, 1])  # as released: the right's shapedirs
    alone, paired = tmp_path / "alone", tmp_path / "paired"
    alone.mkdir(), paired.mkdir()
    write_chumpy_pickle(left, alone / "MANO_LEFT.pkl")
    write_chumpy_pickle(left, paired / "MANO_LEFT.pkl")
    write_chumpy_pickle(right, paired / "MANO_RIGHT.pkl")
    x = right["shapedirs"][:, 0]
    np.testing.assert_array_equal(left_x(alone / "MANO_LEFT.pkl"), -x)  # every released left file needs it
    np.testing.assert_array_equal(left_x(paired / "MANO_LEFT.pkl"), -x)  # equal to the right's: the bug
    np.testing.assert_array_equal(left_x(alone / "MANO_LEFT.pkl", fix_left_shapedirs=False), x)
    np.testing.assert_array_equal(load_mano(paired / "MANO_RIGHT.pkl")[0]["shapedirs"][:, 0], x)

    fixed = dict(left, shapedirs=right["shapedirs"] * [[[-1], [1], [1]]])  # a file some tool fixed already
    write_chumpy_pickle(fixed, paired / "MANO_LEFT.pkl")
    np.testing.assert_array_equal(left_x(paired / "MANO_LEFT.pkl"), -x)  # mirrored vs the right: left alone

    # The fix is smplx's model with `shapedirs[:, 0, :] *= -1`, as smplx #48 does it by hand.
    write_plain_pickle(left, alone / "MANO_LEFT.pkl")
    reference = smplx_mano(alone / "MANO_LEFT.pkl", is_rhand=False, use_pca=False)
    reference.shapedirs[:, 0, :] *= -1
    ours = HandModel.from_mano(alone / "MANO_LEFT.pkl", dtype=torch.float64)
    assert ours.side == "left"
    inputs = random_inputs(3, 45)
    assert (ours(**inputs).vertices - reference(**inputs).vertices).abs().max() < 1e-6


@pytest.mark.parametrize("suffix", [".pkl", ".npz"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_export_round_trip_and_smplx(tmp_path, suffix, side):
    params = random_mano_params(50, 60, seed=7)
    params["vt"], params["ft"] = np.random.default_rng(0).uniform(size=(70, 2)), params["f"].astype(np.int64)
    model = HandModel(params, side=side, dtype=torch.float64)
    path = tmp_path / f"exported{suffix}"
    model.export_mano(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    reloaded = HandModel.from_mano(path, dtype=torch.float64)  # side recorded, left fix not applied twice
    assert reloaded.side == side
    for name, buffer in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], buffer, rtol=0, atol=0, msg=name)
    inputs = random_inputs(4, 45)
    torch.testing.assert_close(reloaded(**inputs).vertices, model(**inputs).vertices, rtol=0, atol=0)
    if suffix == ".pkl":
        reference = smplx_mano(path, use_pca=False)
        assert (reference(**inputs).vertices - model(**inputs).vertices).abs().max() < 1e-6
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="latin1")
        assert scipy.sparse.issparse(raw["J_regressor"]) and raw["shapedirs"].dtype == np.float64


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "MANO_RIGHT.pkl"
    HandModel(random_mano_params(20, 20)).export_mano(path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_mano(dict(random_mano_params(20, 20), extra=lambda: 0), path, side="right")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_default_prefers_a_real_mano_file_under_data(tmp_path, monkeypatch):
    from handlib import paths
    from handlib.model import find_mano

    monkeypatch.setattr(paths, "MANO_DIR", tmp_path)
    assert find_mano("right") is None
    HandModel(random_mano_params(30, 30, seed=9), side="right").export_mano(tmp_path / "MANO_RIGHT.npz")
    assert find_mano("right") == tmp_path / "MANO_RIGHT.npz"
    model = HandModel.default("right")
    assert model.num_verts == 30 and model.side == "right"
